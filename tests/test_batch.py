"""Batches (fleet/batch.py), in process and fast: selection, per-version translation checked
before anything is sent, pacing, max_failures, dry runs, `batch` on every Action, and the
configuration baseline's differences (tests/test_actions.py's fake live stations)."""

from __future__ import annotations

import asyncio

import pytest

from edrvctl import model
from edrvctl.errors import InvalidBody, NotFound, UsageError
from edrvctl.fleet import Fleet, batch
from edrvctl.fleet.live import ClearCache, Configure, FetchConfig, Reset, UnlockConnector
from edrvctl.store import ActionQuery, open_store
from tests.test_actions import FakeLive, run, settle


@pytest.fixture
def fleet():
    return Fleet(open_store(":memory:"), FakeLive())


async def add(fleet: Fleet, name: str, protocol: str = "ocpp1.6", model_: str = "M", **kw) -> dict:
    doc, _ = await fleet.create(model.StationCreate(endpoint=name, protocol=protocol, **kw))
    if kw.pop("_offline", False):
        return doc
    fleet.live.online[name] = protocol  # type: ignore[attr-defined]
    await fleet.connected(name)
    info = {"chargePointVendor": "V", "chargePointModel": model_, "firmwareVersion": "1.0"}
    await fleet.boot(name, info)
    await settle(fleet)
    return await fleet.get(name)


def test_selector_parsing_and_matching():
    assert batch.parse_selector("location=depot-north, model=X") == {
        "location": "depot-north",
        "model": "X",
    }
    for bad in ("model", "=x", "colour=red"):
        with pytest.raises(UsageError):
            batch.parse_selector(bad)
    doc = {
        "model": "X",
        "online": True,
        "bootInfo": {"firmwareVersion": "2.1"},
        "protocol": "ocpp1.6",
    }
    assert batch.matches(doc, {"model": "x", "online": "true", "firmware": "2.1"})
    assert batch.matches(doc, {"online": True})
    assert not batch.matches(doc, {"protocol": "ocpp2.0.1"})
    assert batch.matches(doc, {"all": True})
    with pytest.raises(UsageError):
        batch.check_selector({})
    with pytest.raises(UsageError):
        batch.check_selector({"all": False})
    with pytest.raises(UsageError):
        batch.check_selector({"ids": []})


def test_build_translates_per_version_and_checks_the_body():
    s16, s201 = {"protocol": "ocpp1.6"}, {"protocol": "ocpp2.0.1"}
    assert batch.build("reset", {"hard": True}, s16) == [Reset(True, None)]
    assert batch.build("reset", {"type": "Immediate"}, s201) == [Reset(True, None)]
    with pytest.raises(UsageError, match=r"not an ocpp1\.6 reset type"):
        batch.build("reset", {"type": "Immediate"}, s16)
    with pytest.raises(InvalidBody):
        batch.build("unlock_connector", {"connectorId": "one"}, s16)
    assert batch.build("configurations", {"A": 1, "B": True}, s16) == [
        Configure("A", "1"),
        Configure("B", "true"),
    ]
    with pytest.raises(UsageError):
        batch.build("fly", {}, s16)
    with pytest.raises(InvalidBody):
        batch.build("configurations", {"A": {"nested": 1}}, s16)


def test_differences_use_the_stored_csconfig():
    doc = {"csconfig": [{"key": "HeartbeatInterval", "value": "60"}, {"key": "A", "value": "1"}]}
    assert batch.differences(doc, {"heartbeatinterval": "60", "A": "2", "New": "x"}) == {
        "A": "2",
        "New": "x",
    }


def test_a_batch_runs_on_the_selected_stations_with_its_id_on_each_action(fleet):
    async def scenario():
        a = await add(fleet, "B-1", model_="X")
        await add(fleet, "B-2", "ocpp2.0.1", model_="X")
        await add(fleet, "B-3", model_="Y")
        fleet.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        record, plans = await batch.create(fleet, {"model": "X"}, "reset", {"hard": True})
        assert [r["endpoint"] for r, _ in plans] == ["B-1", "B-2"]
        await batch.run(fleet, record, plans, timeout=5)
        assert record["status"] == "finished" and record["finishedAt"]
        assert record["counts"] == {
            "requested": 2,
            "completed": 2,
            "failed": 0,
            "skipped": 0,
            "unchanged": 0,
        }
        assert sorted(ep for ep, c in fleet.live.sent if isinstance(c, Reset)) == ["B-1", "B-2"]
        found, total = await fleet.list_actions(ActionQuery({"batch": record["_id"]}))
        assert total == 2 and {x["_id"] for x in found} == set(record["actions"])
        assert all(x["batch"] == record["_id"] for x in found)
        assert fleet.batches.get(record["_id"]) is record
        # explicit ids; an unknown one is NotFound before anything
        record, plans = await batch.create(fleet, {"ids": [a["_id"], "B-3"]}, "clear_cache", None)
        assert [r["endpoint"] for r, _ in plans] == ["B-1", "B-3"]
        with pytest.raises(NotFound):
            await batch.create(fleet, {"ids": ["nope"]}, "clear_cache", None)
        await settle(fleet)

    run(scenario())


def test_what_one_station_cannot_take_sends_nothing(fleet):
    async def scenario():
        await add(fleet, "C-1")
        await add(fleet, "C-2", "ocpp2.0.1")
        with pytest.raises(UsageError, match="C-2"):  # 2.0.1 needs the EVSE
            await batch.create(fleet, {"all": True}, "unlock_connector", {"connectorId": 1})
        assert not [c for _, c in fleet.live.sent if isinstance(c, UnlockConnector)]

    run(scenario())


def test_dry_run_sends_nothing(fleet):
    async def scenario():
        await add(fleet, "D-1")
        record, plans = await batch.create(fleet, {"all": True}, "clear_cache", None, dry_run=True)
        await batch.run(fleet, record, plans)
        assert record["dryRun"] and record["stations"][0]["outcome"] == "planned"
        assert record["actions"] == [] and fleet.live.sent == []

    run(scenario())


def test_pacing_and_max_failures(fleet):
    async def scenario():
        for i in range(6):
            await add(fleet, f"E-{i}")
        in_flight, most = 0, 0

        async def slow(endpoint, command):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return ("Rejected", {"status": "Rejected"})

        fleet.live.answers[ClearCache] = slow
        record, plans = await batch.create(
            fleet, {"all": True}, "clear_cache", None, max_in_flight=2, max_failures=2
        )
        await batch.run(fleet, record, plans, timeout=5)
        c = record["counts"]
        assert most <= 2
        assert c["failed"] == 2 and c["skipped"] == 4 and c["completed"] == 0
        assert [r["outcome"] for r in record["stations"]].count("skipped") == 4
        failed = [r for r in record["stations"] if r["outcome"] == "failed"]
        assert failed[0]["error"]["code"] == "Rejected"

    run(scenario())


def test_offline_station_fails_in_the_batch_and_others_go_on(fleet):
    async def scenario():
        await add(fleet, "F-1")
        await add(fleet, "F-2")
        del fleet.live.online["F-2"]
        fleet.live.answers[ClearCache] = ("Accepted", {"status": "Accepted"})
        record, plans = await batch.create(fleet, {"all": True}, "clear_cache", None)
        await batch.run(fleet, record, plans, timeout=5)
        rows = {r["endpoint"]: r for r in record["stations"]}
        assert rows["F-1"]["outcome"] == "succeeded"
        assert rows["F-2"]["outcome"] == "failed" and rows["F-2"]["error"]["code"] == "Unavailable"

    run(scenario())


def test_baseline_only_differences(fleet):
    async def scenario():
        await add(fleet, "G-1")
        await add(fleet, "G-2")

        def csconfig(doc: dict, now: str) -> None:
            doc["csconfig"] = [{"key": "HeartbeatInterval", "value": "60"}]

        await fleet._change("G-1", csconfig, message=False)
        fleet.live.answers[Configure] = ("Accepted", {"status": "Accepted"})
        fleet.live.answers[FetchConfig] = ([{"key": "HeartbeatInterval", "value": "60"}], [])
        record, plans = await batch.create(
            fleet,
            {"all": True},
            "configurations",
            {"HeartbeatInterval": 60},
            only_differences=True,
        )
        rows = {r["endpoint"]: r for r in record["stations"]}
        assert rows["G-1"]["outcome"] == "unchanged" and rows["G-1"]["data"] == {}
        assert rows["G-2"]["data"] == {"HeartbeatInterval": "60"}
        await batch.run(fleet, record, plans, timeout=5)
        assert rows["G-2"]["outcome"] == "succeeded"
        assert [ep for ep, c in fleet.live.sent if isinstance(c, Configure)] == ["G-2"]

    run(scenario())


def test_the_record_store_is_bounded():
    kept = batch.Batches(limit=3)
    for i in range(5):
        kept.add({"_id": str(i)})
    with pytest.raises(NotFound):
        kept.get("0")
    assert kept.get("4") == {"_id": "4"}
