"""CLI start-up and list speed: whole-process wall time, medians, side by side in one run.

    python bench/cli.py [--runs 15] [--stations 10000]

Measures `python -c pass`, `python -c "import typer"`, `edrvctl --help`, a TAB completion
request, and `edrvctl cs list --all -o json` over N stations served by a real `edrvctl serve`
(seeded straight into its SQLite store), and checks the targets of issue 2.
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


def seed(store: Path | str, n: int) -> None:
    """Stations BENCH000000... written straight into a new store, through the store of the
    edrvctl package imported: the synchronous one (transaction()) or the async one (unit())."""
    from edrvctl import model
    from edrvctl.store import open_store

    s = open_store(store)  # a file, or a postgresql:// URL (bench/store.py)
    now = model.utcnow()

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


def timed(cmd: list[str], env: dict, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{cmd} failed: {r.stderr.decode()[-500:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--stations", type=int, default=10000)
    args = ap.parse_args()

    from conftest import hermetic_env, start_server

    edrvctl = shutil.which("edrvctl") or sys.exit("install the project first: pip install -e .")
    # Byte-compile the package first, as `pip install` of a wheel does: with an editable install
    # and PYTHONDONTWRITEBYTECODE=1 (set on this machine) every start would compile ~10 modules
    # from source (~10 ms), which no installed copy pays.
    import compileall

    import edrvctl as package

    compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)
    root = Path(tempfile.mkdtemp(prefix="edrvctl-bench-"))
    store = root / "store" / "edrvctl.db"
    t0 = time.perf_counter()
    seed(store, args.stations)
    print(f"seeded {args.stations} stations in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    srv = start_server(root, store=store)
    try:
        env = hermetic_env(root)
        env.update(EDRV_API_URL=srv.api_url, EDRV_TOKEN=srv.token)
        complete_env = dict(
            env, _EDRVCTL_COMPLETE="complete_bash", COMP_WORDS="edrvctl cs ins", COMP_CWORD="2"
        )
        py = sys.executable
        cases = [
            ("python -c pass", [py, "-c", "pass"], env),
            ("python -c 'import typer'", [py, "-c", "import typer"], env),
            ("edrvctl --help", [edrvctl, "--help"], env),
            ("completion request (bash)", [edrvctl], complete_env),
            (
                f"edrvctl cs list --all -o json ({args.stations})",
                [edrvctl, "cs", "list", "--all", "-o", "json"],
                env,
            ),
        ]
        # Interleave the cases run by run, so machine noise hits them alike.
        samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(args.runs):
            for name, cmd, e in cases:
                samples[name] += timed(cmd, e, 1)
        med = {name: statistics.median(v) * 1000 for name, v in samples.items()}
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)

    base, typer_ms = med["python -c pass"], med["python -c 'import typer'"]
    help_ms, comp_ms = med["edrvctl --help"], med["completion request (bash)"]
    list_ms = med[cases[-1][0]]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.runs} interleaved runs, medians"
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
    ]
    for text, ok in checks:
        print(f"- {'met' if ok else 'MISSED'}: {text}")


if __name__ == "__main__":
    main()
