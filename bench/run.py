"""The benchmark suite: runs one benchmark or all, and prints a Markdown section for each.

    python bench/run.py [held|throughput|csconfig|storm|cli|commands|retention|peers|all]
                        [--quick] [--profile DIR] [--before REV] [--frame-log] [--rounds N]
                        [--seconds S]

held        10,000 simulated stations against one `edrvctl serve`: time until all are online,
            server RSS per station, server CPU at idle
throughput  OCPP calls/s answered from 100 and from 1,000 stations (bench/load.py) by edrvctl,
            by the `bare` websockets ceiling and by the `ocpp` library (bench/baselines.py),
            in interleaved rounds; medians
csconfig    get_variables round trips (API -> station -> stored answer), 1,000 stations online
storm       5,000 stations online, the server SIGKILLed and restarted on the same store and
            ports: time until all are online again, and no record lost
cli         bench/cli.py: CLI start-up and list speed
commands    trigger_message round trips (API -> station -> answer) to 1,000 connected stations
            while 1,000 others send a steady paced load; then a reset of the 1,000 with at
            most 100 in flight, until every one has booted again
starved     the admin API (GET a station, get_variables to a simulated one) while 1,000
            load-generator stations (--loadgen: the C one) saturate the server: p50/p99
retention   1,000 stations for 10 minutes, a Heartbeat and MeterValues every 10 s each, on a
            server keeping events, meter values and Actions 2 minutes: the store's size every
            30 s (it levels off), rows pruned, the longest pruning batch, the API's latency
peers       calls/s, server CPU per call and latency from 100 and from 1,000 stations, measured
            by a C load generator (bench/loadgen.c) in interleaved rounds: edrvctl (on uvloop when
            installed), edrvctl on the asyncio loop, edrvctl at --before REV, a Node.js central system on ocpp-rpc with strict
            validation with and without edrvctl's SQLite writes (bench/peers/, npm ci on
            demand), and a C echo (bench/echo.c), the machine's limit; the ratios issue 15 asks
            for. The C programs are built with cc -O2 and the npm packages installed into
            ~/.cache/edrvctl-bench/ ($XDG_CACHE_HOME); without node the Node rows are left out.

Every server, load generator and fleet of simulated stations (bench/stations.py) is a process
of its own. `--quick` shrinks everything to tens of stations and a second or two (for
tests/test_bench_smoke.py). `--profile DIR` records the server with py-spy (raw format) during
each measured phase. Progress goes to stderr, the report to stdout.

`--before REV` (a git revision: main~5, a hash) compares two versions in one run: REV's
edrvctl/ is exported (git archive) into a temporary directory, and held, throughput and
csconfig (and peers) also measure `edrvctl serve` started from it ("edrvctl@<short hash>", before) beside
the package this script imports (after), one after the other in every round; the tables get a
column or row per version and the change after / before. Only the servers differ: the
simulated stations and load.py are the same for both, from this tree.

`throughput --frame-log` measures the cost of the frame log: this tree's `edrvctl serve` with
`--frame-log off` and with `--frame-log all`, one after the other in every round (no bare or
ocpp server), and checks that logging every frame keeps at least 85% of the calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.util
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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from conftest import Server, hermetic_env, start_server  # noqa: E402  (tests/conftest.py)
from stations import endpoint  # noqa: E402  (bench/stations.py)

PY = sys.executable
# Every simulated station comes from 127.0.0.1, and load.py's stations send as fast as they are
# answered: the per-address connection cap and the per-station rate limit are lifted, or they
# would be what is measured.
NO_LIMITS = ("--max-connections-per-address", "0", "--max-rate", "0")
HEARTBEAT = 60  # s, given by the server at boot and used by the simulator
PROFILE_DIR: Path | None = None
LOADGEN: Path | None = None  # --loadgen: a C load generator instead of bench/load.py
BUILT = Path("(bench/loadgen.c)")  # --loadgen without a BIN
# What the new OCPP runtime must keep (checked with --before, on the "after" server): calls/s
# as a share of the bare ceiling no lower than before's, and these.
RSS_TARGET = 23  # KiB of server RSS per idle station
P50_TARGET = 10  # ms, csconfig round trip p50 with 1,000 stations connected


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
    versions: str = ""  # with --before: which code is before, which after

    def markdown(self) -> str:
        out = [f"## {self.title}", "", f"Command: `{self.command}`  "]
        if self.versions:
            out.append(f"Versions: {self.versions}  ")
        out += [f"Machine: {machine()}; load average {self.load} (1 min, start -> end)", ""]
        out.append("| " + " | ".join(self.header) + " |")
        out.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|"
        )
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        out.append("")
        out += [f"- **{'met' if ok else 'MISSED'}**: {text}" for text, ok in self.checks]
        out += [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def command(name: str, quick: bool, before: Contender | None = None) -> str:
    return (
        f"python bench/run.py {name}"
        + (f" --before {before.rev}" if before else "")
        + (" --quick" if quick else "")
    )


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


def run_delay_s(pid: int) -> float:
    """Seconds process `pid`'s main thread has spent runnable but waiting for a CPU (the run
    queue; /proc/PID/schedstat): on a shared machine, time the server lost to others."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # a server still starting refuses connections
            if check():
                return True
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


# --------------------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Contender:
    """A server that a benchmark measures: `edrvctl serve` importing the edrvctl package found
    in `tree`, or (tree None) the bench/baselines.py reference server of kind `key`."""

    key: str  # figure prefix: edrvctl (the package this script imports), before, bare, ocpp
    label: str  # its name in the tables
    tree: Path | None = None  # the directory holding its edrvctl/
    bench: Path = HERE  # the directory holding the bench/cli.py whose seed() fills its stores
    about: str = ""  # which code it is, for the report
    rev: str = ""  # --before as given
    flags: tuple[str, ...] = ()  # given to its `edrvctl serve`
    env: tuple[tuple[str, str], ...] = ()  # in its environment

    def phase(self, name: str) -> str:
        """A profile's file name: the current package's phases keep their plain names."""
        return name if self.key == "edrvctl" else f"{name}-{self.key}"


BARE, OCPP = Contender("bare", "bare"), Contender("ocpp", "ocpp")


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def tree_env(tree: Path, env: dict) -> dict:
    """`env`, for a Python that imports the edrvctl package in `tree`: `tree` first on
    PYTHONPATH, and PYTHONSAFEPATH, or `python -m edrvctl` would put the working directory
    (maybe another checkout) in front of it."""
    path = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, "PYTHONPATH": path, "PYTHONSAFEPATH": "1"}


def check_tree(tree: Path) -> None:
    """Fail now, not with a wrong report, unless tree_env(tree) imports tree's edrvctl."""
    out = subprocess.run(
        [PY, "-c", "import edrvctl; print(edrvctl.__file__)"],
        env=tree_env(tree, dict(os.environ)),
        capture_output=True,
        text=True,
        check=False,
    )
    want = (tree / "edrvctl" / "__init__.py").resolve()
    if out.returncode or Path(out.stdout.strip()).resolve() != want:
        raise RuntimeError(
            f"a server started for {tree} imports {out.stdout.strip()!r}, "
            f"not {want}: {out.stderr[-500:]}"
        )


@functools.cache
def current() -> Contender:
    """edrvctl as this process imports it (PYTHONPATH, else the installed package): what the
    simulated stations run, and the "after" of --before."""
    tree = Path(importlib.util.find_spec("edrvctl").origin).resolve().parent.parent
    check_tree(tree)
    about = f"`{tree / 'edrvctl'}`"
    with contextlib.suppress(RuntimeError, OSError):
        head = git(tree, "log", "-1", "--format=%h %s")
        dirty = git(tree, "status", "--porcelain", "--", "edrvctl")
        about += (
            f" (HEAD `{head.split()[0]}` {head.partition(' ')[2]}"
            + (", with uncommitted changes" if dirty else "")
            + ")"
        )
    return Contender("edrvctl", "edrvctl", tree, about=about)


def export_revision(rev: str, dest: Path) -> Contender:
    """--before REV: REV's edrvctl/ exported into `dest`, with REV's bench/cli.py when it has
    one (its seed() is the one that writes stores for that package)."""
    repo = HERE.parent
    try:
        commit = git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    except RuntimeError as e:
        raise SystemExit(f"--before {rev}: not a commit of {repo}: {e}") from None
    short, subject = git(repo, "log", "-1", "--format=%h%n%s", commit).split("\n", 1)
    paths = ["edrvctl"]
    with contextlib.suppress(RuntimeError):
        git(repo, "cat-file", "-e", f"{commit}:bench/cli.py")
        paths.append("bench/cli.py")
    archive = subprocess.Popen(
        ["git", "-C", str(repo), "archive", commit, *paths], stdout=subprocess.PIPE
    )
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
    archive.stdout.close()
    if archive.wait() or tar.returncode:
        raise SystemExit(f"--before {rev}: could not export {' '.join(paths)} of {short}")
    check_tree(dest)
    return Contender(
        "before",
        f"edrvctl@{short}",
        dest,
        bench=dest / "bench" if "bench/cli.py" in paths else HERE,
        about=f"`{short}` {subject}",
        rev=rev,
    )


def edrvctls(before: Contender | None) -> list[Contender]:
    """The edrvctl servers a benchmark measures, in the order each round runs them."""
    return [before, current()] if before else [current()]


def versions(before: Contender | None) -> str:
    """The report's line naming the two versions (nothing without --before)."""
    if not before:
        return ""
    return f"before = {before.label}, {before.about}; after = {current().label}, {current().about}"


def change(before: float | None, after: float | None) -> str:
    """after / before, as a table cell."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return ""
    return f"{after / before:.2f}×"


def seed(store: Path, n: int, contender: Contender | None = None) -> None:
    """A new store with stations BENCH000000..., written by the contender's own package through
    the seed() of its revision's bench/cli.py, in a process of its own: each version of the
    store is written by the code that reads it."""
    c = contender or current()
    store.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from cli import seed; seed(Path(sys.argv[2]), int(sys.argv[3]))"
    )
    if subprocess.run(
        [PY, "-c", code, str(c.bench), str(store), str(n)],
        env=tree_env(c.tree, dict(os.environ)),
        check=False,
    ).returncode:
        raise RuntimeError(
            f"{c.label}: bench/cli.py's seed() could not write a store with "
            f"{c.tree / 'edrvctl'} (its error is above)"
        )


@contextlib.contextmanager
def edrvctl_server(
    root: Path, stations: int, *flags: str, contender: Contender | None = None
) -> Iterator[Server]:
    """`edrvctl serve` of the contender (default: the current package) over a store seeded
    with BENCH000000... (unless it exists already)."""
    c = contender or current()
    store = root / "store" / "edrvctl.db"
    if not store.exists():
        seed(store, stations, c)
    srv = start_server(
        root,
        *NO_LIMITS,
        "--heartbeat-interval",
        str(HEARTBEAT),
        *c.flags,
        *flags,
        store=store,
        env=tree_env(c.tree, {**hermetic_env(root), **dict(c.env)}),
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

    def __init__(
        self,
        url: str,
        count: int,
        root: Path,
        backoff_max: float = 2,
        reboot_delay: float | None = None,  # None: the simulator's own default
        heartbeat: float = HEARTBEAT,
        extra: tuple[str, ...] = (),  # more bench/stations.py flags (--sessions ...)
    ):
        self.status_file = root / f"fleet-{time.monotonic_ns()}.json"
        self.log = root / f"fleet-{time.monotonic_ns()}.log"
        with open(self.log, "w") as err:
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
                    str(heartbeat),
                    "--backoff-max",
                    str(backoff_max),
                    *([] if reboot_delay is None else ["--reboot-delay", str(reboot_delay)]),
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fleet exited: {self.log.read_text()[-2000:]}") from None
            return {}

    def started(self) -> float:
        """`time.monotonic()` at which the fleet began connecting."""
        while "started" not in (s := self.status()):
            time.sleep(0.05)
        return s["started"]

    def close(self) -> None:
        stop_process(self.proc, timeout=120)

    def __enter__(self) -> Self:
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


Row = tuple[str, Callable[[dict], str], str | None]  # (figure, cell from figures, key)


def compare(
    res: Result, contenders: list[Contender], figs: dict[str, dict], rows: list[Row]
) -> None:
    """res's figures, and its table: a value column, or with --before one column per version
    and the change (after / before) of the rows that name a figure."""
    for c in contenders:
        prefix = "" if c.key == "edrvctl" else f"{c.key}_"
        res.figures.update({prefix + k: v for k, v in figs[c.key].items()})
    if len(contenders) == 1:
        res.header = ("figure", "value")
        res.rows = [(name, cell(figs[contenders[0].key])) for name, cell, _ in rows]
        return
    (b, before), (a, after) = ((figs[c.key], c) for c in contenders)
    res.header = ("figure", f"{before.label} (before)", f"{after.label} (after)", "after / before")
    res.rows = [
        (name, cell(b), cell(a), change(b.get(key), a.get(key)) if key else "")
        for name, cell, key in rows
    ]


def held_once(c: Contender, n: int, idle_s: float, timeout: float, quick: bool) -> dict:
    """One server of `c` with n stations: the figures of bench_held."""
    with workdir("held") as root, edrvctl_server(root, n, contender=c) as srv, srv.api() as api:
        pid = srv.proc.pid
        online(api)  # the API's first request, before the baseline
        rss0, cpu0 = rss_kib(pid), cpu_s(pid)
        log(f"held: {c.label}: server RSS {rss0} KiB before connecting; starting {n} stations")
        with FleetProcess(srv.ocpp_url, n, root) as fleet:
            with profiled(pid, c.phase("held-connect")):
                online_s = all_online(api, fleet, n, timeout)
                booted = all_booted(fleet, n, timeout)
            ramp_end = time.monotonic()
            ramp_cpu = cpu_s(pid) - cpu0
            ramp_client_cpu = cpu_s(fleet.proc.pid)
            booted_s = ramp_end - fleet.started()
            got = online(api)
            log(f"held: {c.label}: {got}/{n} online after {online_s} s, booted: {booted}; settling")
            time.sleep(0.5 if quick else 5)
            rss1 = rss_kib(pid)
            with profiled(pid, c.phase("held-idle")):
                c0, t0 = cpu_s(pid), time.monotonic()
                time.sleep(idle_s)
                idle_pct = 100 * (cpu_s(pid) - c0) / (time.monotonic() - t0)
            still = online(api)
            fleet_status = fleet.status()
    return {
        "stations": n,
        "online": got,
        "online_s": online_s,
        "booted": booted,
        "booted_s": booted_s,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_station_kib": (rss1 - rss0) / n,
        "idle_cpu_pct": idle_pct,
        "online_after_idle": still,
        "server_cpu_s_connecting": ramp_cpu,
        "client_cpu_s_connecting": ramp_client_cpu,
        "simulator_reconnects": fleet_status.get("reconnects"),
        "simulator_errors": fleet_status.get("errors"),
    }


def bench_held(quick: bool = False, before: Contender | None = None) -> Result:
    n, idle_s, timeout = (50, 0.5, 60) if quick else (10_000, 10.0, 600)
    res = Result(
        "held",
        f"Stations held: {n:,} simulated stations on one server",
        command("held", quick, before),
        load=loadavg(),
        versions=versions(before),
    )
    contenders = edrvctls(before)
    figs = {c.key: held_once(c, n, idle_s, timeout, quick) for c in contenders}
    compare(
        res,
        contenders,
        figs,
        [
            ("stations online (API count)", lambda f: f"{f['online']:,} / {n:,}", None),
            (
                "time until all online",
                lambda f: "not reached" if f["online_s"] is None else f"{f['online_s']:.1f} s",
                "online_s",
            ),
            (
                "time until all booted (+ StatusNotifications sent)",
                lambda f: f"{f['booted_s']:.1f} s",
                "booted_s",
            ),
            (
                "server CPU time while connecting (its % of that time)",
                lambda f: (
                    f"{f['server_cpu_s_connecting']:.1f} s "
                    f"({100 * f['server_cpu_s_connecting'] / f['booted_s']:.0f}%)"
                ),
                "server_cpu_s_connecting",
            ),
            (
                "simulator CPU time while connecting",
                lambda f: f"{f['client_cpu_s_connecting']:.1f} s",
                "client_cpu_s_connecting",
            ),
            (
                "server RSS before / with all connected",
                lambda f: f"{f['rss_before_kib'] / 1024:.1f} / {f['rss_after_kib'] / 1024:.1f} MiB",
                "rss_after_kib",
            ),
            (
                "server RSS per station",
                lambda f: f"{f['rss_per_station_kib']:.1f} KiB",
                "rss_per_station_kib",
            ),
            (
                f"server CPU at idle ({idle_s:g} s, heartbeat {HEARTBEAT} s)",
                lambda f: f"{f['idle_cpu_pct']:.1f}%",
                "idle_cpu_pct",
            ),
            ("online after the idle period", lambda f: f"{f['online_after_idle']:,}", None),
            (
                "simulator reconnects / errors",
                lambda f: f"{f['simulator_reconnects']} / {f['simulator_errors']}",
                None,
            ),
        ],
    )
    res.notes = [
        (
            "Times run from the moment the simulator process starts its fleet (run_fleet, at most "
            "200 handshakes at a time); online is counted through the API every 0.25 s. The "
            "simulator shares the machine's cores with the server, and uses about as much CPU."
        ),
        (
            "RSS per station = (VmRSS once all are booted, after a pause - VmRSS before the "
            "first connection) / stations; idle CPU = utime+stime over the idle window."
        ),
    ]
    f = figs["edrvctl"]
    res.checks = [
        (
            f"all {n:,} online within 30 s: "
            + ("not all came online" if f["online_s"] is None else f"{f['online_s']:.1f} s"),
            f["online_s"] is not None and f["online_s"] <= 30,
        ),
        (
            f"at most 25 KB of server RSS per station: {f['rss_per_station_kib']:.1f} KiB",
            f["rss_per_station_kib"] <= 25,
        ),
    ]
    if before:
        b = figs["before"]
        res.checks.append(
            (
                (
                    f"before -> after, server RSS per station at most {RSS_TARGET:g} "
                    f"KiB: {b['rss_per_station_kib']:.1f} -> "
                    f"{f['rss_per_station_kib']:.1f} KiB"
                ),
                f["rss_per_station_kib"] <= RSS_TARGET,
            )
        )
        res.notes.append(
            f"The two servers ran one after the other ({before.label}, then "
            f"{current().label}), each on a fresh store and fleet."
        )
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 2. throughput


@contextlib.contextmanager
def reference_server(c: Contender, template: Path | None) -> Iterator[tuple[str, int, Path | None]]:
    """(ocpp URL, pid, store) of a fresh server: bench/baselines.py bare|ocpp (no store), or
    edrvctl over a copy of its seeded template store."""
    if c.tree:
        with workdir(f"throughput-{c.key}") as root:
            (root / "store").mkdir()
            shutil.copy(template, root / "store" / "edrvctl.db")
            with edrvctl_server(root, 0, contender=c) as srv:
                yield srv.ocpp_url, srv.proc.pid, srv.store
        return
    port = free_port()
    proc = subprocess.Popen(
        [PY, str(HERE / "baselines.py"), c.key, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"baselines.py {c.key} did not start")
        yield f"ws://127.0.0.1:{port}", proc.pid, None
    finally:
        stop_process(proc)


def run_load(
    url: str, stations: int, seconds: float, warmup: float, server_pid: int, first: int = 0
) -> dict:
    """bench/load.py against `url`, or with --loadgen the C load generator (same frames, a
    fraction of the CPU: not the bottleneck of a fast server)."""
    if LOADGEN is not None:
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        target = [str(LOADGEN), host, port]
    else:
        target = [PY, str(HERE / "load.py"), url]
    out = subprocess.run(
        [
            *target,
            "--stations",
            str(stations),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
            "--server-pid",
            str(server_pid),
            "--first",
            str(first),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stored_frames(store: Path) -> tuple[int, int] | None:
    """(frames, bytes) the frame log holds in a store (None: no frame log in its schema)."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        try:
            return db.execute(
                "SELECT coalesce(sum(n - skip), 0), coalesce(sum(length(data)), 0) "
                "FROM frame_chunks"
            ).fetchone()
        except sqlite3.OperationalError:
            return None


def stored_meter_values(store: Path) -> int | None:
    """MeterValues rows in a store (None: a schema without a meter_values table)."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT count(*) FROM meter_values").fetchone()[0]
        except sqlite3.OperationalError:
            return None


def frame_log_contenders() -> list[Contender]:
    """--frame-log: the current edrvctl twice, with the frame log off and with every frame."""
    c = current()
    return [
        dataclasses.replace(
            c, key="off", label="edrvctl --frame-log off", flags=("--frame-log", "off")
        ),
        dataclasses.replace(c, label="edrvctl --frame-log all", flags=("--frame-log", "all")),
    ]


def asyncio_contender() -> Contender:
    """--loops: the current edrvctl on the standard library's event loop."""
    return dataclasses.replace(
        current(), key="asyncio", label="edrvctl (asyncio loop)", env=(("EDRVCTL_LOOP", "asyncio"),)
    )


def bench_throughput(
    quick: bool = False,
    before: Contender | None = None,
    frame_log: bool = False,
    rounds: int | None = None,
    loops: bool = False,
) -> Result:
    sizes, default_rounds, seconds, warmup = (
        ((20, 50), 1, 0.3, 0.1) if quick else ((100, 1000), 3, 10, 1)
    )
    rounds = rounds or default_rounds
    trees = frame_log_contenders() if frame_log else edrvctls(before)
    if loops:
        trees.insert(-1, asyncio_contender())
    contenders = trees if frame_log else [BARE, OCPP, *trees]
    res = Result(
        "throughput",
        "Message throughput: Heartbeat/StatusNotification/MeterValues as fast as answered"
        + (", with the frame log off and on" if frame_log else ""),
        command("throughput", quick, before)
        + (" --frame-log" if frame_log else "")
        + (f" --rounds {rounds}" if rounds != default_rounds else "")
        + (" --loops" if loops else "")
        + (" --loadgen /tmp/loadgen" if LOADGEN else ""),
        load=loadavg(),
        versions=versions(before),
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
    runs: dict[tuple[str, int], list[dict]] = {(c.key, n): [] for c in contenders for n in sizes}
    persisted = {c.key: [] for c in trees}  # (MeterValues rows stored, calls answered) per run
    kept: dict[str, list] = {c.key: [] for c in trees}  # --frame-log: (frames, bytes) per server
    with workdir("throughput") as root:
        templates = {c.key: root / f"template-{c.key}.db" for c in trees}
        for c in trees:
            seed(templates[c.key], max(sizes), c)
        for r in range(rounds):
            for c in contenders:
                with reference_server(c, templates.get(c.key)) as (url, pid, store):
                    for n in sizes:
                        rows0 = stored_meter_values(store) if store else None
                        with profiled(pid, f"throughput-{c.key}-{n}-round{r + 1}"):
                            out = run_load(url, n, seconds, warmup, pid)
                        if rows0 is not None:
                            persisted[c.key].append(
                                (stored_meter_values(store) - rows0, out["calls"])
                            )
                        runs[(c.key, n)].append(out)
                        log(
                            f"throughput round {r + 1}: {c.label} {n} stations: "
                            f"{out['calls_per_s']:.0f} calls/s, p99 {out['p99_ms']} ms"
                        )
                    if frame_log and store is not None:
                        time.sleep(1.5)  # a station's frames are written within a second
                        kept[c.key].append(stored_frames(store))

    def med(key: str, n: int, metric: str) -> float:
        return statistics.median(x[metric] for x in runs[(key, n)])

    compared = (
        "calls_per_s",
        "p50_ms",
        "p99_ms",
        "server_cpu_us_per_call",
        "server_cpu_pct",
        "client_cpu_pct",
    )
    for n in sizes:
        for c in contenders:
            rs = runs[(c.key, n)]
            res.rows.append(
                (
                    c.label,
                    n,
                    f"{med(c.key, n, 'calls_per_s'):,.0f}",
                    med(c.key, n, "p50_ms"),
                    med(c.key, n, "p99_ms"),
                    f"{med(c.key, n, 'server_cpu_us_per_call'):.0f}",
                    f"{med(c.key, n, 'server_cpu_pct'):.0f}%",
                    f"{med(c.key, n, 'client_cpu_pct'):.0f}%",
                    ", ".join(f"{x['calls_per_s']:.0f}" for x in rs),
                    f"{sum(x['failed'] for x in rs)} / {sum(x['errors'] for x in rs)}",
                )
            )
            for metric in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_call"):
                res.figures[f"{c.key}_{n}_{metric}"] = med(c.key, n, metric)
        if frame_log:
            rate = med("edrvctl", n, "calls_per_s") / med("off", n, "calls_per_s")
            cpu = med("edrvctl", n, "server_cpu_us_per_call") / med(
                "off", n, "server_cpu_us_per_call"
            )
            res.figures[f"frame_log_rate_{n}"], res.figures[f"frame_log_cpu_{n}"] = rate, cpu
            res.rows.append(("all / off", n, f"{rate:.2f}×", "", "", f"{cpu:.2f}×", "", "", "", ""))
            res.checks.append(
                (
                    f"{n} stations: with every frame logged, {100 * rate:.0f}% of the calls/s "
                    f"with the log off (target >= 85%); server CPU per call {cpu:.2f}×",
                    rate >= 0.85,
                )
            )
            continue
        if before:  # the change, after / before, of each median
            res.rows.append(
                (
                    f"after / before ({current().label} / {before.label})",
                    n,
                    *(change(med(before.key, n, m), med(current().key, n, m)) for m in compared),
                    "",
                    "",
                )
            )
        for c in trees:
            prefix = "" if c.key == "edrvctl" else f"{c.key}_"
            res.figures[f"{prefix}ratio_{n}"] = med(c.key, n, "calls_per_s") / med(
                "bare", n, "calls_per_s"
            )
            res.figures[f"{prefix}gain_over_ocpp_{n}"] = med(c.key, n, "calls_per_s") / med(
                "ocpp", n, "calls_per_s"
            )
        ratio, gain = res.figures[f"ratio_{n}"], res.figures[f"gain_over_ocpp_{n}"]
        cost = med("edrvctl", n, "server_cpu_us_per_call") / med(
            "bare", n, "server_cpu_us_per_call"
        )
        res.checks.append(
            (
                (
                    f"{n} stations: edrvctl = {100 * ratio:.0f}% of the bare ceiling "
                    f"(target >= 60%), p99 {med('edrvctl', n, 'p99_ms')} ms; "
                    f"{gain:.2f}x the ocpp library's rate; server CPU per call "
                    f"{cost:.1f}x bare's"
                ),
                ratio >= 0.6,
            )
        )
        if before:
            was = res.figures[f"before_ratio_{n}"]
            res.checks.append(
                (
                    (
                        f"{n} stations, before -> after, share of the bare ceiling "
                        f"not lower: {100 * was:.0f}% -> {100 * ratio:.0f}%"
                    ),
                    ratio >= was,
                )
            )
    res.notes += [
        (
            f"{rounds} round(s), each {' -> '.join(c.label for c in contenders)}, a fresh server "
            f"per round; each run {warmup:g} s warm-up + {seconds:g} s measured (bench/load.py); "
            "medians over rounds. CPU columns: share of one core used in the measured window "
            "(/proc/PID/stat); µs/call = server CPU time / calls answered, which the machine's "
            "noise barely moves."
        ),
    ]
    for c in trees:
        rows, calls = (sum(p[i] for p in persisted[c.key]) for i in (0, 1))
        res.figures[f"{c.key}_meter_values_stored"] = rows if persisted[c.key] else None
        res.notes.append(
            f"Persisted: {c.label} stored {rows:,} MeterValues rows for {calls:,} answered "
            "calls (MeterValues are 1/4 of the mix; warm-up calls are stored too)."
            if persisted[c.key]
            else f"Persisted: {c.label}'s store has no meter_values table; not counted."
        )
    for c in trees if frame_log else ():
        found = [k for k in kept[c.key] if k]
        frames, size = (sum(k[i] for k in found) for i in (0, 1))
        res.notes.append(
            f"Frames kept: {c.label}: {frames:,} frames in {size / 2**20:.1f} MiB"
            + (f" ({size / frames:.0f} bytes a frame, compressed)" if frames else "")
            + " (every server of every round; warm-up frames too)."
        )
    res.notes.append(
        "edrvctl runs with " + " ".join(NO_LIMITS) + ": one client address, and stations that "
        "send as fast as answered (the default 50 msg/s per station would be what is measured)."
    )
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 3. csconfig


def csconfig_once(c: Contender, n: int, requests: int, warm: int) -> dict:
    """One server of `c` with n stations online: the figures of bench_csconfig."""
    rng = random.Random(1)  # the same stations, in the same order, for every server
    with (
        workdir("csconfig") as root,
        edrvctl_server(root, n, contender=c) as srv,
        srv.api() as api,
        FleetProcess(srv.ocpp_url, n, root) as fleet,
    ):
        require_fleet(api, fleet, n, "csconfig")
        log(f"csconfig: {c.label}: {n} online; {requests} requests")
        latencies, errors = [], []
        with profiled(srv.proc.pid, c.phase("csconfig")):
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
    return {
        "stations": n,
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max(latencies),
        "mean_ms": statistics.mean(latencies),
        "stored_entries": len(stored.get("csconfig") or []),
        "error_texts": errors[:3],
    }


def bench_csconfig(quick: bool = False, before: Contender | None = None) -> Result:
    n, requests, warm = (50, 30, 5) if quick else (1000, 300, 20)
    res = Result(
        "csconfig",
        f"csconfig round trip: get_variables with {n:,} stations connected",
        command("csconfig", quick, before),
        load=loadavg(),
        versions=versions(before),
    )
    contenders = edrvctls(before)
    figs = {c.key: csconfig_once(c, n, requests, warm) for c in contenders}
    errors = {key: f.pop("error_texts") for key, f in figs.items()}
    compare(
        res,
        contenders,
        figs,
        [
            ("requests (after warm-up)", lambda f: f"{f['requests']} (+{warm})", None),
            ("errors", lambda f: f"{f['errors']}", None),
            *(
                (name, lambda f, key=key: f"{f[key]:.1f} ms", key)
                for name, key in (
                    ("p50", "p50_ms"),
                    ("p90", "p90_ms"),
                    ("p99", "p99_ms"),
                    ("max", "max_ms"),
                    ("mean", "mean_ms"),
                )
            ),
            ("stored csconfig entries (last station)", lambda f: f"{f['stored_entries']}", None),
        ],
    )
    f = figs["edrvctl"]
    res.checks = [
        (f"p50 under 20 ms: {f['p50_ms']:.1f} ms", f["p50_ms"] < 20),
        (f"p99 under 100 ms: {f['p99_ms']:.1f} ms", f["p99_ms"] < 100),
        (f"every request answered 201 with a csconfig: {f['errors']} errors", not f["errors"]),
    ]
    if before:
        b = figs["before"]
        res.checks.append(
            (
                (
                    f"before -> after, p50 under {P50_TARGET:g} ms: "
                    f"{b['p50_ms']:.1f} -> {f['p50_ms']:.1f} ms"
                ),
                f["p50_ms"] < P50_TARGET,
            )
        )
    res.notes = [
        (
            "Sequential POST /v1.1/chargestations/{endpoint}/get_variables (empty body) "
            "to random connected stations over one kept-alive httpx client; "
            f"the first {warm} are warm-up."
        )
    ]
    if before:
        res.notes.append(
            f"The two servers ran one after the other ({before.label}, then "
            f"{current().label}), each on a fresh store and fleet, asked for the "
            "same stations in the same order."
        )
    res.notes += [f"error ({c.label}): {e}" for c in contenders for e in errors[c.key]]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- starved


def starved_once(c: Contender, targets: int, n: int, seconds: float, quick: bool) -> dict:
    """`c` with `targets` simulated stations (they answer commands) and n load-generator
    stations sending as fast as answered: the admin API's latency meanwhile."""
    rng = random.Random(1)
    with (
        workdir("starved") as root,
        edrvctl_server(root, targets + n, contender=c) as srv,
        srv.api() as api,
        FleetProcess(srv.ocpp_url, targets, root) as fleet,
    ):
        require_fleet(api, fleet, targets, "starved")
        pid = srv.proc.pid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_load, srv.ocpp_url, n, seconds, 1.0, pid, targets)
            time.sleep(1.5 if quick else 3)  # warm-up, and every load station connected
            gets, commands, errors = [], [], []
            with profiled(pid, c.phase("starved")):
                while not load.done() and (quick or len(commands) < 400):
                    station = endpoint(rng.randrange(targets))
                    t0 = time.perf_counter()
                    r = api.get(f"/v1.1/chargestations/{station}")
                    t1 = time.perf_counter()
                    if r.status_code != 200:
                        errors.append(f"GET {r.status_code} {r.text[:100]}")
                    r = api.post(f"/v1.1/chargestations/{station}/get_variables")
                    t2 = time.perf_counter()
                    if r.status_code != 201:
                        errors.append(f"get_variables {r.status_code} {r.text[:100]}")
                    gets.append((t1 - t0) * 1000)
                    commands.append((t2 - t1) * 1000)
                    if load.done():
                        break
            out = load.result()
    return {
        "calls_per_s": out["calls_per_s"],
        "station_p50_ms": out["p50_ms"],
        "station_p99_ms": out["p99_ms"],
        "requests": len(gets),
        "errors": len(errors),
        "error_texts": errors[:3],
        **{f"get_{k}": v for k, v in latencies(gets).items()},
        **{f"command_{k}": v for k, v in latencies(commands).items()},
    }


def latencies(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99), "max_ms": max(values)}


def bench_starved(quick: bool = False, before: Contender | None = None) -> Result:
    targets, n, seconds = (5, 20, 2) if quick else (50, 1000, 20)
    res = Result(
        "starved",
        f"Admin API and commands while {n:,} stations saturate the server",
        command("starved", quick, before) + (" --loadgen" if LOADGEN else ""),
        load=loadavg(),
        versions=versions(before),
    )
    contenders = edrvctls(before)
    figs = {c.key: starved_once(c, targets, n, seconds, quick) for c in contenders}
    errors = {key: f.pop("error_texts") for key, f in figs.items()}
    compare(
        res,
        contenders,
        figs,
        [
            ("station calls/s meanwhile", lambda f: f"{f['calls_per_s']:,.0f}", "calls_per_s"),
            (
                "station p50 / p99",
                lambda f: f"{f['station_p50_ms']:.1f} / {f['station_p99_ms']:.1f} ms",
                None,
            ),
            ("API requests (each kind)", lambda f: f"{f['requests']}", None),
            ("errors", lambda f: f"{f['errors']}", None),
            *(
                (name, lambda f, key=key: f"{f[key]:.1f} ms", key)
                for name, key in (
                    ("GET chargestation p50", "get_p50_ms"),
                    ("GET chargestation p99", "get_p99_ms"),
                    ("get_variables p50", "command_p50_ms"),
                    ("get_variables p99", "command_p99_ms"),
                    ("get_variables max", "command_max_ms"),
                )
            ),
        ],
    )
    f = figs["edrvctl"]
    res.checks = [
        (f"GET p99 under 50 ms: {f['get_p99_ms']:.1f} ms", f["get_p99_ms"] < 50),
        (f"get_variables p99 under 50 ms: {f['command_p99_ms']:.1f} ms", f["command_p99_ms"] < 50),
    ]
    res.notes = [
        f"{targets} simulated stations (bench/stations.py) answer the commands; {n:,} "
        f"load-generator stations ({'the C loadgen' if LOADGEN else 'bench/load.py'}) send "
        f"Heartbeat/StatusNotification/MeterValues as fast as answered for {seconds:g} s. "
        "Meanwhile, one at a time over one kept-alive client: GET /v1.1/chargestations/"
        "{endpoint}, then POST .../get_variables (empty body: the whole configuration, a "
        "round trip to the station and its answer stored), for random simulated stations."
    ]
    res.notes += [f"error ({c.label}): {e}" for c in contenders for e in errors[c.key]]
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
        (
            f"Same store and fixed ports ({' '.join(ports)}); simulator backoff capped "
            "at 2 s (jittered 0.5-1x)."
        )
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
        elif line.startswith(("- met: ", "- MISSED: ")):
            met, _, text = line[2:].partition(": ")
            res.checks.append((text, met == "met"))
        elif line.startswith("machine:"):
            res.notes.append(line)
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 6. commands

TRIGGER_P50, TRIGGER_P99 = 10, 50  # ms, trigger_message round trip under load
RESET_TARGET = 30  # s, 1,000 stations reset and booted again, at most 100 in flight
RESET_INFLIGHT = 100
# The simulator's "boot time" after a Reset (SimStation reboot_delay, default 1 s): 0 here, so
# what is measured is the server. A station still waits RESET_GRACE (0.25 s) after answering
# before it closes its socket: a floor of n / in-flight x 0.25 s that is the simulator's.
REBOOT_DELAY = 0.0
LOAD_INTERVAL = 0.2  # s between one load station's calls: 5 calls/s per station


def start_load(url: str, n: int, first: int, server_pid: int) -> subprocess.Popen:
    """bench/load.py in the background: n stations (BENCH<first>...), each sending the
    Heartbeat/StatusNotification/MeterValues mix every LOAD_INTERVAL s until SIGTERM."""
    return subprocess.Popen(
        [
            PY,
            str(HERE / "load.py"),
            url,
            "--stations",
            str(n),
            "--first",
            str(first),
            "--interval",
            str(LOAD_INTERVAL),
            "--seconds",
            "3600",
            "--warmup",
            "1",
            "--server-pid",
            str(server_pid),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


PROBE = """
import json, signal, sys, time, httpx
lat, stop = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with httpx.Client(base_url=sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]}) as c:
    while not stop:
        t = time.perf_counter()
        c.get("/v1.1/chargestations", params={"paginate_limit": 1}).raise_for_status()
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.05)
print(json.dumps(lat))
"""


def start_probe(srv: Server) -> subprocess.Popen:
    """A process of its own asking the API one small GET every 50 ms, one at a time: how fast
    the server answers, whatever the benchmark's own client does."""
    return subprocess.Popen(
        [PY, "-c", PROBE, srv.api_url, srv.token], stdout=subprocess.PIPE, text=True
    )


def stop_probe(proc: subprocess.Popen) -> list[float]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return json.loads(out) if out.strip() else []


def stop_load(proc: subprocess.Popen) -> dict:
    """SIGTERM the load generator; its JSON report over the time it ran."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"load.py printed nothing: {err[-2000:]}")
    return json.loads(lines[-1])


async def reset_all(srv: Server, n: int, inflight: int, poll: float, timeout: float) -> dict:
    """POST .../reset?wait=0 to stations 0..n-1, at most `inflight` at once, each followed
    with GET /v1.1/actions/{id} every `poll` s until its outcome is no longer pending.

    One httpx.AsyncClient of one connection per in-flight slot, not one client of `inflight`
    connections: httpcore's pool scans all its connections for every request it assigns
    (`_assign_requests_to_connections`), and with 100 of them that scan, not the server, was
    the time (profiled: 100 concurrent GETs answered at ~140/s, the server at 7% of a core)."""
    sem = asyncio.Semaphore(inflight)
    outcomes: Counter = Counter()
    errors: list[str] = []
    took: list[float] = []
    post_ms: list[float] = []  # POST .../reset?wait=0 answered (202), per station
    get_ms: list[float] = []  # each GET /v1.1/actions/{id}
    polls = 0
    async with contextlib.AsyncExitStack() as stack:
        free = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=srv.api_url,
                    timeout=30,
                    headers={"Authorization": f"Bearer {srv.token}"},
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
            )
            for _ in range(inflight)
        ]

        async def one(i: int) -> None:
            async with sem:  # at most `inflight` holders: a client is always free
                client = free.pop()
                try:
                    await follow(client, i)
                finally:
                    free.append(client)

        async def follow(client: httpx.AsyncClient, i: int) -> None:
            nonlocal polls
            t0 = time.perf_counter()
            r = await client.post(
                f"/v1.1/chargestations/{endpoint(i)}/reset", params={"wait": 0}, json={}
            )
            post_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 202:
                outcomes[f"HTTP {r.status_code}"] += 1
                errors.append(f"{endpoint(i)}: {r.status_code} {r.text[:200]}")
                return
            action = r.json()["result"]
            while action.get("outcome") == "pending":
                if time.perf_counter() - t0 > timeout:
                    break
                await asyncio.sleep(poll)
                polls += 1
                t = time.perf_counter()
                r = await client.get(f"/v1.1/actions/{action['_id']}")
                get_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                action = r.json()["result"]
            took.append(time.perf_counter() - t0)
            outcomes[action.get("outcome")] += 1
            if action.get("outcome") != "succeeded":
                errors.append(f"{endpoint(i)}: {json.dumps(action)[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        total = time.perf_counter() - t0
    return {
        "total_s": total,
        "outcomes": outcomes,
        "errors": errors,
        "took": took,
        "polls": polls,
        "post_ms": post_ms,
        "get_ms": get_ms,
    }


def bench_commands(quick: bool = False) -> Result:
    n, requests, warm, poll = (50, 30, 5, 0.05) if quick else (1000, 300, 20, 0.1)
    inflight = 10 if quick else RESET_INFLIGHT
    res = Result(
        "commands",
        f"Commands: trigger_message round trip under load, and a reset of {n:,} stations",
        command("commands", quick),
        load=loadavg(),
    )
    rng = random.Random(1)
    with (
        workdir("commands") as root,
        edrvctl_server(root, 2 * n) as srv,
        srv.api() as api,
        FleetProcess(srv.ocpp_url, n, root, reboot_delay=REBOOT_DELAY) as fleet,
    ):
        pid = srv.proc.pid
        require_fleet(api, fleet, n, "commands")
        load = start_load(srv.ocpp_url, n, n, pid)
        try:
            if not wait_for(lambda: online(api) >= 2 * n, 300):
                raise RuntimeError(f"commands: the load's {n} stations did not all connect")
            time.sleep(1 if quick else 3)  # the load's own warm-up, and its pace settles
            log(f"commands: {n} simulated + {n} load stations online; {requests} triggers")
            latencies, errors = [], []
            with profiled(pid, "commands-trigger"):
                c0, q0, t0 = cpu_s(pid), run_delay_s(pid), time.monotonic()
                for i in range(warm + requests):
                    path = f"/v1.1/chargestations/{endpoint(rng.randrange(n))}/trigger_message"
                    t = time.perf_counter()
                    r = api.post(path, params={"wait": 30}, json={"requestedMessage": "Heartbeat"})
                    dt = (time.perf_counter() - t) * 1000
                    if r.status_code != 201:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    if i >= warm:
                        latencies.append(dt)
                trigger_s = time.monotonic() - t0
                trigger_cpu = 100 * (cpu_s(pid) - c0) / trigger_s
                trigger_wait = run_delay_s(pid) - q0
        finally:
            bg = stop_load(load)
        log(f"commands: load {bg['calls_per_s']} calls/s; resetting {n}, {inflight} in flight")
        time.sleep(0.5 if quick else 2)  # the load's stations disconnect
        reboots0 = fleet.status().get("reboots", 0)
        with profiled(pid, "commands-reset"):
            c0, f0, t0 = cpu_s(pid), cpu_s(fleet.proc.pid), time.monotonic()
            me0, q0 = time.process_time(), run_delay_s(pid)
            probe = start_probe(srv)
            try:
                rs = asyncio.run(reset_all(srv, n, inflight, poll, 60 if quick else 120))
            finally:
                probe_ms = stop_probe(probe)
            wall = time.monotonic() - t0
            reset_wait = run_delay_s(pid) - q0
            reset_cpu = 100 * (cpu_s(pid) - c0) / wall
            fleet_cpu = 100 * (cpu_s(fleet.proc.pid) - f0) / wall
            client_cpu = 100 * (time.process_time() - me0) / wall
        back = wait_for(
            lambda: (
                fleet.status().get("booted", 0) >= n
                and fleet.status().get("reboots", 0) - reboots0 >= n
            ),
            30,
        )
        status = fleet.status()
        online_after = online(api)
    lat = latencies
    p50, p90, p99 = (pct(lat, q) for q in (0.5, 0.9, 0.99))
    took = sorted(rs["took"])
    succeeded = rs["outcomes"].get("succeeded", 0)
    reboots = status.get("reboots", 0) - reboots0
    floor = n / inflight * (REBOOT_DELAY + 0.25)

    def ms3(v: list[float]) -> str:
        return " / ".join(f"{pct(v, q):.0f}" for q in (0.5, 0.9, 0.99)) + " ms" if v else "-"

    res.figures = {
        "stations": n,
        "requests": len(lat),
        "errors": len(errors),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": max(lat),
        "mean_ms": statistics.mean(lat),
        "trigger_server_cpu_pct": trigger_cpu,
        "trigger_s": trigger_s,
        "trigger_server_runqueue_s": trigger_wait,
        "reset_server_runqueue_s": reset_wait,
        "load_calls_per_s": bg["calls_per_s"],
        "load_p50_ms": bg["p50_ms"],
        "load_p99_ms": bg["p99_ms"],
        "load_failed": bg["failed"],
        "load_errors": bg["errors"],
        "reset_s": rs["total_s"],
        "reset_succeeded": succeeded,
        "reset_outcomes": dict(rs["outcomes"]),
        "reset_each_p50_s": pct(took, 0.5) if took else None,
        "reset_each_p99_s": pct(took, 0.99) if took else None,
        "reset_polls": rs["polls"],
        "reset_post_p50_ms": pct(rs["post_ms"], 0.5) if rs["post_ms"] else None,
        "reset_get_p50_ms": pct(rs["get_ms"], 0.5) if rs["get_ms"] else None,
        "probe_p50_ms": pct(probe_ms, 0.5) if probe_ms else None,
        "probe_requests": len(probe_ms),
        "reset_server_cpu_pct": reset_cpu,
        "reset_fleet_cpu_pct": fleet_cpu,
        "reset_client_cpu_pct": client_cpu,
        "reboots": reboots,
        "booted_after": status.get("booted"),
        "online_after": online_after,
        "back": back,
    }
    outcome_text = ", ".join(f"{k} × {v:,}" for k, v in sorted(rs["outcomes"].items()))
    res.rows = [
        ("stations connected", f"{n:,} simulated (targets) + {n:,} load.py stations"),
        (
            "background load (load.py, paced)",
            f"{n:,} stations × 1 call / {LOAD_INTERVAL:g} s: {bg['calls_per_s']:,.0f} calls/s "
            f"answered, p50 {bg['p50_ms']} / "
            f"p99 {bg['p99_ms']} ms; failed / errors {bg['failed']} / {bg['errors']}",
        ),
        (
            "server during the trigger requests: CPU / waiting for a CPU (run queue)",
            f"{trigger_cpu:.0f}% of one core / {trigger_wait:.1f} s of {trigger_s:.1f} s",
        ),
        ("trigger requests (after warm-up)", f"{len(lat)} (+{warm}), {len(errors)} not 201"),
        ("trigger round trip p50 / p90 / p99", f"{p50:.1f} / {p90:.1f} / {p99:.1f} ms"),
        ("trigger round trip max / mean", f"{max(lat):.1f} / {statistics.mean(lat):.1f} ms"),
        (
            f"reset of {n:,}, ≤ {inflight} in flight, until every outcome is known",
            f"{rs['total_s']:.1f} s",
        ),
        ("reset outcomes", outcome_text),
        (
            "one reset, POST to outcome seen, p50 / p99",
            f"{pct(took, 0.5):.2f} / {pct(took, 0.99):.2f} s" if took else "-",
        ),
        ("action polls (GET /v1.1/actions/{id})", f"{rs['polls']:,}, every {poll:g} s"),
        ("reset client: POST ?wait=0 (202) p50 / p90 / p99", ms3(rs["post_ms"])),
        ("reset client: GET /v1.1/actions/{id} p50 / p90 / p99", ms3(rs["get_ms"])),
        (
            "probe during the reset (own process, 1 GET at a time) p50 / p90 / p99",
            f"{ms3(probe_ms)} ({len(probe_ms)} GETs)",
        ),
        (
            "CPU during the reset: server / simulator / this client",
            f"{reset_cpu:.0f}% / {fleet_cpu:.0f}% / {client_cpu:.0f}% of one core",
        ),
        ("server waiting for a CPU (run queue) during the reset", f"{reset_wait:.1f} s"),
        (
            "after: simulator reboots / booted / API online",
            f"{reboots:,} / {status.get('booted'):,} / {online_after:,}",
        ),
    ]
    res.checks = [
        (f"trigger p50 under {TRIGGER_P50} ms: {p50:.1f} ms", p50 < TRIGGER_P50),
        (f"trigger p99 under {TRIGGER_P99} ms: {p99:.1f} ms", p99 < TRIGGER_P99),
        (f"every trigger answered 201: {len(errors)} not", not errors),
        (
            f"reset of {n:,} under {RESET_TARGET} s, every outcome succeeded: "
            f"{rs['total_s']:.1f} s, {succeeded:,} of {n:,} succeeded",
            rs["total_s"] < RESET_TARGET and succeeded == n,
        ),
        (
            f"all back: {reboots:,} reboots, {status.get('booted'):,} booted, "
            f"{online_after:,} online of {n:,}",
            back and online_after >= n,
        ),
    ]
    res.notes = [
        (
            "Trigger: sequential POST /v1.1/chargestations/{endpoint}/trigger_message?wait=30 "
            '{"requestedMessage": "Heartbeat"} to random simulated stations over one kept-alive '
            f"httpx client; the first {warm} are warm-up. Meanwhile {n:,} other stations "
            f"(bench/load.py --interval {LOAD_INTERVAL:g}) each send one call of the "
            "Heartbeat/StatusNotification/MeterValues/Heartbeat mix every "
            f"{LOAD_INTERVAL:g} s (schedules spread at random), answered and stored."
        ),
        (
            f"Reset: the load stopped first; POST .../reset?wait=0 (soft), then GET "
            f"/v1.1/actions/{{id}} every {poll:g} s until outcome is not pending (succeeded = "
            f"the station's new BootNotification was seen), an asyncio semaphore of {inflight} "
            "around each station's POST and polls; one httpx.AsyncClient (one connection) per "
            "slot. The probe: GET /v1.1/chargestations?paginate_limit=1 every 50 ms from a "
            "process of its own, one at a time: the server's own answer time meanwhile."
        ),
        (
            f"Simulator reboot_delay {REBOOT_DELAY:g} s (its default is 1 s; at 1 s the "
            f"reset would take at least n / {inflight} × 1.25 s = {n / inflight * 1.25:.1f} s "
            "whatever the server does). Each simulated station still waits RESET_GRACE "
            f"0.25 s after answering before it closes: a simulator floor of {floor:.1f} s."
        ),
    ]
    res.notes += [f"trigger error: {e}" for e in errors[:3]]
    res.notes += [f"reset error: {e}" for e in rs["errors"][:3]]
    if bg.get("first_error"):
        res.notes.append(f"load error: {bg['first_error']}")
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 7. retention

DAY = 86400.0


def scraped(api_url: str) -> dict[str, float]:
    """GET /metrics (no token): `name{labels}` -> value, the comments left out."""
    r = httpx.get(f"{api_url}/metrics", timeout=30)
    r.raise_for_status()
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


RETAINED = {"events": "event_log", "meter values": "meter_values", "actions": "actions"}


def store_rows(store: Path) -> tuple[dict[str, int], int]:
    """Rows of what grows, and the bytes (SQLite's dbstat: pages, with their indexes') of
    what retention prunes, read from the running server's store (read-only, WAL)."""
    tables = {**RETAINED, "sessions": "transactions"}
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = {k: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for k, t in tables.items()}
        pruned = db.execute(
            "SELECT sum(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
            f"WHERE m.tbl_name IN ({','.join('?' * len(RETAINED))})",
            list(RETAINED.values()),
        ).fetchone()[0]
    return rows, pruned or 0


def store_bytes(store: Path) -> tuple[int, int]:
    """The store file's size and its WAL's."""
    wal = store.with_name(store.name + "-wal")
    return store.stat().st_size, wal.stat().st_size if wal.exists() else 0


def bench_retention(quick: bool = False) -> Result:
    """A steady fleet on a server keeping little: the store's size levels off."""
    if quick:
        n, minutes, keep, every, beat, meter, session = 20, 0.4, 4.0, 2.0, 1.0, 1.0, 3.0
    else:
        n, minutes, keep, every, beat, meter, session = 1000, 10.0, 120.0, 30.0, 10.0, 10.0, 120.0
    days = str(keep / DAY)
    res = Result(
        "retention",
        f"Retention: {n:,} stations for {minutes:g} minutes, a Heartbeat and MeterValues every "
        f"{beat:g} s, everything kept {keep:g} s",
        command("retention", quick),
        load=loadavg(),
    )
    flags = ("--keep-events-days", days, "--keep-meter-values-days", days)
    flags += ("--keep-actions-days", days)
    sim = ("--sessions", "--session-interval", "2", "--session-duration", str(session))
    sim += ("--meter-interval", str(meter))
    samples: list[dict] = []
    with workdir("retention") as root, edrvctl_server(root, n, *flags) as srv:
        seeded = store_bytes(srv.store)
        with (
            FleetProcess(srv.ocpp_url, n, root, heartbeat=beat, extra=sim) as fleet,
            srv.api() as api,
        ):
            require_fleet(api, fleet, n, "retention")
            probe = start_probe(srv)
            started = time.monotonic()
            cpu0 = cpu_s(srv.proc.pid)
            try:
                with profiled(srv.proc.pid, "retention"):
                    while (elapsed := time.monotonic() - started) < minutes * 60 + 0.5:
                        for i in range(10):  # a few Actions, finished at once
                            api.post(f"/v1.1/chargestations/{endpoint(i)}/clear_cache?wait=0")
                        metrics = scraped(srv.api_url)
                        db, wal = store_bytes(srv.store)
                        rows, retained = store_rows(srv.store)
                        samples.append(
                            {
                                "s": elapsed,
                                "db": db,
                                "wal": wal,
                                "rows": rows,
                                "retained": retained,
                                "pruned": sum(
                                    v
                                    for k, v in metrics.items()
                                    if k.startswith("edrvctl_retention_pruned_total")
                                ),
                                "longest": metrics["edrvctl_retention_longest_batch_seconds"],
                                "online": metrics["edrvctl_stations_online"],
                            }
                        )
                        log(
                            f"retention: {elapsed:.0f} s, store {db / 2**20:.1f} MiB + WAL "
                            f"{wal / 2**20:.1f} MiB, {samples[-1]['rows']}, pruned "
                            f"{samples[-1]['pruned']:.0f}"
                        )
                        time.sleep(max(0.0, every - (time.monotonic() - started - elapsed)))
            finally:
                latencies = stop_probe(probe)
            cpu = cpu_s(srv.proc.pid) - cpu0
            metrics = scraped(srv.api_url)
            status = fleet.status()
    last, half = samples[-1], samples[len(samples) // 2]
    # without retention the store would hold every row it was given: those it holds now and
    # those pruned, at the bytes per row of what it holds now
    held = sum(last["rows"].values())
    per_row = (last["db"] - seeded[0]) / held if held else 0
    unpruned = seeded[0] + (held + last["pruned"]) * per_row
    batches = metrics.get("edrvctl_retention_batch_duration_seconds_count", 0)
    batch_sum = metrics.get("edrvctl_retention_batch_duration_seconds_sum", 0)
    msgs = status.get("sent", 0)
    res.figures = {
        "stations": n,
        "seconds": last["s"],
        "keep_s": keep,
        "seeded_bytes": seeded[0],
        "db_bytes_half": half["db"],
        "db_bytes_end": last["db"],
        "wal_bytes_end": last["wal"],
        "db_bytes_without_retention_est": unpruned,
        "rows_end": last["rows"],
        "pruned": last["pruned"],
        "longest_batch_ms": 1000 * last["longest"],
        "mean_batch_ms": 1000 * batch_sum / batches if batches else None,
        "batches": batches,
        "probe_p50_ms": pct(latencies, 0.5) if latencies else None,
        "probe_p99_ms": pct(latencies, 0.99) if latencies else None,
        "probe_max_ms": max(latencies) if latencies else None,
        "server_cpu_pct": 100 * cpu / last["s"],
        "station_messages": msgs,
        "online_end": last["online"],
    }
    mib = 2**20
    res.header = (
        "after",
        "store",
        "WAL",
        "of it events, meter values, actions",
        "events",
        "meter values",
        "actions",
        "sessions",
        "pruned",
    )
    res.rows = [
        (
            f"{x['s']:.0f} s",
            f"{x['db'] / mib:.1f} MiB",
            f"{x['wal'] / mib:.1f} MiB",
            f"{x['retained'] / mib:.1f} MiB",
            f"{x['rows']['events']:,}",
            f"{x['rows']['meter values']:,}",
            f"{x['rows']['actions']:,}",
            f"{x['rows']['sessions']:,}",
            f"{x['pruned']:,.0f}",
        )
        for x in samples
    ]
    # what retention prunes must stop growing once everything is `keep` old: its peak in the
    # last half of the run against its peak from 2 x keep to half-time (sessions end in waves)
    early = [x["retained"] for x in samples if 2 * keep <= x["s"] < half["s"]] or [half["retained"]]
    late = [x["retained"] for x in samples if x["s"] >= half["s"]]
    growth = max(late) / max(early) - 1 if max(early) else 0
    res.figures["retained_peak_early_bytes"] = max(early)
    res.figures["retained_peak_late_bytes"] = max(late)
    res.checks = [
        (
            f"what retention prunes levels off: its peak {max(early) / mib:.1f} MiB from "
            f"{2 * keep:g} s to {half['s']:.0f} s, {max(late) / mib:.1f} MiB after "
            f"({100 * growth:+.1f}%); the file {half['db'] / mib:.1f} -> {last['db'] / mib:.1f} "
            f"MiB (sessions are kept), against ~{unpruned / mib:.1f} MiB without retention "
            f"(every row pruned kept, at {per_row:.0f} bytes a row)",
            growth < 0.10,
        ),
        (
            f"no pruning batch holds the store long: the longest took "
            f"{1000 * last['longest']:.1f} ms ({batches:.0f} batches, mean "
            f"{res.figures['mean_batch_ms'] or 0:.2f} ms)",
            last["longest"] < 0.1,
        ),
        (f"all {n:,} stations stayed online: {last['online']:.0f}", last["online"] == n),
    ]
    res.notes = [
        f"Seeded store: {seeded[0] / mib:.1f} MiB ({n:,} stations). Flags: {' '.join(flags)} "
        f"({keep:g} s). Stations: bench/stations.py {' '.join(sim)} --heartbeat {beat:g}: "
        f"back-to-back {session:g} s sessions on connector 1 (1-3 s apart), MeterValues every "
        f"{meter:g} s during them; {msgs:,} CALLs sent in all. 10 clear_cache Actions every "
        f"{every:g} s. Sessions are billing records and are not pruned (their meter values "
        "are).",
        f"The API probe (GET /v1.1/chargestations?paginate_limit=1 every 50 ms, one at a time) "
        f"meanwhile: p50 {res.figures['probe_p50_ms'] or 0:.1f} ms, p99 "
        f"{res.figures['probe_p99_ms'] or 0:.1f} ms, max {res.figures['probe_max_ms'] or 0:.1f} "
        f"ms over {len(latencies):,} requests. Server CPU {res.figures['server_cpu_pct']:.0f}% "
        "of one core.",
        "The file never shrinks (no VACUUM): pages freed by pruning are reused, so its size "
        "stays at the high-water mark of what is kept.",
    ]
    res.load += f" -> {loadavg()}"
    return res


# --------------------------------------------------------------------------- 8. peers

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edrvctl-bench"
PEERS = HERE / "peers"  # the Node.js peer: server.js, package.json, package-lock.json
# How `edrvctl serve` is asked for the standard library's loop (it runs on uvloop when that is
# installed). Whether it did is read from the server's memory map.
ASYNCIO_ENV = {"EDRVCTL_LOOP": "asyncio"}
# What issue 15 asks of edrvctl, as ratios of medians in one run
PEER_GAIN, BEFORE_GAIN = 1.2, 1.5


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder of CACHE at a time (the smoke tests run in parallel workers)."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def digest(*parts: bytes) -> str:
    import hashlib

    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def built(name: str, *libs: str) -> Path | None:
    """bench/NAME.c compiled with `cc -O2` into CACHE (named by the source's hash, so an edit
    rebuilds it); None when there is no C compiler or it does not build."""
    source = HERE / f"{name}.c"
    exe = CACHE / f"{name}-{digest(source.read_bytes(), ' '.join(libs).encode())}"
    if exe.exists():
        return exe
    if not shutil.which("cc"):
        return None
    with cache_lock():
        if not exe.exists():
            tmp = exe.with_suffix(".tmp")
            out = subprocess.run(
                ["cc", "-O2", "-o", str(tmp), str(source), *libs], capture_output=True, text=True
            )
            if out.returncode:
                log(f"peers: cc {source.name} failed: {out.stderr[-1000:]}")
                return None
            tmp.rename(exe)
    return exe


def node_modules() -> Path | None:
    """bench/peers' dependencies installed with `npm ci` into CACHE (named by the lock file's
    hash and node's version, for the native better-sqlite3), or None without node and npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    lock = (PEERS / "package-lock.json").read_bytes()
    home = CACHE / f"node-{digest(lock, version.stdout.strip().encode())}"
    with cache_lock():
        if not home.exists():
            tmp = home.with_name(home.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in ("package.json", "package-lock.json"):
                shutil.copy(PEERS / f, tmp / f)
            log(f"peers: npm ci in {tmp} (better-sqlite3 may build from source: a minute)")
            out = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=tmp, capture_output=True, text=True
            )
            if out.returncode:
                raise RuntimeError(f"npm ci for bench/peers failed: {out.stderr[-2000:]}")
            tmp.rename(home)
    return home / "node_modules"


@dataclass(frozen=True)
class Peer:
    """A server bench_peers measures: `edrvctl serve` of a Contender (with env and flags), the
    Node peer (with or without a store) or the C echo. `start(root, template)` yields (port,
    pid, store or None)."""

    key: str
    label: str
    start: Callable[[Path, Path | None], contextlib.AbstractContextManager]
    contender: Contender | None = None  # an edrvctl: its template store is seeded for it


def uses_uvloop(pid: int) -> bool:
    """Whether process pid has uvloop's extension module mapped: it imported uvloop."""
    with contextlib.suppress(OSError):
        return "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()
    return False


def edrvctl_peer(c: Contender, key: str, label: str, env: dict | None = None) -> Peer:
    """`edrvctl serve` of c over a copy of its seeded template store, with env added."""

    @contextlib.contextmanager
    def start(root: Path, template: Path | None) -> Iterator[tuple[int, int, Path | None]]:
        store = root / "store" / "edrvctl.db"
        store.parent.mkdir(parents=True)
        shutil.copy(template, store)
        srv = start_server(
            root,
            *NO_LIMITS,
            "--heartbeat-interval",
            str(HEARTBEAT),
            *c.flags,
            store=store,
            env={**tree_env(c.tree, hermetic_env(root)), **(env or {})},
        )
        try:
            yield urlsplit(srv.ocpp_url).port, srv.proc.pid, store
        finally:
            if srv.proc.poll() is None:
                srv.stop(timeout=60)

    return Peer(key, label, start, c)


def process_peer(key: str, label: str, argv: list[str], env: dict | None = None) -> Peer:
    """A server started as argv ({port} and {root} filled in), ready once it prints "ready";
    its store, if it has one, at the path given after --store."""

    @contextlib.contextmanager
    def start(root: Path, _template: Path | None) -> Iterator[tuple[int, int, Path | None]]:
        port = free_port()
        args = [a.format(port=port, root=root) for a in argv]
        store = Path(args[args.index("--store") + 1]) if "--store" in args else None
        err = root / f"{key}.log"
        with open(err, "w") as f:
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
                env={**os.environ, **(env or {})},
            )
        try:
            if proc.stdout.readline().strip() != "ready":
                proc.wait(10)
                raise RuntimeError(f"{label} did not start: {err.read_text()[-2000:]}")
            yield port, proc.pid, store
        finally:
            stop_process(proc)

    return Peer(key, label, start)


def peers(before: Contender | None, notes: list[str]) -> list[Peer]:
    """What bench_peers measures, in the order each round runs them; what it cannot, in notes."""
    c = current()
    out = [edrvctl_peer(before, "before", before.label)] if before else []
    out.append(edrvctl_peer(c, "edrvctl", "edrvctl"))
    if importlib.util.find_spec("uvloop"):  # edrvctl runs on it when installed
        out.append(edrvctl_peer(c, "asyncio", "edrvctl on the asyncio loop", ASYNCIO_ENV))
    else:
        notes.append("uvloop is not importable here: edrvctl runs on the asyncio loop.")
    modules = node_modules()
    if modules:
        server = ["node", str(PEERS / "server.js"), "{port}"]
        env = {"NODE_PATH": str(modules)}
        out.append(
            process_peer(
                "node_sqlite", "Node ocpp-rpc + SQLite", [*server, "--store", "{root}/peer.db"], env
            )
        )
        out.append(process_peer("node", "Node ocpp-rpc, no store", server, env))
    else:
        notes.append("node or npm is not installed: no Node ocpp-rpc rows.")
    echo = built("echo", "-lcrypto")
    if echo:
        out.append(process_peer("echo", "C echo (the limit)", [str(echo), "{port}"]))
    else:
        notes.append("bench/echo.c did not build (cc, OpenSSL's libcrypto): no C echo row.")
    return out


def run_loadgen(loadgen: Path, port: int, n: int, seconds: float, warmup: float, pid: int) -> dict:
    out = subprocess.run(
        [
            str(loadgen),
            "127.0.0.1",
            str(port),
            "--stations",
            str(n),
            "--seconds",
            str(seconds),
            "--warmup",
            str(warmup),
            "--server-pid",
            str(pid),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def bench_peers(
    quick: bool = False,
    before: Contender | None = None,
    rounds: int | None = None,
    seconds: float | None = None,
    only: tuple[str, ...] = (),
) -> Result:
    """edrvctl beside what a user would run instead, and beside the machine's limit: calls/s of
    the same frames from 100 and 1,000 stations (bench/loadgen.c), interleaved rounds, medians."""
    sizes, default_rounds, default_seconds, warmup = (
        ((5, 10), 1, 0.5, 0.2) if quick else ((100, 1000), 3, 10.0, 1.0)
    )
    rounds, seconds = rounds or default_rounds, seconds or default_seconds
    res = Result(
        "peers",
        "Peers: edrvctl beside a Node.js ocpp-rpc central system and a C echo, same frames, "
        "C load generator",
        command("peers", quick, before)
        + (f" --rounds {rounds}" if rounds != default_rounds else "")
        + (f" --seconds {seconds:g}" if seconds != default_seconds else "")
        + (f" --only {','.join(only)}" if only else ""),
        load=loadavg(),
        versions=versions(before),
        header=(
            "server",
            "stations",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/call",
            "server CPU",
            "load generator CPU",
            "server waiting for a CPU",
            "calls/s of each round",
            "failed / errors",
        ),
    )
    loadgen = built("loadgen")
    if loadgen is None:
        raise RuntimeError("peers: bench/loadgen.c did not build (is there a C compiler, cc?)")
    notes: list[str] = []
    measured = [p for p in peers(before, notes) if not only or p.key in only]
    runs: dict[tuple[str, int], list[dict]] = {(p.key, n): [] for p in measured for n in sizes}
    stored: dict[str, list[tuple[int, int]]] = {}  # key -> (MeterValues rows, calls) per run
    with workdir("peers") as root:
        templates = {}
        for p in measured:
            if p.contender:
                templates[p.key] = root / f"template-{p.key}.db"
                seed(templates[p.key], max(sizes), p.contender)
        for r in range(rounds):
            for p in list(measured):
                with (
                    workdir(f"peers-{p.key}") as proot,
                    p.start(proot, templates.get(p.key)) as (port, pid, store),
                ):
                    if p.key == "asyncio" and uses_uvloop(pid):
                        notes.append(
                            "`edrvctl on the asyncio loop` not measured: this edrvctl runs on "
                            "uvloop even when asked not to (EDRVCTL_LOOP=asyncio)."
                        )
                        measured.remove(p)
                        continue
                    for n in sizes:
                        rows0 = stored_meter_values(store) if store else None
                        q0, t0 = run_delay_s(pid), time.monotonic()
                        label = f"peers-{p.key}-{n}-round{r + 1}"
                        # py-spy records Python servers only
                        with profiled(pid, label) if p.contender else contextlib.nullcontext():
                            out = run_loadgen(loadgen, port, n, seconds, warmup, pid)
                        # the share of the run its main thread spent waiting for a CPU: the
                        # machine's noise, as this server felt it
                        out["waited_pct"] = 100 * (run_delay_s(pid) - q0) / (time.monotonic() - t0)
                        if rows0 is not None:
                            stored.setdefault(p.key, []).append(
                                (stored_meter_values(store) - rows0, out["calls"])
                            )
                        runs[(p.key, n)].append(out)
                        log(
                            f"peers round {r + 1}: {p.label}, {n} stations: "
                            f"{out['calls_per_s']:.0f} calls/s, p99 {out['p99_ms']} ms, "
                            f"server {out['server_cpu_us_per_call']} µs/call"
                        )

    def med(key: str, n: int, metric: str) -> float:
        return statistics.median(x[metric] for x in runs[(key, n)])

    keys = {p.key for p in measured}
    for n in sizes:
        for p in measured:
            rs = runs[(p.key, n)]
            res.rows.append(
                (
                    p.label,
                    f"{n:,}",
                    f"{med(p.key, n, 'calls_per_s'):,.0f}",
                    f"{med(p.key, n, 'p50_ms'):.2f}",
                    f"{med(p.key, n, 'p99_ms'):.2f}",
                    f"{med(p.key, n, 'server_cpu_us_per_call'):.1f}",
                    f"{med(p.key, n, 'server_cpu_pct'):.0f}%",
                    f"{med(p.key, n, 'client_cpu_pct'):.0f}%",
                    f"{med(p.key, n, 'waited_pct'):.0f}%",
                    ", ".join(f"{x['calls_per_s']:.0f}" for x in rs),
                    f"{sum(x['failed'] for x in rs)} / {sum(x['errors'] for x in rs)}",
                )
            )
            for metric in ("calls_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_call"):
                res.figures[f"{p.key}_{n}_{metric}"] = med(p.key, n, metric)
            res.figures[f"{p.key}_{n}_client_cpu_pct"] = med(p.key, n, "client_cpu_pct")
            res.figures[f"{p.key}_{n}_failed_errors"] = sum(x["failed"] + x["errors"] for x in rs)
        for a, b, what in (
            ("edrvctl", "node_sqlite", "edrvctl / Node ocpp-rpc + SQLite"),
            ("edrvctl", "node", "edrvctl / Node ocpp-rpc, no store"),
            ("edrvctl", "before", f"edrvctl / {before.label}" if before else ""),
            ("edrvctl", "asyncio", "edrvctl / edrvctl on the asyncio loop"),
            ("edrvctl", "echo", "edrvctl / C echo"),
        ):
            if a in keys and b in keys:
                ratio = med(a, n, "calls_per_s") / med(b, n, "calls_per_s")
                res.figures[f"ratio_{a}_{b}_{n}"] = ratio
                res.rows.append(
                    (
                        what,
                        f"{n:,}",
                        f"{ratio:.2f}×",
                        change(med(b, n, "p50_ms"), med(a, n, "p50_ms")),
                        change(med(b, n, "p99_ms"), med(a, n, "p99_ms")),
                        change(
                            med(b, n, "server_cpu_us_per_call"),
                            med(a, n, "server_cpu_us_per_call"),
                        ),
                        "",
                        "",
                        "",
                        "",
                        "",
                    )
                )
    bad = {p.label: res.figures[f"{p.key}_{n}_failed_errors"] for p in measured for n in sizes}
    res.checks.append(
        (
            "every station connected and every call answered with a CALLRESULT: "
            + (", ".join(f"{k} {v} failed or errors" for k, v in bad.items() if v) or "yes"),
            not any(bad.values()),
        )
    )
    busy = max(
        res.figures[f"{p.key}_{n}_client_cpu_pct"]
        for p in measured
        if p.key != "echo"
        for n in sizes
    )
    res.checks.append(
        (
            f"the load generator is not the bottleneck: at most {busy:.0f}% of a core against "
            "any server but the C echo (target < 70%)",
            busy < 70,
        )
    )
    big = max(sizes)
    for n in sizes:
        if "node_sqlite" in keys:
            g = res.figures[f"ratio_edrvctl_node_sqlite_{n}"]
            res.checks.append(
                (
                    f"{n:,} stations: edrvctl {g:.2f}× the calls/s of Node ocpp-rpc + SQLite "
                    f"(target >= {PEER_GAIN:g}×)",
                    g >= PEER_GAIN,
                )
            )
        if before:
            g = res.figures[f"ratio_edrvctl_before_{n}"]
            res.checks.append(
                (
                    f"{n:,} stations: edrvctl {g:.2f}× the calls/s of {before.label} "
                    f"(target >= {BEFORE_GAIN:g}×)",
                    g >= BEFORE_GAIN,
                )
            )
    if "node_sqlite" in keys:
        mine, theirs = med("edrvctl", big, "p99_ms"), med("node_sqlite", big, "p99_ms")
        res.checks.append(
            (
                f"{big:,} stations: edrvctl's p99 {mine:.2f} ms, no worse than Node ocpp-rpc + "
                f"SQLite's {theirs:.2f} ms",
                mine <= theirs,
            )
        )
    res.notes = [
        (
            f"{rounds} round(s), each {' -> '.join(p.label for p in measured)}, a fresh server "
            f"per round and both sizes on it; each run {warmup:g} s warm-up + {seconds:g} s "
            "measured by bench/loadgen.c (C, one thread, epoll: load.py's frames after a "
            "BootNotification, one CALL at a time per station, as fast as answered); medians "
            "over rounds. Latency is the load generator's, from sending a CALL to reading its "
            "answer. µs/call = server CPU time (/proc/PID/stat) / calls answered, which the "
            "machine's noise barely moves; CPU columns: share of one core in the measured window; "
            "waiting for a CPU: the server's main thread's run-queue time (/proc/PID/schedstat) "
            "as a share of the whole run, connecting included: how much other processes took."
        ),
        (
            "edrvctl runs with " + " ".join(NO_LIMITS) + " on a store seeded with the stations. "
            "bench/peers/server.js: ocpp-rpc's RPCServer with strictMode (every CALL and every "
            "reply checked against the OCPP 1.6 schemas); + SQLite: better-sqlite3 (WAL, "
            "synchronous=NORMAL) doing edrvctl's writes, each committed before its answer. "
            "The C echo (bench/echo.c) answers every CALL with a canned CALLRESULT: no parsing, "
            "no validation, no store."
        ),
        *notes,
    ]
    for key, got in stored.items():
        rows, calls = (sum(x[i] for x in got) for i in (0, 1))
        res.figures[f"{key}_meter_values_stored"] = rows
        label = next(p.label for p in measured if p.key == key)
        res.notes.append(
            f"Persisted: {label} stored {rows:,} MeterValues rows for {calls:,} answered calls "
            "(MeterValues are 1/4 of the mix; warm-up calls are stored too)."
        )
    res.load += f" -> {loadavg()}"
    return res


BENCHMARKS: dict[str, Callable[..., Result]] = {
    "held": bench_held,
    "throughput": bench_throughput,
    "csconfig": bench_csconfig,
    "storm": bench_storm,
    "cli": bench_cli,
    "commands": bench_commands,
    "retention": bench_retention,
    "peers": bench_peers,
    "starved": bench_starved,
}
# the benchmarks that take --before
COMPARED = ("held", "throughput", "csconfig", "peers", "starved")


def main(argv: list[str] | None = None) -> list[Result]:
    global PROFILE_DIR, LOADGEN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", nargs="?", default="all", choices=[*BENCHMARKS, "all"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke tests")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the server into DIR during each measured phase",
    )
    ap.add_argument(
        "--before",
        metavar="REV",
        help="a git revision (main~5, a hash): its edrvctl/ is measured too, beside "
        f"the current one, in {', '.join(COMPARED)}",
    )
    ap.add_argument(
        "--frame-log",
        action="store_true",
        help="throughput only: edrvctl with `serve --frame-log off` and `all`, side by side in "
        "every round (instead of bare, ocpp and edrvctl)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="throughput and peers only: rounds (default 3; medians)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help="peers only: seconds measured per run (default 10)",
    )
    ap.add_argument(
        "--only",
        metavar="KEYS",
        help="peers only: the servers to run, comma-separated, of before, edrvctl, asyncio "
        "(edrvctl on the asyncio loop), node_sqlite, node, echo",
    )
    ap.add_argument(
        "--loadgen",
        type=Path,
        nargs="?",
        const=BUILT,
        metavar="BIN",
        help="throughput and starved: drive the servers with a C load generator instead of "
        "bench/load.py: bench/loadgen.c built here (no BIN), or BIN (same frames as "
        "bench/load.py, same JSON line, --first K)",
    )
    ap.add_argument(
        "--loops",
        action="store_true",
        help="throughput: also the current edrvctl on the standard asyncio loop "
        "(EDRVCTL_LOOP=asyncio), beside uvloop",
    )
    a = ap.parse_args(argv)
    if a.rounds is not None and (a.which not in ("throughput", "peers") or a.rounds < 1):
        ap.error("--rounds N (N >= 1) applies to throughput and peers")
    if a.seconds is not None and (a.which != "peers" or a.seconds <= 0):
        ap.error("--seconds S (S > 0) applies to peers")
    if a.only is not None and a.which != "peers":
        ap.error("--only applies to peers")
    if a.before and a.which not in (*COMPARED, "all"):
        ap.error(f"--before applies to {', '.join(COMPARED)} (and all)")
    if a.frame_log and (a.which != "throughput" or a.before):
        ap.error("--frame-log applies to throughput, without --before")
    PROFILE_DIR = a.profile
    if a.loadgen == BUILT:
        a.loadgen = built("loadgen")
        if a.loadgen is None:
            ap.error("--loadgen: bench/loadgen.c did not build (is there a C compiler, cc?)")
    LOADGEN = a.loadgen.resolve() if a.loadgen else None
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    names = list(BENCHMARKS) if a.which == "all" else [a.which]
    results = []
    with contextlib.ExitStack() as stack:
        before = None
        if a.before:
            before = export_revision(a.before, stack.enter_context(workdir("before")))
            log(
                f"before: {before.label}, {before.about}, exported to {before.tree}; "
                f"after: {current().about}"
            )
        for name in names:
            log(f"{name} ...")
            t0 = time.monotonic()
            kwargs: dict = {"before": before} if name in COMPARED else {}
            if a.frame_log:
                kwargs["frame_log"] = True
            if a.rounds:
                kwargs["rounds"] = a.rounds
            if a.seconds:
                kwargs["seconds"] = a.seconds
            if a.loops:
                kwargs["loops"] = True
            if a.only:
                kwargs["only"] = tuple(a.only.split(","))
            results.append(BENCHMARKS[name](quick=a.quick, **kwargs))
            print(results[-1].markdown(), flush=True)
            log(f"{name} done in {time.monotonic() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
