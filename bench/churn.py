"""Connection churn: stations that connect and drop in a tight loop, and stations that stop
answering pings, against one `edrvctl serve`; the server's RSS before and after.

    python bench/churn.py [--cycles 10000] [--parallel 20]

Each cycle opens a websocket as a created station, sends a Heartbeat on every other one, and
closes (half of them abruptly, without a closing handshake). Every 500th cycle also leaves a
station that never answers pings, to be dropped by the keepalive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_server


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def cycle(url: str, endpoint: str, i: int) -> None:
    ws = await connect(f"{url}/{endpoint}", subprotocols=["ocpp1.6"], ping_interval=None)
    if i % 2:
        await ws.send(json.dumps([2, str(i), "Heartbeat", {}]))
        await ws.recv()
    if i % 500 == 0:  # a station that goes silent: no pongs, no close
        ws.transport.pause_reading()
        asyncio.get_running_loop().call_later(3, ws.transport.abort)
    elif i % 4 < 2:
        ws.transport.abort()  # dropped, no closing handshake
    else:
        await ws.close()


async def churn(url: str, endpoints: list[str], cycles: int) -> int:
    failures = 0

    async def worker(ep: str, share: range):
        nonlocal failures
        for i in share:
            try:
                await cycle(url, ep, i)
            except Exception:
                failures += 1

    n = len(endpoints)
    await asyncio.gather(*(worker(ep, range(k, cycles, n)) for k, ep in enumerate(endpoints)))
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=20)
    a = ap.parse_args()
    srv = start_server(
        Path(tempfile.mkdtemp(prefix="edrvctl-churn-")),
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
        "--log-level",
        "warning",
    )
    try:
        endpoints = [srv.create()["endpoint"] for _ in range(a.parallel)]
        asyncio.run(churn(srv.ocpp_url, endpoints, 500))  # warm-up
        time.sleep(4)
        before = rss_kb(srv.proc.pid)
        t0 = time.perf_counter()
        failures = asyncio.run(churn(srv.ocpp_url, endpoints, a.cycles))
        took = time.perf_counter() - t0
        time.sleep(4)  # let keepalive drop the silent ones
        after = rss_kb(srv.proc.pid)
        with srv.api() as api:
            online = api.get("/v1.1/chargestations", params={"online": "true"}).json()["total"]
    finally:
        srv.stop()
    print(
        json.dumps(
            {
                "cycles": a.cycles,
                "parallel": a.parallel,
                "seconds": round(took, 1),
                "failures": failures,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "rss_growth_kb": after - before,
                "online_after": online,
            }
        )
    )


if __name__ == "__main__":
    main()
