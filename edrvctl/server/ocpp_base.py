"""What both OCPP versions' ChargePoints share: a receive path that never blocks and never dies.

The stock `ocpp.ChargePoint.start()` gives a malformed frame no answer at all, answers unknown
and unsupported actions with each other's codes, validates in a thread pool, and dies when a
handler misbehaves (ocpp-notes.md §1.4-1.6). Here every malformed frame gets its CALLERROR,
replies to our own calls are matched to the one call awaiting them (anything else is dropped),
and the connection stays up whatever a handler does. Handlers never await a call to the
station (those run as their own tasks), so answering a CALL in the reader cannot deadlock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid

import orjson

from ocpp.exceptions import (
    FormationViolationError,
    FormatViolationError,
    GenericError,
    InternalError,
    NotImplementedError as OcppNotImplemented,
    NotSupportedError,
    OCPPError,
    OccurenceConstraintViolationError,
    OccurrenceConstraintViolationError,
)
from ocpp.messages import Call, CallError, CallResult, MessageType
from ocpp.routing import after, create_route_map, on

from edrvctl.errors import EdrvError, UsageError
from edrvctl.model import format_time, parse_time, utcnow
from edrvctl.server import keys
from edrvctl.server.validation import validate_request

log = logging.getLogger("edrvctl.ocpp")
frame_log = logging.getLogger("edrvctl.ocpp.frames")

MAX_ID_LENGTH = 36  # OCPP-J: a message id is at most 36 characters


class MessageTypeNotSupportedError(OCPPError):
    """OCPP 2.0.1's code for an unknown MessageTypeId."""

    code = "MessageTypeNotSupported"
    default_description = "A message with a MessageTypeId this peer does not support"


class RpcFrameworkError(OCPPError):
    """OCPP 2.0.1's code for a frame that is not a valid RPC (the library has none)."""

    code = "RpcFrameworkError"
    default_description = "Content of the call is not a valid RPC request"


class FrameError(Exception):
    def __init__(self, message_id: str, error: OCPPError):
        self.message_id = message_id
        self.error = error


class RobustChargePoint:
    """Mixin placed before `ocpp.v16.ChargePoint` / `ocpp.v201.ChargePoint`."""

    #: the version's `Action` enum; set by the subclass
    actions: type
    def __init__(self, endpoint: str, connection, fleet, response_timeout: float = 30,
                 logger: logging.Logger = frame_log):
        # The library's __init__ is not called: it builds a route map per connection (time and
        # ~4 KB each), where one per class does (`_routes`). These are the attributes its
        # call() uses.
        self.id = endpoint
        self._connection = connection
        self._response_timeout = response_timeout
        self._call_lock = asyncio.Lock()
        self._response_queue: asyncio.Queue = asyncio.Queue()
        self._unique_id_generator = self._next_call_id
        self.logger = logger
        self.route_map = self._routes()
        self.fleet = fleet
        self.raw: dict = {}  # the payload of the CALL being handled, exactly as received
        # The id of our CALL awaiting its answer (one at a time); any other reply is dropped.
        self._awaited: str | None = None
        self._after_tasks: set[asyncio.Future] = set()
        self.limit_rate(50, 100)

    @classmethod
    def _routes(cls) -> dict:
        """action -> {"_on_action": function, ...}, built once per class."""
        if "_route_cache" not in cls.__dict__:
            cls._route_cache = create_route_map(cls)
        return cls._route_cache

    # --- what both versions say alike (the action names are the same in 1.6 and 2.0.1) ---

    @after("BootNotification")
    async def after_boot(self, **kw):
        doc = self.fleet.is_known(self.id)
        if doc is not None and not doc["active"]:  # an inactive station is told again at boot
            await self.fleet.push_availability(self.id)

    @on("Heartbeat")
    def on_heartbeat(self, **kw):
        self.fleet.heartbeat(self.id)
        return self._call_result.Heartbeat(current_time=utcnow())

    def _next_call_id(self) -> str:
        self._awaited = str(uuid.uuid4())
        return self._awaited

    def limit_rate(self, per_second: float, burst: int) -> None:
        """A token bucket for the station's CALLs; 0 means no limit."""
        self._rate, self._burst = per_second, max(1, burst)
        self._tokens, self._refilled = float(self._burst), 0.0

    def _take_token(self) -> bool:
        if not self._rate:
            return True
        now = asyncio.get_running_loop().time()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _malformed_error(self, cause: str) -> OCPPError:
        # OCPP 2.0.1 has RpcFrameworkError for frames that are not a valid RPC; 1.6 only has
        # FormationViolation (its own spelling), which strict 1.6 testers expect (ocpp #381).
        if self._ocpp_version == "1.6":
            return FormationViolationError(details={"cause": cause})
        return RpcFrameworkError(details={"cause": cause})

    def parse_frame(self, raw: str | bytes) -> Call | CallResult | CallError:
        """Check a frame's RPC shape; raise FrameError with the CALLERROR to send back."""
        try:
            # orjson refuses what JSON does not allow (NaN, lone surrogates, nesting beyond
            # 1024) that the json module would let through.
            msg = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise FrameError("-1", self._malformed_error("message is not valid JSON")) from None
        if not isinstance(msg, list) or not msg:
            raise FrameError("-1", self._malformed_error("message is not a JSON array"))
        mid = msg[1] if len(msg) > 1 else None
        if not isinstance(mid, str) or not 0 < len(mid) <= MAX_ID_LENGTH:
            raise FrameError("-1", self._malformed_error(
                "message id must be a string of 1 to 36 characters"))
        kind = msg[0]
        if kind == MessageType.Call:
            if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
                raise FrameError(mid, self._malformed_error(
                    "a CALL is [2, messageId, action, {payload}]"))
            return Call(mid, msg[2], msg[3])
        if kind == MessageType.CallResult and len(msg) == 3 and isinstance(msg[2], dict):
            return CallResult(mid, msg[2])
        if kind == MessageType.CallError and len(msg) == 5:
            return CallError(*msg[1:])
        if kind in (MessageType.CallResult, MessageType.CallError):
            raise FrameError(mid, self._malformed_error("malformed CALLRESULT/CALLERROR"))
        if self._ocpp_version == "1.6":
            raise FrameError(mid, self._malformed_error(f"unknown MessageTypeId {kind!r}"))
        raise FrameError(mid, MessageTypeNotSupportedError(  # OCPP 2.0.1 Part 4, 4.3
            details={"cause": f"unknown MessageTypeId {kind!r}"}))

    def _error_for_1_6(self, error: OCPPError) -> OCPPError:
        # The library raises 2.0.1 spellings on every version; 1.6 peers expect their own.
        if self._ocpp_version == "1.6":
            if isinstance(error, FormatViolationError):
                return FormationViolationError(error.description, error.details)
            if isinstance(error, OccurrenceConstraintViolationError):
                return OccurenceConstraintViolationError(error.description, error.details)
        return error

    async def _send_error(self, message_id: str, error: OCPPError) -> None:
        error = self._error_for_1_6(error)
        details = error.details if isinstance(error.details, dict) else {}
        # Keep the cause short: the library puts the whole payload and sub-schema in it.
        details = {"cause": str(details.get("cause", ""))[:200]} if details else {}
        frame = CallError(message_id, error.code, error.description or "", details)
        await self._send(frame.to_json())

    async def _answer(self, call: Call) -> None:
        """Run one CALL from the station and always send exactly one reply."""
        try:
            self.actions(call.action)
        except ValueError:
            await self._send_error(call.unique_id, OcppNotImplemented(
                details={"cause": f"{call.action} is not an OCPP {self._ocpp_version} action"}))
            return
        if "_on_action" not in self.route_map.get(call.action, {}):
            await self._send_error(call.unique_id, NotSupportedError(
                details={"cause": f"{call.action} is not supported by this central system"}))
            return
        try:
            await self._handle_call(call)
        except OCPPError as e:
            await self._send_error(call.unique_id, e)
        except UsageError as e:  # valid per the schema, but not storable (e.g. nesting)
            await self._send_error(call.unique_id, FormatViolationError(
                details={"cause": e.message}))
        except EdrvError as e:  # e.g. the store is full: not acknowledged, and said why
            log.error("%s: %s not recorded: %s", self.id, call.action, e.message)
            await self._send_error(call.unique_id, InternalError(details={"cause": e.message}))
        except Exception:
            self.logger.exception("%s: handler for %s failed", self.id, call.action)
            await self._send_error(call.unique_id, InternalError(
                details={"cause": "the central system failed to handle this request"}))

    async def _send(self, message: str | bytes) -> None:
        # The library logs every frame at INFO (id tags included); frames are DEBUG here.
        if frame_log.isEnabledFor(logging.DEBUG):
            frame_log.debug("%s: send %s", self.id, message)
        if isinstance(message, bytes):  # UTF-8 JSON from orjson: a text frame, not re-encoded
            await self._connection.send(message, text=True)
        else:
            await self._connection.send(message)

    async def _handle_call(self, call: Call) -> None:
        """Validate, run the handler, reply, then start the async @after hook.

        Replaces the library's version: validation is inline and compiled (validation.py),
        every error reaches `_answer` (so 1.6 gets its own spellings), and our own replies are
        not validated again at run time: the test suite checks them against the schemas.
        """
        handlers = self.route_map[call.action]
        if not handlers.get("_skip_schema_validation", False):
            validate_request(call, self._ocpp_version)
        # Handlers get snake_case kwargs; what is stored as the station sent it (vendor keys
        # inside DataTransfer data or customData must not be rewritten) is read from `raw`.
        self.raw = call.payload
        kwargs = keys.to_snake(call.payload)
        response = handlers["_on_action"](self, **kwargs)
        if inspect.isawaitable(response):
            response = await response
        payload = keys.to_camel(keys.payload_of(response))
        await self.fleet.durable()  # what the station is told is on disk first
        await self._send(orjson.dumps([3, call.unique_id, payload]))
        after = handlers.get("_after_action")
        if after is not None:
            task = asyncio.ensure_future(after(self, **kwargs))  # after the reply, not before
            self._after_tasks.add(task)
            task.add_done_callback(self._after_tasks.discard)


    async def start(self) -> None:
        """Read frames until the socket closes. A station's CALL is answered right here, in
        order: no handler awaits anything but the commit and the send (calls to the station
        run as their own tasks), so answers to our own calls are never held up for long."""
        async for raw in self._connection:  # ends normally when the socket closes
            try:
                msg = self.parse_frame(raw)
            except FrameError as e:
                log.warning("%s: malformed frame %.200r: %s", self.id, raw,
                            e.error.details.get("cause"))
                await self._send_error(e.message_id, e.error)
                continue
            if msg.message_type_id == MessageType.Call:
                # Excess is refused at once, so a flooding station costs no memory.
                if not self._take_token():
                    await self._send_error(msg.unique_id, GenericError(details={
                        "cause": f"rate limit: at most {self._rate:g} messages per second"}))
                else:
                    await self._answer(msg)
            elif self._call_lock.locked() and msg.unique_id == self._awaited:
                self._awaited = None
                self._response_queue.put_nowait(msg)  # for the call() waiting on it
            else:  # nobody asked: a late or unsolicited reply is dropped, never kept
                log.debug("%s: dropped a reply nobody waits for: %.100r", self.id, raw)


def kept_as_event(action, answer, time_field: str | None = None):
    """The handler of a notification that is only kept: stored as it came, as an event named
    after its action, and answered with `answer()`. Assign it in the class body to the name
    `on_<action member name>` (the library routes handlers by function name)."""
    def handler(self, **kw):
        if time_field:
            checked_time(kw.get(time_field), time_field)
        self.fleet.record_event(self.id, action.value, self.raw)
        return answer()

    handler.__name__ = handler.__qualname__ = f"on_{action.name}"
    return on(action)(handler)


def checked_time(value: str | None, field: str) -> str | None:
    """The library does not check date-time formats (ocpp #216, #499); refuse bad ones here and
    store every time in one form."""
    if value is None:
        return None
    try:
        t = parse_time(value)
        # already in the stored form (what most stations send): keep it, skip formatting
        canonical = len(value) == 24 and value[10] == "T" and value[19] == "." and value[-1] == "Z"
        return value if canonical else format_time(t)
    except (ValueError, TypeError):
        raise FormatViolationError(
            details={"cause": f"{field}: {value!r} is not an RFC 3339 date-time"}) from None
