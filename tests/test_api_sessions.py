"""Sessions end to end: a real `edrvctl serve`, simulated stations of both OCPP versions
charging over real OCPP-J, read back through the API (`/v1.1/sessions...`) and the CLI
(`sessions list|inspect|close`), and closed by an admin."""

from __future__ import annotations

import csv
import io
import json

import pytest

from edrvctl.store import EventQuery
from stored import read
from test_api_actions import PROTOCOLS, answer, ended, online
from test_cli import cli, ok, plain_rows
from timing import until

HOSTILE_TAG = "=1+2\x1b[2J"  # a formula for a spreadsheet, a terminal's clear screen


@pytest.fixture(scope="module", params=PROTOCOLS)
def station(request, server):
    endpoint, sim = online(server, request.param, meter_interval=0.1)
    yield {"endpoint": endpoint, "protocol": request.param, "sim": sim}
    sim.stop()


@pytest.fixture(scope="module")
def api(server):
    with server.api() as c:
        yield c


def start(api, station, id_tag: str = "TAG-S") -> dict:
    """A remote start, followed until its transaction runs: the session it started."""
    where = {"connectorId": 1} if station["protocol"] == "ocpp1.6" else {"evseId": 1}
    body = {"chargestation": station["endpoint"], "idTag": id_tag, **where}
    a = ended(api, answer(api.post("/v1.1/sessions", json=body), 201)["result"])
    assert a["outcome"] == "succeeded", a
    session_id = a["progress"][0]["session"]
    until(lambda: station["sim"].sim.transactions.get(1), 10, what="the transaction to run")
    return answer(api.get(f"/v1.1/sessions/{session_id}"), 200)["result"]


def series(api, session_id: str) -> list[dict]:
    return answer(
        api.get(f"/v1.1/sessions/{session_id}/meter_values", params={"paginate_limit": 1000}),
        200,
    )["result"]


def registers(values: list[dict]) -> list[float]:
    return [
        v["value"] * (1000 if v["unit"] == "kWh" else 1)
        for v in values
        if v["measurand"] == "Energy.Active.Import.Register" and not v["phase"]
    ]


def stop(api, session: dict) -> dict:
    """A remote stop by the session's _id, followed until the transaction has ended."""
    a = answer(api.post(f"/v1.1/sessions/{session['_id']}/stop"), 201)["result"]
    assert a["data"]["transaction_id"] == session["transactionId"]
    assert ended(api, a)["outcome"] == "succeeded"
    return answer(api.get(f"/v1.1/sessions/{session['_id']}"), 200)["result"]


def test_a_simulated_session_appears_with_the_right_energy(server, api, station, cli_env):
    ep = station["endpoint"]
    session = start(api, station, HOSTILE_TAG)
    assert (session["endpoint"], session["status"], session["idTag"]) == (
        ep,
        "Active",
        HOSTILE_TAG,
    )
    assert session["evseId"] == 1 and session["meterStart"] is not None

    def charged() -> bool:  # a few Wh (1.6 sends whole Wh): 7 to 11 kW for a second or two
        wh = registers(series(api, session["_id"]))
        return len(wh) >= 3 and wh[-1] - wh[0] >= 3

    until(charged, 15, interval=0.1, what="meter values showing a charge")
    listed = answer(api.get("/v1.1/sessions", params={"chargestation": ep, "active": "true"}), 200)
    assert [s["_id"] for s in listed["result"]] == [session["_id"]]
    assert listed["result"][0]["energyKwh"] >= 0

    done = stop(api, session)
    wh = registers(series(api, session["_id"]))
    assert done["status"] == "Completed" and done["stopReason"] == "Remote"
    assert wh == sorted(wh) and wh[-1] > wh[0]  # it charged
    # 1.6 sends meterStart and meterStop as whole Wh, its samples rounded: within 1 Wh
    if station["protocol"] == "ocpp2.0.1":  # no meterStart: the Started event's reading
        assert done["meterStart"] == wh[0]
    else:  # meterStart is StartTransaction's, before the first sample
        assert done["meterStart"] <= wh[0] + 1
    assert done["meterStop"] == pytest.approx(wh[-1], abs=1)
    assert done["meterStop"] == pytest.approx(station["sim"].sim._meter_wh[1], abs=1)
    assert done["energyKwh"] == round((done["meterStop"] - done["meterStart"]) / 1000, 3) > 0

    got = read(
        server.store,
        lambda tx: tx.list_events(
            EventQuery(station_id=done["chargestation"], types=("session.*",))
        ),
    )
    mine = [(e["type"], e["data"]) for e in got if e["data"]["_id"] == session["_id"]]
    assert [t for t, _ in mine if t != "session.updated"] == ["session.started", "session.ended"]
    assert mine[-1][1]["energyKwh"] == done["energyKwh"]

    # the CLI: one CSV row per session, for billing; station text never a formula
    r = ok(cli_env, "sessions", "list", "--station", ep, "--status", "completed", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    (row,) = [x for x in rows if x["_id"] == session["_id"]]
    assert float(row["energyKwh"]) == done["energyKwh"]
    assert (row["endpoint"], row["status"], row["transactionId"]) == (
        ep,
        "Completed",
        done["transactionId"],
    )
    assert row["idTag"] == "'=1+2\\x1b[2J"
    assert "\x1b" not in r.stdout

    shown = json.loads(ok(cli_env, "sessions", "inspect", session["_id"], "-o", "json").stdout)
    assert {k: shown[k] for k in done} == done
    assert len(shown["meterValues"]) == len(series(api, session["_id"]))
    text = ok(cli_env, "sessions", "inspect", session["_id"], "-o", "table").stdout
    assert f"{done['energyKwh']:.3f}" in text and "Energy.Active.Import.Register" in text
    assert "\x1b[2J" not in text and "\\x1b[2J" in text


def test_close_a_session_the_station_will_never_end(server, api, station, cli_env):
    v201 = station["protocol"] == "ocpp2.0.1"
    session = start(api, station)
    path = f"/v1.1/sessions/{session['_id']}/close"
    if v201:  # the station is asked, and says it is still going on
        r = api.post(path, json={"reason": "stuck"})
        assert r.status_code == 409 and "still ongoing" in r.json()["message"], r.text
        r = cli(cli_env, "sessions", "close", session["_id"], "--reason", "stuck")
        assert r.exit_code == 5 and "--force" in r.stderr, (r.stdout, r.stderr)
        assert answer(api.get(f"/v1.1/sessions/{session['_id']}"), 200)["result"]["status"] == (
            "Active"
        )
    args = ["--force"] if v201 else []
    r = ok(cli_env, "sessions", "close", session["_id"], "--reason", "stuck", *args)
    assert r.stdout.startswith(f"session/{session['_id']} closed")
    closed = answer(api.get(f"/v1.1/sessions/{session['_id']}"), 200)["result"]
    assert (closed["status"], closed["closedBy"], closed["closeReason"]) == (
        "Completed",
        "admin",
        "stuck",
    )
    assert closed["stoppedAt"] and closed["energyKwh"] is not None
    r = api.post(path, json={"reason": "again"})
    assert r.status_code == 409 and "ended" in r.json()["message"]
    got = read(
        server.store,
        lambda tx: tx.list_events(EventQuery(types=("session.ended",), limit=None)),
    )
    (closing,) = [e["data"] for e in got if e["data"]["_id"] == session["_id"]]
    assert (closing["closedBy"], closing["reason"]) == ("admin", "stuck")
    assert "closed" in server.logs() and session["_id"] in server.logs()

    # the station still runs it; its own end, when it comes, wins (it knows the meter)
    stopped = stop(api, session)
    assert (stopped["stopReason"], stopped["meterStop"]) == (
        "Remote",
        pytest.approx(station["sim"].sim._meter_wh[1], abs=1),
    )


def test_sessions_list_filters_and_pages(api, station):
    ep = station["endpoint"]
    first = stop(api, start(api, station))
    second = stop(api, start(api, station))
    params = {"chargestation": ep, "paginate_limit": 1}
    page1 = answer(api.get("/v1.1/sessions", params=params), 200)
    assert (page1["result"][0]["_id"], page1["hasNext"], page1["hasPrevious"]) == (
        second["_id"],
        True,
        False,
    )
    assert page1["total"] >= 2
    page2 = answer(api.get("/v1.1/sessions", params={**params, "paginate_page": 2}), 200)
    assert page2["result"][0]["_id"] == first["_id"] and page2["hasPrevious"]

    window = {"chargestation": ep, "since": first["startedAt"], "until": first["startedAt"]}
    found = answer(api.get("/v1.1/sessions", params=window), 200)["result"]
    assert [s["_id"] for s in found] == [first["_id"]]
    edrv = {"chargestation": ep, "createdAt[$gte]": second["startedAt"]}
    assert [s["_id"] for s in answer(api.get("/v1.1/sessions", params=edrv), 200)["result"]] == [
        second["_id"]
    ]
    for bad in ({"status": "Running"}, {"bogus": "1"}, {"since": "yesterday"}):
        r = api.get("/v1.1/sessions", params=bad)
        assert r.status_code == 400 and not r.json()["ok"], (bad, r.text)
    assert api.get("/v1.1/sessions/" + "0" * 24).status_code == 404
    assert api.get("/v1.1/sessions/" + "0" * 24 + "/meter_values").status_code == 404
    r = api.post(f"/v1.1/sessions/{first['_id']}/close", json={})
    assert r.status_code == 422


def test_cli_lists_inspects_and_stops_sessions(api, station, cli_env):
    ep = station["endpoint"]
    session = start(api, station)
    r = ok(cli_env, "sessions", "list", "--station", ep, "--active", "--since", "1h")
    rows = plain_rows(r.stdout)  # not a terminal: plain, tab-separated
    assert rows[0] == [
        "ID",
        "STATION",
        "EVSE",
        "ID TAG",
        "STATUS",
        "STARTED",
        "STOPPED",
        "KWH",
        "STOP REASON",
    ]
    assert [(x[0], x[1], x[4]) for x in rows[1:]] == [(session["_id"], ep, "Active")]
    assert ok(cli_env, "sessions", "list", "--station", ep, "--until", "1h", "-q").stdout == ""

    r = ok(cli_env, "sessions", "stop", session["_id"], "--wait")  # no --station: the _id says
    assert "remote_stop completed" in r.stdout and "outcome succeeded" in r.stdout
    got = json.loads(ok(cli_env, "sessions", "list", "--station", ep, "-o", "json").stdout)
    assert got[0]["_id"] == session["_id"] and got[0]["status"] == "Completed"
    r = ok(cli_env, "sessions", "inspect", session["_id"], "-o", "plain")
    fields = dict(line.split("\t", 1) for line in r.stdout.split("\n\n")[0].splitlines())
    assert (fields["Status"], fields["Stop reason"]) == ("Completed", "Remote")
    assert float(fields["Energy (kWh)"]) == got[0]["energyKwh"]

    r = cli(cli_env, "sessions", "list", "--since", "yesterday")
    assert r.exit_code == 2 and "--since" in r.stderr
    r = cli(cli_env, "sessions", "inspect", "0" * 24)
    assert r.exit_code == 3 and "not found" in r.stderr
    r = cli(cli_env, "sessions", "stop", "42")  # a transaction id needs its station
    assert r.exit_code == 2 and "chargestation" in r.stderr


def test_sessions_list_watch_prints_a_line_per_change_without_a_terminal(
    api, station, cli_env, tmp_path
):
    import os
    import subprocess
    import sys

    from timing import scaled

    ep = station["endpoint"]
    out = tmp_path / "watch.out"
    env = {**os.environ, **cli_env}
    argv = ["sessions", "list", "--active", "--station", ep, "--watch", "-o", "plain"]
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edrvctl", *argv], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    try:
        until(lambda: out.read_text().startswith("ID"), what="the first listing")
        session = start(api, station)
        stop(api, session)
        text = until(
            lambda: (t := out.read_text()) and f"session.ended {ep}" in t and t,
            what="a line per change",
        )
        assert f"session.started {ep}" in text
    finally:
        proc.terminate()
        proc.wait(scaled(10))
