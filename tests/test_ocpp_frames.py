"""OCPP frames on the wire, with a raw websocket client against a real `edrvctl serve`:

* malformed frames and invalid payloads get the right CALLERROR, and the connection lives on;
* every CALL a station can send gets an answer that is valid against the official schema
  shipped in the ocpp package, and what it reports lands in the store (transactions,
  meter_values, events), read through a read-only store once the station has its answer.

Every timeout is in the scaled units of timing.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from ocpp.messages import MessageType, get_validator
from websockets.asyncio.client import connect

from edrvctl.fleet import events
from stored import events_of, read
from timing import scaled, until

P16, P201 = "ocpp1.6", "ocpp2.0.1"
PROTOS = [P16, P201]
VERSION = {P16: "1.6", P201: "2.0.1"}
BASE = "/v1.1/chargestations"

_seq = itertools.count(1)


def uniq(prefix: str = "f") -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}-{time.monotonic_ns() % 10**6}"


def run(coro, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


BOOT = {
    P16: {"chargePointVendor": "RawCo", "chargePointModel": "Raw-1"},
    P201: {"reason": "PowerUp", "chargingStation": {"vendorName": "RawCo", "model": "Raw-1"}},
}


async def open_station(server, proto: str, endpoint: str | None = None):
    """Create a station, connect a raw client and boot it; returns (websocket, station record)."""
    doc = server.create(endpoint or uniq(), protocol=proto)
    ws = await connect(
        f"{server.ocpp_url}/{doc['endpoint']}",
        subprotocols=[proto],
        proxy=None,
        ping_interval=None,
        compression=None,
        open_timeout=scaled(5),
        close_timeout=scaled(2),
    )
    frame = await call(ws, "BootNotification", BOOT[proto])
    assert frame[0] == 3 and frame[2]["status"] == "Accepted", frame
    return ws, doc


async def recv(ws, timeout: float = 5) -> list:
    return json.loads(await asyncio.wait_for(ws.recv(), scaled(timeout)))


async def call(ws, action: str, payload: dict, mid: str | None = None) -> list:
    """Send a CALL; return the CALLRESULT or CALLERROR for it (CSMS CALLs are skipped)."""
    mid = mid or str(uuid.uuid4())
    await ws.send(json.dumps([2, mid, action, payload]))
    while True:
        frame = await recv(ws)
        if frame[0] in (3, 4) and frame[1] == mid:
            return frame


async def heartbeat_ok(ws) -> None:
    frame = await call(ws, "Heartbeat", {})
    assert frame[0] == 3 and "currentTime" in frame[2], frame


def notifications(server, station_id: str) -> list[dict]:
    """The station's events of notifications it sent (not the server's own: online, booted,
    ...), oldest first. Read at once, without polling: nothing is answered to a station before
    the commit that holds what it said."""
    own = {events.ONLINE, events.OFFLINE, events.BOOTED, events.CONNECTOR_STATUS}
    return [e for e in events_of(server.store, station_id) if e["type"] not in own]


# --------------------------------------------------------------------------- 8. malformed frames


def rpc_error(proto: str) -> str:
    """The code for a frame that is not a valid RPC."""
    return "FormationViolation" if proto == P16 else "RpcFrameworkError"


def type_error(proto: str) -> str:
    """The code for an unknown MessageTypeId (OCPP 2.0.1 Part 4, 4.3 has its own)."""
    return "FormationViolation" if proto == P16 else "MessageTypeNotSupported"


def format_error(proto: str) -> str:
    return "FormationViolation" if proto == P16 else "FormatViolation"


# (name, frame (str: sent as is), expected message id, expected code (a function of proto))
FRAME_CASES = [
    ("invalid-json", '[2, "j-1", "Heartbeat", {', "-1", rpc_error),
    ("not-json-at-all", "hello", "-1", rpc_error),
    ("an-object", '{"messageTypeId": 2}', "-1", rpc_error),
    ("a-string", '"[2]"', "-1", rpc_error),
    ("empty-array", "[]", "-1", rpc_error),
    ("only-a-type", "[2]", "-1", rpc_error),
    ("numeric-id", [2, 17, "Heartbeat", {}], "-1", rpc_error),
    ("null-id", [2, None, "Heartbeat", {}], "-1", rpc_error),
    ("empty-id", [2, "", "Heartbeat", {}], "-1", rpc_error),
    ("id-too-long", [2, "x" * 37, "Heartbeat", {}], "-1", rpc_error),
    ("unknown-type-id", [7, "mt-1", "Heartbeat", {}], "mt-1", type_error),
    ("string-type-id", ["2", "mt-2", "Heartbeat", {}], "mt-2", type_error),
    ("call-without-payload", [2, "cp-1", "Heartbeat"], "cp-1", rpc_error),
    ("call-with-extra-element", [2, "cp-2", "Heartbeat", {}, {}], "cp-2", rpc_error),
    ("payload-not-an-object", [2, "cp-3", "Heartbeat", []], "cp-3", rpc_error),
    ("action-not-a-string", [2, "cp-4", 5, {}], "cp-4", rpc_error),
    ("unknown-action", [2, "ua-1", "FooBar", {}], "ua-1", lambda p: "NotImplemented"),
]


def payload_cases(proto: str) -> list[tuple[str, str, dict, str]]:
    """(name, action, payload, expected code) for CALLs whose payload is wrong."""
    t = now()
    if proto == P16:
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": t}
        return [
            ("known-action-not-taken", "Reset", {"type": "Hard"}, "NotSupported"),
            (
                "wrong-type",
                "StatusNotification",
                {**status, "connectorId": "one"},
                "TypeConstraintViolation",
            ),
            ("too-long", "Authorize", {"idTag": "T" * 21}, "TypeConstraintViolation"),
            (
                "missing-required",
                "BootNotification",
                {"chargePointVendor": "RawCo"},
                "ProtocolError",
            ),
            ("bad-enum", "StatusNotification", {**status, "status": "Bogus"}, "FormationViolation"),
            ("extra-property", "Heartbeat", {"bogus": 1}, "FormationViolation"),
            (
                "bad-timestamp",
                "StatusNotification",
                {**status, "timestamp": "yesterday"},
                "FormationViolation",
            ),
            (
                "bad-meter-timestamp",
                "MeterValues",
                {
                    "connectorId": 1,
                    "meterValue": [
                        {"timestamp": "2024-13-45T99:00:00Z", "sampledValue": [{"value": "1"}]}
                    ],
                },
                "FormationViolation",
            ),
        ]
    status = {"timestamp": t, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
    return [
        ("known-action-not-taken", "Reset", {"type": "Immediate"}, "NotSupported"),
        (
            "wrong-type",
            "StatusNotification",
            {**status, "evseId": "one"},
            "TypeConstraintViolation",
        ),
        (
            "too-long",
            "Authorize",
            {"idToken": {"idToken": "T" * 37, "type": "ISO14443"}},
            "TypeConstraintViolation",
        ),
        ("missing-required", "BootNotification", {"reason": "PowerUp"}, "ProtocolError"),
        (
            "bad-enum",
            "StatusNotification",
            {**status, "connectorStatus": "Bogus"},
            "FormatViolation",
        ),
        ("extra-property", "Heartbeat", {"bogus": 1}, "FormatViolation"),
        (
            "nested-extra-property",
            "BootNotification",
            {**BOOT[P201], "chargingStation": {**BOOT[P201]["chargingStation"], "colour": "red"}},
            "FormatViolation",
        ),
        (
            "bad-timestamp",
            "StatusNotification",
            {**status, "timestamp": "yesterday"},
            "FormatViolation",
        ),
        (
            "bad-generated-at",
            "NotifyEvent",
            {
                "generatedAt": "noon",
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 1,
                        "timestamp": t,
                        "trigger": "Delta",
                        "actualValue": "1",
                        "eventNotificationType": "HardWiredNotification",
                        "component": {"name": "ChargingStation"},
                        "variable": {"name": "Problem"},
                    }
                ],
            },
            "FormatViolation",
        ),
    ]


def assert_callerror(frame: list, mid: str, code: str) -> None:
    assert frame[0] == 4 and len(frame) == 5, frame
    assert (frame[1], frame[2]) == (mid, code), frame
    assert isinstance(frame[3], str) and isinstance(frame[4], dict), frame
    assert len(json.dumps(frame[4])) < 1000, "the details should stay short"


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("name,frame,mid,code", FRAME_CASES, ids=[c[0] for c in FRAME_CASES])
def test_malformed_frame_gets_a_callerror(server, proto, name, frame, mid, code):
    async def scenario():
        ws, _ = await open_station(server, proto)
        async with ws:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
            assert_callerror(await recv(ws), mid, code(proto))
            await heartbeat_ok(ws)  # the same connection goes on

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_invalid_payloads_get_the_right_callerror(server, proto):
    async def scenario():
        ws, _ = await open_station(server, proto)
        wrong = []
        async with ws:
            for name, action, payload, code in payload_cases(proto):
                frame = await call(ws, action, payload, mid=f"pl-{name}")
                if frame[:3] != [4, f"pl-{name}", code]:
                    wrong.append((name, code, frame))
                else:
                    assert_callerror(frame, f"pl-{name}", code)
            await heartbeat_ok(ws)
        assert not wrong, "\n".join(map(repr, wrong))

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_bad_frames_leave_the_connection_and_the_log_clean(server, proto):
    """Everything above on one connection: each is answered in turn, answers and unsolicited
    CALLRESULT/CALLERRORs are ignored, Heartbeat still works, and no traceback is logged."""
    mark = len(server.logs())

    async def scenario():
        ws, doc = await open_station(server, proto)
        async with ws:
            for _, frame, mid, code in FRAME_CASES:
                await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
                assert_callerror(await recv(ws), mid, code(proto))
            for name, action, payload, code in payload_cases(proto):
                assert_callerror(
                    await call(ws, action, payload, mid=f"pl-{name}"), f"pl-{name}", code
                )
            # answers nobody asked for get no reply at all: the next frame is the heartbeat's
            await ws.send(json.dumps([3, "nobody-asked", {}]))
            await ws.send(json.dumps([4, "nobody-asked-2", "GenericError", "", {}]))
            await heartbeat_ok(ws)
        return doc

    doc = run(scenario())
    assert server.get(doc["_id"])["model"] == "Raw-1"
    # the server has handled the connection's end (and logged it) once the record says offline
    until(lambda: server.get(doc["_id"])["online"] is False, what="the connection's end")
    log = server.logs()[mark:]
    assert "Traceback" not in log, log[-3000:]
    assert "malformed frame" in log


# --------------------------------------------------------------------------- 9. valid answers


def meter16(value: str = "1234") -> list[dict]:
    return [
        {
            "timestamp": now(),
            "sampledValue": [
                {
                    "value": value,
                    "context": "Sample.Periodic",
                    "measurand": "Energy.Active.Import.Register",
                    "location": "Outlet",
                    "unit": "Wh",
                }
            ],
        }
    ]


def meter201(value: float = 1234.5) -> list[dict]:
    return [
        {
            "timestamp": now(),
            "sampledValue": [
                {
                    "value": value,
                    "context": "Sample.Periodic",
                    "measurand": "Energy.Active.Import.Register",
                    "location": "Outlet",
                    "unitOfMeasure": {"unit": "Wh"},
                }
            ],
        }
    ]


def samples16() -> dict[str, dict]:
    t = now()
    return {
        "Authorize": {"idTag": "TAG-0001"},
        "BootNotification": {
            **BOOT[P16],
            "chargePointSerialNumber": "SN-1",
            "firmwareVersion": "1.2.3",
            "iccid": "8988",
            "imsi": "2620",
            "meterType": "AC",
            "meterSerialNumber": "M-1",
        },
        "DataTransfer": {"vendorId": "com.example", "messageId": "hello", "data": '{"a": 1}'},
        "DiagnosticsStatusNotification": {"status": "Uploaded"},
        "FirmwareStatusNotification": {"status": "Installed"},
        "Heartbeat": {},
        "MeterValues": {"connectorId": 1, "meterValue": meter16()},
        "StartTransaction": {
            "connectorId": 1,
            "idTag": "TAG-0001",
            "meterStart": 100,
            "timestamp": t,
        },
        "StatusNotification": {
            "connectorId": 1,
            "errorCode": "NoError",
            "status": "Preparing",
            "timestamp": t,
            "info": "plugged",
            "vendorId": "com.example",
        },
        "StopTransaction": {
            "transactionId": 987654321,
            "meterStop": 200,
            "timestamp": t,
            "idTag": "TAG-0001",
            "reason": "Local",
            "transactionData": meter16("200"),
        },
        "SecurityEventNotification": {
            "type": "FirmwareUpdated",
            "timestamp": t,
            "techInfo": "v1.2.3",
        },
        "LogStatusNotification": {"status": "Uploaded", "requestId": 7},
        "SignedFirmwareStatusNotification": {"status": "Installed", "requestId": 8},
    }


def samples201() -> dict[str, dict]:
    t = now()
    token = {"idToken": "TAG-0001", "type": "ISO14443"}

    def tx(event: str, seq: int, **info) -> dict:
        return {
            "eventType": event,
            "timestamp": t,
            "triggerReason": "Authorized",
            "seqNo": seq,
            "transactionInfo": {"transactionId": f"tx-sample-{event}", **info},
            "evse": {"id": 1, "connectorId": 1},
            "idToken": token,
            "meterValue": meter201(),
        }

    return {
        "Authorize": {"idToken": token},
        "BootNotification": {
            "reason": "PowerUp",
            "chargingStation": {
                "vendorName": "RawCo",
                "model": "Raw-1",
                "serialNumber": "SN-1",
                "firmwareVersion": "1.2.3",
                "modem": {"iccid": "8988", "imsi": "2620"},
            },
        },
        "DataTransfer": {
            "vendorId": "com.example",
            "messageId": "hello",
            "data": {"sessionId": 1, "items": [1, 2]},
        },
        "FirmwareStatusNotification": {"status": "Installed", "requestId": 3},
        "Heartbeat": {},
        "LogStatusNotification": {"status": "Uploaded", "requestId": 7},
        "MeterValues": {"evseId": 1, "meterValue": meter201()},
        "NotifyEvent": {
            "generatedAt": t,
            "seqNo": 0,
            "tbc": False,
            "eventData": [
                {
                    "eventId": 1,
                    "timestamp": t,
                    "trigger": "Delta",
                    "actualValue": "Faulted",
                    "eventNotificationType": "HardWiredNotification",
                    "component": {"name": "ChargingStation"},
                    "variable": {"name": "AvailabilityState"},
                }
            ],
        },
        "NotifyReport": {
            "requestId": 424242,
            "generatedAt": t,
            "seqNo": 0,
            "tbc": False,
            "reportData": [
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"},
                    "variableAttribute": [{"type": "Actual", "value": "300"}],
                }
            ],
        },
        "SecurityEventNotification": {
            "type": "FirmwareUpdated",
            "timestamp": t,
            "techInfo": "v1.2.3",
        },
        "StatusNotification": {
            "timestamp": t,
            "connectorStatus": "Occupied",
            "evseId": 1,
            "connectorId": 1,
        },
        "TransactionEvent:Started": tx("Started", 0, chargingState="Charging"),
        "TransactionEvent:Updated": {
            **tx("Updated", 1, chargingState="Charging"),
            "triggerReason": "MeterValuePeriodic",
        },
        "TransactionEvent:Ended": {
            **tx("Ended", 2, stoppedReason="Local"),
            "triggerReason": "StopAuthorized",
        },
    }


SAMPLES = {P16: samples16, P201: samples201}
CASES = [(p, name) for p in PROTOS for name in SAMPLES[p]()]


def validate(kind: MessageType, action: str, proto: str, payload: dict) -> None:
    get_validator(kind, action, VERSION[proto]).validate(payload)


@pytest.mark.parametrize("proto,name", CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_every_station_call_gets_a_schema_valid_answer(server, proto, name):
    action = name.split(":")[0]
    payload = SAMPLES[proto]()[name]
    validate(MessageType.Call, action, proto, payload)  # the sample itself is valid

    async def scenario():
        ws, _ = await open_station(server, proto)
        async with ws:
            return await call(ws, action, payload)

    frame = run(scenario())
    assert frame[0] == 3, f"{action} got {frame}"
    validate(MessageType.CallResult, action, proto, frame[2])
    answer = frame[2]
    if action == "BootNotification":
        assert answer["status"] == "Accepted" and answer["interval"] > 0
    if action in ("Authorize", "StartTransaction"):
        assert answer["idTagInfo" if proto == P16 else "idTokenInfo"]["status"] == "Accepted"
    if action == "TransactionEvent" and name.endswith("Started"):
        assert answer["idTokenInfo"]["status"] == "Accepted"


def test_16_transaction_lands_in_the_store(server):
    async def scenario():
        ws, doc = await open_station(server, P16)
        async with ws:
            start = await call(
                ws,
                "StartTransaction",
                {"connectorId": 2, "idTag": "TAG-16", "meterStart": 1000, "timestamp": now()},
            )
            assert start[0] == 3 and start[2]["idTagInfo"]["status"] == "Accepted", start
            tx_id = start[2]["transactionId"]
            mv = await call(
                ws,
                "MeterValues",
                {"connectorId": 2, "transactionId": tx_id, "meterValue": meter16("1500")},
            )
            assert mv[0] == 3, mv
            stop = await call(
                ws,
                "StopTransaction",
                {
                    "transactionId": tx_id,
                    "meterStop": 2500,
                    "timestamp": now(),
                    "reason": "EVDisconnected",
                    "transactionData": meter16("2500"),
                },
            )
            assert stop[0] == 3, stop
            validate(MessageType.CallResult, "StopTransaction", P16, stop[2])
            second = await call(
                ws,
                "StartTransaction",
                {"connectorId": 1, "idTag": "TAG-16", "meterStart": 0, "timestamp": now()},
            )
            assert second[2]["transactionId"] != tx_id
        return doc, tx_id

    doc, tx_id = run(scenario())
    # read at once: each was answered, so each is committed
    txs = read(server.store, lambda t: t.transactions(doc["_id"]))
    assert len(txs) == 2, txs
    tx = txs[0]
    assert tx["tx_key"] == str(tx_id) and tx["station_id"] == doc["_id"]
    assert read(server.store, lambda t: t.get_transaction(doc["_id"], str(tx_id))) == tx
    assert (tx["connector"], tx["idTag"], tx["meterStart"], tx["meterStop"]) == (
        2,
        "TAG-16",
        1000,
        2500,
    )
    assert (tx["status"], tx["stopReason"]) == ("Completed", "EVDisconnected")
    assert tx["startedAt"] and tx["stoppedAt"] and tx["stoppedAt"] >= tx["startedAt"]
    assert txs[1]["status"] == "Active" and txs[1]["tx_key"] != tx["tx_key"]
    mvs = read(server.store, lambda t: t.meter_values(doc["_id"]))
    assert [(m["tx_key"], m["values"][0]["sampledValue"][0]["value"]) for m in mvs] == [
        (str(tx_id), "1500"),
        (str(tx_id), "2500"),
    ]
    assert mvs[0]["connector"] == 2
    assert read(server.store, lambda t: t.meter_values(doc["_id"], str(tx_id))) == mvs


def test_201_transaction_lands_in_the_store(server):
    tx_id = f"tx-{uuid.uuid4().hex[:24]}"  # transactionId is at most 36 characters
    token = {"idToken": "TAG-201", "type": "ISO14443"}

    def event(kind: str, seq: int, trigger: str, value: float, **info) -> dict:
        return {
            "eventType": kind,
            "timestamp": now(),
            "triggerReason": trigger,
            "seqNo": seq,
            "transactionInfo": {"transactionId": tx_id, **info},
            "meterValue": meter201(value),
        }

    async def scenario():
        ws, doc = await open_station(server, P201)
        async with ws:
            started = await call(
                ws,
                "TransactionEvent",
                {
                    **event("Started", 0, "Authorized", 100.0, chargingState="Charging"),
                    "evse": {"id": 2, "connectorId": 1},
                    "idToken": token,
                },
            )
            assert started[0] == 3 and started[2]["idTokenInfo"]["status"] == "Accepted"
            updated = await call(
                ws,
                "TransactionEvent",
                event("Updated", 1, "MeterValuePeriodic", 150.0, chargingState="Charging"),
            )
            assert updated[0] == 3 and "idTokenInfo" not in updated[2], updated
            ended = await call(
                ws,
                "TransactionEvent",
                {
                    **event("Ended", 2, "StopAuthorized", 300.0, stoppedReason="Local"),
                    "idToken": token,
                },
            )
            assert ended[0] == 3, ended
            for frame in (started, updated, ended):
                validate(MessageType.CallResult, "TransactionEvent", P201, frame[2])
        return doc

    doc = run(scenario())
    # read at once: each was answered, so each is committed
    txs = read(server.store, lambda t: t.transactions(doc["_id"]))
    assert len(txs) == 1, txs
    tx = txs[0]
    assert tx["tx_key"] == tx_id and tx["station_id"] == doc["_id"]
    assert read(server.store, lambda t: t.get_transaction(doc["_id"], tx_id)) == tx
    assert (tx["connector"], tx["idTag"], tx["status"], tx["stopReason"]) == (
        2,
        "TAG-201",
        "Completed",
        "Local",
    )
    assert tx["startedAt"] and tx["stoppedAt"]
    mvs = read(server.store, lambda t: t.meter_values(doc["_id"]))
    assert [(m["tx_key"], m["values"][0]["sampledValue"][0]["value"]) for m in mvs] == [
        (tx_id, 100.0),
        (tx_id, 150.0),
        (tx_id, 300.0),
    ]


EVENT_KINDS = {
    P16: [
        "DataTransfer",
        "FirmwareStatusNotification",
        "SecurityEventNotification",
        "DiagnosticsStatusNotification",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
    ],
    P201: [
        "DataTransfer",
        "FirmwareStatusNotification",
        "SecurityEventNotification",
        "NotifyEvent",
        "LogStatusNotification",
    ],
}


@pytest.mark.parametrize("proto", PROTOS)
def test_notifications_are_kept_as_events(server, proto):
    samples = SAMPLES[proto]()
    kinds = EVENT_KINDS[proto]

    async def scenario():
        ws, doc = await open_station(server, proto)
        async with ws:
            for kind in kinds:
                frame = await call(ws, kind, samples[kind])
                assert frame[0] == 3, (kind, frame)
        return doc

    doc = run(scenario())
    rows = notifications(server, doc["_id"])
    assert [e["type"] for e in rows] == [events.notification_type(k) for k in kinds]
    assert all(e["chargestation"] == doc["_id"] and e["createdAt"] for e in rows), rows
    assert all(e["endpoint"] == doc["endpoint"] for e in rows), rows
    got = {kind: e["data"] for kind, e in zip(kinds, rows, strict=True)}
    assert got["FirmwareStatusNotification"]["status"] == "Installed"
    assert got["SecurityEventNotification"]["type"] == "FirmwareUpdated"
    assert got["DataTransfer"]["vendorId"] == "com.example"
    if proto == P201:
        ev = got["NotifyEvent"]["eventData"][0]
        assert (ev["actualValue"], ev["component"]["name"]) == ("Faulted", "ChargingStation")


# Notifications whose event payload is the message itself, field for field.
KEPT_AS_SENT = {
    P16: [
        "DataTransfer",
        "SecurityEventNotification",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
    ],
    P201: [
        "DataTransfer",
        "SecurityEventNotification",
        "LogStatusNotification",
        "FirmwareStatusNotification",
    ],
}


@pytest.mark.parametrize("proto", PROTOS)
def test_notifications_are_kept_as_they_came(server, proto):
    samples = SAMPLES[proto]()
    kinds = KEPT_AS_SENT[proto]

    async def scenario():
        ws, doc = await open_station(server, proto)
        async with ws:
            for kind in kinds:
                assert (await call(ws, kind, samples[kind]))[0] == 3
        return doc

    doc = run(scenario())
    rows = notifications(server, doc["_id"])
    assert [e["type"] for e in rows] == [events.notification_type(k) for k in kinds]
    wrong = {k: e["data"] for k, e in zip(kinds, rows, strict=True) if e["data"] != samples[k]}
    assert not wrong, wrong


@pytest.mark.parametrize("proto", PROTOS)
def test_boot_info_and_status_from_raw_frames(server, proto):
    """The record shows what the raw BootNotification and StatusNotification said."""
    samples = SAMPLES[proto]()

    async def scenario():
        ws, doc = await open_station(server, proto)
        async with ws:
            assert (await call(ws, "BootNotification", samples["BootNotification"]))[0] == 3
            assert (await call(ws, "StatusNotification", samples["StatusNotification"]))[0] == 3
            async with httpx.AsyncClient(
                base_url=server.api_url,
                timeout=scaled(5),
                headers={"Authorization": f"Bearer {server.token}"},
            ) as c:
                return (await c.get(f"{BASE}/{doc['endpoint']}")).json()["result"]

    rec = run(scenario())
    assert rec["online"] is True
    assert (rec["manufacturer"], rec["model"]) == ("RawCo", "Raw-1")
    assert rec["bootInfo"]["firmwareVersion"] == "1.2.3"
    assert rec["bootInfo"]["chargePointSerialNumber"] == "SN-1"
    assert rec["status"] == ("Preparing" if proto == P16 else "Occupied")
