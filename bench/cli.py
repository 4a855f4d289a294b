"""CLI start-up and list speed: whole-process wall time, medians, side by side in one run.

    python bench/cli.py [--runs 15] [--stations 10000] [--before REV ...]

Measures `python -c pass`, `python -c "import typer"`, `edrvctl --help`, a TAB completion
request, and `edrvctl cs list --all -o json` over N stations served by a real `edrvctl serve`
(seeded straight into its SQLite store), and checks the targets of issues 2 and 15. The API's
own share of the list is measured too: the same pages read one after the other over one
kept-alive connection from this process. With --before REV (repeatable), REV's edrvctl/ (git
archive) runs the same list against the same server, interleaved run by run, and its output is
compared byte for byte with this tree's in every format.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


# When main's stations were made: long past, so that `-o wide`'s CREATED column ("2160d ago")
# is the same in the two runs whose output is compared (made seconds before, it ticked from
# "9s ago" to "10s ago" between them: DIFFERENT, though no byte of the CLI had changed).
CREATED = "2020-01-01T00:00:00.000Z"


def seed(store: Path | str, n: int, now: str | None = None) -> None:
    """Stations BENCH000000... written straight into a new store, through the store of the
    edrvctl package imported: the synchronous one (transaction()) or the async one (unit()).
    `now`: when they were made (by default, now)."""
    from edrvctl import model
    from edrvctl.store import open_store

    s = open_store(store)  # a file, or a postgresql:// URL (bench/store.py)
    now = now or model.utcnow()

    def docs():
        for i in range(n):
            doc = model.new_station(model.StationCreate(endpoint=f"BENCH{i:06d}"), now)
            doc.update(
                manufacturer="ACME",
                model="X1",
                status="Available",
                bootInfo={
                    "chargePointVendor": "ACME",
                    "chargePointModel": "X1",
                    "firmwareVersion": "1.2.3",
                },
            )
            for c in (1, 2):
                model.upsert_connector(doc, c, c, now, status="Available", errorCode="NoError")
            yield doc

    if hasattr(s, "transaction"):
        with s.transaction():
            for doc in docs():
                s.create_station(doc)
        s.close()
        return

    async def write() -> None:
        async with s.unit() as unit:
            for doc in docs():
                await unit.create_station(doc)
        await s.close()

    asyncio.run(write())


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict, runs: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each run; with `cpu`, the CPU seconds (user + system) of each appended
    to it: what the process itself spent, less sensitive to a busy machine than its wall time."""
    out = []
    for _ in range(runs):
        c0, t0 = children_cpu(), time.perf_counter()
        r = subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(children_cpu() - c0)
        if r.returncode != 0:
            raise SystemExit(f"{cmd} failed: {r.stderr.decode()[-500:]}")
    return out


def api_pages(api_url: str, token: str, size: int = 1000) -> float:
    """Seconds to read every page of the station list, one after the other, as the CLI asks
    for them, over one kept-alive connection: the API's own time (and the HTTP client's)."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    u = urlsplit(api_url)
    conn = HTTPConnection(u.hostname or "", u.port, timeout=60)
    t0 = time.perf_counter()
    page, more = 1, True
    while more:
        conn.request(
            "GET",
            f"/v1.1/chargestations?paginate_limit={size}&paginate_page={page}",
            headers={"Authorization": f"Bearer {token}"},
        )
        body = conn.getresponse().read()
        more = b'"hasNext":true' in body[:300]  # the envelope's fields come before the result
        page += 1
    took = time.perf_counter() - t0
    conn.close()
    return took


def export(rev: str, dest: Path) -> str:
    """REV's edrvctl/ into dest (byte-compiled); its short hash and subject."""
    repo = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(repo)]
    desc = subprocess.run(
        [*git, "log", "-1", "--format=%h %s", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.Popen([*git, "archive", rev, "edrvctl"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise SystemExit(f"--before {rev}: git archive failed")
    import compileall

    compileall.compile_dir(str(dest / "edrvctl"), quiet=1)
    return desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--stations", type=int, default=10000)
    ap.add_argument(
        "--before",
        metavar="REV",
        action="append",
        default=[],
        help="also run REV's CLI (git revision)",
    )
    args = ap.parse_args()

    from conftest import hermetic_env, start_server

    edrvctl = shutil.which("edrvctl") or sys.exit("install the project first: pip install -e .")
    # Byte-compile the package first, as `pip install` of a wheel does: with an editable install
    # and PYTHONDONTWRITEBYTECODE=1 (set on this machine) every start would compile ~10 modules
    # from source (~10 ms), which no installed copy pays.
    import compileall

    import edrvctl as package

    compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="edrvctl-bench-"))
    store = root / "store" / "edrvctl.db"
    t0 = time.perf_counter()
    seed(store, args.stations, CREATED)
    print(f"seeded {args.stations} stations in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    srv = start_server(root, store=store)
    try:
        env = hermetic_env(root)
        env.update(EDRV_API_URL=srv.api_url, EDRV_TOKEN=srv.token)
        complete_env = dict(
            env, _EDRVCTL_COMPLETE="complete_bash", COMP_WORDS="edrvctl cs ins", COMP_CWORD="2"
        )
        py = sys.executable
        list_cmd = [edrvctl, "cs", "list", "--all"]
        list_name = f"edrvctl cs list --all -o json ({args.stations})"
        cases = [
            ("python -c pass", [py, "-c", "pass"], env),
            ("python -c 'import typer'", [py, "-c", "import typer"], env),
            ("edrvctl --help", [edrvctl, "--help"], env),
            ("completion request (bash)", [edrvctl], complete_env),
            (list_name, [*list_cmd, "-o", "json"], env),
        ]
        same: list[str] = []
        for i, rev in enumerate(args.before):
            before_dir = root / f"before-{i}"
            before_dir.mkdir()
            about = export(rev, before_dir)
            before_env = dict(env, PYTHONPATH=str(before_dir))
            print(f"before: {about}; after: this tree", file=sys.stderr)
            cases.append((f"before ({rev}): {list_name}", [*list_cmd, "-o", "json"], before_env))
            for fmt in ("json", "yaml", "plain", "wide", "table", "ids"):
                cmd = [*list_cmd, "-q"] if fmt == "ids" else [*list_cmd, "-o", fmt]
                outs = [
                    subprocess.run(cmd, env=e, capture_output=True, check=True).stdout
                    for e in (before_env, env)
                ]
                size = f"{len(outs[1]):,} bytes"
                same.append(
                    f"{fmt}, {rev} and this tree: "
                    f"{'same bytes' if outs[0] == outs[1] else 'DIFFERENT'} ({size})"
                )
        # Interleave the cases run by run, so machine noise hits them alike.
        samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        samples["API alone: the same pages, one after the other"] = []
        lists = [name for name, _, _ in cases if name.endswith(list_name)]
        for name in lists:
            samples[f"{name}: CPU (user + system)"] = []
        for _ in range(args.runs):
            for name, cmd, e in cases:
                cpu = samples[f"{name}: CPU (user + system)"] if name in lists else None
                samples[name] += timed(cmd, e, 1, cpu)
            samples["API alone: the same pages, one after the other"].append(
                api_pages(srv.api_url, srv.token)
            )
        med = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    base, typer_ms = med["python -c pass"], med["python -c 'import typer'"]
    help_ms, comp_ms = med["edrvctl --help"], med["completion request (bash)"]
    list_ms = med[list_name]
    api_ms = med["API alone: the same pages, one after the other"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.runs} interleaved runs, medians; load average "
        f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} (1 min, start -> end)"
    )
    print("| command | median ms |\n|---|---:|")
    for name, ms in med.items():
        print(f"| {name} | {ms:.1f} |")
    checks = [
        (
            f"--help / import typer = {help_ms / typer_ms:.2f}x (target <= 1.3x)",
            help_ms <= 1.3 * typer_ms,
        ),
        (
            f"completion / python -c pass = {comp_ms / base:.2f}x (target <= 2.5x)",
            comp_ms <= 2.5 * base,
        ),
        (
            f"list --all -o json over {args.stations} = {list_ms / 1000:.2f} s (target <= 1.5 s)",
            list_ms <= 1500,
        ),
        (
            f"list --all -o json over {args.stations} = {list_ms:.0f} ms, of which the API "
            f"{api_ms:.0f} ms (issue 15: target <= 200 ms)",
            list_ms <= 200,
        ),
    ]
    for line in same:
        print(f"- output, {line}")
    for text, ok in checks:
        print(f"- {'met' if ok else 'MISSED'}: {text}")


if __name__ == "__main__":
    main()
