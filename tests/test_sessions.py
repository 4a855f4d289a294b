"""Sessions, in process: a fresh in-memory fleet, the OCPP handlers of both versions called as
a station's messages would call them, and the sessions read side (fleet/sessions.py). One
session shape from 1.6 StartTransaction/StopTransaction and 2.0.1 TransactionEvent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edrvctl import model
from edrvctl.errors import Conflict, NotFound, OverBudget, StationRejected
from edrvctl.fleet import Budgets, Fleet, sessions
from edrvctl.fleet.live import RemoteStart, TransactionStatus
from edrvctl.server import ocpp16, ocpp201
from edrvctl.store import EventQuery, SessionQuery, open_store
from test_fleet import FakeLive, create, online, run

T0 = "2030-01-01T10:00:00.000Z"
T1 = "2030-01-01T11:00:00.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Answering(FakeLive):
    """FakeLive whose TransactionStatus gets `status_answer` (or raises it)."""

    def __init__(self) -> None:
        super().__init__()
        self.status_answer: Any = {"messagesInQueue": False, "ongoingIndicator": False}

    async def send(self, endpoint: str, command: Any, timeout: float) -> Any:
        if isinstance(command, TransactionStatus) and endpoint in self.online:
            self.sent.append((endpoint, command))
            if isinstance(self.status_answer, Exception):
                raise self.status_answer
            return "Accepted", self.status_answer
        return await super().send(endpoint, command, timeout)


@pytest.fixture
def fleet():
    f = Fleet(open_store(":memory:"), Answering())
    f.recent_sessions = sessions.Recent(clock=Clock())
    return f


class Session:
    """What the OCPP handlers use of a station's session."""

    def __init__(self, fleet: Fleet, endpoint: str) -> None:
        self.fleet, self.endpoint = fleet, endpoint


async def station(fleet: Fleet, protocol: str, **kw: Any) -> Session:
    doc = await create(fleet, protocol=protocol, **kw)
    await online(fleet, doc)
    return Session(fleet, doc["endpoint"])


def mv16(*readings: tuple[str, str], at: str = T0) -> list[dict]:
    """1.6 meter values: (value, context) energy readings in Wh, as text."""
    return [
        {
            "timestamp": at,
            "sampledValue": [
                {"value": v, "context": c, "measurand": "Energy.Active.Import.Register"}
                for v, c in readings
            ],
        }
    ]


def mv201(wh: float, context: str = "Sample.Periodic", at: str = T0, **uom: Any) -> list[dict]:
    return [
        {
            "timestamp": at,
            "sampledValue": [
                {
                    "value": wh,
                    "context": context,
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh", **uom},
                }
            ],
        }
    ]


def event(kind: str, tx: str, seq: int, **fields: Any) -> dict:
    info = {"transactionId": tx, **fields.pop("info", {})}
    return {
        "eventType": kind,
        "timestamp": fields.pop("timestamp", T0),
        "triggerReason": fields.pop("trigger", "MeterValuePeriodic"),
        "seqNo": seq,
        "transactionInfo": info,
        **fields,
    }


async def only(fleet: Fleet) -> dict:
    found, total = await sessions.list_(fleet, SessionQuery())
    assert total == 1, found
    return found[0]


async def session_events(fleet: Fleet) -> list[tuple[str, dict]]:
    rows = await fleet.list_events(EventQuery(types=("session.*",), limit=None))
    return [(r["type"], r["data"]) for r in rows]


# --- one shape from both versions ------------------------------------------------------------


def test_a_16_session_from_start_meter_values_and_stop(fleet):
    async def scenario():
        s = await station(fleet, "ocpp1.6")
        start = {"connectorId": 2, "idTag": "TAG-1", "meterStart": 1000, "timestamp": T0}
        answer = await ocpp16.start_transaction(s, start)
        tx = str(answer["transactionId"])
        assert answer["idTagInfo"]["status"] == "Accepted"
        mv = {"connectorId": 2, "transactionId": int(tx), "meterValue": mv16(("1800", ""))}
        await ocpp16.meter_values(s, mv)
        running = await only(fleet)
        assert (running["status"], running["energyKwh"]) == ("Active", 0.8)  # latest - start
        stop = {
            "transactionId": int(tx),
            "meterStop": 2500,
            "timestamp": T1,
            "reason": "EVDisconnected",
            "transactionData": mv16(("2500", "Transaction.End"), at=T1),
        }
        await ocpp16.stop_transaction(s, stop)
        got = await only(fleet)
        assert got == {
            **got,
            "endpoint": s.endpoint,
            "transactionId": tx,
            "evseId": 2,
            "connectorId": 2,  # 1.6: connector n is EVSE n
            "idTag": "TAG-1",
            "status": "Completed",
            "startedAt": T0,
            "stoppedAt": T1,
            "meterStart": 1000,
            "meterStop": 2500,
            "energyKwh": 1.5,
            "stopReason": "EVDisconnected",
            "closedBy": None,
        }
        assert got["metrics"]["chargingStart"] == T0 and got["metrics"]["meterStart"] == 1000
        assert await sessions.get(fleet, got["_id"]) == got
        kinds = [(k, d["status"], d["energyKwh"]) for k, d in await session_events(fleet)]
        assert kinds == [("session.started", "Active", 0.0), ("session.ended", "Completed", 1.5)]

    run(scenario())


def test_a_201_session_from_transaction_events(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        started = event(
            "Started",
            "tx-201",
            0,
            trigger="Authorized",
            evse={"id": 2, "connectorId": 1},
            idToken={"idToken": "TAG-2", "type": "ISO14443"},
            meterValue=mv201(2.0, "Transaction.Begin", unit="kWh"),  # 2 kWh: 2000 Wh
            info={"chargingState": "EVConnected"},
        )
        assert (await ocpp201.transaction_event(s, started))["idTokenInfo"]["status"] == "Accepted"
        updated = event("Updated", "tx-201", 1, meterValue=mv201(25, multiplier=2))
        await ocpp201.transaction_event(s, updated)
        assert (await only(fleet))["energyKwh"] == 0.5  # 2500 Wh, read from its meter values
        ended = event(
            "Ended",
            "tx-201",
            2,
            timestamp=T1,
            trigger="EVDeparted",
            meterValue=mv201(3500, "Transaction.End", at=T1),
            info={"stoppedReason": "EVDisconnected", "chargingState": "Idle"},
        )
        await ocpp201.transaction_event(s, ended)
        got = await only(fleet)
        assert got == {
            **got,
            "transactionId": "tx-201",
            "evseId": 2,
            "connectorId": 1,
            "idTag": "TAG-2",
            "status": "Completed",
            "chargingState": "Idle",
            "startedAt": T0,
            "stoppedAt": T1,
            "meterStart": 2000,  # no meterStart in 2.0.1: the Started event's reading
            "meterStop": 3500,
            "energyKwh": 1.5,
            "stopReason": "EVDisconnected",
        }
        assert got["metrics"]["chargingStopReason"] == "EVDisconnected"

    run(scenario())


def test_an_ended_event_without_a_reading_stops_at_the_latest_one(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(
            s, event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(100))
        )
        await ocpp201.transaction_event(s, event("Updated", "t", 1, meterValue=mv201(600)))
        await ocpp201.transaction_event(s, event("Ended", "t", 2, info={"stoppedReason": "Local"}))
        got = await only(fleet)
        assert (got["meterStop"], got["energyKwh"], got["evseId"]) == (600, 0.5, 1)

    run(scenario())


def test_a_201_start_without_a_reading_takes_the_first_one(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(s, event("Started", "t", 0, evse={"id": 1}))
        assert (await only(fleet))["meterStart"] is None
        await ocpp201.transaction_event(s, event("Updated", "t", 1, meterValue=mv201(400)))
        await ocpp201.transaction_event(s, event("Updated", "t", 2, meterValue=mv201(900)))
        got = await only(fleet)
        assert (got["meterStart"], got["energyKwh"]) == (400, 0.5)

    run(scenario())


# --- refused, repeated, unknown ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_a_transaction_whose_token_was_refused_stays_refused(fleet, protocol):
    async def scenario():
        s = await station(fleet, protocol, active=False)  # every token is Blocked there
        if protocol == "ocpp1.6":
            start = {"connectorId": 1, "idTag": "BAD", "meterStart": 10, "timestamp": T0}
            answer = await ocpp16.start_transaction(s, start)
            assert answer["idTagInfo"]["status"] == "Blocked"
            stop = {"transactionId": answer["transactionId"], "meterStop": 10, "timestamp": T1}
            await ocpp16.stop_transaction(s, {**stop, "reason": "DeAuthorized"})
        else:
            started = event(
                "Started",
                "t",
                0,
                evse={"id": 1},
                idToken={"idToken": "BAD", "type": "ISO14443"},
                meterValue=mv201(10),
            )
            answer = await ocpp201.transaction_event(s, started)
            assert answer["idTokenInfo"]["status"] == "Blocked"
            info = {"stoppedReason": "DeAuthorized"}
            await ocpp201.transaction_event(s, event("Ended", "t", 1, timestamp=T1, info=info))
        got = await only(fleet)
        assert (got["status"], got["stoppedAt"], got["energyKwh"]) == ("Refused", T1, 0.0)
        ended = [d for k, d in await session_events(fleet) if k == "session.ended"]
        assert [d["status"] for d in ended] == ["Refused"]

    run(scenario())


def test_a_token_refused_after_a_201_start_makes_the_session_refused(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(
            s, event("Started", "t", 0, trigger="CablePluggedIn", evse={"id": 1})
        )
        await fleet.update(s.endpoint, model.StationUpdate(active=False))
        token = {"idToken": "LATE", "type": "ISO14443"}
        answer = await ocpp201.transaction_event(
            s, event("Updated", "t", 1, trigger="Authorized", idToken=token)
        )
        assert answer["idTokenInfo"]["status"] == "Blocked"
        got = await only(fleet)
        assert (got["status"], got["idTag"]) == ("Refused", "LATE")
        kinds = [(k, d["status"]) for k, d in await session_events(fleet)]
        assert kinds == [("session.started", "Active"), ("session.updated", "Refused")]

    run(scenario())


def test_a_repeated_201_start_records_one_session(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        started = event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(100))
        for _ in range(3):  # resent: the station never saw the answer
            await ocpp201.transaction_event(s, started)
        got = await only(fleet)
        assert got["meterStart"] == 100
        page, more = await sessions.meter_values(fleet, got["_id"], 100, 0)
        assert ([v["value"] for v in page], more) == ([100.0], False)
        assert [k for k, _ in await session_events(fleet)] == ["session.started"]

    run(scenario())


def test_a_201_end_without_a_start_is_a_session_of_its_own(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        meter = mv201(1000, "Transaction.Begin") + mv201(4000, "Transaction.End", at=T1)
        ended = event(
            "Ended",
            "lost-start",
            7,
            timestamp=T1,
            evse={"id": 3},
            idToken={"idToken": "TAG", "type": "ISO14443"},
            meterValue=meter,
            info={"stoppedReason": "Local"},
        )
        await ocpp201.transaction_event(s, ended)
        got = await only(fleet)
        assert (got["status"], got["startedAt"], got["stoppedAt"]) == ("Completed", None, T1)
        assert (got["evseId"], got["idTag"]) == (3, "TAG")
        assert (got["meterStart"], got["meterStop"], got["energyKwh"]) == (1000, 4000, 3.0)
        # listed by its stop time, and found by a time window around it
        window = SessionQuery(since="2030-01-01T10:30:00.000Z", until=T1)
        assert (await sessions.list_(fleet, window))[1] == 1
        assert [k for k, _ in await session_events(fleet)] == ["session.ended"]

    run(scenario())


def test_a_201_end_with_only_its_end_reading_has_no_energy(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        meter = mv201(4000, "Transaction.End")
        await ocpp201.transaction_event(s, event("Ended", "t", 1, meterValue=meter))
        got = await only(fleet)
        assert (got["meterStart"], got["meterStop"], got["energyKwh"]) == (None, 4000, None)

    run(scenario())


def test_a_16_stop_of_a_transaction_that_is_not_ours_records_nothing(fleet):
    async def scenario():
        s = await station(fleet, "ocpp1.6")
        stop = {"transactionId": 99999, "meterStop": 5, "timestamp": T1}
        await ocpp16.stop_transaction(s, stop)
        assert (await sessions.list_(fleet, SessionQuery()))[1] == 0
        # ... and a later start is still given its own id
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0}
        assert (await ocpp16.start_transaction(s, start))["transactionId"] != 99999

    run(scenario())


def test_a_repeated_stop_records_one_end(fleet):
    async def scenario():
        s = await station(fleet, "ocpp1.6")
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0}
        tx = (await ocpp16.start_transaction(s, start))["transactionId"]
        stop = {"transactionId": tx, "meterStop": 700, "timestamp": T1}
        await ocpp16.stop_transaction(s, stop)
        await ocpp16.stop_transaction(s, {**stop, "meterStop": 900})
        assert (await only(fleet))["meterStop"] == 700
        assert [k for k, _ in await session_events(fleet)] == ["session.started", "session.ended"]

    run(scenario())


# --- the series ---------------------------------------------------------------------------


def test_meter_values_as_a_series(fleet):
    async def scenario():
        s16 = await station(fleet, "ocpp1.6")
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0}
        tx = (await ocpp16.start_transaction(s16, start))["transactionId"]
        sampled = [
            {"value": "1500"},  # every default: the energy register, Wh, Sample.Periodic
            {"value": "230.5", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
            {"value": "n/a", "measurand": "Current.Import", "unit": "A", "context": "Trigger"},
        ]
        values = [{"timestamp": T0, "sampledValue": sampled}]
        await fleet.meter_values(s16.endpoint, 1, str(tx), values)
        await fleet.meter_values(s16.endpoint, 1, None, mv16(("1", "")))  # no transaction
        got = await only(fleet)
        page, more = await sessions.meter_values(fleet, got["_id"], 10, 0)
        assert not more
        assert page == [
            {
                "timestamp": T0,
                "measurand": "Energy.Active.Import.Register",
                "value": 1500.0,
                "unit": "Wh",
                "phase": None,
                "context": "Sample.Periodic",
                "location": None,
                "evseId": 1,
            },
            {
                "timestamp": T0,
                "measurand": "Voltage",
                "value": 230.5,
                "unit": "V",
                "phase": "L1-N",
                "context": "Sample.Periodic",
                "location": None,
                "evseId": 1,
            },
            {
                "timestamp": T0,
                "measurand": "Current.Import",
                "value": "n/a",  # not a number: given back as sent
                "unit": "A",
                "phase": None,
                "context": "Trigger",
                "location": None,
                "evseId": 1,
            },
        ]

        s201 = await station(fleet, "ocpp2.0.1")
        started = event("Started", "t", 0, evse={"id": 2}, meterValue=mv201(3, unit="kWh"))
        await ocpp201.transaction_event(s201, started)
        power = [
            {
                "timestamp": T1,
                "sampledValue": [
                    {
                        "value": 7.2,
                        "measurand": "Power.Active.Import",
                        "location": "Outlet",
                        "unitOfMeasure": {"unit": "W", "multiplier": 3},
                    }
                ],
            }
        ]
        await ocpp201.transaction_event(s201, event("Updated", "t", 1, meterValue=power))
        (one,) = (await sessions.list_(fleet, SessionQuery(), s201.endpoint))[0]
        page, _ = await sessions.meter_values(fleet, one["_id"], 10, 0)
        assert [(v["measurand"], v["value"], v["unit"], v["location"]) for v in page] == [
            ("Energy.Active.Import.Register", 3.0, "kWh", None),
            ("Power.Active.Import", 7200.0, "W", "Outlet"),  # the multiplier applied
        ]
        assert {v["evseId"] for v in page} == {2}

    run(scenario())


def test_a_long_series_is_paged_with_bounded_reads(fleet, monkeypatch):
    monkeypatch.setattr(sessions, "CHUNK", 3)  # messages read at a time

    async def scenario():
        s = await station(fleet, "ocpp1.6")
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0}
        tx = str((await ocpp16.start_transaction(s, start))["transactionId"])
        for i in range(10):  # 2 samples each: 20 in all
            await fleet.meter_values(s.endpoint, 1, tx, mv16((str(i), "a"), (str(i), "b")))
        sid = (await only(fleet))["_id"]
        seen = []
        for n in range(1, 5):
            page, more = await sessions.meter_values(fleet, sid, 7, (n - 1) * 7)
            seen += [(v["value"], v["context"]) for v in page]
            assert more == (n < 3), n
        assert seen == [(float(i), c) for i in range(10) for c in ("a", "b")]
        with pytest.raises(NotFound):
            await sessions.meter_values(fleet, "0" * 24, 7, 0)

    run(scenario())


# --- events: session.updated at most once a minute ------------------------------------------


def test_session_updated_at_most_once_a_minute_from_meter_values(fleet):
    clock = fleet.recent_sessions._clock

    async def scenario():
        s = await station(fleet, "ocpp1.6")
        start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": T0}
        tx = str((await ocpp16.start_transaction(s, start))["transactionId"])
        for wh in range(100, 1100, 100):  # ten within the minute: no event
            await fleet.meter_values(s.endpoint, 1, tx, mv16((str(wh), "")))
        assert [k for k, _ in await session_events(fleet)] == ["session.started"]
        clock.now += sessions.UPDATE_EVERY
        for wh in (1100, 1200, 1300):  # the first after a minute: one event, up to date
            await fleet.meter_values(s.endpoint, 1, tx, mv16((str(wh), "")))
        updates = [d for k, d in await session_events(fleet) if k == "session.updated"]
        assert [d["energyKwh"] for d in updates] == [1.1]
        assert (await only(fleet))["energyKwh"] == 1.3  # read fresh all the same

    run(scenario())


def test_session_updated_at_once_when_the_201_charging_state_changes(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        charging = {"chargingState": "Charging"}
        await ocpp201.transaction_event(
            s, event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(0), info=charging)
        )
        for n, state in enumerate(["Charging", "Charging", "SuspendedEV", "SuspendedEV"], 1):
            info = {"chargingState": state}
            await ocpp201.transaction_event(
                s, event("Updated", "t", n, meterValue=mv201(n * 100), info=info)
            )
        updates = [d for k, d in await session_events(fleet) if k == "session.updated"]
        assert [(d["chargingState"], d["energyKwh"]) for d in updates] == [("SuspendedEV", 0.3)]
        assert (await only(fleet))["chargingState"] == "SuspendedEV"

    run(scenario())


def test_a_201_update_of_a_transaction_never_started_here_is_a_running_session(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        before = model.utcnow()
        await ocpp201.transaction_event(s, event("Updated", "t", 5, meterValue=mv201(500)))
        # listed by when it was recorded, having no start yet
        assert (await sessions.list_(fleet, SessionQuery(since=before)))[1] == 1
        await ocpp201.transaction_event(s, event("Updated", "t", 6, meterValue=mv201(800)))
        got = await only(fleet)
        assert (got["status"], got["startedAt"], got["meterStart"]) == ("Active", None, 500)
        assert got["energyKwh"] == 0.3
        started = event("Started", "t", 0, evse={"id": 1}, timestamp=T0, meterValue=mv201(450))
        await ocpp201.transaction_event(s, started)  # late, or resent: fills in the start
        got = await only(fleet)
        assert (got["startedAt"], got["meterStart"]) == (T0, 450)

    run(scenario())


def test_a_remote_start_names_the_session_it_started(fleet):
    async def scenario():
        s = await station(fleet, "ocpp1.6")
        fleet.live.answers[RemoteStart] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(s.endpoint, RemoteStart("TAG", connector=1), timeout=5)
        start = {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": T0}
        tx = (await ocpp16.start_transaction(s, start))["transactionId"]
        a = await fleet.get_action(a["_id"])
        got = await only(fleet)
        assert a["progress"][0]["transactionId"] == str(tx)
        assert a["progress"][0]["session"] == got["_id"]

    run(scenario())


# --- listing ------------------------------------------------------------------------------


def test_sessions_are_listed_newest_first_and_filtered(fleet):
    async def scenario():
        a = await station(fleet, "ocpp1.6")
        b = await station(fleet, "ocpp2.0.1")
        keys = []
        for t in ["2030-01-01T10:00:00.000Z", "2030-01-02T10:00:00.000Z"]:
            start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": t}
            keys.append((await ocpp16.start_transaction(a, start))["transactionId"])
        stop = {"transactionId": keys[0], "meterStop": 10, "timestamp": T1}
        await ocpp16.stop_transaction(a, stop)
        started = event("Started", "b1", 0, evse={"id": 1}, timestamp="2030-01-03T10:00:00.000Z")
        await ocpp201.transaction_event(b, started)

        async def listed(station: str | None = None, **kw: Any) -> list[str]:
            found, total = await sessions.list_(fleet, SessionQuery(**kw), station)
            assert len(found) == total or kw.get("limit")
            return [f["transactionId"] for f in found]

        k0, k1 = str(keys[0]), str(keys[1])
        assert await listed() == ["b1", k1, k0]
        assert await listed(a.endpoint) == [k1, k0]
        doc = await fleet.get(b.endpoint)
        assert await listed(doc["_id"]) == ["b1"]  # by _id or endpoint
        assert await listed("nobody") == []
        assert await listed(active=True) == ["b1", k1]
        assert await listed(status="Completed") == [k0]
        assert await listed(since="2030-01-02T00:00:00.000Z") == ["b1", k1]
        assert await listed(until="2030-01-02T10:00:00.000Z") == [k1, k0]
        assert await listed(limit=1, offset=1) == [k1]

    run(scenario())


# --- close -------------------------------------------------------------------------------------


def test_close_ends_a_session_as_an_admin(fleet):
    async def scenario():
        s = await station(fleet, "ocpp1.6")
        start = {"connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": T0}
        tx = (await ocpp16.start_transaction(s, start))["transactionId"]
        await fleet.meter_values(s.endpoint, 1, str(tx), mv16(("900", "")))
        sid = (await only(fleet))["_id"]
        closed = await sessions.close(fleet, sid, "station replaced")
        assert fleet.live.sent == []  # 1.6 has no GetTransactionStatus: nothing is asked
        assert closed == await sessions.get(fleet, sid)
        assert (closed["status"], closed["meterStop"], closed["energyKwh"]) == (
            "Completed",
            900,
            0.8,
        )
        assert (closed["closedBy"], closed["closeReason"]) == ("admin", "station replaced")
        assert closed["stoppedAt"] is not None
        kind, data = (await session_events(fleet))[-1]
        assert (kind, data["closedBy"], data["reason"], data["energyKwh"]) == (
            "session.ended",
            "admin",
            "station replaced",
            0.8,
        )
        with pytest.raises(Conflict, match="ended"):
            await sessions.close(fleet, sid, "again")
        with pytest.raises(NotFound):
            await sessions.close(fleet, "0" * 24, "no such session")
        # the station's own end, if it ever comes, wins: it knows the meter
        stop = {"transactionId": tx, "meterStop": 1000, "timestamp": T1, "reason": "Local"}
        await ocpp16.stop_transaction(s, stop)
        got = await only(fleet)
        assert (got["meterStop"], got["energyKwh"], got["stopReason"]) == (1000, 0.9, "Local")

    run(scenario())


def test_close_asks_an_online_201_station_first(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(
            s, event("Started", "t-9", 0, evse={"id": 1}, meterValue=mv201(0))
        )
        sid = (await only(fleet))["_id"]
        live = fleet.live
        live.status_answer = {"messagesInQueue": False, "ongoingIndicator": True}
        with pytest.raises(Conflict, match="still ongoing") as e:
            await sessions.close(fleet, sid, "r")
        assert "--force" in (e.value.hint or "")
        assert live.sent[-1] == (s.endpoint, TransactionStatus("t-9"))
        live.status_answer = {"messagesInQueue": True, "ongoingIndicator": False}
        with pytest.raises(Conflict, match="queued"):
            await sessions.close(fleet, sid, "r")
        live.status_answer = StationRejected("CALLERROR NotImplemented")
        with pytest.raises(StationRejected, match="nothing was closed"):
            await sessions.close(fleet, sid, "r")
        assert (await only(fleet))["status"] == "Active"
        assert [k for k, _ in await session_events(fleet)] == ["session.started"]

        asked = len(live.sent)
        closed = await sessions.close(fleet, sid, "forced", force=True)  # not asked at all
        assert len(live.sent) == asked and closed["closedBy"] == "admin"

    run(scenario())


@pytest.mark.parametrize("online_now", [True, False])
def test_close_of_a_201_session_the_station_no_longer_knows(fleet, online_now):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(
            s, event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(0))
        )
        sid = (await only(fleet))["_id"]
        if not online_now:
            fleet.live.online.discard(s.endpoint)
            await fleet.disconnected(s.endpoint)
        closed = await sessions.close(fleet, sid, "lost")
        assert closed["status"] == "Completed"
        asked = [c for _, c in fleet.live.sent if isinstance(c, TransactionStatus)]
        assert asked == ([TransactionStatus("t")] if online_now else [])

    run(scenario())


def test_a_station_end_racing_a_close_is_not_closed_again(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        await ocpp201.transaction_event(
            s, event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(0))
        )
        sid = (await only(fleet))["_id"]
        gate = asyncio.Event()
        answer = {"messagesInQueue": False, "ongoingIndicator": False}

        async def slow(endpoint: str, command: Any, timeout: float) -> Any:
            await gate.wait()
            return "Accepted", answer

        live = fleet.live
        live.send = slow  # type: ignore[method-assign]
        closing = asyncio.ensure_future(sessions.close(fleet, sid, "r"))
        await asyncio.sleep(0)
        ended = event("Ended", "t", 1, timestamp=T1, meterValue=mv201(50, "Transaction.End"))
        await ocpp201.transaction_event(s, ended)
        gate.set()
        with pytest.raises(Conflict, match="meanwhile"):
            await closing
        got = await only(fleet)
        assert (got["closedBy"], got["meterStop"]) == (None, 50)

    run(scenario())


@pytest.mark.parametrize("kind", ["Started", "Updated", "Ended"])
def test_a_station_inventing_transactions_is_held_to_its_daily_budget(kind):
    async def scenario():
        fleet = Fleet(open_store(":memory:"), Answering(), budgets=Budgets(stored_per_day=8192))
        s = await station(fleet, "ocpp2.0.1")
        refused = 0
        for n in range(50):
            try:
                await ocpp201.transaction_event(s, event(kind, f"invented-{n}", 0, evse={"id": 1}))
            except OverBudget:
                refused += 1
        kept = (await sessions.list_(fleet, SessionQuery()))[1]
        assert 0 < kept <= 8 and refused == 50 - kept  # a session counts as a kilobyte

    run(scenario())


def test_energy_while_active_is_the_latest_reading_even_behind_other_samples(fleet):
    async def scenario():
        s = await station(fleet, "ocpp2.0.1")
        started = event("Started", "t", 0, evse={"id": 1}, meterValue=mv201(1000))
        await ocpp201.transaction_event(s, started)
        await ocpp201.transaction_event(s, event("Updated", "t", 1, meterValue=mv201(1700)))
        voltage = [{"timestamp": T0, "sampledValue": [{"value": 230, "measurand": "Voltage"}]}]
        for n in range(2, 4):  # newer messages without the register
            await ocpp201.transaction_event(s, event("Updated", "t", n, meterValue=voltage))
        assert (await only(fleet))["energyKwh"] == 0.7
        assert [k for k, _ in await session_events(fleet)] == ["session.started"]  # <1 min

    run(scenario())
