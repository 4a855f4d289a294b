"""The station commands of the CLI (cs reset ... diagnostics, sessions, actions) against a real
`edrvctl serve` and simulated stations, both OCPP versions: output, --wait, exit codes."""

from __future__ import annotations

import json

import pytest

from test_api_actions import online, uniq
from test_cli import cli, ok
from test_simulator import file_server
from timing import until


@pytest.fixture(scope="module", params=["ocpp1.6", "ocpp2.0.1"])
def station(request, server):
    endpoint, sim = online(server, request.param)
    yield {"endpoint": endpoint, "protocol": request.param, "sim": sim}
    sim.stop()


def back(server, ep: str) -> None:
    def ready():
        doc = server.get(ep)
        return doc["online"] and doc["status"] == "Available"

    until(ready, 15, interval=0.05, what=f"{ep} back online")


def test_short_commands_print_one_line_per_action(cli_env, station):
    ep, v16 = station["endpoint"], station["protocol"] == "ocpp1.6"
    r = ok(cli_env, "cs", "clear-cache", ep)
    assert r.stdout.startswith("action/") and "clear_cache completed" in r.stdout
    assert "outcome succeeded" in r.stdout

    where = ["--connector", "1"] if v16 else ["--evse", "1"]
    a = json.loads(ok(cli_env, "cs", "unlock", ep, *where, "-o", "json").stdout)
    assert a["response_data"]["status"] == "Unlocked"

    r = ok(cli_env, "cs", "availability", ep, "operative", *where, "-q")
    assert len(r.stdout.strip()) == 24

    key = "HeartbeatInterval" if v16 else "OCPPCommCtrlr.HeartbeatInterval"
    got = json.loads(ok(cli_env, "cs", "configure", ep, f"{key}=91", "-o", "json").stdout)
    assert [x["outcome"] for x in got] == ["succeeded"]
    assert station["sim"].sim.config[key] == "91"

    r = ok(cli_env, "cs", "call", ep, "ClearCache", "-d", "{}")
    assert " call completed" in r.stdout

    r = ok(cli_env, "cs", "trigger", ep, "Heartbeat", "--wait")
    assert "outcome succeeded" in r.stdout

    listed = ok(cli_env, "actions", "list", "--station", ep, "--type", "clear_cache").stdout
    lines = listed.splitlines()
    assert lines[0].split("\t")[:3] == ["ID", "TYPE", "STATION"]
    assert len(lines) >= 2 and all("\tclear_cache\t" in x for x in lines[1:])
    first = lines[1].split("\t")[0]
    shown = json.loads(ok(cli_env, "actions", "inspect", first, "-o", "json").stdout)
    assert (shown["_id"], shown["type"]) == (first, "clear_cache")


def test_refused_and_callerror_exit_5(cli_env, station):
    ep = station["endpoint"]
    r = cli(cli_env, "cs", "data-transfer", ep, "--vendor", "acme")
    assert r.exit_code == 5, r.stderr
    assert "data_transfer failed" in r.stdout and "error:" in r.stderr
    r = cli(cli_env, "cs", "call", ep, "CancelReservation", "-d", '{"reservationId": 1}')
    assert r.exit_code == 5, r.stderr
    assert "CALLERROR" in r.stderr


def test_usage_errors_exit_2_before_sending(cli_env, station):
    ep = station["endpoint"]
    r = cli(cli_env, "cs", "call", ep, "NoSuchAction")
    assert r.exit_code == 2, r.stderr
    assert cli(cli_env, "cs", "call", ep, "Reset", "-d", "not json").exit_code == 2
    assert cli(cli_env, "cs", "configure", ep, "novalue").exit_code == 2
    r = cli(cli_env, "cs", "reset", ep)  # disruptive: no terminal, no --yes
    assert r.exit_code == 2 and "--yes" in r.stderr


def test_offline_exits_6_and_unknown_3(server, cli_env):
    ep = uniq("cli-off")
    server.create(ep)
    r = cli(cli_env, "cs", "clear-cache", ep)
    assert r.exit_code == 6 and "offline" in r.stderr
    assert cli(cli_env, "cs", "clear-cache", uniq("none")).exit_code == 3


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_silent_station_exits_7(server, cli_env, protocol):
    ep, sim = online(server, protocol, silent=True)
    try:
        r = cli(cli_env, "cs", "clear-cache", ep, "--timeout", "1")
        assert r.exit_code == 7, r.stderr
        assert "outcome timed_out" in r.stdout
    finally:
        sim.stop()


def test_long_commands_with_wait(server, cli_env, station):
    ep, v16 = station["endpoint"], station["protocol"] == "ocpp1.6"
    where = ["--connector", "1"] if v16 else ["--evse", "1"]
    r = ok(cli_env, "sessions", "start", ep, "--id-tag", "TAG-3", *where, "--wait", "-o", "json")
    a = json.loads(r.stdout)
    assert a["outcome"] == "succeeded", a
    tx = a["progress"][0]["transactionId"]
    until(lambda: station["sim"].sim.transactions.get(1), 10, what="the transaction")
    r = ok(cli_env, "sessions", "stop", str(tx), "--station", ep, "--wait")
    assert "remote_stop completed" in r.stdout and "outcome succeeded" in r.stdout

    r = ok(cli_env, "cs", "reset", ep, "--hard", "--yes", "--wait")
    assert "reset completed, stage done, outcome succeeded" in r.stdout
    assert "stage" in r.stderr  # one line per change when stderr is not a terminal
    back(server, ep)

    with file_server() as (base, files):
        r = ok(cli_env, "cs", "update-firmware", ep, "--url", f"{base}/fw.bin", "--yes", "--wait")
        assert "outcome succeeded" in r.stdout
        back(server, ep)
        r = ok(cli_env, "cs", "diagnostics", ep, "--url", f"{base}/up/", "--wait")
        assert "outcome succeeded" in r.stdout and files
        r = cli(cli_env, "cs", "diagnostics", ep, "--url", f"{base}/nowhere/", "--wait")
        assert r.exit_code == 5 and "outcome failed" in r.stdout, (r.stdout, r.stderr)
