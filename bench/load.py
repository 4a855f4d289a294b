"""A load generator: N raw-websocket stations, each sending OCPP 1.6 CALLs one at a time (as
OCPP-J allows) as fast as the server answers, for a fixed time.

    python bench/load.py ws://127.0.0.1:9000 --stations 100 --seconds 10 [--prefix BENCH] \
        [--first 0] [--interval 0] [--server-pid PID]

`--interval S` paces each station instead: one call every S seconds (the stations' schedules
spread at random over the first interval), a steady background load of stations/S calls/s.
`--first N` names the stations from index N (BENCH001000... with --first 1000). SIGTERM ends
the run early; the JSON is printed all the same, over the time actually measured.

Prints one JSON object: answered calls per second, latency percentiles, errors, and the CPU
used in the measured window by this process and (with --server-pid) by the server. Frames are
built once; the client does as little work as possible, so that the server is what is measured.
Raw frames instead of the simulator, because an ocpp ChargePoint per station would cost the
client more CPU than the server spends answering.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import time
from urllib.parse import quote

from websockets.asyncio.client import connect

NOW = "2026-01-01T00:00:00.000Z"
MIX = [  # (action, payload): Heartbeat, StatusNotification, MeterValues, as a station sends them
    ("Heartbeat", {}),
    (
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": NOW},
    ),
    (
        "MeterValues",
        {
            "connectorId": 1,
            "meterValue": [
                {
                    "timestamp": NOW,
                    "sampledValue": [
                        {
                            "value": "1234.5",
                            "measurand": "Energy.Active.Import.Register",
                            "unit": "Wh",
                        },
                        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
                    ],
                }
            ],
        },
    ),
    ("Heartbeat", {}),
]
BOOT = ("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "Load"})


def frame(mid: int, action: str, payload: dict) -> str:
    return json.dumps([2, str(mid), action, payload])


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process `pid`, or by this one."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    def __init__(self) -> None:
        self.connected = self.failed = self.errors = 0
        self.first_error: str | None = None
        self.latencies: list[float] = []
        self.go = asyncio.Event()
        self.stop_at = float("inf")
        self.stopped = False  # SIGTERM: stop now, report what was measured

    def stop(self) -> None:
        self.stopped = True
        self.stop_at = float("-inf")


async def station(
    url: str, endpoint: str, run: Run, handshakes: asyncio.Semaphore, interval: float = 0
) -> None:
    frames = [json.dumps([2, "ID", a, p]) for a, p in MIX]
    try:
        async with handshakes:  # bounded concurrent handshakes
            ws = await connect(
                f"{url}/{quote(endpoint)}",
                subprotocols=["ocpp1.6"],
                compression=None,
                open_timeout=120,
                ping_interval=None,
            )
        async with ws:
            await ws.send(frame(0, *BOOT))
            await ws.recv()
            run.connected += 1
            await run.go.wait()
            i = 0
            due = time.perf_counter() + random.uniform(0, interval)
            while True:
                if interval:  # paced: the next call at its time, not as soon as answered
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += interval
                if (now := time.perf_counter()) >= run.stop_at:
                    break
                i += 1
                await ws.send(frames[i % len(frames)].replace('"ID"', f'"{i}"', 1))
                reply = await ws.recv()
                run.latencies.append(time.perf_counter() - now)
                if not reply.startswith("[3,"):
                    run.errors += 1
    except Exception as e:
        run.failed += 1
        run.first_error = run.first_error or repr(e)


async def measure(
    url: str,
    n: int,
    seconds: float,
    prefix: str,
    warmup: float,
    server_pid: int | None = None,
    first: int = 0,
    interval: float = 0,
) -> dict:
    run = Run()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, run.stop)
    handshakes = asyncio.Semaphore(200)
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(station(url, f"{prefix}{first + i:06d}", run, handshakes, interval))
        for i in range(n)
    ]
    while run.connected + run.failed < n and not run.stopped:
        await asyncio.sleep(0.05)
    connect_s = time.perf_counter() - t0
    if not run.stopped:
        run.stop_at = time.perf_counter() + warmup + seconds
    run.go.set()
    with contextlib.suppress(TimeoutError):  # SIGTERM during the warm-up: nothing measured
        await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), warmup)
    run.latencies.clear()
    t1 = time.perf_counter()
    cpu0 = cpu_s(None), cpu_s(server_pid) if server_pid else 0.0
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t1
    client_cpu = cpu_s(None) - cpu0[0]
    server_cpu = cpu_s(server_pid) - cpu0[1] if server_pid else None
    lat = sorted(run.latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    return {
        "stations": n,
        "connected": run.connected,
        "failed": run.failed,
        "first_error": run.first_error,
        "errors": run.errors,
        "connect_s": round(connect_s, 2),
        "seconds": round(elapsed, 2),
        "calls": len(lat),
        "calls_per_s": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if server_pid and elapsed else None,
        "server_cpu_us_per_call": round(1e6 * server_cpu / len(lat), 1)
        if server_pid and lat
        else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--stations", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--prefix", default="BENCH")
    ap.add_argument("--first", type=int, default=0, help="index of the first station's name")
    ap.add_argument(
        "--interval", type=float, default=0, help="s between one station's calls (0: no pause)"
    )
    ap.add_argument("--server-pid", type=int, help="also report this process's CPU use")
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        json.dumps(
            asyncio.run(
                measure(
                    a.url.rstrip("/"),
                    a.stations,
                    a.seconds,
                    a.prefix,
                    a.warmup,
                    a.server_pid,
                    a.first,
                    a.interval,
                )
            )
        )
    )


if __name__ == "__main__":
    main()
