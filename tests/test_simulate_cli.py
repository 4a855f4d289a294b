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


def sim(env: dict, *args: str, input: str | None = None):
    clear = dict.fromkeys(("EDRV_STATION_PASSWORD", "EDRV_API_URL", "EDRV_TOKEN"))
    return runner.invoke(
        app, ["simulate", *args], env={**clear, **env}, prog_name="edrvctl", input=input
    )


def closed_ws_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"ws://127.0.0.1:{port}"


def test_simulate_with_nothing_reachable_exits_6_and_says_why(tmp_path):
    """Issue 10: simulate exited 0 when nothing connected and hid the reason."""
    from conftest import hermetic_env

    url = closed_ws_url()
    r = sim(hermetic_env(tmp_path), "--url", url, "-n", "2", "--duration", str(scaled(1)))
    assert r.exit_code == 6, r.output
    assert "0/2 booted" in r.stdout
    assert f"no simulated station got an answer from {url}" in r.stderr
    assert "2 stations" in r.stderr and "Error" in r.stderr  # the reason (connection refused)


def test_simulate_of_unknown_endpoints_exits_3_and_suggests_create(server, cli_env):
    prefix = f"SIMNONE{os.getpid() % 1000}x"
    r = sim(cli_env, "--url", server.ocpp_url, "--prefix", prefix, "--duration", str(scaled(1)))
    assert r.exit_code == 3, r.output
    assert "HTTP 404" in r.stderr and "--create" in r.stderr


def test_simulate_with_a_password(server, cli_env):
    """Issue 10: simulate had no --password, so a basic_auth station could not be simulated."""
    prefix = f"SIMPW{os.getpid() % 1000}x"
    doc = server.create(f"{prefix}00001", security={"type": "basic_auth"})
    password = doc["password"]
    base = ("--url", server.ocpp_url, "--prefix", prefix, "-o", "json")
    # without it: refused, and told what to do
    r = sim(cli_env, *base, "--duration", str(scaled(1)))
    assert r.exit_code == 4, r.output
    assert "HTTP 401" in r.stderr and "EDRV_STATION_PASSWORD" in r.stderr
    r = sim(cli_env, *base, "--password", "wrong-" + password, "--duration", str(scaled(1)))
    assert r.exit_code == 4 and "rotate-password" in r.stderr
    # with it, as a flag, from the environment, or from stdin
    for extra, env, given in (
        (("--password", password), cli_env, None),
        ((), {**cli_env, "EDRV_STATION_PASSWORD": password}, None),
        (("--password", "-"), cli_env, password + "\n"),
    ):
        r = sim(env, *base, *extra, "--duration", str(scaled(2)), input=given)
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["booted"] == 1 and summary["received"] > 0
    assert password not in r.stderr and password not in r.stdout
