"""One node on PostgreSQL against one node on SQLite, side by side in one run.

    python bench/store.py [--quick] [--rounds N] [--held N]

Throughput: for each round, a fresh server on each backend (a SQLite file; a fresh PostgreSQL
database on 127.0.0.1:5432, tests/pg.py) seeded with 1,000 stations, loaded by bench/load.py
from 100 and then 1,000 stations (Heartbeat/StatusNotification/MeterValues as fast as
answered): calls/s, latency, the server's CPU per call, and PostgreSQL's (its backends for the
database, and its background processes: the WAL writer's flushes are the commits' cost).
Held: `--held N` stations (bench/stations.py) connected and idle, the server's RSS per station.
Prints a markdown section for bench/RESULTS.md. Target (issue 14): PostgreSQL's calls/s at
least half of SQLite's at both sizes; RSS per idle station unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from run import (  # bench/run.py (it puts tests/ on sys.path)
    HEARTBEAT,
    NO_LIMITS,
    FleetProcess,
    cpu_s,
    hermetic_env,
    loadavg,
    log,
    machine,
    online,
    require_fleet,
    rss_kib,
    run_load,
    start_server,
    workdir,
)

# isort: split
import pg  # tests/pg.py (on sys.path once run is imported): a fresh database

SIZES = (100, 1000)
BACKENDS = ("sqlite", "postgresql")


@contextlib.contextmanager
def store_of(kind: str, root: Path, stations: int) -> Iterator[Path | str]:
    """A new store of this kind, seeded with BENCH000000...; a database is dropped after."""
    from cli import seed  # bench/cli.py

    if kind == "sqlite":
        path = root / "store" / "edrvctl.db"
        path.parent.mkdir(parents=True)
        seed(path, stations)
        yield path
        return
    with pg.database() as url:
        seed(url, stations)
        yield url


async def _pg_pids(url: str) -> list[int]:
    import asyncpg

    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            "SELECT pid FROM pg_stat_activity WHERE (datname = current_database() "
            "OR datname IS NULL) AND pid <> pg_backend_pid()"
        )
        return [r[0] for r in rows]
    finally:
        await con.close()


def pg_cpu(url: str | None) -> float:
    """CPU seconds used so far by PostgreSQL for this database (0 for SQLite)."""
    if url is None:
        return 0.0
    total = 0.0
    for pid in asyncio.run(_pg_pids(url)):
        with contextlib.suppress(OSError):
            total += cpu_s(pid)
    return total


def throughput(rounds: int, seconds: float, warmup: float) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {(k, n): [] for k in BACKENDS for n in SIZES}
    for r in range(rounds):
        for kind in BACKENDS:
            with workdir(f"store-{kind}") as root, store_of(kind, root, max(SIZES)) as store:
                srv = start_server(
                    root,
                    *NO_LIMITS,
                    "--heartbeat-interval",
                    str(HEARTBEAT),
                    store=store,
                    env=hermetic_env(root),
                )
                url = store if isinstance(store, str) else None
                try:
                    for n in SIZES:
                        # (PostgreSQL's backends for this server: those connected by now)
                        pg0 = pg_cpu(url)
                        out = run_load(srv.ocpp_url, n, seconds, warmup, srv.proc.pid)
                        pg_used = pg_cpu(url) - pg0
                        out["pg_cpu_us_per_call"] = 1e6 * pg_used / max(1, out["calls"])
                        runs[(kind, n)].append(out)
                        log(
                            f"store round {r + 1}: {kind} {n} stations: "
                            f"{out['calls_per_s']:.0f} calls/s, p99 {out['p99_ms']} ms, server "
                            f"{out['server_cpu_us_per_call']} µs/call, PostgreSQL "
                            f"{out['pg_cpu_us_per_call']:.0f} µs/call"
                        )
                finally:
                    srv.stop(timeout=60)
    return runs


def held(n: int) -> dict[str, float]:
    """KiB of server RSS per idle connected station, on each backend."""
    per: dict[str, float] = {}
    for kind in BACKENDS:
        with workdir(f"store-held-{kind}") as root, store_of(kind, root, n) as store:
            srv = start_server(
                root,
                "--max-connections-per-address",
                "0",
                "--heartbeat-interval",
                str(HEARTBEAT),
                store=store,
                env=hermetic_env(root),
            )
            try:
                with srv.api() as api:
                    online(api)
                    time.sleep(1)
                    rss0 = rss_kib(srv.proc.pid)
                    with FleetProcess(srv.ocpp_url, n, root) as fleet:
                        require_fleet(api, fleet, n, f"held {kind}")
                        time.sleep(5)
                        rss1 = rss_kib(srv.proc.pid)
                per[kind] = (rss1 - rss0) / n
                log(f"store held: {kind}: {rss0} -> {rss1} KiB for {n} stations")
            finally:
                srv.stop(timeout=60)
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s; 200 held stations")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--held", type=int, default=2000, help="idle stations held (0: skip)")
    a = ap.parse_args()
    rounds, seconds, warmup = (1, 3.0, 2.0) if a.quick else (a.rounds, 10.0, 3.0)
    n_held = 200 if a.quick else a.held
    load0 = loadavg()
    runs = throughput(rounds, seconds, warmup)
    rss = held(n_held) if n_held else {}

    def med(kind: str, n: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[(kind, n)])

    cmd = "python bench/store.py" + (" --quick" if a.quick else f" --rounds {rounds}")
    print(f"\n## Single node: PostgreSQL vs SQLite ({time.strftime('%Y-%m-%d')})\n")
    print(f"`{cmd}` on {machine()}; load {load0} -> {loadavg()}.\n")
    print(
        "| store | stations | calls/s | p50 ms | p99 ms | server CPU µs/call | "
        "PostgreSQL CPU µs/call | calls/s of each round | failed / errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in SIZES:
        for kind in BACKENDS:
            rs = runs[(kind, n)]
            each = ", ".join(f"{x['calls_per_s']:.0f}" for x in rs)
            print(
                f"| {kind} | {n} | {med(kind, n, 'calls_per_s'):,.0f} | "
                f"{med(kind, n, 'p50_ms')} | {med(kind, n, 'p99_ms')} | "
                f"{med(kind, n, 'server_cpu_us_per_call'):.0f} | "
                + (f"{med(kind, n, 'pg_cpu_us_per_call'):.0f}" if kind != "sqlite" else "-")
                + f" | {each} | "
                f"{sum(x['failed'] for x in rs)} / {sum(x['errors'] for x in rs)} |"
            )
    print()
    for n in SIZES:
        ratio = med("postgresql", n, "calls_per_s") / med("sqlite", n, "calls_per_s")
        print(
            f"- {n} stations: PostgreSQL {100 * ratio:.0f}% of SQLite's calls/s (target >= 50%): "
            + ("ok" if ratio >= 0.5 else "MISSED")
        )
    if rss:
        print(
            f"- RSS per idle station ({n_held} held): "
            + ", ".join(f"{k} {v:.1f} KiB" for k, v in rss.items())
        )
    print(
        f"\n{rounds} round(s), each a fresh server per backend (1,000 stations seeded); each "
        f"run {warmup:g} s warm-up + {seconds:g} s measured (bench/load.py), medians. The "
        "server, PostgreSQL and the load generator share the machine's cores."
    )


if __name__ == "__main__":
    sys.exit(main())
