"""Retention: the Pruner over a fresh in-memory Fleet (ages, sessions kept together, batches,
the time budget, turns), then `serve --keep-*` end to end with a simulated station."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import start_server
from edrvctl.fleet import Fleet, retention
from edrvctl.fleet.live import ClearCache
from edrvctl.fleet.retention import DAY, Pruner, Retention
from edrvctl.store import ActionQuery, EventQuery, open_store
from stored import read
from test_actions import FakeLive, settle, station
from test_api_actions import Sim, uniq
from test_metrics import render, value
from timing import scaled, until, until_async

NOW = "2024-05-01T10:00:00.000Z"
SERVER_REST = retention.REST  # as `serve` has it (no_rest patches it in this process only)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, scaled(20)))


@pytest.fixture(autouse=True)
def no_rest(monkeypatch):
    """Every tick looks at every kind (test_a_kind_with_nothing_due_rests checks the rest)."""
    monkeypatch.setattr(retention, "REST", 0)


async def counts(fleet: Fleet) -> dict[str, int]:
    async with fleet.store.unit() as tx:
        return {
            "events": len(await tx.list_events(EventQuery(limit=None))),
            "meter_values": len(await tx.meter_values()),
            "actions": (await tx.list_actions(ActionQuery(limit=None)))[1],
            "sessions": len(await tx.transactions()),
        }


async def fill(fleet: Fleet) -> dict:
    """A station with events, a finished Action, meter values outside any session and in an
    ended and a running session."""
    doc = await station(fleet)
    ep = doc["endpoint"]
    fleet.live.answers[ClearCache] = ("Accepted", {"status": "Accepted"})  # type: ignore[attr-defined]
    await fleet.command(ep, ClearCache(), timeout=5)
    await settle(fleet)
    v = [{"timestamp": NOW, "sampledValue": [{"value": "10"}]}]
    ended, _ = await fleet.start_transaction(ep, 1, "TAG", 0, NOW)
    running, _ = await fleet.start_transaction(ep, 2, "TAG", 0, NOW)
    await fleet.meter_values(ep, 1, ended, v)
    await fleet.meter_values(ep, 2, running, v)
    await fleet.meter_values(ep, 1, None, v)
    await fleet.stop_transaction(ep, ended, 100, NOW, "Local")
    return {"endpoint": ep, "running": running}


def test_everything_due_is_pruned_and_sessions_are_kept():
    fleet = Fleet(open_store(":memory:"), FakeLive())
    pruner = Pruner(fleet.store, Retention(1, 1, 1), fleet.metrics)

    async def scenario():
        info = await fill(fleet)
        start = await counts(fleet)
        assert start["events"] and start["actions"] == 1 and start["meter_values"] == 3
        assert await pruner.tick() == 0  # nothing is a day old yet
        assert await counts(fleet) == start
        # a day and a half later: all but the running session's meter values
        await pruner.tick(time.time() + 1.5 * DAY)
        assert await counts(fleet) == {**start, "events": 0, "meter_values": 1, "actions": 0}
        # the session ends: its values go once they are as old as the age
        await fleet.stop_transaction(info["endpoint"], info["running"], 5, NOW, "Local")
        await pruner.tick(time.time() + 1.5 * DAY)
        left = await counts(fleet)
        assert left["meter_values"] == 0 and left["sessions"] == 2  # sessions themselves stay

    run(scenario())
    assert pruner.pruned["meter_values"] == 3 and pruner.pruned["actions"] == 1
    assert pruner.longest > 0
    f = render(fleet.metrics)
    assert value(f, "edrvctl_retention_pruned", "edrvctl_retention_pruned_total", kind="actions")
    batches = "edrvctl_retention_batch_duration_seconds"
    assert value(f, batches, f"{batches}_count") == fleet.metrics.prune_batches.count > 0


def test_a_session_that_never_ends_keeps_its_values_at_most_twice_the_age():
    fleet = Fleet(open_store(":memory:"), FakeLive())
    pruner = Pruner(fleet.store, Retention(0, 1, 0))  # only meter values

    async def scenario():
        await fill(fleet)
        await pruner.tick(time.time() + 1.5 * DAY)
        assert (await counts(fleet))["meter_values"] == 1  # the running session's
        await pruner.tick(time.time() + 2.5 * DAY)
        assert (await counts(fleet))["meter_values"] == 0

    run(scenario())
    assert [kind for kind, _ in pruner.steps] == ["meter_values"]


def test_an_age_of_0_keeps_for_ever_and_events_may_be_capped_by_count():
    fleet = Fleet(open_store(":memory:"), FakeLive())
    pruner = Pruner(fleet.store, Retention(0, 0, 0, events_max=2))

    async def scenario():
        await fill(fleet)
        start = await counts(fleet)
        await pruner.tick(time.time() + 1000 * DAY)
        assert await counts(fleet) == {**start, "events": 2}

    run(scenario())


def test_a_kind_with_nothing_due_rests(monkeypatch):
    fleet = Fleet(open_store(":memory:"), FakeLive())
    pruner = Pruner(fleet.store, Retention(1, 0, 0))  # only events
    monkeypatch.setattr(retention, "REST", scaled(0.3))

    async def add_old_event():
        async with fleet.store.unit() as tx:
            await tx.add_event(None, NOW, "chargestation.unknown", {}, "x")

    async def scenario():
        await add_old_event()
        assert await pruner.tick() == 1  # and nothing more is due: events rest
        await add_old_event()
        assert await pruner.tick() == 0  # due, but not looked at yet
        await until_async(pruner.tick, what="the events' rest to end")
        assert (await counts(fleet))["events"] == 0

    run(scenario())


def test_batches_are_small_and_a_tick_stops_at_its_budget_taking_turns(monkeypatch):
    fleet = Fleet(open_store(":memory:"), FakeLive())
    pruner = Pruner(fleet.store, Retention(1, 1, 1))
    monkeypatch.setattr(retention, "BATCH", 2)

    async def scenario():
        await fill(fleet)
        async with fleet.store.unit() as tx:
            for i in range(7):
                await tx.add_event(None, NOW, "chargestation.unknown", {"i": i}, f"x{i}")
        later = time.time() + 1.5 * DAY
        start = await counts(fleet)
        # with no time to spare, a tick is one batch, and the next tick starts with the
        # next kind of row: none waits for another to be done
        monkeypatch.setattr(retention, "BUDGET", 0)
        deleted = [await pruner.tick(later) for _ in range(3)]
        assert deleted == [2, 2, 1]  # events (a batch of 2), meter values (2), actions (1)
        assert dict(pruner.pruned) == {"events": 2, "meter_values": 2, "actions": 1}
        # with time, a tick goes on batch after batch until nothing is due
        monkeypatch.setattr(retention, "BUDGET", 10)
        await pruner.tick(later)
        left = await counts(fleet)
        assert left == {**start, "events": 0, "meter_values": 1, "actions": 0}

    run(scenario())


def test_serve_prunes_by_age(tmp_path):
    age = 2.0  # seconds
    days = str(age / DAY)
    srv = start_server(
        tmp_path,
        "--keep-events-days",
        days,
        "--keep-meter-values-days",
        days,
        "--keep-actions-days",
        days,
    )
    try:
        endpoint = uniq("keep")
        sid = srv.create(endpoint, protocol="ocpp1.6")["_id"]
        sim = Sim(
            srv.ocpp_url,
            endpoint,
            "ocpp1.6",
            sessions=True,
            session_interval=0.2,
            session_duration=0.8,
            meter_interval=0.2,
        )
        try:

            async def stored(tx):
                return {
                    "events": len(await tx.list_events(EventQuery(station_id=sid, limit=None))),
                    "meter_values": len(await tx.meter_values(sid)),
                    "sessions": len(await tx.transactions(sid)),
                }

            until(
                lambda: (s := read(srv.store, stored))["meter_values"] and s["sessions"] >= 2,
                timeout=15,
                what="a session or two with meter values",
            )
            with srv.api() as api:
                r = api.post(f"/v1.1/chargestations/{endpoint}/clear_cache")
                assert r.status_code == 201, r.text
        finally:
            sim.stop()
        sessions = read(srv.store, stored)["sessions"]
        until(
            lambda: (
                read(srv.store, stored) == {"events": 0, "meter_values": 0, "sessions": sessions}
            ),
            timeout=age + 2 * SERVER_REST + 10,  # kinds with nothing due rest SERVER_REST s
            what="the station's events and meter values to be pruned",
        )
        actions = read(srv.store, lambda tx: tx.list_actions(ActionQuery(limit=None)))
        assert actions == ([], 0)
        assert "retention: pruning failed" not in srv.logs()
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("flag", ["--keep-events-days", "--keep-meter-values-days"])
def test_a_negative_age_is_refused(tmp_path, flag):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edrvctl", "serve", "--store", str(tmp_path / "s.db"), flag, "-1"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert r.returncode == 2 and flag in r.stderr
