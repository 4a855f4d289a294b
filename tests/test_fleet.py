"""Domain rules, in process and fast: a fresh in-memory fleet with fake live stations.

No sockets and no server: each test builds `Fleet(open_store(":memory:"), FakeLive())` and calls
its operations as the OCPP handlers and the API routes would.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from typing import Any

import pytest

from edrvctl import model
from edrvctl.errors import OverBudget, StoreUnavailable, Unavailable
from edrvctl.fleet import Fleet, events
from edrvctl.fleet.live import ChangeAvailability, Disconnect, FetchConfig
from edrvctl.ocppj import Rpc
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.stations import Registry
from edrvctl.store import EventQuery, open_store


class FakeLive:
    """LiveStations: the given endpoints are online; each command gets `answers[type]`."""

    def __init__(self) -> None:
        self.online: set[str] = set()
        self.sent: list[tuple[str, Any]] = []
        self.answers: dict[type, Any] = {}

    def is_online(self, endpoint: str) -> bool:
        return endpoint in self.online

    async def send(self, endpoint: str, command: Any, timeout: float) -> Any:
        if endpoint not in self.online:
            raise Unavailable(f"chargestation {endpoint} is offline")
        self.sent.append((endpoint, command))
        if isinstance(command, Disconnect):
            self.online.discard(endpoint)
            return None
        return self.answers.get(type(command))


_names = itertools.count(1)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def fresh_fleet():
    """A Fleet over an in-memory store, with fake live stations (fleet.live)."""
    return Fleet(open_store(":memory:"), FakeLive())


async def create(fleet: Fleet, **body: Any) -> dict:
    body.setdefault("endpoint", f"CS-{next(_names)}")
    doc, _ = await fleet.create(model.StationCreate(**body))
    return doc


async def online(fleet: Fleet, doc: dict, boot: bool = True) -> None:
    fleet.live.online.add(doc["endpoint"])  # type: ignore[attr-defined]
    await fleet.connected(doc["endpoint"])
    if boot:
        await fleet.boot(doc["endpoint"], {"chargePointVendor": "V", "chargePointModel": "M"})
        await settle(fleet)


async def settle(fleet: Fleet) -> None:
    """Let the tasks a fleet operation started (pushes to stations) finish."""
    while fleet._tasks:
        await asyncio.gather(*fleet._tasks)


# --- the status rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", model.STATUS_PRECEDENCE)
def test_a_connector_status_sets_the_station_status(fresh_fleet, status):
    async def scenario():
        doc = await create(fresh_fleet)
        await fresh_fleet.status_notification(doc["endpoint"], 1, 1, "Available")
        await fresh_fleet.status_notification(doc["endpoint"], 2, 1, status)
        got = await fresh_fleet.get(doc["_id"])
        # the most urgent of (Available, status) wins
        want = min(("Available", status), key=model.STATUS_PRECEDENCE.index)
        assert got["status"] == want
        assert [(c["evseId"], c["status"]) for c in got["connectors"]] == [
            (1, "Available"),
            (2, status),
        ]

    run(scenario())


@pytest.mark.parametrize("station_level", ["Unavailable", "Faulted"])
def test_station_level_unavailable_or_faulted_covers_every_connector(fresh_fleet, station_level):
    async def scenario():
        doc = await create(fresh_fleet)
        await fresh_fleet.status_notification(doc["endpoint"], 1, 1, "Charging")
        await fresh_fleet.status_notification(doc["endpoint"], 0, 0, station_level)
        assert (await fresh_fleet.get(doc["endpoint"]))["status"] == station_level
        await fresh_fleet.status_notification(doc["endpoint"], 0, 0, "Available")
        assert (await fresh_fleet.get(doc["endpoint"]))["status"] == "Charging"

    run(scenario())


def test_every_pair_of_statuses_follows_the_precedence(fresh_fleet):
    for a, b in itertools.product(model.STATUS_PRECEDENCE, repeat=2):
        got = model.station_status([{"status": a}, {"status": b}], None)
        assert got == min((a, b), key=model.STATUS_PRECEDENCE.index)
    assert model.station_status([], "Available") == "Available"
    assert model.station_status([{"status": "Bogus"}], None) is None


# --- status de-duplication -----------------------------------------------------------------------


def test_a_repeated_status_is_not_written_again(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        await fresh_fleet.status_notification(doc["endpoint"], 1, 1, "Available")
        first = await fresh_fleet.get(doc["_id"])
        commits = fresh_fleet.store.commits  # type: ignore[attr-defined]
        for _ in range(5):
            await fresh_fleet.status_notification(doc["endpoint"], 1, 1, "Available")
        assert fresh_fleet.store.commits == commits  # type: ignore[attr-defined]
        assert (await fresh_fleet.get(doc["_id"]))["updatedAt"] == first["updatedAt"]
        await fresh_fleet.status_notification(doc["endpoint"], 1, 1, "Charging")
        assert (await fresh_fleet.get(doc["_id"]))["status"] == "Charging"

    run(scenario())


def test_a_status_whose_commit_failed_is_written_when_repeated(tmp_path):
    """Acknowledged only once committed: after a failed commit, the station's retry of the
    same StatusNotification must be written, not skipped as a repeat."""

    async def scenario():
        store = open_store(tmp_path / "s.db")
        fleet = Fleet(store, FakeLive())
        doc = await create(fleet)
        await online(fleet, doc)
        store_fail = FailingCommits(store)
        store_fail.failing = True
        with pytest.raises(StoreUnavailable):
            await fleet.status_notification(doc["endpoint"], 1, 1, "Faulted", "GroundFailure")
        store_fail.failing = False
        await fleet.status_notification(doc["endpoint"], 1, 1, "Faulted", "GroundFailure")
        await store.close()
        reopened = Fleet(open_store(tmp_path / "s.db"))
        assert (await reopened.get(doc["_id"]))["status"] == "Faulted"

    run(scenario())


class FailingCommits:
    """Makes the store's COMMIT fail, as on a full disk (SQLite rolls the transaction back),
    while `failing` is set."""

    def __init__(self, store: Any) -> None:
        self.failing = False
        self.db = store.db
        store.db = self

    def execute(self, sql: str, *args: Any) -> Any:
        if self.failing and sql == "COMMIT":
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


# --- csconfig ---------------------------------------------------------------------------------


def test_a_partial_csconfig_fetch_keeps_the_rest_and_what_was_read_only(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        live = fresh_fleet.live
        live.answers[FetchConfig] = (
            [
                {"key": "HeartbeatInterval", "value": "300", "readonly": False},
                {"key": "ChargePointModel", "value": "X1", "readonly": True},
            ],
            [],
        )
        await fresh_fleet.fetch_config(doc["_id"], [], 5)
        # GetVariables-style answer: readonly unknown (None) for the key asked again
        live.answers[FetchConfig] = (
            [{"key": "ChargePointModel", "value": "X2", "readonly": None}],
            ["Nope"],
        )
        result = await fresh_fleet.fetch_config(doc["_id"], ["ChargePointModel", "Nope"], 5)
        assert result["unknownKeys"] == ["Nope"]
        stored = {e["key"]: e for e in (await fresh_fleet.get(doc["_id"]))["csconfig"]}
        assert stored["ChargePointModel"] == {
            "key": "ChargePointModel",
            "value": "X2",
            "readonly": True,
        }
        assert stored["HeartbeatInterval"]["value"] == "300"
        assert live.sent[-1] == (doc["endpoint"], FetchConfig(("ChargePointModel", "Nope")))

    run(scenario())


def test_commands_to_an_offline_or_inactive_station_are_refused_before_sending(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        with pytest.raises(Unavailable, match="offline"):
            await fresh_fleet.fetch_config(doc["_id"], [], 5)
        inactive = await create(fresh_fleet, active=False)
        await online(fresh_fleet, inactive)
        told = list(fresh_fleet.live.sent)  # at boot: Inoperative
        with pytest.raises(Unavailable, match="inactive"):
            await fresh_fleet.fetch_config(inactive["_id"], [], 5)
        assert fresh_fleet.live.sent == told

    run(scenario())


def test_deactivating_a_connected_station_tells_it_inoperative(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        fresh_fleet.live.answers[ChangeAvailability] = "Accepted"
        await fresh_fleet.update(doc["_id"], model.StationUpdate(active=False))
        await settle(fresh_fleet)
        assert fresh_fleet.live.sent == [(doc["endpoint"], ChangeAvailability(False))]

    run(scenario())


def test_an_inactive_station_is_told_again_at_boot(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet, active=False)
        await online(fresh_fleet, doc, boot=False)
        assert await fresh_fleet.boot(doc["endpoint"], {"chargePointVendor": "V"}) == (
            "Accepted",
            300,
        )
        await settle(fresh_fleet)
        assert fresh_fleet.live.sent == [(doc["endpoint"], ChangeAvailability(False))]
        assert (await fresh_fleet.authorize(doc["endpoint"], "TAG")).status == "Blocked"

    run(scenario())


def test_a_station_activated_while_offline_is_told_operative_at_its_next_boot(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        fresh_fleet.live.answers[ChangeAvailability] = "Accepted"
        await online(fresh_fleet, doc)
        await fresh_fleet.update(doc["_id"], model.StationUpdate(active=False))
        await settle(fresh_fleet)
        assert fresh_fleet.live.sent == [(doc["endpoint"], ChangeAvailability(False))]
        fresh_fleet.live.online.clear()
        await fresh_fleet.disconnected(doc["endpoint"])
        await fresh_fleet.update(doc["_id"], model.StationUpdate(active=True))  # offline
        await settle(fresh_fleet)
        assert (await fresh_fleet.get(doc["_id"]))["availabilityPending"] is True
        await online(fresh_fleet, doc)  # reconnects and boots: still Inoperative by OCPP
        assert fresh_fleet.live.sent[-1] == (doc["endpoint"], ChangeAvailability(True))
        assert "availabilityPending" not in await fresh_fleet.get(doc["_id"])
        sent = len(fresh_fleet.live.sent)
        await online(fresh_fleet, doc)  # told once: the next boot sends nothing
        assert len(fresh_fleet.live.sent) == sent

    run(scenario())


def test_no_command_before_the_first_boot(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc, boot=False)
        with pytest.raises(Unavailable, match="BootNotification"):
            await fresh_fleet.fetch_config(doc["_id"], [], 5)
        assert fresh_fleet.live.sent == []

    run(scenario())


def test_a_key_fetched_in_another_case_replaces_the_stored_one(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        fresh_fleet.live.answers[FetchConfig] = (
            [{"key": "OCPPCommCtrlr.HeartbeatInterval", "value": "300", "readonly": False}],
            [],
        )
        await fresh_fleet.fetch_config(doc["_id"], [], 5)
        fresh_fleet.live.answers[FetchConfig] = (
            [{"key": "ocppcommctrlr.heartbeatinterval", "value": "60", "readonly": None}],
            [],
        )
        await fresh_fleet.fetch_config(doc["_id"], ["ocppcommctrlr.heartbeatinterval"], 5)
        assert (await fresh_fleet.get(doc["_id"]))["csconfig"] == [
            {"key": "ocppcommctrlr.heartbeatinterval", "value": "60", "readonly": False}
        ]

    run(scenario())


# --- transactions ------------------------------------------------------------------------------


def test_a_transaction_refused_at_start_ends_refused_not_completed(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet, active=False)
        await online(fresh_fleet, doc)
        key, decision = await fresh_fleet.start_transaction(
            doc["endpoint"], 1, "TAG", 100, model.utcnow(), tx_key="tx-1"
        )
        assert (key, decision.status) == ("tx-1", "Blocked")
        assert await fresh_fleet.transaction_connector(doc["endpoint"], "tx-1") == 1
        await fresh_fleet.stop_transaction(
            doc["endpoint"], "tx-1", 150, model.utcnow(), "DeAuthorized"
        )
        async with fresh_fleet.store.unit() as tx:
            (stored,) = await tx.transactions(doc["_id"])
        assert stored["status"] == "Refused"
        assert (stored["meterStart"], stored["meterStop"]) == (100, 150)

    run(scenario())


@pytest.mark.parametrize(
    "values,wh",
    [
        ([{"sampledValue": [{"value": "1500"}]}], 1500.0),  # 1.6: text, Wh by default
        ([{"sampledValue": [{"value": "1.5", "unit": "kWh"}]}], 1500.0),
        ([{"sampledValue": [{"value": 2.5, "unitOfMeasure": {"unit": "kWh"}}]}], 2500.0),
        (
            [{"sampledValue": [{"value": 25, "unitOfMeasure": {"unit": "Wh", "multiplier": 2}}]}],
            2500.0,
        ),
        (
            [
                {
                    "sampledValue": [
                        {"value": 230, "measurand": "Voltage"},
                        {"value": 7, "measurand": "Energy.Active.Import.Register"},
                    ]
                }
            ],
            7.0,
        ),
        ([{"sampledValue": [{"value": 5, "phase": "L1"}]}], None),
        ([], None),
    ],
)
def test_the_energy_register_in_wh(values, wh):
    assert model.energy_register_wh(values) == wh


# --- problems reported by NotifyEvent -------------------------------------------------------


def test_a_reported_problem_faults_the_connector_until_cleared(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet, protocol="ocpp2.0.1")
        await online(fresh_fleet, doc)
        ep = doc["endpoint"]
        await fresh_fleet.status_notification(ep, 1, 1, "Available")
        await fresh_fleet.status_notification(ep, 2, 1, "Charging")
        await fresh_fleet.problem(ep, 1, 1, True, "RCD tripped")
        assert (await fresh_fleet.get(ep))["status"] == "Faulted"
        await fresh_fleet.status_notification(ep, 1, 1, "Available")  # said again: still faulted
        assert (await fresh_fleet.get(ep))["status"] == "Faulted"
        await fresh_fleet.problem(ep, 1, 1, False)
        assert (await fresh_fleet.get(ep))["status"] == "Charging"
        await fresh_fleet.problem(ep, None, None, True)  # the whole station
        assert (await fresh_fleet.get(ep))["status"] == "Faulted"
        await fresh_fleet.problem(ep, None, None, False)
        await fresh_fleet.problem(ep, 2, None, True)  # an EVSE
        got = await fresh_fleet.get(ep)
        assert got["status"] == "Faulted"
        assert [c.get("problem") for c in got["connectors"]] == [False, True]

    run(scenario())


# --- the password cache -----------------------------------------------------------------------


def test_the_password_cache_follows_the_stored_hash(fresh_fleet):
    async def scenario():
        doc, password = await fresh_fleet.create(
            model.StationCreate(endpoint=f"PW-{next(_names)}", security={"type": "basic_auth"})
        )
        assert password
        assert await fresh_fleet.check_password(doc["endpoint"], password)
        assert await fresh_fleet.check_password(doc["endpoint"], password)  # from the cache
        assert not await fresh_fleet.check_password(doc["endpoint"], password + "x")
        # the hash changed elsewhere (another process or node): the new password works,
        # the old one no longer does
        from edrvctl import passwords

        new = passwords.generate()
        async with fresh_fleet.store.unit() as tx:
            await tx.set_password_hash(doc["_id"], passwords.hash_password(new), model.utcnow())
        assert await fresh_fleet.check_password(doc["endpoint"], new)
        assert not await fresh_fleet.check_password(doc["endpoint"], password)

    run(scenario())


# --- acknowledged only after commit -------------------------------------------------------------


class RecordingSocket:
    """A websocket stand-in: frames to read, and what was sent with the commit count then."""

    def __init__(self, frames: list[str], store: Any) -> None:
        self.frames = frames
        self.store = store
        self.sent: list[tuple[bytes, int]] = []

    def __aiter__(self):
        return self._read()

    async def _read(self):
        for f in self.frames:
            yield f

    async def send(self, message: Any, text: bool | None = None) -> None:
        self.sent.append((message, self.store.commits))


def test_no_answer_leaves_before_its_commit(fresh_fleet):
    """Each CALLRESULT for a message that writes is sent only after a COMMIT holding it."""

    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        t = model.utcnow()
        frames = [
            f'[2,"s{i}","StatusNotification",{{"connectorId":{i},"errorCode":"NoError",'
            f'"status":"Available","timestamp":"{t}"}}]'
            for i in range(1, 4)
        ]
        frames.append(
            f'[2,"m1","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":'
            f'"{t}","sampledValue":[{{"value":"12"}}]}}]}}]'
        )
        ws = RecordingSocket(frames, fresh_fleet.store)
        session = Station16(doc["endpoint"], "ocpp1.6", ws, fresh_fleet)
        before = fresh_fleet.store.commits
        await session.run()
        assert len(ws.sent) == 4
        for n, (frame, commits) in enumerate(ws.sent, start=1):
            assert frame.startswith(b"[3,"), frame
            assert commits >= before + n, f"answer {n} left before its commit"
        stored = await fresh_fleet.get(doc["_id"])
        assert len(stored["connectors"]) == 3

    run(scenario())


# --- newest connection wins -----------------------------------------------------------------


class FakeSession:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.closed_with: str | None = None
        self.rpc = Rpc(RecordingSocket([], None), "1.6", {}, None)

    def closed(self) -> None:
        self.rpc.close()

    def describe(self) -> dict:
        return {"protocol": "ocpp1.6", "address": "192.0.2.1"}

    async def close(self, reason: str = "") -> None:
        self.closed_with = reason


async def two_connections(fleet: Fleet) -> tuple[dict, Registry, Any, Any]:
    """A station, the fleet's Registry of live stations, and two sessions of the station: the
    old one attached, the new one not yet."""
    doc = await create(fleet)
    registry = Registry(fleet)
    fleet.live = registry
    old, new = FakeSession(doc["endpoint"]), FakeSession(doc["endpoint"])
    await registry.attach(old)
    return doc, registry, old, new


def test_the_newest_connection_wins(fresh_fleet):
    async def scenario():
        doc, registry, old, new = await two_connections(fresh_fleet)
        assert (await fresh_fleet.get(doc["_id"]))["online"] is True
        await registry.attach(new)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert old.closed_with == "replaced by a newer connection"
        assert old.rpc.closed and not new.rpc.closed
        await registry.detach(old)  # type: ignore[arg-type]  (the old one's end comes late)
        assert registry.is_online(doc["endpoint"])
        assert (await fresh_fleet.get(doc["_id"]))["online"] is True
        await registry.detach(new)  # type: ignore[arg-type]
        assert not registry.is_online(doc["endpoint"])
        got = await fresh_fleet.get(doc["_id"])
        assert got["online"] is False and got["lastDisconnectAt"]

    run(scenario())


def test_a_reconnect_is_recorded_after_the_offline_it_follows(fresh_fleet):
    """The old socket's offline write, still under way when the station reconnects, lands
    first: the record ends online (on PostgreSQL the two could commit in either order)."""

    async def scenario():
        doc, registry, old, new = await two_connections(fresh_fleet)
        gate, recorded = asyncio.Event(), fresh_fleet.disconnected

        async def slow_offline(endpoint: str) -> None:
            await gate.wait()
            await recorded(endpoint)

        fresh_fleet.disconnected = slow_offline  # type: ignore[method-assign]
        leaving = asyncio.ensure_future(registry.detach(old))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        coming = asyncio.ensure_future(registry.attach(new))  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(leaving, coming)
        assert registry.is_online(doc["endpoint"])
        assert (await fresh_fleet.get(doc["_id"]))["online"] is True

    run(scenario())


def test_heartbeats_stamp_last_message_at_in_bounded_units(fresh_fleet, monkeypatch):
    """A second's lastMessageAt stamps are written SEEN_PER_UNIT stations a unit (each its own
    commit), so a busy second never holds the store, and the stations waiting on it, at once."""
    import edrvctl.fleet as fleet_module

    monkeypatch.setattr(fleet_module, "SEEN_PER_UNIT", 2)

    async def scenario():
        docs = [await create(fresh_fleet) for _ in range(5)]
        for doc in docs:
            await online(fresh_fleet, doc, boot=False)
        before = {d["_id"]: (await fresh_fleet.get(d["_id"])).get("lastMessageAt") for d in docs}
        await asyncio.sleep(0.002)  # a later millisecond than the connects' stamps
        for doc in docs:
            fresh_fleet.heartbeat(doc["endpoint"])
        commits = fresh_fleet.store.commits
        await fresh_fleet.flush_seen()
        assert fresh_fleet.store.commits - commits == 3  # 2 + 2 + 1 stations
        for doc in docs:
            stamped = (await fresh_fleet.get(doc["_id"]))["lastMessageAt"]
            assert stamped > (before[doc["_id"]] or "")

    run(scenario())


def test_deleting_a_connected_station_disconnects_it(fresh_fleet):
    async def scenario():
        doc = await create(fresh_fleet)
        await online(fresh_fleet, doc)
        await fresh_fleet.delete(doc["endpoint"])
        assert fresh_fleet.live.sent == [(doc["endpoint"], Disconnect("chargestation deleted"))]
        assert await fresh_fleet.is_known(doc["endpoint"]) is None

    run(scenario())


# --- budgets ----------------------------------------------------------------------------------


def budget_fleet(**budgets: int) -> Fleet:
    from edrvctl.fleet import Budgets

    return Fleet(open_store(":memory:"), FakeLive(), budgets=Budgets(**budgets))


def test_a_record_holds_at_most_its_budget_of_connectors():
    async def scenario():
        fleet = budget_fleet(connectors=3)
        doc = await create(fleet)
        for c in (1, 2, 3):
            await fleet.status_notification(doc["endpoint"], c, c, "Available")
        with pytest.raises(OverBudget, match="at most 3 connectors"):
            await fleet.status_notification(doc["endpoint"], 4, 4, "Available")
        with pytest.raises(OverBudget):
            await fleet.problem(doc["endpoint"], 5, 1, True)
        await fleet.status_notification(doc["endpoint"], 2, 2, "Charging")  # known: fine
        got = await fleet.get(doc["_id"])
        assert len(got["connectors"]) == 3 and got["status"] == "Charging"

    run(scenario())


def test_what_a_station_keeps_a_day_is_bounded():
    async def scenario():
        fleet = budget_fleet(stored_per_day=2000, payload=500)
        doc = await create(fleet)
        ep = doc["endpoint"]
        sample = [{"timestamp": model.utcnow(), "sampledValue": [{"value": "1"}]}]
        with pytest.raises(OverBudget, match="per message"):
            await fleet.record_event(ep, "DataTransfer", {"data": "x" * 600})
        kept = 0
        with pytest.raises(OverBudget, match="per day"):
            for _ in range(100):
                await fleet.meter_values(ep, 1, None, sample)
                kept += 1
        assert 0 < kept < 100
        with pytest.raises(OverBudget):  # events count against the same budget
            await fleet.record_event(ep, "SecurityEventNotification", {"type": "x"})
        async with fleet.store.unit() as tx:
            assert len(await tx.meter_values(doc["_id"])) == kept
            assert await tx.list_events(EventQuery(station_id=doc["_id"])) == []
        await fleet.refused(ep, 401, "wrong password", {})  # what the server saw is not charged
        refused = await fleet.list_events(EventQuery(), station=ep)
        assert [e["type"] for e in refused] == [events.CONNECTION_REFUSED]

    run(scenario())


def test_changing_between_password_profiles_keeps_the_password(fresh_fleet):
    async def scenario():
        doc, password = await fresh_fleet.create(
            model.StationCreate(endpoint=f"PW-{next(_names)}", security={"type": "basic_auth"})
        )
        patch = model.StationUpdate(security={"type": "tls_basic_auth"})
        updated = await fresh_fleet.update(doc["_id"], patch)
        assert updated["security"] == {"type": "tls_basic_auth", "profile": 2}
        assert "password" not in updated
        assert await fresh_fleet.check_password(doc["endpoint"], password)

    run(scenario())
