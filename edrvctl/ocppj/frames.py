"""OCPP-J frames: parse and encode, with no I/O.

A frame is `[2, id, action, {payload}]` (CALL), `[3, id, {payload}]` (CALLRESULT) or
`[4, id, code, description, {details}]` (CALLERROR). Every way a frame can be wrong maps to the
CALLERROR its OCPP version expects. Error codes are named here in their OCPP 2.0.1 spelling;
`spelled()` gives 1.6's own (`FormationViolation`, `OccurenceConstraintViolation`), which strict
1.6 testers insist on.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_ID_LENGTH = 36  # OCPP-J: a message id is a string of at most 36 characters
MAX_DETAIL = 200  # characters of a cause we put in a CALLERROR's details

#: websocket subprotocol -> OCPP version
VERSIONS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

CODES = {
    "1.6": frozenset(
        {
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
        }
    ),
    "2.0.1": frozenset(
        {
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
        }
    ),
}

# 2.0.1 spelling -> 1.6 spelling. 1.6 has no code for a bad RPC or an unknown message type:
# FormationViolation ("payload ... not conform the PDU structure") is the nearest.
_AS_16 = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    "RpcFrameworkError": "FormationViolation",
    "MessageTypeNotSupported": "FormationViolation",
}
_AS_201 = {
    "FormationViolation": "FormatViolation",
    "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
}

DESCRIPTIONS = {
    "NotImplemented": "Requested Action is not known by receiver",
    "NotSupported": "Requested Action is recognized but not supported by the receiver",
    "InternalError": "An internal error occurred and the receiver was not able to process "
    "the requested Action successfully",
    "ProtocolError": "Payload for Action is incomplete",
    "SecurityError": "During the processing of Action a security issue occurred preventing "
    "receiver from completing the Action successfully",
    "FormatViolation": "Payload for Action is syntactically incorrect",
    "PropertyConstraintViolation": "Payload is syntactically correct but at least one field "
    "contains an invalid value",
    "OccurrenceConstraintViolation": "Payload for Action is syntactically correct but at least "
    "one of the fields violates occurrence constraints",
    "TypeConstraintViolation": "Payload for Action is syntactically correct but at least one "
    "of the fields violates data type constraints",
    "GenericError": "Any other error not covered by the more specific error codes",
    "RpcFrameworkError": "Content of the call is not a valid RPC request",
    "MessageTypeNotSupported": "A message with a MessageTypeId not supported by the receiver",
}


def spelled(code: str, version: str) -> str:
    """`code` as `version` writes it."""
    if version == "1.6":
        return _AS_16.get(code, code)
    return _AS_201.get(code, code)


class RpcError(Exception):
    """A CALLERROR: raised by a handler (or by validation) to be sent to the peer."""

    def __init__(self, code: str, cause: str = "", description: str | None = None):
        super().__init__(f"{code}: {cause}" if cause else code)
        self.code = spelled(code, "2.0.1")  # one spelling inside; `spelled` on the way out
        self.cause = cause
        self.description = (
            description if description is not None else DESCRIPTIONS.get(self.code, "")
        )


class FrameError(RpcError):
    """A frame that is not a valid OCPP-J message; `message_id` is what to answer ("-1" when
    the frame's own id cannot be read)."""

    def __init__(self, message_id: str, code: str, cause: str):
        super().__init__(code, cause)
        self.message_id = message_id


class Call(NamedTuple):
    id: str
    action: str
    payload: dict


class CallResult(NamedTuple):
    id: str
    payload: dict


class CallError(NamedTuple):
    id: str
    code: str
    description: str
    details: dict


Message = Call | CallResult | CallError


def parse(raw: str | bytes, version: str) -> Message:
    """Check a frame's RPC shape; raise FrameError with what to answer."""
    try:
        # orjson refuses what JSON does not allow (NaN, lone surrogates, nesting beyond 1024)
        msg = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise FrameError("-1", "RpcFrameworkError", "message is not valid JSON") from None
    if type(msg) is not list or not msg:
        raise FrameError("-1", "RpcFrameworkError", "message is not a JSON array")
    mid = msg[1] if len(msg) > 1 else None
    if type(mid) is not str or not 0 < len(mid) <= MAX_ID_LENGTH:
        raise FrameError(
            "-1", "RpcFrameworkError", "message id must be a string of 1 to 36 characters"
        )
    kind = msg[0]
    if kind == CALL and type(kind) is int:
        if len(msg) != 4 or type(msg[2]) is not str or type(msg[3]) is not dict:
            raise FrameError(
                mid, "RpcFrameworkError", "a CALL is [2, messageId, action, {payload}]"
            )
        return Call(mid, msg[2], msg[3])
    if kind == CALLRESULT and type(kind) is int:
        if len(msg) != 3 or type(msg[2]) is not dict:
            raise FrameError(mid, "RpcFrameworkError", "a CALLRESULT is [3, messageId, {payload}]")
        return CallResult(mid, msg[2])
    if kind == CALLERROR and type(kind) is int:
        if (
            len(msg) != 5
            or type(msg[2]) is not str
            or type(msg[3]) is not str
            or type(msg[4]) is not dict
        ):
            raise FrameError(
                mid,
                "RpcFrameworkError",
                "a CALLERROR is [4, messageId, code, description, {details}]",
            )
        return CallError(mid, msg[2], msg[3], msg[4])
    # OCPP 2.0.1 Part 4, 4.3 has a code of its own for this; 1.6 gets FormationViolation
    raise FrameError(mid, "MessageTypeNotSupported", f"unknown MessageTypeId {kind!r}")


def encode_call(message_id: str, action: str, payload: dict) -> bytes:
    return orjson.dumps([CALL, message_id, action, payload])


def encode_result(message_id: str, payload: dict) -> bytes:
    return orjson.dumps([CALLRESULT, message_id, payload])


def encode_error(message_id: str, error: RpcError, version: str) -> bytes:
    """A CALLERROR in `version`'s spelling, its cause cut short (never the whole payload)."""
    details = {"cause": error.cause[:MAX_DETAIL]} if error.cause else {}
    return orjson.dumps(
        [CALLERROR, message_id, spelled(error.code, version), error.description, details]
    )
