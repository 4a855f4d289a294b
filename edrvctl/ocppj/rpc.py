"""An OCPP-J RPC endpoint over one websocket, for either side (central system or station).

One reader answers the peer's CALLs from a table of handlers (action -> function of the peer
object and the JSON payload as sent, returning the answer's payload, directly or as an
awaitable) and resolves our own CALLs' futures by message id. Frames come from run() reading an
async socket, or are pushed to received() by a socket that writes synchronously (the server's
asyncio.Protocol): a handler that answers at once then costs no coroutine, its answer is
written straight to the transport, and the peer's frames are handled in order (those that come
while an awaiting handler runs wait for it). Our CALLs go out one at a time (OCPP-J allows one in flight),
later ones wait FIFO up to a cap, and each has one deadline that includes the wait. When the
socket closes, every pending and queued CALL fails at once.

Handlers must not await a CALL to the same peer (the reader would wait on itself): start such
follow-ups as tasks. Every payload is validated against the official schema, the peer's and our
own, so an invalid frame is never sent.

An observer (`trace`) is called with every frame in and out, its fields as positional arguments
in `Trace`'s order (`Trace(*fields)` makes the record; no record is built per frame for it), the
text as read or sent: each answer names the action of the CALL it answers and the time since
that CALL. Without one, a frame costs a single `is None` test more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple, Protocol

from edrvctl.ocppj import frames, schemas
from edrvctl.ocppj.frames import CALL, CALLERROR, CALLRESULT, Call, CallError, FrameError, RpcError

log = logging.getLogger("edrvctl.ocppj")
WARN_EVERY = 60.0  # seconds between two logged malformed frames of one connection
MAX_INBOX = 4  # a peer's frames waiting for an answer before its socket stops reading
_NO_OUTBOX: deque[bytes] = deque(maxlen=0)  # a socket that writes synchronously has none

# A handler gets the Rpc's `peer` object (whatever the owner keeps per connection) and the
# payload as sent; tables are built once per class, so a connection costs no bound methods.
Handler = Callable[[Any, dict], dict | Awaitable[dict]]


IN, OUT = "in", "out"  # a frame from the peer, or to it
INVALID = 0  # Trace.kind of a frame that is not a valid OCPP-J message
KINDS = {INVALID: "INVALID", CALL: "CALL", CALLRESULT: "CALLRESULT", CALLERROR: "CALLERROR"}


class Trace(NamedTuple):
    """One frame, in or out: the fields, in this order, that `Rpc(trace=...)` calls its
    observer with."""

    at: float  # time.time() when it was read or sent
    direction: str  # IN (from the peer) or OUT (to it)
    kind: int  # frames.CALL, CALLRESULT or CALLERROR; INVALID: not an OCPP-J message
    id: str  # its message id ("-1" when an invalid frame's cannot be read)
    action: str | None  # a CALL's; an answer's is its CALL's (None: it answers no CALL known)
    size: int  # bytes
    latency: float | None  # an answer's: seconds since its CALL was read or sent
    error: str | None  # a CALLERROR's code; an invalid frame's: the code it is answered with
    text: str | bytes  # as read or sent; "" when refused unread (past the peer's rate budget)


# called as trace(*fields) with the fields of a Trace (at, direction, kind, id, action, size,
# latency, error, text)
Tracer = Callable[..., None]


def _size(raw: str | bytes) -> int:
    return len(raw) if type(raw) is bytes or raw.isascii() else len(raw.encode())  # type: ignore[union-attr]


class Socket(Protocol):
    """What Rpc needs of a websocket: either an async one (websockets' asyncio connections:
    run() reads it, frames go out through send()), or one that pushes frames to received()
    and has write(frame) (sends a text frame now), pause_reading() and resume_reading()."""

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: Any, text: bool | None = None) -> None: ...


class RpcClosed(ConnectionError):
    """The connection closed before our CALL was answered."""


class QueueFull(RuntimeError):
    """Too many of our CALLs already wait for this peer."""


class InvalidCall(ValueError):
    """What we were asked to send breaks the schema: nothing was sent."""


class RemoteError(Exception):
    """The peer answered our CALL with a CALLERROR, or with a payload that breaks the schema."""

    def __init__(self, code: str, description: str, details: Any = None):
        super().__init__(f"{code}: {description}")
        self.code, self.description, self.details = code, description, details


class TokenBucket:
    __slots__ = ("burst", "rate", "refilled", "tokens")
    """`rate` messages a second with bursts of `burst`; rate 0 means no limit. One bucket may
    outlive a connection (a station that reconnects keeps its budget)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.tokens, self.refilled = float(self.burst), 0.0

    def take(self, now: float) -> bool:
        if not self.rate:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def internal_error(exc: Exception) -> RpcError:
    """The default for a handler that failed: logged, and an InternalError to the peer."""
    log.error("handler failed", exc_info=exc)
    return RpcError("InternalError", "the receiver failed to handle this request")


class Rpc:
    __slots__ = (
        "_busy",
        "_calling",
        "_inbox",
        "_known",
        "_order",
        "_outbox",
        "_pending",
        "_queued",
        "_warned",
        "_write",
        "bucket",
        "closed",
        "handlers",
        "max_queued",
        "name",
        "on_error",
        "peer",
        "trace",
        "version",
        "ws",
    )

    def __init__(
        self,
        ws: Socket,
        version: str,
        handlers: Mapping[str, Handler],
        peer: Any = None,
        *,
        name: str = "",
        max_queued: int = 16,
        bucket: TokenBucket | None = None,
        on_error: Callable[[Exception], RpcError] = internal_error,
        trace: Tracer | None = None,
    ) -> None:
        self.ws: Any = ws  # a Socket
        self.version = version
        self.handlers = handlers
        self.peer = peer
        self.name = name  # for log lines: the station's endpoint
        self.max_queued = max_queued
        self.bucket = bucket
        self.on_error = on_error
        self.closed = False
        self._pending: dict[str, asyncio.Future] = {}
        self._order = asyncio.Lock()  # FIFO: one CALL of ours in flight
        self._queued = 0
        self._known = schemas.actions(version)
        self._warned = -WARN_EVERY
        self.trace = trace  # called with the fields of every frame in and out (a Trace's)
        self._calling: tuple[str, str, float] = ("", "", 0.0)  # our CALL in flight: id, action, t0
        self._busy: asyncio.Future | None = None  # the peer's CALL being answered, if it awaits
        # the peer's frames waiting for that answer (made when needed: a deque is 600 bytes)
        self._inbox: deque[str | bytes] | None = None
        write = getattr(ws, "write", None)
        # frames for an async socket, in order (run() and call() send them)
        self._outbox: deque[bytes] = deque() if write is None else _NO_OUTBOX
        self._write: Callable[[bytes], None] = write if write is not None else self._outbox.append

    # --- the peer's frames ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames from an async socket until it closes (returns, or raises the socket's
        error). A CALL whose handler awaits holds the reader until it is answered."""
        out = self._outbox
        try:
            async for raw in self.ws:
                self._frame(raw)
                if self._busy is not None:
                    await asyncio.wait((self._busy,))  # its done callback answered it
                while out:
                    await self.ws.send(out.popleft(), text=True)
        finally:
            self.close()

    def received(self, raw: str | bytes) -> None:
        """One frame from the peer, pushed by a socket that writes synchronously (the
        server's): handled now, or after the CALL being answered. Past MAX_INBOX frames
        waiting, the socket is asked to stop reading until they are handled."""
        if self._busy is None:
            self._frame(raw)
            return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(raw)
        if len(self._inbox) >= MAX_INBOX:
            self.ws.pause_reading()

    def _frame(self, raw: str | bytes) -> None:
        trace = self.trace
        try:
            msg = frames.parse(raw, self.version)
        except FrameError as e:
            # garbage costs the sender's budget too; past it, it is answered with the
            # rate-limit error, not examined or logged
            if self._within_budget():
                if trace is not None:
                    self._traced(raw, INVALID, e.message_id, None, e.code, True)
                self._malformed(raw, e, time.monotonic())
                self._send_error(e.message_id, e)
            else:
                if trace is not None:
                    self._traced(raw, INVALID, e.message_id, None, e.code, False)
                self._send_error(e.message_id, self._over_rate())
            return
        if type(msg) is Call:
            if self._within_budget():
                if trace is not None:
                    now = time.time()
                    size = len(raw) if type(raw) is bytes or raw.isascii() else _size(raw)
                    trace(now, IN, CALL, msg.id, msg.action, size, None, None, raw)
                    self._answer(msg, now)
                else:
                    self._answer(msg)
            elif trace is not None:  # refused at once: a flooding peer costs no memory
                self._traced(raw, CALL, msg.id, msg.action, None, False)
                self._send_error(msg.id, self._over_rate(), msg.action, time.time())
            else:
                self._send_error(msg.id, self._over_rate())
            return
        fut = self._pending.pop(msg.id, None)
        if fut is not None and not fut.done():
            if trace is not None:
                self._traced_answer(raw, msg, True)
            fut.set_result(msg)  # the answer we wait for is never refused
        elif self._within_budget():
            if trace is not None:
                self._traced_answer(raw, msg, True)
            log.debug("%s: dropped a reply nobody waits for: %.100r", self.name, raw)
        elif trace is not None:
            self._traced_answer(raw, msg, False)

    def _traced(
        self,
        raw: str | bytes,
        kind: int,
        mid: str,
        action: str | None,
        error: str | None,
        keep: bool,
    ) -> None:
        """Trace a frame read (`keep`: with its text, else refused unread)."""
        if error is not None:
            error = frames.spelled(error, self.version)
        self.trace(  # type: ignore[misc]  # (called only when set)
            time.time(), IN, kind, mid, action, _size(raw), None, error, raw if keep else ""
        )

    def _traced_answer(self, raw: str | bytes, msg: Any, keep: bool) -> None:
        """Trace an answer read: to our CALL in flight, or to none we know of."""
        mid, action, t0 = self._calling
        known = mid == msg.id
        self.trace(  # type: ignore[misc]  # (called only when set)
            time.time(),
            IN,
            CALLERROR if type(msg) is CallError else CALLRESULT,
            msg.id,
            action if known else None,
            _size(raw),
            time.time() - t0 if known else None,
            msg.code if type(msg) is CallError else None,
            raw if keep else "",
        )

    def _over_rate(self) -> RpcError:
        rate = self.bucket.rate if self.bucket else 0
        return RpcError("GenericError", f"rate limit: at most {rate:g} messages per second")

    def _within_budget(self) -> bool:
        return self.bucket is None or self.bucket.take(time.monotonic())

    def _malformed(self, raw: str | bytes, e: FrameError, now: float) -> None:
        # a WARNING once a minute per connection, the rest at DEBUG: a peer sending garbage
        # in a loop must not grow the log
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "%s: malformed frame %.200r: %s (repeats within %g s are not logged)",
                self.name,
                raw,
                e.cause,
                WARN_EVERY,
            )
        else:
            log.debug("%s: malformed frame %.200r: %s", self.name, raw, e.cause)

    def _answer(self, call: Call, since: float = 0.0) -> None:
        """Run one CALL and send exactly one reply (`since`: when it was read, time.time(),
        when traced). A handler that answers at once costs no coroutine; one that returns an
        awaitable runs as a task, and the peer's next frames wait until it is answered."""
        handler = self.handlers.get(call.action)
        try:
            if handler is None:
                if call.action in self._known:
                    raise RpcError("NotSupported", f"{call.action} is not supported here")
                raise RpcError(
                    "NotImplemented", f"{call.action} is not an OCPP {self.version} action"
                )
            schemas.validate(self.version, call.action, schemas.REQUEST, call.payload)
            answer = handler(self.peer, call.payload)
        except RpcError as e:
            self._send_error(call.id, e, call.action, since)
            return
        except Exception as e:
            self._send_error(call.id, self.on_error(e), call.action, since)
            return
        if isinstance(answer, dict):
            self._reply(call, answer, since)
            return
        task = asyncio.ensure_future(answer)
        self._busy = task
        task.add_done_callback(lambda t: self._answered(t, call, since))

    def _answered(self, task: asyncio.Future, call: Call, since: float) -> None:
        """A handler's awaitable is done: its reply, then the frames that waited for it."""
        self._busy = None
        if task.cancelled():
            self._send_error(call.id, self.on_error(RpcClosed("cancelled")), call.action, since)
        elif (e := task.exception()) is not None:
            error = e if isinstance(e, RpcError) else self.on_error(e)  # type: ignore[arg-type]
            self._send_error(call.id, error, call.action, since)
        else:
            self._reply(call, task.result(), since)
        inbox = self._inbox
        if inbox:
            resume = len(inbox) >= MAX_INBOX
            while inbox and self._busy is None:
                self._frame(inbox.popleft())
            if resume and not self.backlogged and not self.closed:
                self.ws.resume_reading()

    def _reply(self, call: Call, answer: dict, since: float) -> None:
        try:  # what we answer is ours to get right: never blame the peer's request for it
            schemas.validate(self.version, call.action, schemas.RESPONSE, answer)
            frame = frames.encode_result(call.id, answer)
        except (RpcError, TypeError) as e:
            log.error("%s: our %s answer is invalid, not sent: %s", self.name, call.action, e)
            self._send_error(
                call.id,
                RpcError("InternalError", "the receiver could not build a valid answer"),
                call.action,
                since,
            )
            return
        if self.trace is not None:
            now = time.time()
            self.trace(
                now,
                OUT,
                CALLRESULT,
                call.id,
                call.action,
                len(frame),
                now - since,
                None,
                frame,
            )
        self._send(frame)

    def _send_error(
        self, message_id: str, error: RpcError, action: str | None = None, since: float = 0.0
    ) -> None:
        """A CALLERROR (`action`, `since`: the CALL it answers and when it was read)."""
        frame = frames.encode_error(message_id, error, self.version)
        if self.trace is not None:
            now = time.time()
            self.trace(
                now,
                OUT,
                CALLERROR,
                message_id,
                action,
                len(frame),
                now - since if action is not None else None,
                frames.spelled(error.code, self.version),
                frame,
            )
        self._send(frame)

    def _send(self, frame: bytes) -> None:
        """Write a frame (UTF-8 JSON, sent as a text frame): at once to a synchronous socket,
        else into the outbox that run() or call() sends in order."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: send %s", self.name, frame)
        self._write(frame)

    # --- our CALLs ------------------------------------------------------------------------------

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        """Send a CALL and return the answer's payload, within `timeout` seconds including
        the wait behind earlier CALLs. Raises InvalidCall (nothing sent), QueueFull,
        RemoteError (CALLERROR or invalid answer), RpcClosed, TimeoutError."""
        try:
            schemas.validate(self.version, action, schemas.REQUEST, payload)
            frame = frames.encode_call("-", action, payload)  # encodable at all?
        except RpcError as e:
            raise InvalidCall(f"{action}: {e.cause}") from None
        except TypeError as e:  # orjson: an integer beyond 64 bits, a non-JSON value
            raise InvalidCall(f"{action}: {e}") from None
        del frame
        if self.closed:
            raise RpcClosed("the connection is closed")
        if self._queued >= self.max_queued:
            raise QueueFull(f"{self._queued} calls already wait")
        self._queued += 1
        queued = True
        try:
            async with asyncio.timeout(timeout):
                async with self._order:
                    self._queued -= 1
                    queued = False
                    if self.closed:
                        raise RpcClosed("the connection is closed")
                    mid = str(uuid.uuid4())
                    fut = asyncio.get_running_loop().create_future()
                    self._pending[mid] = fut
                    try:
                        frame = frames.encode_call(mid, action, payload)
                        if self.trace is not None:
                            now = time.time()
                            self._calling = (mid, action, now)
                            self.trace(
                                now,
                                OUT,
                                CALL,
                                mid,
                                action,
                                len(frame),
                                None,
                                None,
                                frame,
                            )
                        self._send(frame)
                        out = self._outbox
                        while out:  # an async socket's (raises when it is closed)
                            await self.ws.send(out.popleft(), text=True)
                        reply = await fut
                    finally:
                        self._pending.pop(mid, None)  # a late answer is dropped, never kept
        finally:
            if queued:
                self._queued -= 1
        if type(reply) is CallError:
            raise RemoteError(reply.code, reply.description, reply.details)
        answer: dict = reply.payload
        try:
            schemas.validate(self.version, action, schemas.RESPONSE, answer)
        except RpcError as e:
            raise RemoteError(e.code, f"invalid {action} answer: {e.cause}") from None
        return answer

    @property
    def awaiting(self) -> bool:
        """Whether a CALL of ours waits for the peer's answer."""
        return bool(self._pending)

    @property
    def backlogged(self) -> bool:
        """Whether so many of the peer's frames wait that its socket should not be read."""
        return self._inbox is not None and len(self._inbox) >= MAX_INBOX

    @property
    def queued(self) -> int:
        """Our CALLs waiting for their turn (not counting the one in flight)."""
        return self._queued

    async def settled(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for the handler of the peer's CALL being answered,
        if one is under way: what it records comes before what the caller records next."""
        busy = self._busy
        if busy is not None:
            await asyncio.wait((busy,), timeout=timeout)

    def close(self) -> None:
        """Fail every pending CALL at once (the socket is gone or going)."""
        self.closed = True
        self._inbox = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(RpcClosed("the connection closed"))
