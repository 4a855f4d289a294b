"""edrvctl.ocppj in process, with no sockets: an Rpc over an in-memory fake websocket.

* The malformed frames and invalid payloads of test_ocpp_frames.py (end to end there) get the
  right CALLERROR code per version, with the right message id: 1.6 spells FormationViolation and
  OccurenceConstraintViolation; an unknown action is NotImplemented, a known one without a
  handler NotSupported, each with its OCPP description.
* Properties (hypothesis): any frame at all gets exactly one well-formed reply (none for an
  answer to a CALL), and `run()` never raises; `call()` never sends a payload that breaks the
  schema; answers are matched by message id and stray ones dropped; on close every pending and
  queued CALL fails at once; CALLs go out FIFO up to the queue cap; a deadline includes the wait
  in the queue; a failing handler becomes the on_error CALLERROR and the reader goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.messages import MessageType, get_validator  # type: ignore[import-untyped]

from edrvctl.ocppj import InvalidCall, QueueFull, RemoteError, Rpc, RpcClosed, RpcError

P16, P201 = "1.6", "2.0.1"
VERSIONS = [P16, P201]
NOW = "2024-01-01T00:00:00.000Z"

# Every code OCPP-J defines, as each version spells it.
CODES = {
    P16: {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    },
    P201: {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    },
}
NOT_IMPLEMENTED = "Requested Action is not known by receiver"
NOT_SUPPORTED = "Requested Action is recognized but not supported by the receiver"

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- a fake websocket


class FakeSocket:
    """Frames to read come from a queue (None: the peer closed); frames sent are kept.
    `reply(frame)` may return frames for the peer to send back when we send `frame`."""

    def __init__(self, frames: Iterable = (), reply: Callable[[list], list] | None = None):
        self.inbox: asyncio.Queue = asyncio.Queue()
        for f in frames:
            self.inbox.put_nowait(f)
        self.sent: list[list] = []
        self.reply = reply

    def feed(self, *frames: Any) -> None:
        for f in frames:
            self.inbox.put_nowait(f if isinstance(f, (str, bytes)) or f is None else json.dumps(f))

    def close(self) -> None:
        self.inbox.put_nowait(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        frame = await self.inbox.get()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def send(self, message, text=None) -> None:
        assert text is True and isinstance(message, bytes)  # UTF-8 JSON as a text frame
        frame = json.loads(message)
        self.sent.append(frame)
        if self.reply is not None:
            self.feed(*self.reply(frame))


def _answer(answer: dict) -> Callable[[Any, dict], dict]:
    return lambda peer, p: answer


# A central system's handler tables (what a station may send it), answers valid per schema.
HANDLERS = {
    P16: {
        "BootNotification": _answer({"currentTime": NOW, "interval": 300, "status": "Accepted"}),
        "Heartbeat": _answer({"currentTime": NOW}),
        "StatusNotification": _answer({}),
        "Authorize": _answer({"idTagInfo": {"status": "Accepted"}}),
        "MeterValues": _answer({}),
        "DataTransfer": _answer({"status": "UnknownVendorId"}),
    },
    P201: {
        "BootNotification": _answer({"currentTime": NOW, "interval": 300, "status": "Accepted"}),
        "Heartbeat": _answer({"currentTime": NOW}),
        "StatusNotification": _answer({}),
        "Authorize": _answer({"idTokenInfo": {"status": "Accepted"}}),
        "MeterValues": _answer({}),
        "NotifyEvent": _answer({}),
        "DataTransfer": _answer({"status": "UnknownVendorId"}),
    },
}


async def _replies(
    version: str, frames: list, handlers: dict | None = None, **kw: Any
) -> list[list]:
    """Feed `frames`, then close; return what the Rpc sent. run() must end normally."""
    sock = FakeSocket()
    sock.feed(*frames, None)
    rpc = Rpc(sock, version, HANDLERS[version] if handlers is None else handlers, None, **kw)
    await asyncio.wait_for(rpc.run(), 5)
    return sock.sent


def replies(version: str, frames: list, handlers: dict | None = None, **kw: Any) -> list[list]:
    return asyncio.run(_replies(version, frames, handlers, **kw))


def heartbeat(mid: str = "hb") -> list:
    return [2, mid, "Heartbeat", {}]


def assert_callerror(frame: list, mid: str, code: str, version: str) -> None:
    assert frame[0] == 4 and len(frame) == 5, frame
    assert (frame[1], frame[2]) == (mid, code), frame
    assert frame[2] in CODES[version], frame
    assert isinstance(frame[3], str) and isinstance(frame[4], dict), frame
    assert len(json.dumps(frame[4])) < 1000, "the details should stay short"


def assert_valid_reply(frame: list, version: str) -> None:
    """A CALLRESULT, or a CALLERROR in `version`'s own spelling."""
    assert type(frame) is list and frame[0] in (3, 4), frame
    assert type(frame[1]) is str and 0 < len(frame[1]) <= 36, frame
    if frame[0] == 3:
        assert len(frame) == 3 and type(frame[2]) is dict, frame
    else:
        assert len(frame) == 5 and frame[2] in CODES[version], frame
        assert type(frame[3]) is str and frame[3] and type(frame[4]) is dict, frame


# --------------------------------------------------------------------------- ported frame cases


def rpc_error(version: str) -> str:
    """The code for a frame that is not a valid RPC."""
    return "FormationViolation" if version == P16 else "RpcFrameworkError"


def type_error(version: str) -> str:
    """The code for an unknown MessageTypeId (OCPP 2.0.1 Part 4, 4.3 has its own)."""
    return "FormationViolation" if version == P16 else "MessageTypeNotSupported"


# (name, frame (str: sent as is), expected message id, expected code (a function of version));
# the cases of test_ocpp_frames.py
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
    ("unknown-action", [2, "ua-1", "FooBar", {}], "ua-1", lambda v: "NotImplemented"),
    # also here: bytes that are not UTF-8, a lone surrogate, JSON that is not JSON
    ("not-utf-8", b'[2, "u-1", "Heartbeat", {"x": "\xff"}]', "-1", rpc_error),
    ("lone-surrogate", '[2, "s-1", "Heartbeat", {"x": "\\ud800"}]', "-1", rpc_error),
    ("nan", '[2, "n-1", "Heartbeat", {"x": NaN}]', "-1", rpc_error),
    ("too-deep", "[" * 2000 + "]" * 2000, "-1", rpc_error),
    ("bool-type-id", [True, "b-1", "Heartbeat", {}], "b-1", type_error),
    ("float-type-id", [2.0, "f-1", "Heartbeat", {}], "f-1", type_error),
]


def payload_cases(version: str) -> list[tuple[str, str, dict, str]]:
    """(name, action, payload, expected code) for CALLs whose payload is wrong."""
    if version == P16:
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": NOW}
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
    status = {"timestamp": NOW, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
    boot: dict[str, Any] = {
        "reason": "PowerUp",
        "chargingStation": {"vendorName": "RawCo", "model": "Raw-1"},
    }
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
            {**boot, "chargingStation": {**boot["chargingStation"], "colour": "red"}},
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
                        "timestamp": NOW,
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


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,frame,mid,code", FRAME_CASES, ids=[c[0] for c in FRAME_CASES])
def test_malformed_frame_gets_the_right_callerror(version, name, frame, mid, code):
    sent = replies(version, [frame, heartbeat()])
    assert len(sent) == 2, sent
    assert_callerror(sent[0], mid, code(version), version)
    assert sent[1] == [3, "hb", {"currentTime": NOW}]  # and the reader goes on


@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_payloads_get_the_right_callerror(version):
    cases = payload_cases(version)
    sent = replies(
        version,
        [[2, f"pl-{name}", action, payload] for name, action, payload, _ in cases] + [heartbeat()],
    )
    assert len(sent) == len(cases) + 1
    for (name, _, _, code), frame in zip(cases, sent, strict=False):
        assert_callerror(frame, f"pl-{name}", code, version)
    assert sent[-1][0] == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_and_unsupported_actions_are_told_apart(version):
    known_unhandled = "Reset"
    sent = replies(version, [[2, "a", "FooBar", {}], [2, "b", known_unhandled, {"type": "x"}]])
    assert sent[0][:4] == [4, "a", "NotImplemented", NOT_IMPLEMENTED]
    # NotSupported comes before validation: the payload's faults do not matter
    assert sent[1][:4] == [4, "b", "NotSupported", NOT_SUPPORTED]
    # the action the client asked for is named in the details
    assert "FooBar" in sent[0][4]["cause"] and known_unhandled in sent[1][4]["cause"]


def test_16_never_gets_201_spellings_and_back():
    bad = [[2, "a", "Heartbeat", {"x": 1}], "nope", [9, "c", "Heartbeat", {}]]
    for version, absent in (
        (
            P16,
            {
                "FormatViolation",
                "OccurrenceConstraintViolation",
                "RpcFrameworkError",
                "MessageTypeNotSupported",
            },
        ),
        (P201, {"FormationViolation", "OccurenceConstraintViolation"}),
    ):
        codes = {f[2] for f in replies(version, bad)}
        assert codes and not codes & absent, codes


@pytest.mark.parametrize("version", VERSIONS)
def test_replies_nobody_asked_for_get_no_reply(version):
    sent = replies(
        version, [[3, "nobody-asked", {}], [4, "nobody-2", "GenericError", "", {}], heartbeat()]
    )
    assert sent == [[3, "hb", {"currentTime": NOW}]]


# --------------------------------------------------------------------------- any frame at all

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)
message_ids = st.text(max_size=40) | _scalars
actions = st.sampled_from(
    [
        "Heartbeat",
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "MeterValues",
        "NotifyEvent",
        "Reset",
        "DataTransfer",
        "FooBar",
        "",
    ]
)
payloads = st.dictionaries(
    st.sampled_from(
        ["connectorId", "status", "timestamp", "idTag", "reason", "vendorId", "bogus", "type"]
    ),
    json_values,
    max_size=4,
)
kinds = st.sampled_from([2, 3, 4, 5, "2", 2.0, True, None, -1])
frame_like = st.builds(
    lambda parts, n: list(parts)[:n],
    st.tuples(kinds, message_ids, actions | _scalars, payloads | json_values, json_values),
    st.integers(1, 5),
)
any_frame = (
    st.binary(max_size=60)
    | st.text(max_size=60)
    | json_values.map(json.dumps)
    | frame_like.map(json.dumps)
)


def expected_reply_id(raw: str | bytes) -> tuple[bool, str]:
    """(whether the frame is an answer that gets no reply, the id a reply must carry)."""
    try:
        value = orjson.loads(raw)
    except ValueError:
        return False, "-1"
    if type(value) is not list or len(value) < 2:
        return False, "-1"
    mid = value[1]
    if type(mid) is not str or not 0 < len(mid) <= 36:
        return False, "-1"
    kind = value[0]
    is_answer = type(kind) is int and (
        (kind == 3 and len(value) == 3 and type(value[2]) is dict)
        or (
            kind == 4
            and len(value) == 5
            and type(value[2]) is str
            and type(value[3]) is str
            and type(value[4]) is dict
        )
    )
    return is_answer, mid


@PROPERTY
@given(version=st.sampled_from(VERSIONS), frames=st.lists(any_frame, min_size=1, max_size=5))
def test_any_frame_gets_exactly_one_valid_reply(version, frames):
    sent = replies(version, [*frames, heartbeat("last")])  # run() ends normally: no exception
    expected = []
    for raw in frames:
        is_answer, mid = expected_reply_id(raw)
        if not is_answer:
            expected.append(mid)
    assert [f[1] for f in sent] == [*expected, "last"], (frames, sent)
    for frame in sent:
        assert_valid_reply(frame, version)
    assert sent[-1] == [3, "last", {"currentTime": NOW}]


@PROPERTY
@given(version=st.sampled_from(VERSIONS), action=actions, payload=payloads | json_values)
def test_a_call_is_answered_by_id_and_a_result_is_valid(version, action, payload):
    sent = replies(version, [[2, "m-1", action, payload]])
    assert len(sent) == 1 and sent[0][1] == "m-1"
    assert_valid_reply(sent[0], version)
    if sent[0][0] == 3:  # only a valid request of a handled action is answered with a result
        assert action in HANDLERS[version]
        get_validator(MessageType.Call, action, version).validate(payload)
        get_validator(MessageType.CallResult, action, version).validate(sent[0][2])


# --------------------------------------------------------------------------- our CALLs


def _error_reply(frame: list) -> list:
    return [[4, frame[1], "GenericError", "no", {}]] if frame[0] == 2 else []


async def settle() -> None:
    """Let every task that is ready run (a few turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _with_reader(sock: FakeSocket, version: str = P16, **kw: Any):
    rpc = Rpc(sock, version, HANDLERS[version], None, **kw)
    return rpc, asyncio.create_task(rpc.run())


ints = st.integers(-(2**63), 2**63 - 1)  # what JSON on the wire can carry (orjson: 64 bits)
# CSMS -> station CALLs: payloads that are mostly valid, then maybe broken in one place
VALID_CALLS = {
    P16: {
        "Reset": st.fixed_dictionaries({"type": st.sampled_from(["Hard", "Soft", "hard"])}),
        "ChangeConfiguration": st.fixed_dictionaries(
            {"key": st.text(max_size=55), "value": st.text(max_size=505)}
        ),
        "GetConfiguration": st.fixed_dictionaries(
            {}, optional={"key": st.lists(st.text(max_size=55), max_size=3)}
        ),
        "TriggerMessage": st.fixed_dictionaries(
            {"requestedMessage": st.sampled_from(["Heartbeat", "MeterValues", "Bogus"])},
            optional={"connectorId": st.integers(-2, 3)},
        ),
        "UnlockConnector": st.fixed_dictionaries({"connectorId": st.integers(-2, 3)}),
        "RemoteStopTransaction": st.fixed_dictionaries({"transactionId": ints | st.text()}),
    },
    P201: {
        "Reset": st.fixed_dictionaries(
            {"type": st.sampled_from(["Immediate", "OnIdle", "Now"])}, optional={"evseId": ints}
        ),
        "GetVariables": st.fixed_dictionaries(
            {
                "getVariableData": st.lists(
                    st.fixed_dictionaries(
                        {
                            "component": st.fixed_dictionaries({"name": st.text(max_size=55)}),
                            "variable": st.fixed_dictionaries({"name": st.text(max_size=55)}),
                        }
                    ),
                    max_size=2,
                )
            }
        ),
        "GetBaseReport": st.fixed_dictionaries(
            {
                "requestId": ints,
                "reportBase": st.sampled_from(
                    ["FullInventory", "ConfigurationInventory", "SummaryInventory", "Everything"]
                ),
            }
        ),
        "ChangeAvailability": st.fixed_dictionaries(
            {"operationalStatus": st.sampled_from(["Operative", "Inoperative", "Broken"])},
            optional={"evse": st.fixed_dictionaries({"id": st.integers(-1, 3)})},
        ),
        "RequestStopTransaction": st.fixed_dictionaries({"transactionId": st.text(max_size=40)}),
    },
}
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=8,
)


@st.composite
def our_calls(draw):
    version = draw(st.sampled_from(VERSIONS))
    action = draw(st.sampled_from(sorted(VALID_CALLS[version])))
    payload = dict(draw(VALID_CALLS[version][action]))
    mutation = draw(st.sampled_from(["none", "none", "drop", "extra", "replace"]))
    if mutation == "drop" and payload:
        del payload[draw(st.sampled_from(sorted(payload)))]
    elif mutation == "extra":
        payload[draw(st.sampled_from(["bogus", "customData"]))] = draw(wire_values)
    elif mutation == "replace" and payload:
        payload[draw(st.sampled_from(sorted(payload)))] = draw(wire_values)
    return version, action, payload


@PROPERTY
@given(our_calls())
def test_call_never_sends_a_payload_that_breaks_the_schema(case):
    version, action, payload = case

    async def scenario():
        sock = FakeSocket(reply=_error_reply)
        rpc, reader = await _with_reader(sock, version)
        try:
            await rpc.call(action, payload, 5)
        except InvalidCall:
            assert sock.sent == []  # nothing was sent
        except RemoteError:
            assert [f[:3] for f in sock.sent] == [[2, sock.sent[0][1], action]]
            assert sock.sent[0][3] == payload
            # what went out is valid per the official schema (the ocpp library's validator)
            get_validator(MessageType.Call, action, version).validate(payload)
        sock.close()
        await reader

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "version,action,payload",
    [
        (P16, "Reset", {"type": "Bogus"}),
        (P16, "ChangeConfiguration", {"key": "K" * 51, "value": "1"}),
        (P16, "GetConfiguration", {"key": "not-a-list"}),
        (P201, "Reset", {}),
        (P201, "GetBaseReport", {"requestId": 1, "reportBase": "FullInventory", "x": 1}),
        (
            P201,
            "SetVariables",
            {"setVariableData": [{"attributeValue": "1", "component": {"name": "C"}}]},
        ),
        (P16, "NoSuchAction", {}),
    ],
)
def test_invalid_calls_are_refused_before_sending(version, action, payload):
    async def scenario():
        sock = FakeSocket(reply=_error_reply)
        rpc, reader = await _with_reader(sock, version)
        with pytest.raises(InvalidCall):
            await rpc.call(action, payload, 5)
        assert sock.sent == [] and rpc.queued == 0
        sock.close()
        await reader

    asyncio.run(scenario())


strays = st.lists(st.tuples(st.sampled_from([3, 4]), st.text(min_size=1, max_size=36)), max_size=6)


@PROPERTY
@given(before=strays, after=strays)
def test_answers_are_matched_by_id_and_strays_dropped(before, after):
    def respond(frame: list) -> list:
        if frame[0] != 2:
            return []
        mid = frame[1]
        fakes = [
            [3, m, {"status": "Rejected"}] if k == 3 else [4, m, "GenericError", "", {}]
            for k, m in before
            if m != mid
        ]
        late = [[3, m, {"status": "Rejected"}] for _, m in after]
        return [
            *fakes,
            [3, mid, {"status": (frame[3]["type"] == "Hard" and "Accepted") or "Rejected"}],
            [3, mid, {"status": "Rejected"}],
            *late,
        ]

    async def scenario():
        sock = FakeSocket(reply=respond)
        rpc, reader = await _with_reader(sock)
        assert await rpc.call("Reset", {"type": "Hard"}, 5) == {"status": "Accepted"}
        # the duplicate and the late answers are dropped; the next CALL gets its own
        assert await rpc.call("Reset", {"type": "Soft"}, 5) == {"status": "Rejected"}
        sock.close()
        await reader
        assert [f[0] for f in sock.sent] == [2, 2]  # stray answers got no reply
        assert sock.sent[0][1] != sock.sent[1][1]

    asyncio.run(scenario())


def test_an_invalid_answer_is_a_remote_error():
    async def scenario():
        sock = FakeSocket(reply=lambda f: [[3, f[1], {"status": "Maybe"}]])
        rpc, reader = await _with_reader(sock)
        with pytest.raises(RemoteError) as info:
            await rpc.call("Reset", {"type": "Hard"}, 5)
        assert "Reset" in info.value.description
        sock.close()
        await reader

    asyncio.run(scenario())


@PROPERTY
@given(n=st.integers(1, 12))
def test_every_pending_and_queued_call_fails_at_once_on_close(n):
    async def scenario():
        sock = FakeSocket()  # never answers
        rpc, reader = await _with_reader(sock, max_queued=16)
        calls = [asyncio.create_task(rpc.call("Reset", {"type": "Hard"}, 30)) for _ in range(n)]
        await asyncio.sleep(0)
        assert len(sock.sent) == 1 and rpc.queued == n - 1  # one in flight, the rest wait
        t0 = time.monotonic()
        sock.close()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
        assert time.monotonic() - t0 < 1
        assert all(type(r) is RpcClosed for r in results), results
        await reader
        assert len(sock.sent) == 1  # the queued ones were never sent
        with pytest.raises(RpcClosed):
            await rpc.call("Reset", {"type": "Hard"}, 30)

    asyncio.run(scenario())


def test_close_fails_pending_calls_even_if_the_reader_is_cancelled():
    async def scenario():
        sock = FakeSocket()
        rpc, reader = await _with_reader(sock)
        call = asyncio.create_task(rpc.call("Reset", {"type": "Hard"}, 30))
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(RpcClosed):
            await asyncio.wait_for(call, 2)

    asyncio.run(scenario())


@PROPERTY
@given(cap=st.integers(1, 6), extra=st.integers(0, 4))
def test_calls_go_out_fifo_up_to_the_queue_cap(cap, extra):
    n = cap + 1 + extra

    async def scenario():
        sock = FakeSocket()
        rpc, reader = await _with_reader(sock, max_queued=cap)
        calls = [
            asyncio.create_task(rpc.call("GetConfiguration", {"key": [str(i)]}, 30))
            for i in range(n)
        ]
        await asyncio.sleep(0)
        refused = calls[cap + 1 :]
        assert [c.done() and type(c.exception()) for c in refused] == [QueueFull] * len(refused)
        assert rpc.queued == cap
        for i in range(cap + 1):  # answered one at a time, in the order they were made
            await settle()
            assert len(sock.sent) == i + 1 and sock.sent[i][3] == {"key": [str(i)]}
            sock.feed([3, sock.sent[i][1], {"unknownKey": [str(i)]}])
            assert await calls[i] == {"unknownKey": [str(i)]}
        assert rpc.queued == 0
        sock.close()
        await reader

    asyncio.run(scenario())


def test_a_deadline_includes_the_wait_in_the_queue():
    async def scenario():
        sock = FakeSocket()
        rpc, reader = await _with_reader(sock)
        first = asyncio.create_task(rpc.call("Reset", {"type": "Hard"}, 30))
        await asyncio.sleep(0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await rpc.call("Reset", {"type": "Soft"}, 0.05)  # its whole deadline in the queue
        assert 0.04 <= time.monotonic() - t0 < 1
        assert len(sock.sent) == 1 and rpc.queued == 0  # never sent, no longer queued
        sock.feed([3, sock.sent[0][1], {"status": "Accepted"}])
        assert await first == {"status": "Accepted"}
        # and a CALL in flight times out too, its late answer dropped
        with pytest.raises(TimeoutError):
            await rpc.call("Reset", {"type": "Soft"}, 0.05)
        sock.feed([3, sock.sent[1][1], {"status": "Accepted"}])
        sock.close()
        await reader
        assert len(sock.sent) == 2

    asyncio.run(scenario())


# --------------------------------------------------------------------------- handlers


class Boom(Exception):
    pass


def _boom(peer, p):
    raise Boom("handler bug")


async def _async_boom(peer, p):
    await asyncio.sleep(0)
    raise Boom("async handler bug")


async def _async_answer(peer, p):
    await asyncio.sleep(0)
    return {"currentTime": NOW}


def _security(peer, p):
    raise RpcError("SecurityError", "not you")


# what a handler does -> (the action it handles, the handler)
BEHAVIOURS = {
    "boom": ("Authorize", _boom),
    "async-boom": ("StatusNotification", _async_boom),
    "rpc-error": ("DataTransfer", _security),
    "ok": ("MeterValues", _answer({})),
    "async-ok": ("Heartbeat", _async_answer),
}
SAMPLES = {
    P16: {
        "Authorize": {"idTag": "T"},
        "DataTransfer": {"vendorId": "v"},
        "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
        "MeterValues": {
            "connectorId": 1,
            "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": "1"}]}],
        },
        "Heartbeat": {},
    },
    P201: {
        "Authorize": {"idToken": {"idToken": "T", "type": "ISO14443"}},
        "DataTransfer": {"vendorId": "v"},
        "StatusNotification": {
            "timestamp": NOW,
            "connectorStatus": "Available",
            "evseId": 1,
            "connectorId": 1,
        },
        "MeterValues": {
            "evseId": 1,
            "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": 1}]}],
        },
        "Heartbeat": {},
    },
}


@PROPERTY
@given(
    version=st.sampled_from(VERSIONS),
    calls=st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=1, max_size=6),
)
def test_a_failing_handler_becomes_the_on_error_callerror_and_the_reader_goes_on(version, calls):
    seen: list[Exception] = []

    def on_error(exc: Exception) -> RpcError:
        seen.append(exc)
        return RpcError("GenericError", f"failed: {exc}")

    handlers = dict(BEHAVIOURS.values())
    frames = [
        [2, f"c{i}", BEHAVIOURS[k][0], SAMPLES[version][BEHAVIOURS[k][0]]]
        for i, k in enumerate(calls)
    ]
    sent = replies(version, frames, handlers, on_error=on_error)
    assert [f[1] for f in sent] == [f"c{i}" for i in range(len(calls))]
    for kind, frame in zip(calls, sent, strict=False):
        if kind in ("boom", "async-boom"):
            assert frame[:3] == [4, frame[1], "GenericError"] and "handler bug" in frame[4]["cause"]
        elif kind == "rpc-error":  # an RpcError is the handler's own answer, not a failure
            assert frame[:3] == [4, frame[1], "SecurityError"]
        else:
            assert frame[0] == 3
    assert len(seen) == sum(k in ("boom", "async-boom") for k in calls)
    assert all(isinstance(e, Boom) for e in seen)


def test_a_failing_handler_is_an_internal_error_by_default():
    boot = {"chargePointVendor": "V", "chargePointModel": "M"}
    sent = replies(
        P16,
        [heartbeat("x"), [2, "y", "BootNotification", boot]],
        {"Heartbeat": _boom, "BootNotification": HANDLERS[P16]["BootNotification"]},
    )
    assert sent[0][:3] == [4, "x", "InternalError"]
    assert "handler bug" not in json.dumps(sent[0])  # the peer is not told our internals
    assert sent[1][:2] == [3, "y"]


def test_an_invalid_answer_of_ours_is_never_sent():
    sent = replies(
        P201,
        [heartbeat("x"), heartbeat("y")],
        {"Heartbeat": lambda peer, p: {"currentTime": "yesterday"}},
    )
    assert [f[:2] for f in sent] == [[4, "x"], [4, "y"]]  # CALLERRORs, not the bad answers


def test_a_handler_gets_the_peer_and_the_payload_as_sent():
    got = []
    peer = object()

    def boot(p_, p):
        got.append((p_, p))
        return {"currentTime": NOW, "interval": 300, "status": "Accepted"}

    payload = {
        "reason": "PowerUp",
        "chargingStation": {
            "vendorName": "V",
            "model": "M",
            "customData": {"vendorId": "x", "soc_value": 1},
        },
    }

    async def scenario():
        sock = FakeSocket()
        sock.feed([2, "b", "BootNotification", payload], None)
        await Rpc(sock, P201, {"BootNotification": boot}, peer).run()
        return sock.sent

    sent = asyncio.run(scenario())
    assert got == [(peer, payload)]  # camelCase, vendor keys untouched
    assert sent[0][0] == 3 and datetime.fromisoformat(sent[0][2]["currentTime"]).tzinfo == UTC


# --------------------------------------------------------------------------- what we cannot send


def test_an_answer_that_cannot_be_encoded_is_an_internal_error():
    boot = {"chargePointVendor": "V", "chargePointModel": "M"}
    sent = replies(
        P16,
        [[2, "a", "BootNotification", boot], heartbeat("b")],
        {
            "BootNotification": _answer(
                {"currentTime": NOW, "interval": 2**70, "status": "Accepted"}
            ),
            "Heartbeat": _answer({"currentTime": NOW}),
        },
    )
    assert [f[:3] for f in sent] == [[4, "a", "InternalError"], [3, "b", {"currentTime": NOW}]]


def test_an_invalid_answer_of_ours_is_an_internal_error():
    sent = replies(P201, [heartbeat("x")], {"Heartbeat": _answer({"currentTime": "yesterday"})})
    assert sent[0][:3] == [4, "x", "InternalError"]


def test_a_payload_that_cannot_be_encoded_is_an_invalid_call():
    async def scenario():
        sock = FakeSocket()
        rpc, reader = await _with_reader(sock)
        try:
            with pytest.raises(InvalidCall):
                await rpc.call("RemoteStopTransaction", {"transactionId": 2**70}, 5)
            assert sock.sent == []
        finally:
            sock.close()
            await reader

    asyncio.run(scenario())


def test_malformed_frames_and_stray_replies_count_against_the_rate():
    """A peer sending garbage as fast as it can spends its budget: past it, its frames are
    not examined, only refused (a well-formed CALL past it gets the same GenericError)."""
    from edrvctl.ocppj import TokenBucket

    async def scenario():
        sock = FakeSocket()
        bucket = TokenBucket(0.001, 3)  # 3 now, then (practically) none
        rpc = Rpc(sock, "1.6", {"Heartbeat": lambda peer, p: {"currentTime": NOW}}, bucket=bucket)
        for i in range(10):
            sock.feed("not json")
            sock.feed(json.dumps([3, f"stray-{i}", {}]))
        sock.feed(json.dumps([2, "c1", "Heartbeat", {}]))
        sock.close()
        await rpc.run()
        return sock.sent

    sent = asyncio.run(scenario())
    # every garbage frame gets one answer (stray replies never do, but cost budget too): the
    # first two within the budget say what is wrong, the rest only that the rate is spent
    assert len(sent) == 11, sent
    assert [f[2] for f in sent[:2]] == ["FormationViolation", "FormationViolation"]
    assert {f[2] for f in sent[2:]} == {"GenericError"}
    assert all("rate limit" in f[4]["cause"] for f in sent[2:])
    assert sent[-1][:3] == [4, "c1", "GenericError"]
