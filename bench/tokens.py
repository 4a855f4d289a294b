"""Tokens benchmark (issue 13): an import of 100,000 tokens, and Authorize with them stored.

    python bench/tokens.py [--quick] [--tokens N] [--requests N]

One `edrvctl serve --authorize known` (its own process, a fresh store). Then:

1. `edrvctl tokens import FILE.csv` of N tokens (the CLI, a process of its own, as a user runs
   it): its wall time; then the same file again through the API (every row an update), timed
   as one HTTP request. Meanwhile a station sends Heartbeats one after the other: their
   slowest round trip is how long stations waited on the import.
2. Authorize round trips with the N tokens stored: an OCPP-J websocket client (a raw one, in
   this process: no simulator overhead) sends Authorize for random stored tokens, one at a
   time, for a 1.6 and a 2.0.1 station; Heartbeats on the same connection, interleaved, give
   the floor (a round trip that reads nothing). Unknown id tags are measured too (each one
   new: its token.unknown event is written and committed before the answer).

Targets: the import under 10 s; Authorize p50 under 2 ms. Progress goes to stderr, the report
(Markdown, as bench/run.py's) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

from run import PY, Result, cpu_s, loadavg, log, pct, rss_kib, workdir  # bench/run.py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import hermetic_env, start_server

TYPES = ("ISO14443", "ISO14443", "ISO14443", "ISO15693", "KeyCode", "eMAID")


def token_csv(n: int, rng: random.Random) -> str:
    """N tokens: mostly active RFID cards, some blocked, some expiring, some in groups."""
    rows = ["physicalId,type,active,organization,expiryDate,parentIdTag"]
    for i in range(n):
        rows.append(
            ",".join(
                (
                    f"TOK{i:09d}",
                    rng.choice(TYPES),
                    "false" if rng.random() < 0.05 else "true",
                    f"org-{rng.randrange(20)}" if rng.random() < 0.5 else "",
                    "2030-01-01T00:00:00Z" if rng.random() < 0.2 else "",
                    f"GROUP-{rng.randrange(500)}" if rng.random() < 0.3 else "",
                )
            )
        )
    return "\n".join(rows) + "\n"


class Ocpp:
    """A bare OCPP-J client on one websocket: one CALL at a time, timed."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, action: str, payload: dict) -> tuple[float, dict]:
        msg_id = str(next(self.ids))
        t = time.perf_counter()
        await self.ws.send(json.dumps([2, msg_id, action, payload]))
        answer = json.loads(await self.ws.recv())
        dt = (time.perf_counter() - t) * 1000
        if answer[0] != 3 or answer[1] != msg_id:
            raise RuntimeError(f"{action}: unexpected answer {answer!r}")
        return dt, answer[2]


async def station(srv, endpoint: str, protocol: str):
    from websockets.asyncio.client import connect

    ws = await connect(f"{srv.ocpp_url}/{endpoint}", subprotocols=[protocol], max_size=2**22)
    c = Ocpp(ws)
    boot = (
        {"chargePointVendor": "bench", "chargePointModel": "tokens"}
        if protocol == "ocpp1.6"
        else {"chargingStation": {"vendorName": "bench", "model": "tokens"}, "reason": "PowerUp"}
    )
    await c.call("BootNotification", boot)
    return ws, c


def authorize(protocol: str, tag: str, token_type: str) -> dict:
    if protocol == "ocpp1.6":
        return {"idTag": tag}
    return {"idToken": {"idToken": tag, "type": token_type}}


def status_of(protocol: str, answer: dict) -> str:
    return answer["idTagInfo" if protocol == "ocpp1.6" else "idTokenInfo"]["status"]


async def probe(srv, stop: asyncio.Event, action: str, payload: dict) -> list[float]:
    """Round trips of one message, one after the other, until `stop` (a station of its own)."""
    ws, c = await station(srv, f"bench-probe-{action.lower()}", "ocpp1.6")
    times = []
    try:
        while not stop.is_set():
            dt, _ = await c.call(action, payload)
            times.append(dt)
            await asyncio.sleep(0.005)
    finally:
        await ws.close()
    return times


def probes(srv, stop: asyncio.Event) -> list[asyncio.Task]:
    """A Heartbeat (reads nothing) and an Authorize (reads the store) probe."""
    return [
        asyncio.create_task(probe(srv, stop, "Heartbeat", {})),
        asyncio.create_task(probe(srv, stop, "Authorize", {"idTag": "PROBE"})),
    ]


async def timed_import(srv, root: Path, csv_path: Path, env: dict) -> dict:
    stop = asyncio.Event()
    tasks = probes(srv, stop)
    await asyncio.sleep(0.5)
    rss0, cpu0 = rss_kib(srv.proc.pid), cpu_s(srv.proc.pid)
    t = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "edrvctl",
        "tokens",
        "import",
        str(csv_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    cli_s = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"tokens import exited {proc.returncode}: {err.decode()[-500:]}")
    cpu_import = cpu_s(srv.proc.pid) - cpu0
    rss1 = rss_kib(srv.proc.pid)
    await asyncio.sleep(0.3)
    stop.set()
    beats, auths = [await t for t in tasks]
    # the same file again, every row an update, as one API request
    stop = asyncio.Event()
    tasks = probes(srv, stop)
    await asyncio.sleep(0.3)
    data = csv_path.read_bytes()
    async with httpx.AsyncClient(
        base_url=srv.api_url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=300
    ) as api:
        t = time.monotonic()
        r = await api.post("/v1.1/tokens/import", content=data)
        api_s = time.monotonic() - t
    if r.status_code != 201:
        raise RuntimeError(f"re-import: {r.status_code} {r.text[:300]}")
    await asyncio.sleep(0.3)
    stop.set()
    beats_again, auths_again = [await t for t in tasks]
    return {
        "import_cli_s": cli_s,
        "import_message": out.decode().strip(),
        "import_server_cpu_s": cpu_import,
        "import_rss_growth_mib": (rss1 - rss0) / 1024,
        "import_bytes": len(data),
        "reimport_api_s": api_s,
        "reimport_result": r.json()["result"],
        "probe_max_ms": max(beats),
        "probe_p50_ms": pct(beats, 0.5),
        "reprobe_max_ms": max(beats_again),
        "auth_probe_max_ms": max(auths),
        "auth_reprobe_max_ms": max(auths_again),
    }


async def authorize_rounds(
    srv, n_tokens: int, requests: int, warm: int, rng: random.Random, types: dict[str, str]
) -> dict:
    figures: dict = {}
    for protocol in ("ocpp1.6", "ocpp2.0.1"):
        ep = f"bench-{protocol.replace('.', '')}"
        ws, c = await station(srv, ep, protocol)
        try:
            auth, beat, statuses = [], [], {}
            for i in range(warm + requests):
                tag = f"TOK{rng.randrange(n_tokens):09d}"
                dt, answer = await c.call("Authorize", authorize(protocol, tag, types[tag]))
                hb, _ = await c.call("Heartbeat", {})
                if i >= warm:
                    auth.append(dt)
                    beat.append(hb)
                    s = status_of(protocol, answer)
                    statuses[s] = statuses.get(s, 0) + 1
            unknown = []
            for i in range(max(20, requests // 10)):
                dt, answer = await c.call(
                    "Authorize", authorize(protocol, f"NEW{i:06d}-{protocol[-3:]}", "ISO14443")
                )
                unknown.append(dt)
        finally:
            await ws.close()
        key = "16" if protocol == "ocpp1.6" else "201"
        figures.update(
            {
                f"auth_{key}_p50_ms": pct(auth, 0.5),
                f"auth_{key}_p90_ms": pct(auth, 0.9),
                f"auth_{key}_p99_ms": pct(auth, 0.99),
                f"heartbeat_{key}_p50_ms": pct(beat, 0.5),
                f"unknown_{key}_p50_ms": pct(unknown, 0.5),
                f"unknown_{key}_p99_ms": pct(unknown, 0.99),
                f"statuses_{key}": statuses,
            }
        )
    return figures


def bench(n_tokens: int, requests: int, warm: int, quick: bool) -> Result:
    cmd = "python bench/tokens.py" + (" --quick" if quick else "")
    if not quick and n_tokens != 100_000:
        cmd += f" --tokens {n_tokens}"
    res = Result(
        "tokens",
        f"Tokens: an import of {n_tokens:,} tokens, and Authorize with them stored",
        cmd,
        load=loadavg(),
    )
    rng = random.Random(13)
    text = token_csv(n_tokens, rng)
    types = {}
    for line in text.splitlines()[1:]:
        tag, token_type = line.split(",", 2)[:2]
        types[tag] = token_type
    with workdir("tokens") as root:
        csv_path = root / "tokens.csv"
        csv_path.write_text(text)
        srv = start_server(
            root / "serve", "--authorize", "known", "--max-rate", "0", env=hermetic_env(root)
        )
        try:
            for name in ("heartbeat", "authorize"):
                srv.create(f"bench-probe-{name}", protocol="ocpp1.6")
            for protocol in ("ocpp1.6", "ocpp2.0.1"):
                srv.create(f"bench-{protocol.replace('.', '')}", protocol=protocol)
            env = {**hermetic_env(root), "EDRV_API_URL": srv.api_url, "EDRV_TOKEN": srv.token}
            log(f"tokens: importing {n_tokens:,} tokens ({len(text) / 1e6:.1f} MB of CSV)")
            figures = asyncio.run(timed_import(srv, root, csv_path, env))
            log(f"tokens: imported in {figures['import_cli_s']:.2f} s; Authorize rounds")
            figures.update(asyncio.run(authorize_rounds(srv, n_tokens, requests, warm, rng, types)))
            figures["store_mib"] = srv.store.stat().st_size / 2**20
        finally:
            srv.stop()
    figures.update(tokens=n_tokens, requests=requests)
    res.load += f" -> {loadavg()}"
    res.figures = figures
    f = figures
    res.rows = [
        ("tokens imported (CSV)", f"{n_tokens:,} ({f['import_bytes'] / 1e6:.1f} MB)"),
        ("`edrvctl tokens import FILE.csv` (the CLI, start to exit)", f"{f['import_cli_s']:.2f} s"),
        ("... its answer", f["import_message"]),
        (
            "... server CPU / RSS growth",
            f"{f['import_server_cpu_s']:.2f} s / {f['import_rss_growth_mib']:.0f} MiB",
        ),
        (
            "same file again via POST /v1.1/tokens/import (all updates)",
            f"{f['reimport_api_s']:.2f} s",
        ),
        (
            "a station's Heartbeat during the import: p50 / slowest",
            f"{f['probe_p50_ms']:.1f} / {f['probe_max_ms']:.0f} ms",
        ),
        ("... during the re-import: slowest", f"{f['reprobe_max_ms']:.0f} ms"),
        (
            "a station's Authorize (reads the store) during the import / re-import: slowest",
            f"{f['auth_probe_max_ms']:.0f} / {f['auth_reprobe_max_ms']:.0f} ms",
        ),
        ("store file after", f"{f['store_mib']:.0f} MiB"),
    ]
    for key, name in (("16", "1.6"), ("201", "2.0.1")):
        res.rows += [
            (
                f"{name} Authorize of a stored token, p50 / p90 / p99",
                f"{f[f'auth_{key}_p50_ms']:.2f} / {f[f'auth_{key}_p90_ms']:.2f} / {f[f'auth_{key}_p99_ms']:.2f} ms",
            ),
            (
                f"{name} answers",
                ", ".join(f"{k} × {v}" for k, v in sorted(f[f"statuses_{key}"].items())),
            ),
            (
                f"{name} Heartbeat on the same connection, p50 (the floor)",
                f"{f[f'heartbeat_{key}_p50_ms']:.2f} ms",
            ),
            (
                f"{name} Authorize of an unknown id tag (event written), p50 / p99",
                f"{f[f'unknown_{key}_p50_ms']:.2f} / {f[f'unknown_{key}_p99_ms']:.2f} ms",
            ),
        ]
    res.checks = [
        (
            f"import of {n_tokens:,} tokens under 10 s: {f['import_cli_s']:.2f} s",
            f["import_cli_s"] < 10,
        ),
        (
            f"Authorize p50 under 2 ms with {n_tokens:,} tokens stored: "
            f"1.6 {f['auth_16_p50_ms']:.2f} ms, 2.0.1 {f['auth_201_p50_ms']:.2f} ms",
            max(f["auth_16_p50_ms"], f["auth_201_p50_ms"]) < 2,
        ),
    ]
    res.notes = [
        f"Authorize: {requests:,} requests per version after {warm} warm-up, one at a time, for "
        "random stored tokens (a raw OCPP-J websocket client in the bench process; the "
        "server in its own), each followed by a Heartbeat on the same connection.",
        "Tokens: TOK000000000.. of types ISO14443 (half), ISO15693, KeyCode, eMAID; 5% blocked, "
        "20% with an expiryDate, 30% in one of 500 groups, half in one of 20 organizations "
        "(the stations have none, so all are usable there).",
        "The import is one unit of work (all rows or none): the CSV is parsed in a thread, the "
        "rows are written 2,000 at a time with the event loop turning in between, so messages "
        "that read nothing (Heartbeat, pings) go on, and those that need the store wait for "
        "the import's commit (the two probes: a station each, one message at a time).",
    ]
    return res


def main(argv: list[str] | None = None) -> Result:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--tokens", type=int, default=None, metavar="N")
    ap.add_argument("--requests", type=int, default=None, metavar="N")
    a = ap.parse_args(argv)
    n = a.tokens or (1_000 if a.quick else 100_000)
    requests = a.requests or (50 if a.quick else 2_000)
    res = bench(n, requests, 10 if a.quick else 200, a.quick)
    print(res.markdown(), flush=True)
    return res


if __name__ == "__main__":
    main()
