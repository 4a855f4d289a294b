"""A fleet of simulated stations in a process of its own, for the benchmarks that need one.

    python bench/stations.py ws://127.0.0.1:9000 --count 10000 --status fleet.json \
        [--heartbeat 60] [--backoff-max 2] [--reboot-delay 1] \
        [--sessions --session-interval 60 --session-duration 120 --meter-interval 10]

Runs `edrvctl.simulator.run_fleet` until SIGTERM/SIGINT and rewrites the status file twice a
second: the fleet's `summary()` as JSON, plus `started` (the `time.monotonic()` at which
`run_fleet` was called; on Linux the same clock in every process) and `reboots` (resets the
stations carried out, all told). `--reboot-delay` is the simulator's "boot time" after a
Reset (its default, 1 s, unless given). With `--sessions` each station charges on connector 1
now and then (a pause of about --session-interval s, then a session of --session-duration s
sending MeterValues every --meter-interval s). Stations are named as
bench/cli.py's `seed()` names them (BENCH000000, BENCH000001, ...: prefix "BENCH0" and the
simulator's five digits from 0), so a seeded store knows them.

The stations skip the simulator's own schema validation (`validate=False`): the client process
shares the machine with the server, and what is measured is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

PREFIX, START = "BENCH0", 0  # -> BENCH000000, the names bench/cli.py's seed() writes


def endpoint(i: int) -> str:
    """The name of station i, in the simulator and in the seeded store alike."""
    return f"{PREFIX}{START + i:05d}"


def write_status(path: Path, status: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)  # readers never see half a file


async def main(a: argparse.Namespace) -> None:
    from edrvctl.simulator import run_fleet

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    fleet = await run_fleet(
        a.url,
        a.count,
        "ocpp1.6",
        prefix=PREFIX,
        start_index=START,
        heartbeat_interval_override=a.heartbeat,
        backoff_max=a.backoff_max,
        validate=False,
        **({} if a.reboot_delay is None else {"reboot_delay": a.reboot_delay}),
        sessions=a.sessions,
        session_interval=a.session_interval,
        session_duration=a.session_duration,
        meter_interval=a.meter_interval,
    )
    status = Path(a.status)
    try:
        while not stop.is_set():
            reboots = sum(st.stats.reboots for st in fleet.stations)
            write_status(
                status, {"started": started, "reboots": reboots, **fleet.summary().__dict__}
            )
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        await fleet.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--status", required=True, help="JSON file rewritten twice a second")
    ap.add_argument("--heartbeat", type=float, default=60, help="seconds between heartbeats")
    ap.add_argument("--backoff-max", type=float, default=2, help="reconnect backoff cap, s")
    ap.add_argument("--reboot-delay", type=float, help="s from a Reset to reconnecting")
    ap.add_argument("--sessions", action="store_true", help="charge now and then")
    ap.add_argument("--session-interval", type=float, default=60, help="s between sessions")
    ap.add_argument("--session-duration", type=float, default=120, help="s a session lasts")
    ap.add_argument("--meter-interval", type=float, default=10, help="s between MeterValues")
    asyncio.run(main(ap.parse_args()))
