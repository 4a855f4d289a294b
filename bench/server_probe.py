"""Inside the server while a fleet connects: garbage-collector time, and (--tracemalloc) which
source lines hold the memory of each connected station.

    python bench/server_probe.py [--stations 10000] [--tracemalloc] [--no-gc]

Runs `edrvctl.server.serve()` in this process (the same code as `edrvctl serve`, without the
CLI), over a store seeded as bench/run.py seeds it, with bench/stations.py's fleet in another
process. --no-gc disables the cyclic collector, to measure what it costs. tracemalloc slows the
server several times over: with it, look at the bytes, not at the times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path

from run import FleetProcess, log, rss_kib, seed, workdir  # bench/run.py


class GcClock:
    """Count and time the collector's runs, per generation."""

    def __init__(self) -> None:
        self.runs = {g: [0, 0.0, 0.0] for g in (0, 1, 2)}  # count, total s, longest s
        self._t0 = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        r = self.runs[info["generation"]]
        r[0], r[1], r[2] = r[0] + 1, r[1] + took, max(r[2], took)

    def report(self) -> str:
        return "\n".join(
            f"  gen{g}: {n} collections, {total:.2f} s, longest {1000 * m:.0f} ms"
            for g, (n, total, m) in self.runs.items()
        )


def top_lines(before, after, n: int, stations: int) -> str:
    site = "/site-packages/"
    lines = []
    for d in after.compare_to(before, "lineno")[:n]:
        where = str(d.traceback[0]).split(site)[-1]
        lines.append(
            f"  {d.size_diff / stations:7.0f} B  {d.count_diff / stations:5.1f} objects  {where}"
        )
    return "\n".join(lines)


async def probe(a: argparse.Namespace, root: Path) -> None:
    from edrvctl.server import ServeConfig, serve
    from edrvctl.server.listener import ListenerSettings
    from edrvctl.server.logs import setup_logging

    store = root / "store" / "edrvctl.db"
    seed(store, a.stations)
    os.environ.update(EDRV_TOKEN="probe-token-0123456789", XDG_DATA_HOME=str(root / "data"))
    setup_logging("WARNING", "text")
    cfg = ServeConfig(
        store=store,
        api_port=0,
        heartbeat_interval=60,
        listener=ListenerSettings(host="127.0.0.1", port=0, max_per_address=0, max_rate=0),
    )
    ready: dict = {}
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cfg, on_ready=ready.update, stop=stop))
    while not ready:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    if a.tracemalloc:
        import tracemalloc

        tracemalloc.start()
        before = tracemalloc.take_snapshot()
    if a.no_gc:
        gc.disable()
    clock = GcClock()
    rss0, cpu0 = rss_kib(os.getpid()), time.process_time()
    with FleetProcess(ready["ocpp_url"], a.stations, root) as fleet:
        while fleet.status().get("booted", 0) < a.stations:
            await asyncio.sleep(0.25)
        booted_s = time.monotonic() - fleet.started()
        cpu = time.process_time() - cpu0
        await asyncio.sleep(2)
        print(
            f"{a.stations} stations booted in {booted_s:.1f} s; server CPU {cpu:.1f} s; "
            f"RSS +{(rss_kib(os.getpid()) - rss0) / a.stations:.1f} KiB per station; "
            f"{len(gc.get_objects()):,} objects tracked by the collector"
        )
        print("collector while connecting" + (" (disabled)" if a.no_gc else "") + ":")
        print(clock.report())
        if a.tracemalloc:
            gc.collect()
            after = tracemalloc.take_snapshot()
            total = sum(d.size_diff for d in after.compare_to(before, "filename"))
            print(f"Python heap per station: {total / a.stations / 1024:.1f} KiB; by line:")
            print(top_lines(before, after, a.top, a.stations))
    stop.set()
    await server


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stations", type=int, default=10000)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--no-gc", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    with workdir("probe") as tmp:
        log(f"probe: {args.stations} stations")
        asyncio.run(probe(args, tmp))
    sys.exit(0)
