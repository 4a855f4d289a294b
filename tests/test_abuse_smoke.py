"""Smoke test of bench/abuse.py: every hostile flood in --quick mode (~1.2 s each, a server of
its own each), run as a user runs it. The report must parse (one Markdown section per flood, in
bench/run.py's style) and no flood may have crashed the server. The targets themselves are not
asserted: the floods are tiny and the machine is shared and noisy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import sqlite_only
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]
FLOODS = [
    "unknown",
    "subprotocol",
    "pings",
    "datatransfer",
    "connectors",
    "report",
    "passwords",
    "halfopen",
]
ROW = re.compile(r"^\| (.+?) \| (.+) \|$")
CHECK = re.compile(r"^- \*\*(met|MISSED)\*\*: (.+)$")


def parse(md: str) -> list[dict]:
    """The report's sections: title, command, machine line, table rows, checks."""
    out = []
    for text in re.split(r"^(?=## )", md, flags=re.MULTILINE):
        if not text.startswith("## "):
            continue
        lines = text.splitlines()
        command = re.search(r"^Command: `(.+)`", text, re.MULTILINE)
        out.append(
            {
                "title": lines[0][3:],
                "command": command.group(1) if command else None,
                "machine": re.search(r"^Machine: .+ cores, .+Python", text, re.MULTILINE),
                "header": "| figure | value |" in lines,
                "rows": dict(
                    m.groups()
                    for line in lines
                    if (m := ROW.match(line)) and not line.startswith(("| figure |", "|---"))
                ),
                "checks": [
                    (m.group(2), m.group(1) == "met") for line in lines if (m := CHECK.match(line))
                ],
            }
        )
    return out


@sqlite_only
def test_every_flood_runs_quick_and_no_flood_crashes_the_server():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "abuse.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-4000:]
    sections = parse(run.stdout)
    assert [s["command"] for s in sections] == [
        f"python bench/abuse.py {name} --quick" for name in FLOODS
    ], run.stdout[:2000]
    for number, s in enumerate(sections, 1):
        what = f"{s['title']}:\n{run.stdout}"
        assert s["title"].startswith(f"Hostile input {number}: "), what
        assert s["machine"] and s["header"], what
        rows = s["rows"]
        for figure in (
            "server RSS idle / peak / after",
            "store (.db + -wal) before -> after",
            "server log",
            "well-behaved station during the flood: p50 / p99 / max",
            "admin API during the flood: p50 / p99 / max (requests, errors)",
        ):
            assert figure in rows, (figure, what)
        assert re.match(
            r"[\d.]+ [kMG]?B / [\d.]+ [kMG]?B / [\d.]+ [kMG]?B \(peak [+-]",
            rows["server RSS idle / peak / after"],
        ), what
        assert re.match(
            r"[\d.]+ / [\d.]+ / [\d.]+ ms$",
            rows["well-behaved station during the flood: p50 / p99 / max"],
        ), what
        assert rows["server after the flood"] == "running, API 200", what
        texts = [text for text, _ in s["checks"]]
        assert any(t.startswith("server RSS within 100 MB of idle") for t in texts), what
        assert any(t.startswith("store growth within budget") for t in texts), what
        assert any(t.startswith("log growth within budget") for t in texts), what
        assert any(t.startswith("well-behaved station p99 under 100 ms") for t in texts), what
        # no flood crashed the server: it ran on, answered, logged no traceback, exited 0
        assert (
            "server survived: running, API 200, no traceback in its log, clean exit (0)",
            True,
        ) in s["checks"], what
        assert not any(t.startswith("the flood ran to its end") for t in texts), what
    assert took < scaled(45), f"--quick took {took:.0f} s (it should take under 30 s)"
