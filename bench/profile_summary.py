"""Where a server's time went: a py-spy raw profile (`bench/run.py --profile DIR`, or
`py-spy record -p PID -f raw`) bucketed by what edrvctl was doing, then the top functions.

    python bench/profile_summary.py DIR/throughput-edrvctl-100-round1.txt [--top 15]

Each sample goes to the first bucket whose markers appear in its stack, so a handler's store
write counts under the store, not under the handler.
"""

from __future__ import annotations

import argparse
from collections import Counter

BUCKETS = [  # (bucket, markers in the stack), first match wins
    ("admin API (incl. the benchmark's own polling)", ("uvicorn/", "starlette/", "fastapi/")),
    ("store: COMMIT", ("GroupCommit._commit",)),
    ("store: write of the station record", ("Fleet._save",)),
    ("store: other reads/writes", ("SqliteStore.",)),
    ("websocket handshake + refusals (process_request)", ("ServerConnection.handshake",)),
    ("session set-up: ChargePoint() and its route map", ("RobustChargePoint.__init__",)),
    ("session set-up/teardown: online flag", ("Fleet.connected", "Fleet.disconnected")),
    ("OCPP: schema validation", ("validate_request",)),
    (
        "OCPP: camelCase <-> snake_case (ocpp library, regex)",
        ("camel_to_snake_case", "snake_to_camel_case"),
    ),
    ("OCPP: timestamps (utcnow, parse/format)", ("utcnow", "checked_time", "format_time")),
    (
        "OCPP: reply (serialize + websocket send)",
        ("RobustChargePoint._send", "serialize_as_dict", "to_json"),
    ),
    ("OCPP: handlers, other", ("on.<locals>.decorator.<locals>.inner",)),
    ("OCPP: dispatch (_answer/_handle_call)", ("RobustChargePoint._answer",)),
    ("websocket receive: frames, reader loop", ("RobustChargePoint.start",)),
    ("websocket keepalive and close", ("keepalive", "Connection.close")),
    (
        "TCP accept, connection objects",
        ("_accept_connection", "connection_made", "protocol_factory"),
    ),
    ("socket I/O (asyncio transports)", ("_read_ready", "_SelectorSocketTransport.write")),
    ("event loop: select, scheduling", ("_run_once",)),
]


def summarize(path: str, top: int = 15) -> str:
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            leaves[stack.rsplit(";", 1)[-1]] += int(n)
            name = next((b for b, marks in BUCKETS if any(m in stack for m in marks)), "other")
            buckets[name] += int(n)
    if not total:
        return f"{path}: no samples"
    out = [f"{path}: {total} samples", "", "| where | share |", "|---|---:|"]
    out += [f"| {b} | {100 * n / total:.1f}% |" for b, n in buckets.most_common()]
    out += ["", f"Top {top} functions by own time:", ""]
    out += [f"    {100 * n / total:5.1f}%  {leaf}" for leaf, n in leaves.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print("\n\n".join(summarize(p, a.top) for p in a.profiles))
