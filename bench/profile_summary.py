"""Where a server's time went: a py-spy raw profile (`bench/run.py --profile DIR`, or
`py-spy record -p PID -f raw`) bucketed by what edrvctl was doing, then the top functions.

    python bench/profile_summary.py DIR/throughput-edrvctl-100-round1.txt [--top 15]

Each sample goes to the first bucket whose markers appear in its stack, so a handler's store
write counts under the store, not under the handler.
"""

from __future__ import annotations

import argparse
from collections import Counter

BUCKETS = [  # (bucket, markers in the stack), first match wins: the deeper ones first
    ("store: WAL checkpoints (a worker thread)", ("SqliteStore._checkpoint",)),
    ("frame log: compression (a worker thread)", ("Thread._bootstrap",)),
    ("admin API (incl. the benchmark's own polling)", ("uvicorn/", "starlette/", "fastapi/")),
    ("store: COMMIT", ("SqliteStore._commit",)),
    ("store: the handlers' SQL", ("SqliteStore._run", "SqliteUnit.")),
    ("store: units (lock, savepoints, waiting for the commit)", ("SqliteStore.",)),
    ("socket writes (each turn's answers, together)", ("Turns.flush", "StationConnection.flush")),
    ("frame log and message counters (the Rpc's trace)", ("StationLog.", "Metrics.tracer")),
    ("OCPP: schema validation", ("ocppj/schemas.py",)),
    ("OCPP: frames parsed and encoded (orjson)", ("ocppj/frames.py",)),
    ("OCPP: handlers and fleet rules", ("server/ocpp16.py", "server/ocpp201.py", "/fleet/")),
    ("OCPP: Rpc dispatch", ("ocppj/rpc.py",)),
    ("websocket: the library (handshake, control frames)", ("websockets/",)),
    (
        "connections: accept, upgrade, attach, detach",
        ("connection_made", "_upgrade", "Registry.", "Listener."),
    ),
    ("websocket: our frame reader, turns", ("StationConnection.", "Turns.")),
    ("event loop: polling, socket reads, scheduling (uvloop)", ("Runner.run", "_run_once")),
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
