"""Commands as Actions, in process and fast: translation per OCPP version, dispatch, and the
Action lifecycle (answer, follow-ups, deadline, restart) over an in-memory fleet with fake live
stations that answer per command type (tests/test_fleet.py's pattern)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from edrvctl import model
from edrvctl.errors import (
    Busy,
    StationRejected,
    StationTimeout,
    Unavailable,
    UsageError,
)
from edrvctl.fleet import Fleet, actions
from edrvctl.fleet.live import (
    ChangeAvailability,
    ClearCache,
    Configure,
    DataTransfer,
    Disconnect,
    FetchConfig,
    GetDiagnostics,
    RawCall,
    RemoteStart,
    RemoteStop,
    Reset,
    TriggerMessage,
    UnlockConnector,
    UpdateFirmware,
)
from edrvctl.ocppj import schemas
from edrvctl.server import ocpp16, ocpp201
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.ocpp201 import Station201
from edrvctl.server.stations import Registry
from edrvctl.store import ActionQuery, open_store

VERSIONS = {"ocpp1.6": ("1.6", ocpp16.translate), "ocpp2.0.1": ("2.0.1", ocpp201.translate)}
T = "2024-05-01T10:00:00.000Z"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


# --- translation per version -------------------------------------------------------------------

TRANSLATED = [
    # (command, 1.6 (action, payload), 2.0.1 (action, payload)); None: a UsageError
    (
        Reset(),
        ("Reset", {"type": "Soft"}),
        ("Reset", {"type": "OnIdle"}),
    ),
    (
        Reset(hard=True),
        ("Reset", {"type": "Hard"}),
        ("Reset", {"type": "Immediate"}),
    ),
    (Reset(hard=True, evse=2), None, ("Reset", {"type": "Immediate", "evseId": 2})),
    (
        UnlockConnector(connector=2),
        ("UnlockConnector", {"connectorId": 2}),
        None,  # 2.0.1 needs the EVSE
    ),
    (
        UnlockConnector(evse=2),
        ("UnlockConnector", {"connectorId": 2}),
        ("UnlockConnector", {"evseId": 2, "connectorId": 1}),
    ),
    (
        UnlockConnector(evse=1, connector=2),
        None,
        ("UnlockConnector", {"evseId": 1, "connectorId": 2}),
    ),
    (UnlockConnector(), None, None),
    (
        TriggerMessage("Heartbeat"),
        ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
        ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ),
    (
        TriggerMessage("StatusNotification", evse=1, connector=1),
        ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}),
        (
            "TriggerMessage",
            {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
        ),
    ),
    (
        TriggerMessage("MeterValues", connector=2),
        ("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 2}),
        None,  # 2.0.1 names an EVSE
    ),
    (
        TriggerMessage("TransactionEvent"),
        None,
        ("TriggerMessage", {"requestedMessage": "TransactionEvent"}),
    ),
    (
        TriggerMessage("DiagnosticsStatusNotification"),
        ("TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"}),
        None,
    ),
    (
        Configure("HeartbeatInterval", "60"),
        ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}),
        None,  # not Component.Variable
    ),
    (
        Configure("Connector[1,2].ConnectorType", "cType2"),
        ("ChangeConfiguration", {"key": "Connector[1,2].ConnectorType", "value": "cType2"}),
        (
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 2}},
                        "variable": {"name": "ConnectorType"},
                        "attributeValue": "cType2",
                    }
                ]
            },
        ),
    ),
    (
        Configure("OCPPCommCtrlr.MessageTimeout[Default]", "30"),
        ("ChangeConfiguration", {"key": "OCPPCommCtrlr.MessageTimeout[Default]", "value": "30"}),
        (
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "MessageTimeout", "instance": "Default"},
                        "attributeValue": "30",
                    }
                ]
            },
        ),
    ),
    (ClearCache(), ("ClearCache", {}), ("ClearCache", {})),
    (
        DataTransfer("acme", message_id="m", data="d"),
        ("DataTransfer", {"vendorId": "acme", "messageId": "m", "data": "d"}),
        ("DataTransfer", {"vendorId": "acme", "messageId": "m", "data": "d"}),
    ),
    (
        RemoteStart("TAG1", connector=2, remote_start_id=7),
        ("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 2}),
        None,  # 2.0.1 starts on an EVSE
    ),
    (
        RemoteStart("TAG1", evse=2, remote_start_id=7),
        ("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 2}),
        (
            "RequestStartTransaction",
            {"idToken": {"idToken": "TAG1", "type": "Central"}, "remoteStartId": 7, "evseId": 2},
        ),
    ),
    (
        RemoteStop("42"),
        ("RemoteStopTransaction", {"transactionId": 42}),
        ("RequestStopTransaction", {"transactionId": "42"}),
    ),
    (RemoteStop("tx-abc"), None, ("RequestStopTransaction", {"transactionId": "tx-abc"})),
    (
        UpdateFirmware("http://h/fw.bin", retrieve_at=T, request_id=5),
        ("UpdateFirmware", {"location": "http://h/fw.bin", "retrieveDate": T}),
        (
            "UpdateFirmware",
            {"requestId": 5, "firmware": {"location": "http://h/fw.bin", "retrieveDateTime": T}},
        ),
    ),
    (
        GetDiagnostics("http://h/up/", since=T, until=T, request_id=6),
        ("GetDiagnostics", {"location": "http://h/up/", "startTime": T, "stopTime": T}),
        (
            "GetLog",
            {
                "logType": "DiagnosticsLog",
                "requestId": 6,
                "log": {
                    "remoteLocation": "http://h/up/",
                    "oldestTimestamp": T,
                    "latestTimestamp": T,
                },
            },
        ),
    ),
    (
        GetDiagnostics("http://h/up/", security=True, request_id=6),
        (
            "GetLog",
            {"logType": "SecurityLog", "requestId": 6, "log": {"remoteLocation": "http://h/up/"}},
        ),
        (
            "GetLog",
            {"logType": "SecurityLog", "requestId": 6, "log": {"remoteLocation": "http://h/up/"}},
        ),
    ),
    (
        RawCall("Reset", {"type": "Soft"}),
        ("Reset", {"type": "Soft"}),
        None,  # Soft is not a 2.0.1 reset type: refused by the schema
    ),
    (RawCall("GetTransactionStatus", {}), None, ("GetTransactionStatus", {})),
]


@pytest.mark.parametrize("protocol", VERSIONS)
@pytest.mark.parametrize(
    ("command", "v16", "v201"), TRANSLATED, ids=[repr(t[0]) for t in TRANSLATED]
)
def test_each_command_is_translated_per_version(protocol, command, v16, v201):
    version, translate = VERSIONS[protocol]
    want = v16 if protocol == "ocpp1.6" else v201
    if want is None:
        with pytest.raises(UsageError):
            translate(command)
        return
    action, payload = translate(command)
    assert (action, payload) == want
    schemas.validate(version, action, schemas.REQUEST, payload)  # what the station would get


def test_firmware_without_a_time_is_retrieved_now():
    for translate in (ocpp16.translate, ocpp201.translate):
        _, payload = translate(UpdateFirmware("http://h/fw", request_id=1))
        when = payload.get("retrieveDate") or payload["firmware"]["retrieveDateTime"]
        assert schemas.is_datetime(when)


def test_every_operation_has_a_translation_in_both_versions():
    for kind in actions.TYPES:
        if kind is ChangeAvailability:  # its own session method, as before
            continue
        assert kind in ocpp16.TRANSLATIONS and kind in ocpp201.TRANSLATIONS, kind


# --- a session carries a command out: dispatch through the registry --------------------------


class Recorded16(Station16):
    """A 1.6 session whose CALLs are recorded and answered from `answers`."""

    def __init__(self, endpoint: str, answers: dict[str, dict]) -> None:
        self.endpoint, self.protocol, self.answers = endpoint, "ocpp1.6", answers
        self.calls: list[tuple[str, dict]] = []

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        self.calls.append((action, payload))
        return self.answers[action]


class Recorded201(Station201):
    def __init__(self, endpoint: str, answers: dict[str, dict]) -> None:
        self.endpoint, self.protocol, self.answers = endpoint, "ocpp2.0.1", answers
        self.calls: list[tuple[str, dict]] = []
        self.reports = None

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        self.calls.append((action, payload))
        return self.answers[action]


def test_the_registry_dispatches_every_command_to_the_session():
    async def scenario():
        registry = Registry(None)
        s16 = Recorded16(
            "A",
            {
                "Reset": {"status": "Accepted"},
                "UpdateFirmware": {},
                "GetDiagnostics": {},
                "ChangeConfiguration": {"status": "RebootRequired"},
                "ChangeAvailability": {"status": "Scheduled"},
                "GetConfiguration": {"configurationKey": [], "unknownKey": ["X"]},
            },
        )
        s201 = Recorded201(
            "B",
            {
                "SetVariables": {
                    "setVariableResult": [
                        {
                            "attributeStatus": "UnknownVariable",
                            "component": {"name": "X"},
                            "variable": {"name": "Y"},
                        }
                    ]
                },
                "Reset": {"status": "Scheduled"},
            },
        )
        registry._sessions.update(A=s16, B=s201)
        assert await registry.send("A", Reset(hard=True), 5) == ("Accepted", {"status": "Accepted"})
        assert s16.calls[-1] == ("Reset", {"type": "Hard"})
        assert await registry.send("A", UpdateFirmware("u", T, 1), 5) == ("Accepted", {})
        assert await registry.send("A", GetDiagnostics("u"), 5) == ("NoFile", {})
        assert (await registry.send("A", Configure("K", "1"), 5))[0] == "RebootRequired"
        assert await registry.send("A", ChangeAvailability(False), 5) == "Scheduled"
        assert await registry.send("A", FetchConfig(("X",)), 5) == ([], ["X"])
        assert (await registry.send("B", Configure("X.Y", "1"), 5))[0] == "UnknownVariable"
        assert s201.calls[-1][0] == "SetVariables"
        assert await registry.send("B", Reset(), 5) == ("Scheduled", {"status": "Scheduled"})
        assert s201.calls[-1] == ("Reset", {"type": "OnIdle"})
        # what a version cannot take is refused before anything is sent
        sent = len(s16.calls)
        with pytest.raises(UsageError, match="no EVSE"):
            registry.check("A", Reset(evse=1))
        with pytest.raises(UsageError):
            await registry.send("A", RemoteStop("abc"), 5)
        assert len(s16.calls) == sent
        registry.check("B", Reset(evse=1))
        with pytest.raises(Unavailable):
            registry.check("C", Reset())

    run(scenario())


# --- the Action lifecycle over a fake fleet ----------------------------------------------------


class FakeLive:
    """LiveStations: the given endpoints are online, with their protocol; each command gets
    `answers[type]`: an exception is raised, a coroutine function is awaited with (endpoint,
    command), anything else is returned. `check` uses the version's real translation."""

    def __init__(self) -> None:
        self.online: dict[str, str] = {}
        self.sent: list[tuple[str, Any]] = []
        self.answers: dict[type, Any] = {}

    def is_online(self, endpoint: str) -> bool:
        return endpoint in self.online

    def check(self, endpoint: str, command: Any) -> None:
        if endpoint not in self.online:
            raise Unavailable(f"chargestation {endpoint} is offline")
        if type(command) in actions.TYPES and not isinstance(command, ChangeAvailability):
            VERSIONS[self.online[endpoint]][1](command)

    async def send(self, endpoint: str, command: Any, timeout: float) -> Any:
        if endpoint not in self.online:
            raise Unavailable(f"chargestation {endpoint} is offline")
        self.sent.append((endpoint, command))
        if isinstance(command, Disconnect):
            return None
        answer = self.answers.get(type(command))
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return await answer(endpoint, command)
        return answer


_names = itertools.count(1)


@pytest.fixture
def fleet():
    return Fleet(open_store(":memory:"), FakeLive())


async def settle(fleet: Fleet) -> None:
    while fleet._tasks:
        await asyncio.gather(*fleet._tasks)


async def station(fleet: Fleet, protocol: Any = "ocpp1.6", firmware: str = "1.0.0") -> dict:
    doc, _ = await fleet.create(
        model.StationCreate(endpoint=f"ACT-{next(_names)}", protocol=protocol)
    )
    fleet.live.online[doc["endpoint"]] = protocol  # type: ignore[attr-defined]
    await fleet.connected(doc["endpoint"])
    await fleet.boot(doc["endpoint"], boot_info(firmware))
    await settle(fleet)
    return doc


def boot_info(firmware: str) -> dict:
    return {"chargePointVendor": "V", "chargePointModel": "M", "firmwareVersion": firmware}


async def stored(fleet: Fleet, action: dict) -> dict:
    got = await fleet.get_action(action["_id"])
    return got


def statuses(action: dict) -> list[str]:
    return [p["status"] for p in action["progress"]]


def test_a_sync_command_completes_and_is_stored(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[ClearCache] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(doc["endpoint"], ClearCache(), timeout=5)
        assert a["type"] == "clear_cache" and a["chargestation"] == doc["_id"]
        assert (a["status"], a["outcome"], a["stage"]) == ("completed", "succeeded", "done")
        assert a["response_data"] == {"status": "Accepted"}
        assert a["error"] is None and a["deadline"] is None
        assert actions.http_status(a) == 201
        assert await stored(fleet, a) == a
        assert fleet._following == {}

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "code", "outcome", "http"),
    [
        (("UnlockFailed", {"status": "UnlockFailed"}), "Rejected", "failed", 502),
        (StationRejected("CALLERROR: InternalError"), "CallError", "failed", 502),
        (StationTimeout("no answer within 5 s"), "Timeout", "timed_out", 504),
        (Unavailable("went offline while pending"), "Offline", "failed", 406),
        (Busy("16 commands waiting"), "Busy", "failed", 429),
    ],
)
def test_a_refusal_or_failure_is_recorded_in_the_action(fleet, answer, code, outcome, http):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[UnlockConnector] = answer
        a = await fleet.command(doc["endpoint"], UnlockConnector(connector=1), timeout=5)
        assert (a["status"], a["outcome"], a["error"]["code"]) == ("failed", outcome, code)
        assert a["error"]["description"]
        assert actions.http_status(a) == http
        assert await stored(fleet, a) == a

    run(scenario())


def test_a_long_command_refused_is_not_followed(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[Reset] = ("Rejected", {"status": "Rejected"})
        a = await fleet.command(doc["endpoint"], Reset(), timeout=5)
        assert (a["status"], a["outcome"], a["error"]["code"]) == ("failed", "failed", "Rejected")
        assert fleet._following == {}

    run(scenario())


@pytest.mark.parametrize(
    ("protocol", "command"),
    [
        ("ocpp1.6", Reset(evse=1)),
        ("ocpp1.6", TriggerMessage("TransactionEvent")),
        ("ocpp1.6", RemoteStop("not-a-number")),
        ("ocpp1.6", UnlockConnector(evse=1, connector=2)),
        ("ocpp2.0.1", UnlockConnector(connector=1)),
        ("ocpp2.0.1", Configure("HeartbeatInterval", "60")),
        ("ocpp2.0.1", RemoteStart("TAG", connector=1)),
        ("ocpp2.0.1", RawCall("Reset", {"type": "Hard"})),
    ],
)
def test_what_the_version_cannot_take_is_a_usage_error_before_anything(fleet, protocol, command):
    async def scenario():
        doc = await station(fleet, protocol)
        with pytest.raises(UsageError):
            await fleet.command(doc["endpoint"], command, timeout=5)
        assert fleet.live.sent == []
        assert (await fleet.list_actions(ActionQuery()))[1] == 0

    run(scenario())


def test_offline_inactive_or_not_booted_is_refused_before_anything(fleet):
    async def scenario():
        doc = await station(fleet)
        del fleet.live.online[doc["endpoint"]]
        with pytest.raises(Unavailable, match="offline"):
            await fleet.command(doc["endpoint"], ClearCache(), timeout=5)
        await fleet.create(model.StationCreate(endpoint="ACT-NOBOOT"))
        fleet.live.online["ACT-NOBOOT"] = "ocpp1.6"
        with pytest.raises(Unavailable, match="BootNotification"):
            await fleet.command("ACT-NOBOOT", ClearCache(), timeout=5)
        assert (await fleet.list_actions(ActionQuery()))[1] == 0
        for internal in (Disconnect("x"), FetchConfig()):  # not operations with an Action
            with pytest.raises(UsageError, match="not an operation"):
                await fleet.command(doc["endpoint"], internal, timeout=5)

    run(scenario())


def test_reset_is_pending_until_the_next_boot(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        before = time.time()
        a = await fleet.command(ep, Reset(hard=True), timeout=5)
        assert (a["status"], a["outcome"], a["stage"]) == ("completed", "pending", "accepted")
        assert a["data"] == {"hard": True}
        deadline = model.parse_time(a["deadline"]).timestamp()
        assert before + 299 < deadline < time.time() + 301
        assert actions.http_status(a) == 201
        fleet.heartbeat(ep)  # unrelated: no change
        await settle(fleet)
        await fleet.disconnected(ep)
        a = await stored(fleet, a)
        assert (a["stage"], a["outcome"]) == ("rebooting", "pending")
        await fleet.connected(ep)
        await fleet.boot(ep, {**boot_info("1.0.0"), "reason": "RemoteReset"})
        a = await stored(fleet, a)
        assert (a["stage"], a["outcome"]) == ("done", "succeeded")
        assert statuses(a) == ["Disconnected", "BootNotification"]
        assert a["progress"][1]["reason"] == "RemoteReset"
        assert fleet._following == {}

    run(scenario())


def test_a_follow_up_before_the_answer_is_kept(fleet):
    """The requested message may arrive before the answer is recorded."""

    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]

        async def answer(endpoint, command):
            fleet.heartbeat(endpoint)
            me = asyncio.current_task()  # carrying out the command
            await asyncio.gather(*(t for t in fleet._tasks if t is not me))
            return "Accepted", {"status": "Accepted"}

        fleet.live.answers[TriggerMessage] = answer
        a = await fleet.command(ep, TriggerMessage("Heartbeat"), timeout=5)
        assert (a["status"], a["outcome"], a["stage"]) == ("completed", "succeeded", "done")
        assert statuses(a) == ["Heartbeat"]
        assert fleet._following == {}

    run(scenario())


def test_trigger_is_done_when_the_requested_message_arrives(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        ep = doc["endpoint"]
        fleet.live.answers[TriggerMessage] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(ep, TriggerMessage("StatusNotification", evse=1), timeout=5)
        assert a["outcome"] == "pending"
        fleet.heartbeat(ep)  # not the one asked for
        await settle(fleet)
        assert (await stored(fleet, a))["progress"] == []
        await fleet.status_notification(ep, 1, 1, "Available")
        a = await stored(fleet, a)
        assert (a["outcome"], statuses(a)) == ("succeeded", ["StatusNotification"])

    run(scenario())


def test_firmware_goes_through_its_stages_to_the_boot_with_the_new_version(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1", firmware="1.0.0")
        ep = doc["endpoint"]
        fleet.live.answers[UpdateFirmware] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(ep, UpdateFirmware("http://h/fw-2.bin"), timeout=5)
        assert (a["type"], a["stage"], a["outcome"]) == ("update_firmware", "accepted", "pending")
        rid = fleet.live.sent[-1][1].request_id
        assert isinstance(rid, int) and a["data"]["request_id"] == rid
        await fleet.record_event(
            ep, "FirmwareStatusNotification", {"status": "Idle", "requestId": rid + 1}
        )
        seen = []
        for status in ("Downloading", "Downloading", "Downloaded", "Installing", "Installed"):
            await fleet.record_event(
                ep, "FirmwareStatusNotification", {"status": status, "requestId": rid}
            )
            seen.append((await stored(fleet, a))["stage"])
        assert seen == ["downloading", "downloading", "downloading", "installing", "rebooting"]
        await fleet.disconnected(ep)
        await fleet.connected(ep)
        await fleet.boot(ep, boot_info("1.0.1"))
        a = await stored(fleet, a)
        assert (a["status"], a["stage"], a["outcome"]) == ("completed", "done", "succeeded")
        assert statuses(a) == [
            "Downloading",
            "Downloaded",
            "Installing",
            "Installed",
            "BootNotification",
        ]
        assert a["progress"][-1]["firmwareVersion"] == "1.0.1"
        times = [p["at"] for p in a["progress"]]
        assert times == sorted(times)

    run(scenario())


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ([("FirmwareStatusNotification", {"status": "Downloading"}),
          ("FirmwareStatusNotification", {"status": "DownloadFailed"})], "DownloadFailed"),
        ([("FirmwareStatusNotification", {"status": "Installing"}),
          ("FirmwareStatusNotification", {"status": "InstallationFailed"})], "InstallationFailed"),
        ([("FirmwareStatusNotification", {"status": "Installed"}),
          ("BootNotification", boot_info("1.0.0"))], "FirmwareUnchanged"),
    ],
)  # fmt: skip
def test_firmware_failures(fleet, events, code):
    async def scenario():
        doc = await station(fleet, "ocpp1.6", firmware="1.0.0")
        ep = doc["endpoint"]
        fleet.live.answers[UpdateFirmware] = ("Accepted", {})  # 1.6: the answer has no status
        a = await fleet.command(ep, UpdateFirmware("http://h/fw"), timeout=5)
        assert (a["status"], a["outcome"]) == ("completed", "pending")
        for kind, payload in events:
            if kind == "BootNotification":
                await fleet.boot(ep, payload)
            else:
                await fleet.record_event(ep, kind, payload)
        a = await stored(fleet, a)
        assert (a["status"], a["outcome"], a["error"]["code"]) == ("completed", "failed", code)
        assert fleet._following == {}

    run(scenario())


def test_diagnostics_16_until_uploaded(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[GetDiagnostics] = ("Accepted", {"fileName": "diag.txt"})
        a = await fleet.command(ep, GetDiagnostics("http://h/up/"), timeout=5)
        assert (a["stage"], a["outcome"]) == ("accepted", "pending")
        for status in ("Uploading", "Uploading", "Uploading"):  # a flood is kept once
            await fleet.record_event(ep, "DiagnosticsStatusNotification", {"status": status})
        assert (await stored(fleet, a))["stage"] == "uploading"
        await fleet.record_event(ep, "DiagnosticsStatusNotification", {"status": "Uploaded"})
        a = await stored(fleet, a)
        assert (a["stage"], a["outcome"], statuses(a)) == (
            "done",
            "succeeded",
            ["Uploading", "Uploaded"],
        )
        assert a["response_data"] == {"fileName": "diag.txt"}

    run(scenario())


def test_diagnostics_with_nothing_to_upload_is_done_with_a_note(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[GetDiagnostics] = ("NoFile", {})
        a = await fleet.command(doc["endpoint"], GetDiagnostics("http://h/up/"), timeout=5)
        assert (a["status"], a["outcome"], a["stage"]) == ("completed", "succeeded", "done")
        assert "nothing to upload" in a["note"] or "no diagnostics" in a["note"]
        assert fleet._following == {}

    run(scenario())


def test_get_log_201_failure_matches_its_request_id(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        ep = doc["endpoint"]
        fleet.live.answers[GetDiagnostics] = ("Accepted", {"status": "Accepted", "filename": "l"})
        a = await fleet.command(ep, GetDiagnostics("http://h/up/", security=True), timeout=5)
        rid = fleet.live.sent[-1][1].request_id
        await fleet.record_event(
            ep, "LogStatusNotification", {"status": "Uploaded", "requestId": rid + 1}
        )
        assert (await stored(fleet, a))["outcome"] == "pending"  # another request's
        await fleet.record_event(
            ep, "LogStatusNotification", {"status": "Uploading", "requestId": rid}
        )
        await fleet.record_event(
            ep, "LogStatusNotification", {"status": "UploadFailure", "requestId": rid}
        )
        a = await stored(fleet, a)
        assert (a["outcome"], a["error"]["code"]) == ("failed", "UploadFailure")
        assert statuses(a) == ["Uploading", "UploadFailure"]

    run(scenario())


def test_remote_start_16_until_the_transaction_starts_on_its_connector(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[RemoteStart] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(ep, RemoteStart("TAG1", connector=2), timeout=5)
        assert (a["type"], a["outcome"]) == ("remote_start", "pending")
        await fleet.start_transaction(ep, 1, "TAG1", 0, T)  # another connector
        await fleet.start_transaction(ep, 2, "OTHER", 0, T)  # another tag
        assert (await stored(fleet, a))["outcome"] == "pending"
        key, _ = await fleet.start_transaction(ep, 2, "TAG1", 0, T)
        a = await stored(fleet, a)
        assert (a["outcome"], statuses(a)) == ("succeeded", ["Started"])
        assert a["progress"][0]["transactionId"] == key

    run(scenario())


def test_remote_start_201_matches_its_remote_start_id_and_stop_follows(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        ep = doc["endpoint"]
        fleet.live.answers[RemoteStart] = ("Accepted", {"status": "Accepted"})
        a = await fleet.command(ep, RemoteStart("TAG1", evse=1), timeout=5)
        rid = fleet.live.sent[-1][1].remote_start_id
        assert isinstance(rid, int)
        await fleet.start_transaction(ep, 1, "TAG1", 0, T, tx_key="tx-0", remote_start_id=rid + 1)
        assert (await stored(fleet, a))["outcome"] == "pending"
        await fleet.start_transaction(ep, 1, "TAG1", 0, T, tx_key="tx-1", remote_start_id=rid)
        a = await stored(fleet, a)
        assert (a["outcome"], a["progress"][0]["transactionId"]) == ("succeeded", "tx-1")

        fleet.live.answers[RemoteStop] = ("Accepted", {"status": "Accepted"})
        b = await fleet.command(ep, RemoteStop("tx-1"), timeout=5)
        assert (b["type"], b["outcome"]) == ("remote_stop", "pending")
        await fleet.stop_transaction(ep, "tx-0", 10, T, "Local")
        assert (await stored(fleet, b))["outcome"] == "pending"
        await fleet.stop_transaction(ep, "tx-1", 10, T, "Remote")
        b = await stored(fleet, b)
        assert (b["outcome"], statuses(b), b["progress"][0]["reason"]) == (
            "succeeded",
            ["Ended"],
            "Remote",
        )

    run(scenario())


def test_deadline_expiry_is_a_sweep(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        fleet.live.answers[TriggerMessage] = ("Accepted", {"status": "Accepted"})
        reset = await fleet.command(ep, Reset(), timeout=5)
        trigger = await fleet.command(ep, TriggerMessage("MeterValues"), timeout=5)
        assert await fleet.expire_actions() == 0
        assert await fleet.expire_actions(time.time() + 31) == 1  # the trigger's 30 s
        trigger = await stored(fleet, trigger)
        assert (trigger["status"], trigger["outcome"], trigger["error"]["code"]) == (
            "completed",
            "timed_out",
            "Timeout",
        )
        assert statuses(trigger) == ["TimedOut"]
        assert actions.http_status(trigger) == 201  # the station did accept it
        assert await fleet.expire_actions(time.time() + 301) == 1
        await fleet.boot(ep, boot_info("1.0.0"))  # too late: nothing changes
        reset = await stored(fleet, reset)
        assert reset["outcome"] == "timed_out" and statuses(reset) == ["TimedOut"]
        assert await fleet.expire_actions(time.time() + 10_000) == 0
        assert fleet._following == {}

    run(scenario())


def test_actions_in_flight_at_start_end_failed(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        fleet.live.answers[ClearCache] = ("Accepted", {"status": "Accepted"})
        pending = await fleet.command(ep, Reset(), timeout=5)
        done = await fleet.command(ep, ClearCache(), timeout=5)
        restarted = Fleet(fleet.store, FakeLive())  # the next run, on the same store
        assert await restarted.fail_pending_actions("the server stopped while it was pending") == 1
        pending = await restarted.get_action(pending["_id"])
        assert (pending["status"], pending["outcome"]) == ("completed", "failed")
        assert pending["error"] == {
            "code": "Interrupted",
            "description": "the server stopped while it was pending",
        }
        assert await restarted.get_action(done["_id"]) == done
        assert await restarted.fail_pending_actions() == 0

    run(scenario())


def test_configure_is_read_back_and_csconfig_updated(fleet):
    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        fleet.live.answers[Configure] = ("Accepted", {"status": "Accepted"})
        fleet.live.answers[FetchConfig] = (
            [{"key": "HeartbeatInterval", "value": "60", "readonly": False}],
            [],
        )
        a = await fleet.command(ep, Configure("heartbeatinterval", "60"), timeout=5)
        assert (a["type"], a["status"], a["outcome"]) == (
            "set_configuration",
            "completed",
            "succeeded",
        )
        assert fleet.live.sent[-1][1] == FetchConfig(("heartbeatinterval",))
        assert a["progress"][-1]["status"] == "ReadBack" and a["progress"][-1]["value"] == "60"
        got = await fleet.get(ep)
        assert {"key": "HeartbeatInterval", "value": "60", "readonly": False} in got["csconfig"]

        fleet.live.answers[FetchConfig] = ([{"key": "HeartbeatInterval", "value": "300"}], [])
        a = await fleet.command(ep, Configure("HeartbeatInterval", "60"), timeout=5)
        assert (a["status"], a["outcome"], a["error"]["code"]) == (
            "completed",
            "failed",
            "NotApplied",
        )

        fleet.live.answers[FetchConfig] = StationTimeout("no answer")
        a = await fleet.command(ep, Configure("HeartbeatInterval", "60"), timeout=5)
        assert (a["outcome"], a["error"]["code"]) == ("failed", "NotVerified")

    run(scenario())


def test_configure_reboot_required_is_said_so(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[Configure] = ("RebootRequired", {"status": "RebootRequired"})
        a = await fleet.command(doc["endpoint"], Configure("K", "v"), timeout=5)
        assert (a["status"], a["outcome"]) == ("completed", "succeeded")
        assert a["response_data"]["status"] == "RebootRequired"
        assert "reset" in a["note"]
        assert not any(isinstance(c, FetchConfig) for _, c in fleet.live.sent)

    run(scenario())


def test_change_availability_scheduled_is_said_so(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[ChangeAvailability] = "Scheduled"
        a = await fleet.command(doc["endpoint"], ChangeAvailability(False, evse=1), timeout=5)
        assert (a["status"], a["outcome"], a["response_data"]) == (
            "completed",
            "succeeded",
            {"status": "Scheduled"},
        )
        assert "transaction" in a["note"]

    run(scenario())


def test_without_waiting_the_action_is_returned_as_recorded(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[DataTransfer] = ("Accepted", {"status": "Accepted", "data": "x"})
        a = await fleet.command(doc["endpoint"], DataTransfer("acme"), timeout=5, wait=False)
        assert (a["status"], a["stage"], a["outcome"]) == ("requested", "queued", "pending")
        assert actions.http_status(a) == 202
        await settle(fleet)
        a = await stored(fleet, a)
        assert (a["status"], a["outcome"], a["response_data"]["data"]) == (
            "completed",
            "succeeded",
            "x",
        )

    run(scenario())


def test_actions_are_listed_by_station_endpoint_newest_first(fleet):
    async def scenario():
        one, two = await station(fleet), await station(fleet)
        fleet.live.answers[ClearCache] = ("Accepted", {"status": "Accepted"})
        fleet.live.answers[UnlockConnector] = ("Unlocked", {"status": "Unlocked"})
        a1 = await fleet.command(one["endpoint"], ClearCache(), timeout=5)
        a2 = await fleet.command(two["endpoint"], ClearCache(), timeout=5)
        a3 = await fleet.command(one["endpoint"], UnlockConnector(connector=1), timeout=5)
        found, total = await fleet.list_actions(
            ActionQuery(equals={"chargestation": one["endpoint"]})
        )
        assert [a["_id"] for a in found] == [a3["_id"], a1["_id"]] and total == 2
        found, total = await fleet.list_actions(ActionQuery(equals={"type": "clear_cache"}))
        assert {a["_id"] for a in found} == {a1["_id"], a2["_id"]}

    run(scenario())


def test_no_station_message_pays_for_actions_when_none_are_followed(fleet):
    """The hot path: with nothing followed, a message adds no read and no write."""

    async def scenario():
        doc = await station(fleet)
        ep = doc["endpoint"]
        await fleet.status_notification(ep, 1, 1, "Available")
        commits = fleet.store.commits
        for _ in range(5):
            fleet.heartbeat(ep)
            await fleet.status_notification(ep, 1, 1, "Available")
        assert fleet.store.commits == commits
        assert not fleet._tasks

    run(scenario())


def test_a_caller_that_stops_waiting_does_not_leave_the_action_unrecorded(fleet):
    async def scenario():
        doc = await station(fleet)
        release = asyncio.Event()

        async def slow(endpoint, command):
            await release.wait()
            return "Accepted", {"status": "Accepted"}

        fleet.live.answers[ClearCache] = slow
        caller = asyncio.ensure_future(fleet.command(doc["endpoint"], ClearCache(), timeout=5))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        await settle(fleet)
        found, _ = await fleet.list_actions(ActionQuery())
        assert (found[0]["status"], found[0]["outcome"]) == ("completed", "succeeded")

    run(scenario())


def test_deleting_a_station_stops_following_its_actions(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        await fleet.command(doc["endpoint"], Reset(), timeout=5)
        assert doc["endpoint"] in fleet._following
        await fleet.delete(doc["_id"])
        assert fleet._following == {}
        assert (await fleet.list_actions(ActionQuery()))[1] == 0

    run(scenario())
