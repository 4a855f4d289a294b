"""Smoke tests of the benchmark suite: each benchmark of bench/run.py runs in --quick mode (tens
of stations, a second or two) and produces its figures. The targets are not asserted: the
machine is shared and noisy, and the sizes are tiny."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import shutil
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


GIT_CHECKOUT = (
    subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse"], capture_output=True, check=False
    ).returncode
    == 0
)


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


@pytest.mark.parametrize("loadgen", ["load.py", "C"])
def test_starved(loadgen, monkeypatch):
    """With the C load generator too: its stations are named after the simulated ones
    (--first), so both kinds connect."""
    if loadgen == "C":
        monkeypatch.setattr(bench, "LOADGEN", bench.built("loadgen"))
        assert bench.LOADGEN is not None, "bench/loadgen.c did not build"
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
    assert len(res.figures) == 7 and all(positive(v) for v in res.figures.values())
    assert len(res.checks) == 4
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


@pytest.mark.skipif(not GIT_CHECKOUT, reason="not a git checkout")
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


def test_loadgen_sends_load_py_frames():
    """bench/loadgen.c sends bench/load.py's frames, byte for byte."""
    import load  # bench/load.py (bench/run.py put bench/ on sys.path)

    loadgen = bench.built("loadgen")
    assert loadgen is not None, "bench/loadgen.c did not build"
    out = subprocess.run([str(loadgen), "--frames"], capture_output=True, text=True, check=True)
    want = [load.frame(0, *load.BOOT)] + [load.json.dumps([2, "ID", a, p]) for a, p in load.MIX]
    assert out.stdout.splitlines() == want


def test_uses_uvloop_reads_the_memory_map():
    code = "import sys, {}; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    for module, loaded in (("uvloop", True), ("asyncio", False)):
        if module == "uvloop":
            pytest.importorskip("uvloop")
        proc = subprocess.Popen(
            [sys.executable, "-c", code.format(module)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline() == "ready\n"
            assert bench.uses_uvloop(proc.pid) is loaded
        finally:
            proc.stdin.close()
            proc.wait()


def has_node() -> bool:
    """Whether the Node peer must be measured: node and npm are here, or this is CI (whose
    machines have them: their absence must fail, not skip)."""
    return bool(shutil.which("node") and shutil.which("npm")) or bool(os.environ.get("CI"))


def test_node_peer_validates_and_stores(tmp_path):
    """bench/peers/server.js answers a CALL that breaks the OCPP 1.6 schema with a CALLERROR,
    and with --store writes each MeterValues it answers."""
    if not has_node():
        pytest.skip("node or npm is not installed")
    from websockets.asyncio.client import connect

    argv = ["node", str(bench.PEERS / "server.js"), "{port}", "--store", "{root}/peer.db"]
    peer = bench.process_peer("node", "Node", argv, {"NODE_PATH": str(bench.node_modules())})
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    calls = [
        ("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}),
        ("StatusNotification", {**status, "status": "Charging!"}),  # not an OCPP status
        ("StatusNotification", {"errorCode": "NoError", "status": "Available"}),  # no connector
        ("StatusNotification", status),
        (
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}
                ],
            },
        ),
    ]

    async def talk(port: int) -> list:
        async with connect(f"ws://127.0.0.1:{port}/S1", subprotocols=["ocpp1.6"]) as ws:
            out = []
            for i, (action, payload) in enumerate(calls):
                await ws.send(json.dumps([2, str(i), action, payload]))
                out.append(json.loads(await ws.recv()))
            return out

    with peer.start(tmp_path, None) as (port, _pid, store):
        replies = asyncio.run(talk(port))
        assert bench.stored_meter_values(store) == 1
    assert [r[0] for r in replies] == [3, 4, 4, 3, 3]
    assert [r[1] for r in replies] == ["0", "1", "2", "3", "4"]
    assert replies[0][2]["status"] == "Accepted"
    assert replies[1][2:4] == [
        "FormationViolation",
        "data/status must be equal to one of the allowed values",
    ]
    assert replies[2][2:4] == [
        "OccurrenceConstraintViolation",  # ocpp-rpc's spelling (OCPP 1.6's: Occurence)
        "data must have required property 'connectorId'",
    ]


def test_serve_runs_on_uvloop_unless_asked_not_to(tmp_path):
    """The peers bench measures edrvctl as it runs (on uvloop when installed) and beside it on
    the asyncio loop, asked for with bench/run.py's ASYNCIO_ENV."""
    from conftest import hermetic_env, start_server

    pytest.importorskip("uvloop")
    for env, loaded in (({}, True), (bench.ASYNCIO_ENV, False)):
        root = tmp_path / str(loaded)
        root.mkdir()
        srv = start_server(root, env={**hermetic_env(root), "EDRVCTL_LOOP": "auto", **env})
        try:
            assert bench.uses_uvloop(srv.proc.pid) is loaded
        finally:
            srv.stop()


def test_peers(tmp_path):
    """Every server of `peers` measured, at both sizes, with the ratios; the Node rows are left
    out only on a machine without node (never in CI, whose machines have it)."""
    git = GIT_CHECKOUT
    (res,) = bench.main(["peers", "--quick", *(["--before", "HEAD"] if git else [])])
    f, md = res.figures, res.markdown()
    node = has_node()
    keys = ["edrvctl"]
    keys += ["before"] if git else []
    keys += ["asyncio"] if importlib.util.find_spec("uvloop") else []
    keys += ["node_sqlite", "node"] if node else []
    keys += ["echo"] if bench.built("echo", "-lcrypto") else []
    labels = {
        "edrvctl": "edrvctl",
        "asyncio": "edrvctl on the asyncio loop",
        "node_sqlite": "Node ocpp-rpc + SQLite",
        "node": "Node ocpp-rpc, no store",
        "echo": "C echo (the limit)",
    }
    if git:
        head = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "log", "-1", "--format=%h"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        labels["before"] = f"edrvctl@{head}"
    for n in (5, 10):
        for key in keys:
            assert positive(f[f"{key}_{n}_calls_per_s"]), key
            assert 0 < f[f"{key}_{n}_p50_ms"] <= f[f"{key}_{n}_p99_ms"], key
            assert positive(f[f"{key}_{n}_server_cpu_us_per_call"]), key
            assert f[f"{key}_{n}_failed_errors"] == 0, key
            assert f"| {labels[key]} | {n} |" in md
        if git:
            assert positive(f[f"ratio_edrvctl_before_{n}"])
            assert f"| edrvctl / {labels['before']} | {n} |" in md
        if node:
            assert positive(f[f"ratio_edrvctl_node_sqlite_{n}"])
            assert f"| edrvctl / Node ocpp-rpc + SQLite | {n} |" in md
            assert f"| edrvctl / Node ocpp-rpc, no store | {n} |" in md
    assert all(len(row) == len(res.header) for row in res.rows)
    measured = {k.removesuffix("_5_calls_per_s") for k in f if k.endswith("_5_calls_per_s")}
    assert measured == set(keys)  # and nothing else
    assert f["edrvctl_meter_values_stored"] > 0  # answered means persisted
    if node:
        assert f["node_sqlite_meter_values_stored"] > 0
        assert "node_meter_values_stored" not in f  # the other Node peer keeps nothing
    else:
        assert "node or npm is not installed: no Node ocpp-rpc rows." in md
    check_report(res)
