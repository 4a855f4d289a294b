"""/metrics and /health: the counting in process (edrvctl/metrics.py, a Fleet with fake stations),
then end to end against a real `edrvctl serve` with simulated stations of both versions. The
exposition is read back with prometheus_client's text parser (a test dependency only)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import sqlite_only, start_server
from edrvctl.errors import StationRejected, StationTimeout
from edrvctl.fleet import Fleet
from edrvctl.fleet.live import ClearCache, Reset
from edrvctl.metrics import CONTENT_TYPE, Metrics
from edrvctl.store import open_store
from stored import write_lock_held
from test_actions import FakeLive, settle, station
from test_api_actions import PROTOCOLS, online, uniq
from timing import scaled, until


def parse(text: str) -> dict[str, list]:
    """family name -> [(sample name, labels, value)], by the Prometheus text parser."""
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    found = [
        v
        for name, have, v in families.get(family, [])
        if name == (sample or family) and all(have.get(k) == w for k, w in labels.items())
    ]
    return found[0] if found else 0


def render(m: Metrics) -> dict[str, list]:
    return parse(asyncio.run(m.render()))


# --- in process ---------------------------------------------------------------------------------


def test_messages_are_counted_by_action_and_result_within_known_names():
    m = Metrics()
    for _ in range(3):
        m.message("Heartbeat")
    m.message("MeterValues", "FormatViolation")
    m.message("TransactionEvent", "ok")
    # what a station invents never becomes a series of its own
    for i in range(100):
        m.message(f"Made{i}Up", "ok")
        m.message("Heartbeat", f"Code{i}")
    m.message('Bad"\nName\\', 'x"\n')
    f = render(m)
    total = "edrvctl_ocpp_messages_total"
    assert value(f, "edrvctl_ocpp_messages", total, action="Heartbeat", result="ok") == 3
    assert value(f, "edrvctl_ocpp_messages", total, action="MeterValues", result="FormatViolation")
    assert value(f, "edrvctl_ocpp_messages", total, action="other", result="ok") == 100
    assert value(f, "edrvctl_ocpp_messages", total, action="Heartbeat", result="other") == 100
    assert value(f, "edrvctl_ocpp_messages", total, action="other", result="other") == 1
    assert len(f["edrvctl_ocpp_messages"]) == 6


def test_histograms_are_cumulative_with_sum_and_count():
    m = Metrics()
    for seconds in (0.003, 0.02, 0.02, 7.0, 100.0):
        m.commands.observe(seconds, "reset")
    m.commands.observe(0.5, "clear_cache")
    m.commits.observe(0.0002)
    f = render(m)
    fam, bucket = "edrvctl_command_duration_seconds", "edrvctl_command_duration_seconds_bucket"
    assert value(f, fam, bucket, type="reset", le="0.005") == 1
    assert value(f, fam, bucket, type="reset", le="0.025") == 3
    assert value(f, fam, bucket, type="reset", le="10.0") == 4
    assert value(f, fam, bucket, type="reset", le="+Inf") == 5
    assert value(f, fam, f"{fam}_count", type="reset") == 5
    assert value(f, fam, f"{fam}_sum", type="reset") == pytest.approx(107.043)
    assert value(f, fam, bucket, type="clear_cache", le="0.5") == 1
    assert value(f, fam, bucket, type="clear_cache", le="0.25") == 0
    c = "edrvctl_store_commit_duration_seconds"
    assert value(f, c, f"{c}_bucket", le="0.00025") == 1
    assert value(f, c, f"{c}_bucket", le="0.0001") == 0


def test_registered_readings_plain_labelled_async_and_failing():
    m = Metrics()
    backlog = {"n": 4}

    async def by_station():
        return {("CP-1",): 2, ('odd"one',): 1}

    def broken():
        raise RuntimeError("no")

    m.register_gauge("edrvctl_webhook_backlog", "Deliveries waiting", lambda: backlog["n"])
    m.register_gauge("x_waiting", "by station", by_station, labels=("station",))
    m.register_counter("x_seen_total", "seen", lambda: 9)
    m.register_gauge("x_broken", "fails", broken)
    with pytest.raises(ValueError):
        m.register_gauge("x_waiting", "again", lambda: 1)
    with pytest.raises(ValueError):
        m.register_counter("x_seen", "a counter's name ends in _total", lambda: 1)
    f = render(m)
    assert value(f, "edrvctl_webhook_backlog") == 4
    backlog["n"] = 0  # read at each scrape
    assert value(render(m), "edrvctl_webhook_backlog") == 0
    assert value(f, "x_waiting", station="CP-1") == 2
    assert value(f, "x_waiting", station='odd"one') == 1
    assert value(f, "x_seen", "x_seen_total") == 9
    assert "x_broken" not in f  # a reading that fails is left out, the scrape goes on


def test_the_fleet_times_command_round_trips_and_commits():
    fleet = Fleet(open_store(":memory:"), FakeLive())

    async def answer_late(endpoint, command):
        await asyncio.sleep(0.05)
        return "Accepted", {"status": "Accepted"}

    async def scenario():
        doc = await station(fleet)
        live = fleet.live
        live.answers[ClearCache] = answer_late  # type: ignore[attr-defined]
        await fleet.command(doc["endpoint"], ClearCache(), timeout=5)
        live.answers[Reset] = StationRejected("a CALLERROR")  # type: ignore[attr-defined]
        await fleet.command(doc["endpoint"], Reset(), timeout=5)
        live.answers[Reset] = StationTimeout("no answer")  # type: ignore[attr-defined]
        await fleet.command(doc["endpoint"], Reset(), timeout=5)  # not a round trip
        await settle(fleet)

    asyncio.run(scenario())
    h = fleet.metrics.commands.by
    assert h["clear_cache"].count == 1 and h["clear_cache"].sum >= 0.05
    assert h["reset"].count == 1  # the CALLERROR is an answer; the timeout is none
    assert fleet.metrics.commits.count >= 3  # every write was committed, and timed


# --- end to end ----------------------------------------------------------------------------


def scrape(server) -> dict[str, list]:
    r = httpx.get(f"{server.api_url}/metrics", timeout=scaled(10))  # no token
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE
    return parse(r.text)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_end_to_end(server, protocol):
    before = scrape(server)
    endpoint, sim = online(server, protocol)
    try:
        with server.api() as api:
            r = api.post(f"/v1.1/chargestations/{endpoint}/clear_cache")
            assert r.status_code == 201, r.text

        async def refused():
            with pytest.raises(InvalidStatus):
                async with connect(f"{server.ocpp_url}/{uniq('nobody')}", subprotocols=[protocol]):
                    pass

        asyncio.run(refused())
        after = scrape(server)
    finally:
        sim.stop()
    with server.api() as api:
        total = api.get("/v1.1/chargestations", params={"paginate_limit": 1}).json()["total"]
    assert value(after, "edrvctl_stations") == total
    assert value(after, "edrvctl_stations_online") >= 1
    refused_404 = ("edrvctl_refused_upgrades", "edrvctl_refused_upgrades_total")
    assert value(after, *refused_404, status="404") == value(before, *refused_404, status="404") + 1
    c = ("edrvctl_command_duration_seconds", "edrvctl_command_duration_seconds_count")
    assert value(after, *c, type="clear_cache") == value(before, *c, type="clear_cache") + 1
    commits = (
        "edrvctl_store_commit_duration_seconds",
        "edrvctl_store_commit_duration_seconds_count",
    )
    assert value(after, *commits) > value(before, *commits)
    # each station message, counted by the answer it got (through the Rpc's frame observer)
    boots = ("edrvctl_ocpp_messages", "edrvctl_ocpp_messages_total")
    got = value(after, *boots, action="BootNotification", result="ok")
    assert got >= value(before, *boots, action="BootNotification", result="ok") + 1
    until(
        lambda: (
            value(scrape(server), "edrvctl_stations_online")
            == value(after, "edrvctl_stations_online") - 1
        ),
        what="the stopped station to count offline",
    )


def test_metrics_and_health_need_no_token_and_are_not_in_openapi(server):
    for path in ("/metrics", "/health"):
        r = httpx.get(f"{server.api_url}{path}", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 200, (path, r.text)
    paths = httpx.get(f"{server.api_url}/openapi.json").json()["paths"]
    assert not {"/metrics", "/health"} & set(paths)


@sqlite_only
def test_health_is_503_while_the_store_cannot_be_written(tmp_path):
    srv = start_server(tmp_path)
    try:

        def health() -> httpx.Response:
            return httpx.get(f"{srv.api_url}/health", timeout=scaled(10))

        r = health()
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] is True and body["result"]["store"] == "writable"
        with write_lock_held(srv.store):  # another process holds SQLite's write lock
            r = until(
                lambda: (h := health()).status_code == 503 and h,
                what="/health to see the store locked",
            )
            body = r.json()
            assert body["ok"] is False and body["result"]["store"] == "unwritable"
            assert "cannot be written" in body["message"] and "locked" in body["message"]
            assert body["result"]["reason"] == body["message"]
        until(lambda: health().status_code == 200, what="/health to see the store writable")
    finally:
        assert srv.stop() == 0
