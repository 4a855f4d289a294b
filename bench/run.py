"""The benchmark suite: runs one benchmark or all, and prints a Markdown section for each.

    python bench/run.py [held|throughput|csconfig|storm|cli|all] [--quick] [--profile DIR]

held        10,000 simulated stations against one `edrvctl serve`: time until all are online,
            server RSS per station, server CPU at idle
throughput  OCPP calls/s answered from 100 and from 1,000 stations (bench/load.py) by edrvctl,
            by the `bare` websockets ceiling and by the `ocpp` library (bench/baselines.py),
            in interleaved rounds; medians
csconfig    get_variables round trips (API -> station -> stored answer), 1,000 stations online
storm       5,000 stations online, the server SIGKILLed and restarted on the same store and
            ports: time until all are online again, and no record lost
cli         bench/cli.py: CLI start-up and list speed

Every server, load generator and fleet of simulated stations (bench/stations.py) is a process
of its own. `--quick` shrinks everything to tens of stations and a second or two (for
tests/test_bench_smoke.py). `--profile DIR` records the server with py-spy (raw format) during
each measured phase. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from cli import seed  # noqa: E402  (bench/cli.py)
from conftest import Server, start_server  # noqa: E402  (tests/conftest.py)
from stations import endpoint  # noqa: E402  (bench/stations.py)

PY = sys.executable
# Every simulated station comes from 127.0.0.1, and load.py's stations send as fast as they are
# answered: the per-address connection cap and the per-station rate limit are lifted, or they
# would be what is measured.
NO_LIMITS = ("--max-connections-per-address", "0", "--max-rate", "0")
HEARTBEAT = 60  # s, given by the server at boot and used by the simulator
PROFILE_DIR: Path | None = None


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the report


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def loadavg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


@dataclass
class Result:
    """One benchmark's outcome: figures for programs, a table and target checks for people."""

    name: str
    title: str
    command: str
    figures: dict = field(default_factory=dict)
    header: tuple[str, ...] = ("figure", "value")
    rows: list[tuple] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (target text, met)
    notes: list[str] = field(default_factory=list)
    load: str = ""  # load average at start -> end: how noisy the machine was

    def markdown(self) -> str:
        out = [
            f"## {self.title}",
            "",
            f"Command: `{self.command}`  ",
            f"Machine: {machine()}; load average {self.load} (1 min, start -> end)",
            "",
        ]
        out.append("| " + " | ".join(self.header) + " |")
        out.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|"
        )
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        out.append("")
        out += [f"- **{'met' if ok else 'MISSED'}**: {text}" for text, ok in self.checks]
        out += [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def command(name: str, quick: bool) -> str:
    return f"python bench/run.py {name}" + (" --quick" if quick else "")


def pct(values: list[float], p: float) -> float:
    """The p-quantile (nearest rank) of unsorted values."""
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


# --------------------------------------------------------------------------- processes


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def profiled(pid: int, label: str) -> Iterator[None]:
    """py-spy record of `pid` while the block runs, when --profile DIR was given."""
    if PROFILE_DIR is None:
        yield
        return
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{label}.txt"
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "100",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
        log(f"profile: {out}")


@contextlib.contextmanager
def edrvctl_server(root: Path, stations: int, *flags: str) -> Iterator[Server]:
    """`edrvctl serve` over a store seeded with BENCH000000... (unless it exists already)."""
    store = root / "store" / "edrvctl.db"
    if not store.exists():
        seed(store, stations)
    srv = start_server(
        root, *NO_LIMITS, "--heartbeat-interval", str(HEARTBEAT), *flags, store=store
    )
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop(timeout=60)


def online(api) -> int:
    r = api.get("/v1.1/chargestations", params={"online": "true", "paginate_limit": 1})
    r.raise_for_status()
    return r.json()["total"]


class FleetProcess:
    """bench/stations.py in a process of its own; `status()` is its last summary."""

    def __init__(self, url: str, count: int, root: Path, backoff_max: float = 2):
        self.status_file = root / f"fleet-{time.monotonic_ns()}.json"
        # the fleet's stderr for as long as it runs; closed by close()
        self.err = open(root / f"fleet-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PY,
                str(HERE / "stations.py"),
                url,
                "--count",
                str(count),
                "--status",
                str(self.status_file),
                "--heartbeat",
                str(HEARTBEAT),
                "--backoff-max",
                str(backoff_max),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the fleet exited: {Path(self.err.name).read_text()[-2000:]}"
                ) from None
            return {}

    def started(self) -> float:
        """`time.monotonic()` at which the fleet began connecting."""
        while "started" not in (s := self.status()):
            time.sleep(0.05)
        return s["started"]

    def close(self) -> None:
        stop_process(self.proc, timeout=120)
        self.err.close()

    def __enter__(self) -> FleetProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def all_online(api, fleet: FleetProcess, n: int, timeout: float) -> float | None:
    """Seconds from the fleet's start until the API counts n stations online (None: timeout)."""
    started = fleet.started()
    if not wait_for(lambda: online(api) >= n, timeout):
        return None
    return time.monotonic() - started


def all_booted(fleet: FleetProcess, n: int, timeout: float) -> bool:
    return wait_for(lambda: fleet.status().get("booted", 0) >= n, timeout)


def require_fleet(api, fleet: FleetProcess, n: int, what: str, timeout: float = 600) -> None:
    """Wait until all n stations are online and booted, or fail the benchmark."""
    if all_online(api, fleet, n, timeout) is None or not all_booted(fleet, n, timeout):
        raise RuntimeError(f"{what}: the {n} stations did not all come online")


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=f"edrvctl-bench-{name}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- 1. stations held


def bench_held(quick: bool = False) -> Result:
    n, idle_s, timeout = (50, 0.5, 60) if quick else (10_000, 10.0, 600)
    res = Result(
        "held",
        f"Stations held: {n:,} simulated stations on one server",
        command("held", quick),
        load=loadavg(),
    )
    with workdir("held") as root, edrvctl_server(root, n) as srv, srv.api() as api:
        pid = srv.proc.pid
        online(api)  # the API's first request, before the baseline
        rss0, cpu0 = rss_kib(pid), cpu_s(pid)
        log(f"held: server RSS {rss0} KiB before connecting; starting {n} stations")
        with FleetProcess(srv.ocpp_url, n, root) as fleet:
            with profiled(pid, "held-connect"):
                online_s = all_online(api, fleet, n, timeout)
                booted = all_booted(fleet, n, timeout)
            ramp_end = time.monotonic()
            ramp_cpu = cpu_s(pid) - cpu0
            ramp_client_cpu = cpu_s(fleet.proc.pid)
            booted_s = ramp_end - fleet.started()
            got = online(api)
            log(f"held: {got}/{n} online after {online_s} s, booted: {booted}; settling")
            time.sleep(0.5 if quick else 5)
            rss1 = rss_kib(pid)
            with profiled(pid, "held-idle"):
                c0, t0 = cpu_s(pid), time.monotonic()
                time.sleep(idle_s)
                idle_pct = 100 * (cpu_s(pid) - c0) / (time.monotonic() - t0)
            still = online(api)
            fleet_status = fleet.status()
    per_station = (rss1 - rss0) / n
    res.figures = {
        "stations": n,
        "online": got,
        "online_s": online_s,
        "booted": booted,
        "booted_s": booted_s,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_station_kib": per_station,
        "idle_cpu_pct": idle_pct,
        "online_after_idle": still,
        "server_cpu_s_connecting": ramp_cpu,
        "client_cpu_s_connecting": ramp_client_cpu,
    }
    res.rows = [
        ("stations online (API count)", f"{got:,} / {n:,}"),
        ("time until all online", "not reached" if online_s is None else f"{online_s:.1f} s"),
        ("time until all booted (+ StatusNotifications sent)", f"{booted_s:.1f} s"),
        (
            "server CPU time while connecting (its % of that time)",
            f"{ramp_cpu:.1f} s ({100 * ramp_cpu / booted_s:.0f}%)",
        ),
        ("simulator CPU time while connecting", f"{ramp_client_cpu:.1f} s"),
        ("server RSS before / with all connected", f"{rss0 / 1024:.1f} / {rss1 / 1024:.1f} MiB"),
        ("server RSS per station", f"{per_station:.1f} KiB"),
        (f"server CPU at idle ({idle_s:g} s, heartbeat {HEARTBEAT} s)", f"{idle_pct:.1f}%"),
        ("online after the idle period", f"{still:,}"),
        (
            "simulator reconnects / errors",
            f"{fleet_status.get('reconnects')} / {fleet_status.get('errors')}",
        ),
    ]
    res.notes = [
        "Times run from the moment the simulator process starts its fleet (run_fleet, at most "
        "200 handshakes at a time); online is counted through the API every 0.25 s. The "
        "simulator shares the machine's cores with the server, and uses about as much CPU.",
        "RSS per station = (VmRSS once all are booted, after a pause - VmRSS before the "
        "first connection) / stations; idle CPU = utime+stime over the idle window.",
    ]
    res.checks = [
        (
            f"all {n:,} online within 30 s: "
            + ("not all came online" if online_s is None else f"{online_s:.1f} s"),
            online_s is not None and online_s <= 30,
        ),
        (f"at most 25 KB of server RSS per station: {per_station:.1f} KiB", per_station <= 25),
    ]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 2. throughput


@contextlib.contextmanager
def reference_server(kind: str, template: Path) -> Iterator[tuple[str, int, Path | None]]:
    """(ocpp URL, pid, store) of a fresh server: bench/baselines.py bare|ocpp (no store), or
    edrvctl over a copy of the seeded template store."""
    if kind == "edrvctl":
        with workdir("throughput-edrvctl") as root:
            (root / "store").mkdir()
            shutil.copy(template, root / "store" / "edrvctl.db")
            with edrvctl_server(root, 0) as srv:
                yield srv.ocpp_url, srv.proc.pid, srv.store
        return
    port = free_port()
    proc = subprocess.Popen(
        [PY, str(HERE / "baselines.py"), kind, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"baselines.py {kind} did not start")
        yield f"ws://127.0.0.1:{port}", proc.pid, None
    finally:
        stop_process(proc)


def run_load(url: str, stations: int, seconds: float, warmup: float, server_pid: int) -> dict:
    out = subprocess.run(
        [
            PY,
            str(HERE / "load.py"),
            url,
            "--stations",
            str(stations),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
            "--server-pid",
            str(server_pid),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stored_meter_values(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM meter_values").fetchone()[0]


def bench_throughput(quick: bool = False) -> Result:
    sizes, rounds, seconds, warmup = ((20, 50), 1, 0.3, 0.1) if quick else ((100, 1000), 3, 10, 1)
    kinds = ("bare", "ocpp", "edrvctl")
    res = Result(
        "throughput",
        "Message throughput: Heartbeat/StatusNotification/MeterValues as fast as answered",
        command("throughput", quick),
        load=loadavg(),
        header=(
            "server",
            "stations",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/call",
            "server CPU",
            "load generator CPU",
            "calls/s of each round",
            "failed / errors",
        ),
    )
    runs: dict[tuple[str, int], list[dict]] = {(k, n): [] for k in kinds for n in sizes}
    persisted = []  # (MeterValues rows stored, calls answered) per edrvctl run
    with workdir("throughput") as root:
        template = root / "template.db"
        seed(template, max(sizes))
        for r in range(rounds):
            for kind in kinds:
                with reference_server(kind, template) as (url, pid, store):
                    for n in sizes:
                        before = stored_meter_values(store) if store else 0
                        with profiled(pid, f"throughput-{kind}-{n}-round{r + 1}"):
                            out = run_load(url, n, seconds, warmup, pid)
                        if store:
                            persisted.append((stored_meter_values(store) - before, out["calls"]))
                        runs[(kind, n)].append(out)
                        log(
                            f"throughput round {r + 1}: {kind} {n} stations: "
                            f"{out['calls_per_s']:.0f} calls/s, p99 {out['p99_ms']} ms"
                        )

    def med(kind: str, n: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[(kind, n)])

    for n in sizes:
        for kind in kinds:
            rs = runs[(kind, n)]
            res.rows.append(
                (
                    kind,
                    n,
                    f"{med(kind, n, 'calls_per_s'):,.0f}",
                    med(kind, n, "p50_ms"),
                    med(kind, n, "p99_ms"),
                    f"{med(kind, n, 'server_cpu_us_per_call'):.0f}",
                    f"{med(kind, n, 'server_cpu_pct'):.0f}%",
                    f"{med(kind, n, 'client_cpu_pct'):.0f}%",
                    ", ".join(f"{x['calls_per_s']:.0f}" for x in rs),
                    f"{sum(x['failed'] for x in rs)} / {sum(x['errors'] for x in rs)}",
                )
            )
            for key in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_call"):
                res.figures[f"{kind}_{n}_{key}"] = med(kind, n, key)
        ratio = med("edrvctl", n, "calls_per_s") / med("bare", n, "calls_per_s")
        gain = med("edrvctl", n, "calls_per_s") / med("ocpp", n, "calls_per_s")
        res.figures[f"ratio_{n}"], res.figures[f"gain_over_ocpp_{n}"] = ratio, gain
        cost = med("edrvctl", n, "server_cpu_us_per_call") / med(
            "bare", n, "server_cpu_us_per_call"
        )
        res.checks.append(
            (
                f"{n} stations: edrvctl = {100 * ratio:.0f}% of the bare ceiling "
                f"(target >= 60%), p99 {med('edrvctl', n, 'p99_ms')} ms; "
                f"{gain:.2f}x the ocpp library's rate; server CPU per call "
                f"{cost:.1f}x bare's",
                ratio >= 0.6,
            )
        )
    rows, calls = sum(p[0] for p in persisted), sum(p[1] for p in persisted)
    res.figures["edrvctl_meter_values_stored"] = rows
    res.notes = [
        f"{rounds} round(s), each bare -> ocpp -> edrvctl, a fresh server per round; each run "
        f"{warmup:g} s warm-up + {seconds:g} s measured (bench/load.py); medians over rounds. "
        "CPU columns: share of one core used in the measured window (/proc/PID/stat); "
        "µs/call = server CPU time / calls answered, which the machine's noise barely moves.",
        f"Persisted: edrvctl stored {rows:,} MeterValues rows for {calls:,} answered calls "
        f"(MeterValues are 1/4 of the mix; warm-up calls are stored too).",
        "edrvctl runs with " + " ".join(NO_LIMITS) + ": one client address, and stations that "
        "send as fast as answered (the default 50 msg/s per station would be what is measured).",
    ]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 3. csconfig


def bench_csconfig(quick: bool = False) -> Result:
    n, requests, warm = (50, 30, 5) if quick else (1000, 300, 20)
    res = Result(
        "csconfig",
        f"csconfig round trip: get_variables with {n:,} stations connected",
        command("csconfig", quick),
        load=loadavg(),
    )
    rng = random.Random(1)
    with (
        workdir("csconfig") as root,
        edrvctl_server(root, n) as srv,
        srv.api() as api,
        FleetProcess(srv.ocpp_url, n, root) as fleet,
    ):
        require_fleet(api, fleet, n, "csconfig")
        log(f"csconfig: {n} online; {requests} requests")
        latencies, errors = [], []
        with profiled(srv.proc.pid, "csconfig"):
            for i in range(warm + requests):
                path = f"/v1.1/chargestations/{endpoint(rng.randrange(n))}/get_variables"
                t0 = time.perf_counter()
                r = api.post(path)  # empty body: everything, 1.6 GetConfiguration
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code != 201 or not r.json()["result"]["csconfig"]:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                if i >= warm:
                    latencies.append(dt)
        stored = api.get(f"/v1.1/chargestations/{path.split('/')[3]}").json()["result"]
    p50, p90, p99 = (pct(latencies, p) for p in (0.5, 0.9, 0.99))
    res.figures = {
        "stations": n,
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max(latencies),
        "mean_ms": statistics.mean(latencies),
        "stored_entries": len(stored.get("csconfig") or []),
    }
    res.rows = [
        ("requests (after warm-up)", f"{len(latencies)} (+{warm})"),
        ("errors", len(errors)),
        ("p50 / p90 / p99 / max", f"{p50:.1f} / {p90:.1f} / {p99:.1f} / {max(latencies):.1f} ms"),
        ("mean", f"{statistics.mean(latencies):.1f} ms"),
        ("stored csconfig entries (last station)", len(stored.get("csconfig") or [])),
    ]
    res.checks = [
        (f"p50 under 20 ms: {p50:.1f} ms", p50 < 20),
        (f"p99 under 100 ms: {p99:.1f} ms", p99 < 100),
        (f"every request answered 201 with a csconfig: {len(errors)} errors", not errors),
    ]
    res.notes = [
        "Sequential POST /v1.1/chargestations/{endpoint}/get_variables (empty body) "
        "to random connected stations over one kept-alive httpx client; "
        f"the first {warm} are warm-up."
    ] + [f"error: {e}" for e in errors[:3]]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 4. reconnect storm


def station_ids(api) -> set[str]:
    r = api.get("/v1.1/chargestations", params={"paginate_enabled": "false"})
    r.raise_for_status()
    return {d["_id"] for d in r.json()["result"]}


def bench_storm(quick: bool = False) -> Result:
    n, timeout = (50, 60) if quick else (5000, 600)
    res = Result(
        "storm",
        f"Reconnect storm: {n:,} stations, server SIGKILLed and restarted",
        command("storm", quick),
        load=loadavg(),
    )
    ports = ("--api-port", str(free_port()), "--ocpp-port", str(free_port()))
    with (
        workdir("storm") as root,
        edrvctl_server(root, n, *ports) as srv,
        FleetProcess(srv.ocpp_url, n, root, backoff_max=2) as fleet,
    ):
        with srv.api() as api:
            require_fleet(api, fleet, n, "storm", timeout)
            before = station_ids(api)
        log(f"storm: {n} online; SIGKILL")
        srv.proc.kill()
        killed = time.monotonic()
        srv.proc.wait()
        with edrvctl_server(root, n, *ports) as srv2, srv2.api() as api2:
            ready = time.monotonic() - killed
            with profiled(srv2.proc.pid, "storm-reconnect"):
                ok = wait_for(lambda: online(api2) >= n, timeout)
            back_s = time.monotonic() - killed if ok else None
            got = online(api2)
            after = station_ids(api2)
            with contextlib.closing(sqlite3.connect(f"file:{srv2.store}?mode=ro", uri=True)) as db:
                integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        status = fleet.status()
    lost = len(before - after)
    res.figures = {
        "stations": n,
        "online_again": got,
        "back_online_s": back_s,
        "server_ready_s": ready,
        "before": len(before),
        "after": len(after),
        "lost": lost,
        "integrity": integrity,
        "reconnects": status.get("reconnects"),
    }
    res.rows = [
        ("stations online before the kill", f"{len(before):,}"),
        ("server restarted and listening, after the kill", f"{ready:.1f} s"),
        (
            "all online again, after the kill",
            "not reached" if back_s is None else f"{back_s:.1f} s",
        ),
        ("online again (API count)", f"{got:,} / {n:,}"),
        ("stations stored before / after", f"{len(before):,} / {len(after):,}"),
        ("records lost (ids before, not after)", lost),
        ("PRAGMA integrity_check", integrity),
        ("simulator reconnects", status.get("reconnects")),
    ]
    res.checks = [
        (
            "all online again: " + ("no" if back_s is None else f"{back_s:.1f} s after the kill"),
            back_s is not None,
        ),
        (
            f"no record lost: {len(before):,} before, {len(after):,} after, {lost} missing",
            lost == 0 and len(before) == len(after) == n,
        ),
        (f"integrity_check: {integrity}", integrity == "ok"),
    ]
    res.notes = [
        f"Same store and fixed ports ({' '.join(ports)}); simulator backoff capped "
        "at 2 s (jittered 0.5-1x)."
    ]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 5. CLI


def bench_cli(quick: bool = False) -> Result:
    runs, n = (1, 50) if quick else (15, 10000)
    res = Result(
        "cli",
        "CLI start-up and list (bench/cli.py)",
        command("cli", quick),
        load=loadavg(),
        header=("command", "median ms"),
    )
    out = subprocess.run(
        [PY, str(HERE / "cli.py"), "--runs", str(runs), "--stations", str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[1].replace(".", "").isdigit():
            res.rows.append(tuple(cells))
            res.figures[cells[0]] = float(cells[1])
        elif line.startswith("- met: ") or line.startswith("- MISSED: "):
            met, _, text = line[2:].partition(": ")
            res.checks.append((text, met == "met"))
        elif line.startswith("machine:"):
            res.notes.append(line)
    res.load += f" -> {loadavg()}"
    return res


BENCHMARKS: dict[str, Callable[..., Result]] = {
    "held": bench_held,
    "throughput": bench_throughput,
    "csconfig": bench_csconfig,
    "storm": bench_storm,
    "cli": bench_cli,
}


def main(argv: list[str] | None = None) -> list[Result]:
    global PROFILE_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", nargs="?", default="all", choices=[*BENCHMARKS, "all"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke tests")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the server into DIR during each measured phase",
    )
    a = ap.parse_args(argv)
    PROFILE_DIR = a.profile
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    names = list(BENCHMARKS) if a.which == "all" else [a.which]
    results = []
    for name in names:
        log(f"{name} ...")
        t0 = time.monotonic()
        results.append(BENCHMARKS[name](quick=a.quick))
        print(results[-1].markdown(), flush=True)
        log(f"{name} done in {time.monotonic() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
