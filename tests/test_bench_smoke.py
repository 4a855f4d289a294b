"""Smoke tests of the benchmark suite: each benchmark of bench/run.py runs in --quick mode (tens
of stations, a second or two) and produces its figures. The targets are not asserted: the
machine is shared and noisy, and the sizes are tiny."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_run", Path(__file__).resolve().parents[1] / "bench" / "run.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_report(res) -> None:
    md = res.markdown()
    assert md.startswith(f"## {res.title}")
    assert f"`{res.command}`" in md and "cores" in md and "Python" in md
    assert res.rows and res.checks
    assert all(f"**{'met' if ok else 'MISSED'}**: {text}" in md for text, ok in res.checks)


def test_held():
    res = bench.bench_held(quick=True)
    f = res.figures
    assert f["online"] == f["stations"] == 50
    assert positive(f["online_s"]) and f["booted"]
    assert f["rss_after_kib"] > f["rss_before_kib"] > 0
    assert f["idle_cpu_pct"] >= 0 and f["online_after_idle"] == 50
    check_report(res)


def test_throughput():
    res = bench.bench_throughput(quick=True)
    f = res.figures
    for kind in ("bare", "ocpp", "edrvctl"):
        for n in (20, 50):
            assert positive(f[f"{kind}_{n}_calls_per_s"])
            assert 0 < f[f"{kind}_{n}_p50_ms"] <= f[f"{kind}_{n}_p99_ms"]
            assert positive(f[f"{kind}_{n}_server_cpu_us_per_call"])
    assert positive(f["ratio_50"]) and positive(f["gain_over_ocpp_50"])
    assert f["edrvctl_meter_values_stored"] > 0  # answered means persisted
    assert "| 0 / 0 |" in res.markdown()  # no failed station, no CALLERROR
    check_report(res)


def test_csconfig():
    res = bench.bench_csconfig(quick=True)
    f = res.figures
    assert f["requests"] == 30 and f["errors"] == 0
    assert 0 < f["p50_ms"] <= f["p99_ms"]
    assert f["stored_entries"] > 0
    check_report(res)


def test_starved():
    res = bench.bench_starved(quick=True)
    f = res.figures
    assert f["requests"] > 0 and f["errors"] == 0 and positive(f["calls_per_s"])
    assert 0 < f["get_p50_ms"] <= f["get_p99_ms"]
    assert 0 < f["command_p50_ms"] <= f["command_p99_ms"]
    check_report(res)


def test_storm():
    res = bench.bench_storm(quick=True)
    f = res.figures
    assert f["online_again"] == f["before"] == f["after"] == 50
    assert positive(f["back_online_s"]) and f["back_online_s"] >= f["server_ready_s"]
    assert f["lost"] == 0 and f["integrity"] == "ok"
    check_report(res)


def test_cli():
    res = bench.bench_cli(quick=True)
    assert len(res.figures) == 5 and all(positive(v) for v in res.figures.values())
    assert len(res.checks) == 3
    check_report(res)


def test_commands():
    res = bench.bench_commands(quick=True)
    f = res.figures
    assert f["requests"] == 30 and f["errors"] == 0
    assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"]
    assert positive(f["load_calls_per_s"]) and f["load_failed"] == f["load_errors"] == 0
    assert positive(f["reset_s"]) and f["reset_succeeded"] == f["stations"] == 50
    assert f["reset_outcomes"] == {"succeeded": 50} and f["reset_polls"] > 0
    assert f["reboots"] == 50 and f["booted_after"] == f["online_after"] == 50 and f["back"]
    assert f["probe_requests"] > 0 and f["trigger_server_runqueue_s"] >= 0
    check_report(res)


def test_retention():
    res = bench.bench_retention(quick=True)
    f = res.figures
    assert f["online_end"] == f["stations"] == 20 and f["station_messages"] > 0
    assert f["pruned"] > 0 and f["batches"] > 0 and positive(f["longest_batch_ms"])
    assert f["rows_end"]["sessions"] > 0  # kept: sessions are not pruned
    assert positive(f["db_bytes_end"]) and f["probe_p99_ms"] is not None
    check_report(res)


@pytest.mark.parametrize("argv", [["nope"], ["held", "--bogus"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2


@pytest.mark.skipif(
    subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse"], capture_output=True, check=False
    ).returncode
    != 0,
    reason="not a git checkout",
)
@pytest.mark.parametrize("name", ["held", "throughput", "csconfig"])
def test_before_head(name):
    """--before HEAD: HEAD's edrvctl/ exported and measured beside the current one."""
    (res,) = bench.main([name, "--quick", "--before", "HEAD"])
    f, md = res.figures, res.markdown()
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"Versions: before = edrvctl@{head}, `{head}` " in md
    assert f"`python bench/run.py {name} --before HEAD --quick`" in md
    if name == "throughput":
        for kind in ("before", "edrvctl"):
            assert positive(f[f"{kind}_50_calls_per_s"])
            assert f[f"{kind}_meter_values_stored"] > 0
        assert positive(f["before_ratio_50"]) and "| 0 / 0 |" in md
        assert f"| edrvctl@{head} | 50 |" in md and "| after / before (" in md
    else:
        assert res.header == (
            "figure",
            f"edrvctl@{head} (before)",
            "edrvctl (after)",
            "after / before",
        )
        key = "rss_per_station_kib" if name == "held" else "p50_ms"
        assert positive(f[key]) and positive(f[f"before_{key}"])
    assert any("before -> after" in text for text, _ in res.checks)
    check_report(res)
