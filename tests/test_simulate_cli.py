"""`edrvctl simulate` through the CLI, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from edrvctl.cli import app
from timing import scaled, until

runner = CliRunner()


def test_simulate_creates_and_runs_stations(server, cli_env):
    prefix = f"SIMCLI{os.getpid() % 1000}x"
    # --duration is the behaviour under test (run that long, then stop every station): a wait
    # by nature, long enough for three stations to boot and report.
    r = runner.invoke(
        app,
        [
            "simulate",
            "--url",
            server.ocpp_url,
            "-n",
            "3",
            "--protocol",
            "mixed",
            "--prefix",
            prefix,
            "--create",
            "--duration",
            str(scaled(2.5)),
            "-o",
            "json",
        ],
        env=cli_env,
        prog_name="edrvctl",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["total"] == 3 and summary["booted"] == 3 and summary["errors"] == 0
    assert "registered 3 new station(s)" in r.stderr
    docs = [server.get(f"{prefix}{i:05d}") for i in (1, 2, 3)]
    assert [d["protocol"] for d in docs] == ["ocpp1.6", "ocpp2.0.1", "ocpp1.6"]
    for d in docs:
        assert d["is_simulator"] is True
        assert d["manufacturer"] and d["model"] and d["status"] == "Available"
        assert d["online"] is False  # stopped when the run ended


def test_simulate_stops_cleanly_on_sigint(server, cli_env):
    prefix = f"SIMINT{os.getpid() % 1000}x"
    env = dict(cli_env)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edrvctl",
            "simulate",
            "--url",
            server.ocpp_url,
            "-n",
            "2",
            "--prefix",
            prefix,
            "--create",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def online(endpoint: str) -> bool:
        try:
            return server.get(endpoint)["online"]
        except AssertionError:  # not created yet
            return False

    try:
        until(
            lambda: online(f"{prefix}00001") and online(f"{prefix}00002"),
            timeout=15,
            interval=0.1,
            what="both simulated stations online",
        )
    except AssertionError:
        p.kill()
        p.communicate()
        raise
    p.send_signal(2)
    out, err = p.communicate(timeout=scaled(15))
    assert p.returncode == 0, err
    assert "2/2 booted" in out


def test_simulate_needs_a_url_when_no_server_is_known(tmp_path):
    from conftest import hermetic_env

    r = runner.invoke(app, ["simulate", "-n", "1"], env=hermetic_env(tmp_path))
    assert r.exit_code == 2
    assert "--url" in r.stderr
    r = runner.invoke(app, ["simulate", "--url", "http://x"], env=hermetic_env(tmp_path))
    assert r.exit_code == 2 and "ws://" in r.stderr
