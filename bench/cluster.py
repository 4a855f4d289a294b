"""Three `edrvctl serve` nodes on one PostgreSQL behind HAProxy, on this machine (the harness of
tests/cluster_env.py: a private PostgreSQL, every process ours):

- command round trips (trigger_message, API -> station -> answer recorded) through a node that
  does NOT hold the station (routed through PostgreSQL) against one that does, at concurrency
  1 and 20, p50/p99;
- failover: a node killed with SIGKILL, the time until every one of its stations is online on
  the others, and until its in-flight commands have failed.

    python bench/cluster.py [--stations 300] [--commands 300] [--quick]

Prints a Markdown section (bench/RESULTS.md "Several nodes (issue 14)").
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import cluster_env  # noqa: E402  (tests/cluster_env.py)
from conftest import TOKEN, hermetic_env, start_server  # noqa: E402
from edrvctl.store import EventQuery  # noqa: E402
from run import NO_LIMITS, loadavg, log, machine, pct  # noqa: E402
from stored import read  # noqa: E402


def wait_for(cond, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if cond():
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def owners(c: cluster_env.Cluster) -> dict[str, str]:
    found: dict[str, str] = {}
    events = read(
        c.pg.url(),
        lambda tx: tx.list_events(EventQuery(types=("chargestation.online",), limit=None)),
    )
    for e in events:
        found[e["endpoint"]] = e["data"].get("node")
    return found


def round_trips(api_url: str, stations: list[str], concurrency: int) -> list[float]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as api:

        def one(station: str) -> float:
            started = time.perf_counter()
            r = api.post(
                f"/v1.1/chargestations/{station}/trigger_message",
                json={"requestedMessage": "Heartbeat"},
            )
            if r.status_code != 201:
                raise SystemExit(f"{station}: {r.status_code} {r.text[:200]}")
            return (time.perf_counter() - started) * 1000

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, stations))


def measure(api_url: str, stations: list[str], n: int, concurrency: int, label: str) -> tuple:
    picks = (stations * (n // max(1, len(stations)) + 1))[:n]
    ms = round_trips(api_url, picks, concurrency)
    row = (
        f"{label}, concurrency {concurrency}",
        len(ms),
        f"{pct(ms, 0.5):.1f}",
        f"{pct(ms, 0.99):.1f}",
    )
    log(f"{row}")
    return row


def baseline(root: Path, n: int, commands: int) -> list[tuple]:
    """The same round trips on one node alone on SQLite, in the same run."""
    server = start_server(root, "--no-files", *NO_LIMITS)
    sim = subprocess.Popen(
        [
            sys.executable, "-m", "edrvctl", "--api-url", server.api_url, "simulate", "-n",
            str(n), "--url", server.ocpp_url, "--create", "--prefix", "BA", "--heartbeat", "30",
        ],
        env={**hermetic_env(root), "EDRV_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        stations = [f"BA{i:05d}" for i in range(1, n + 1)]

        def online() -> bool:
            text = httpx.get(server.api_url + "/metrics", timeout=2).text
            lines = [ln for ln in text.splitlines() if ln.startswith("edrvctl_stations_online ")]
            return bool(lines) and int(float(lines[0].split()[1])) == n

        wait_for(online, 180, "the baseline's stations online")
        return [
            measure(server.api_url, stations, commands, c, "1 node alone (SQLite)") for c in (1, 20)
        ]
    finally:
        sim.terminate()
        sim.wait(30)
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stations", type=int, default=300)
    ap.add_argument("--commands", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.stations, args.commands = 30, 30
    why = cluster_env.available()
    if why:
        raise SystemExit(why)
    root = Path(__import__("tempfile").mkdtemp(prefix="edrv-cluster-bench-"))
    load_start = loadavg()
    rows = baseline(root / "alone", args.stations, args.commands)
    c = cluster_env.Cluster(root, 3)
    sim = None
    try:
        sim = subprocess.Popen(
            [
                sys.executable, "-m", "edrvctl", "--api-url", c.nodes["n1"].api_url,
                "simulate", "-n", str(args.stations), "--url", c.haproxy.url, "--create",
                "--prefix", "BC", "--heartbeat", "30",
            ],
            env={**hermetic_env(root), "EDRV_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=open(root / "simulate.log", "w"),  # noqa: SIM115
        )  # fmt: skip
        took = wait_for(
            lambda: sum(c.online().values()) == args.stations, 180, "every station online"
        )
        log(f"{args.stations} stations online through HAProxy in {took:.1f} s: {c.online()}")
        held = owners(c)
        mine = [ep for ep, node in held.items() if node == "n1"]
        theirs = [ep for ep, node in held.items() if node != "n1"]
        for concurrency in (1, 20):
            for label, stations in (("held by the node asked", mine), ("held elsewhere", theirs)):
                rows.append(
                    measure(
                        c.nodes["n1"].api_url,
                        stations,
                        args.commands,
                        concurrency,
                        f"3 nodes (PostgreSQL), {label}",
                    )
                )
        # failover: freeze the victim with commands on their way to it, then kill it
        counts = c.online()
        victim = "n3"
        victims = [ep for ep, node in held.items() if node == victim][:20]
        c.kill(victim, signal.SIGSTOP)
        with ThreadPoolExecutor(20) as pool:
            api = httpx.Client(
                base_url=c.nodes["n1"].api_url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
            )
            futures = [
                pool.submit(
                    api.post,
                    f"/v1.1/chargestations/{ep}/trigger_message",
                    json={"requestedMessage": "Heartbeat"},
                )
                for ep in victims
            ]
            time.sleep(0.5)
            c.kill(victim)
            killed = time.monotonic()
            codes = [f.result().status_code for f in futures]
            failed_after = time.monotonic() - killed
        wait_for(
            lambda: sum(c.online().values()) == args.stations,
            120,
            "the victim's stations back on the others",
        )
        back = time.monotonic() - killed
        log(f"failover: {counts[victim]} stations back in {back:.1f} s; commands {codes}")
        print(
            "\n".join(
                [
                    "## Several nodes (issue 14): 3 nodes, PostgreSQL, HAProxy",
                    "",
                    f"Command: `python bench/cluster.py --stations {args.stations} "
                    f"--commands {args.commands}`  ",
                    f"Machine: {machine()}; load average {load_start} -> {loadavg()} "
                    "(everything on it: PostgreSQL, HAProxy, 3 nodes, the simulator)",
                    "",
                    "| trigger_message (through n1 in the cluster) | commands | p50 ms | p99 ms |",
                    "|---|---:|---:|---:|",
                    *[f"| {' | '.join(str(x) for x in row)} |" for row in rows],
                    "",
                    f"- kill -9 of {victim} holding {counts[victim]} stations: every one online "
                    f"on the others {back:.1f} s after the kill; its {len(victims)} commands in "
                    f"flight ended {failed_after:.1f} s after it "
                    f"({', '.join(sorted(set(map(str, codes))))}).",
                ]
            )
        )
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(30)
        c.close()


if __name__ == "__main__":
    main()
