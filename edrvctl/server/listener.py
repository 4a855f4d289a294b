"""The OCPP websocket listener: who may connect (security profiles, limits), which version they
speak, and the session's life from upgrade to close. Each connection is an asyncio.Protocol
driving websockets' sans-I/O ServerProtocol (StationConnection): the hot path is a frame in,
the Rpc's answer written back with the rest of the loop turn's, without a task or coroutine per
connection or message.

Refusals happen before the upgrade, with an HTTP status and a one-line reason in the body:
404 unknown endpoint, 400 no or wrong subprotocol, 401 missing or wrong password (with
WWW-Authenticate), 403 TLS or a client certificate required / certificate for another identity,
503 too many connections from one address. Each is logged (never with the secret); a known
station's is a `chargestation.connection_refused` event and its record's `lastRefusal`, an
unknown endpoint's is counted in the list `edrvctl cs unknown` shows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from websockets.frames import Opcode, apply_mask
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from edrvctl import model
from edrvctl.errors import Busy, NotFound, StoreUnavailable
from edrvctl.fleet import MAX_REASON, Fleet
from edrvctl.ocppj import RpcClosed, TokenBucket
from edrvctl.server.logs import Throttle
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.ocpp201 import Station201
from edrvctl.server.stations import Registry, StationSession
from edrvctl.textsafe import printable

log = logging.getLogger("edrvctl.ocpp")

CHARGE_POINTS: dict[str, type[StationSession]] = {"ocpp1.6": Station16, "ocpp2.0.1": Station201}
REFUSAL_EVERY = 60.0  # seconds between two logged/stored refusals that say the same
MAX_HANDSHAKES_PER_ADDRESS = 32  # upgrades in flight from one address (with a per-address limit)
MAX_UNREAD = 1 << 20  # bytes written to a peer and not read by it, before it is dropped
CLOSE_DEADLINE = 10.0  # s for every station's socket to close at shutdown
SETTLE_TIMEOUT = 5.0  # s a closed connection's message still being handled is waited for
UNKNOWN_KEPT_PER_MINUTE = 120  # unknown endpoints' refusals stored a minute, all together
SUBPROTOCOLS = [Subprotocol(p) for p in ("ocpp1.6", "ocpp2.0.1")]
TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
OPEN, CONNECTING = State.OPEN, State.CONNECTING
TURN_BUDGET = 0.00075  # s of stations' frames handled in one event-loop turn (see Turns)


@dataclass
class ListenerSettings:
    host: str = "0.0.0.0"
    port: int = 9000
    tls_port: int | None = None  # a wss:// listener too, when `tls` is set
    tls: ssl.SSLContext | None = None
    ping_interval: float | None = 30
    ping_timeout: float | None = 60
    response_timeout: float = 30
    max_frame: int = 2**20
    handshake_timeout: float = 10
    max_per_address: int = 1024  # open connections from one client address; 0 = no limit
    max_rate: float = 50  # CALLs per second a station may send, sustained
    burst: int = 100  # and in a burst


def endpoint_of(path: str) -> str | None:
    """The station identity is the last path segment: '/ocpp/CP%2001?x=1' -> 'CP 01'."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    return unquote(parts[-1]) if parts else None


def offered_protocols(request: Request) -> list[str]:
    return [
        p.strip()
        for h in request.headers.get_all("Sec-WebSocket-Protocol")
        for p in h.split(",")
        if p.strip()
    ]


def basic_credentials(request: Request, endpoint: str) -> tuple[str, str] | None:
    """(username, password) from HTTP Basic auth. The username is the station's endpoint,
    which may itself contain ':' (RFC 7617 splits at the first one): split after it."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if decoded.startswith(endpoint + ":"):
        return endpoint, decoded[len(endpoint) + 1 :]
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def certificate_identity(conn: StationConnection) -> str | None:
    """The common name of a verified client certificate (OCPP security profile 3)."""
    tls = conn.transport.get_extra_info("ssl_object")
    cert = tls.getpeercert() if tls else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class Refusals:
    """Refused upgrades within a fixed budget of memory, log and store, whatever is sent.

    A refusal of an endpoint (a known station's wrong password, wrong subprotocol, ...; an
    unknown endpoint) is kept in the store once a minute per (endpoint, status, kind of
    reason), with the count of those not kept since, and unknown endpoints' at most
    UNKNOWN_KEPT_PER_MINUTE a minute in all. A known station's is logged then too;
    everything else (unknown endpoints, over-limit addresses) is logged in full once a minute,
    the rest counted and summarised in one line a minute.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        # (endpoint, status, kind) -> (when last kept, refusals since, not kept)
        self.kept: dict[tuple[str, int, str], tuple[float, int]] = {}
        self.unknown_window, self.unknown_kept = time.monotonic(), 0
        self.window = time.monotonic()
        self.logged_in_window = False
        self.suppressed: Counter[int] = Counter()  # status -> refusals not logged
        self.last = ""
        self.total: Counter[int] = Counter()  # status -> refused upgrades since start

    def count(self, endpoint: str | None, status: int, address: str, reason: str = "") -> None:
        now = time.monotonic()
        if now - self.window >= REFUSAL_EVERY:
            self.summarise()
            self.window, self.logged_in_window = now, False
        line = (
            f"refused {printable(endpoint or '?', 60)} from {printable(address, 60)}: "
            f"{status} {printable(reason, MAX_REASON)}"
        )
        if not self.logged_in_window:
            self.logged_in_window = True
            log.warning("%s", line)
        else:
            self.suppressed[status] += 1
            self.last = line

    def summarise(self) -> None:
        if self.suppressed:
            statuses = ", ".join(f"{n} × {status}" for status, n in sorted(self.suppressed.items()))
            log.warning(
                "refused %d more upgrade(s) in the last %g s (%s); the last: %s",
                sum(self.suppressed.values()),
                REFUSAL_EVERY,
                statuses,
                self.last,
            )
            self.suppressed.clear()

    async def refused(
        self,
        endpoint: str | None,
        status: int,
        address: str,
        reason: str,
        known: bool,
        offered: list[str] | None = None,
    ) -> None:
        self.total[status] += 1
        if endpoint is None or status == 503:  # no identity, or not about this endpoint
            self.count(endpoint, status, address, reason)
            return
        # the reason's fixed start tells the kinds apart; what follows may quote the client
        key, now = (endpoint, status, reason[:32]), time.monotonic()
        last = self.kept.get(key)
        if last is not None and now - last[0] < REFUSAL_EVERY:
            self.kept[key] = (last[0], last[1] + 1)
            log.debug("refused %s again: %s", printable(endpoint, 60), status)
            return
        if not known and not model.could_be_endpoint(endpoint):  # never a station: count it
            self.count(endpoint, status, address, reason)
            return
        if not known:  # endpoints anyone can invent: a fixed number kept a minute in all
            if now - self.unknown_window >= REFUSAL_EVERY:
                self.unknown_window, self.unknown_kept = now, 0
            if self.unknown_kept >= UNKNOWN_KEPT_PER_MINUTE:
                self.count(endpoint, status, address, reason)
                return
            self.unknown_kept += 1
        if len(self.kept) >= 100_000:
            self.kept.clear()
        self.kept[key] = (now, 0)
        repeats = last[1] if last is not None else 0
        if known:
            log.warning(
                "refused %s from %s: %s %s%s",
                printable(endpoint, 60),
                printable(address),
                status,
                printable(reason, MAX_REASON),
                f" ({repeats} more time(s) since the last line)" if repeats else "",
            )
        else:
            self.count(endpoint, status, address, reason)
        info = {"address": address, "subprotocols": [p[:40] for p in (offered or [])[:8]]}
        try:  # kept for the admin, best effort: a full store must not fail the refusal
            if known:
                await self.fleet.refused(endpoint, status, reason, info)
            else:
                info["reason"] = reason[:MAX_REASON]
                await self.fleet.unknown(endpoint, info, 1 + repeats)
        except Exception as e:
            log.error("refusal of %s not recorded: %s", printable(endpoint, 60), e)


class Guesses:
    """Wrong passwords per client address: past a few in a row, that address waits a second
    per further wrong one before its next check (the hash is slow on purpose; guessing must
    cost the guesser, not the other stations). Bounded: addresses quiet for a minute are
    forgotten, and the table is cleared if it ever holds too many."""

    FREE = 5  # wrong passwords in a row before pauses begin
    PAUSE = 1.0  # seconds per wrong password past those

    def __init__(self) -> None:
        self.wrong: dict[str, tuple[int, float]] = {}  # address -> (in a row, last at)

    def paused(self, address: str) -> bool:
        n, at = self.wrong.get(address, (0, 0.0))
        now = time.monotonic()
        if now - at > 60:
            self.wrong.pop(address, None)
            return False
        return n >= self.FREE and now - at < self.PAUSE * (n - self.FREE + 1)

    def record(self, address: str, ok: bool) -> None:
        if ok:
            self.wrong.pop(address, None)
            return
        if len(self.wrong) >= 100_000:
            self.wrong.clear()
        n, _ = self.wrong.get(address, (0, 0.0))
        self.wrong[address] = (n + 1, time.monotonic())


class Turns:
    """Station work per event-loop turn, bounded: once TURN_BUDGET seconds went to stations'
    bytes in one turn, the stations read after that wait for a later turn (what was read is
    kept; a socket read again while it waits is paused), first come first served. So a turn
    under a saturating load stays short, and the admin API and commands, which take a few
    turns each, are not starved (1,000 busy stations made a turn last tens of milliseconds).
    The frames handled in a turn cost as much again after it (their handlers' store writes,
    the answers' writes, the COMMIT), hence a budget under a millisecond: with 1,000 stations
    saturating the server, a get_variables took 69 ms p99 at 2 ms, 38 ms at 0.75 ms, for the
    same calls/s (`python bench/run.py starved --loadgen`)."""

    __slots__ = ("flush_due", "scheduled", "spent", "waiting", "writers")

    def __init__(self) -> None:
        self.spent = 0.0  # seconds of station work in this turn
        self.waiting: deque[tuple[StationConnection, bytes]] = deque()
        self.scheduled = False  # next_turn is due
        # connections with answers to write at the end of this turn (see StationConnection.out)
        self.writers: list[StationConnection] = []
        self.flush_due = False

    def written(self, conn: StationConnection) -> None:
        """conn has output for this turn's flush."""
        self.writers.append(conn)
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_due = False
        writers, self.writers = self.writers, []
        for conn in writers:
            conn.flush()

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.next_turn)  # runs in the next turn

    def defer(self, conn: StationConnection, data: bytes) -> None:
        if conn.parked:  # a second read waiting: stop reading it (a station sending one
            conn.transport.pause_reading()  # CALL at a time costs no epoll_ctl calls)
        conn.parked += 1
        self.waiting.append((conn, data))
        self.charge(0.0)

    def next_turn(self) -> None:
        self.scheduled, self.spent = False, 0.0
        waiting = self.waiting
        while waiting and self.spent < TURN_BUDGET:
            conn, data = waiting.popleft()
            conn.parked -= 1
            if conn.lost:
                continue
            t0 = perf_counter()
            try:
                conn.handle(data)
                if not conn.parked:
                    conn.resume_after_turn()
            except Exception:  # one connection's failure must not stall the others
                log.exception("%s: deferred frames", conn.address)
                conn.transport.abort()
            self.charge(perf_counter() - t0)
        if waiting:
            self.charge(0.0)


class StationConnection(asyncio.Protocol):
    """One station's TCP connection, driving websockets' sans-I/O ServerProtocol itself: the
    upgrade (Listener.process_request, then the 101), then each text frame straight to the
    session's Rpc, whose answers are written straight to the transport (those made while one
    read is handled go out in one write). No task or coroutine per connection or message:
    keepalive and the unread-data guard are the listener's watchdog's.

    Counted per client address from its first byte (half-open upgrades count too) and, until
    its upgrade is done, as a handshake in flight; refused with a 503 past either limit before
    anything is read. Dropped as soon as more than MAX_UNREAD bytes wait for it to read them."""

    __slots__ = (
        "address",
        "close_code",
        "fragments",
        "handshaking",
        "heard",
        "log_level",
        "lost",
        "ocpp_protocol",
        "out",
        "parked",
        "ping_sent",
        "quiet_since",
        "refused",
        "request",
        "session",
        "station_id",
        "stuck_since",
        "timer",
        "transport",
        "unparsed",
        "unread",
        "waiters",
        "ws",
    )
    listener: Listener  # set on the subclass made per listener

    def __init__(self) -> None:
        self.address = "?"
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.ws: ServerProtocol | None = None
        self.request: Request | None = None
        self.session: StationSession | None = None  # once attached: frames go to its Rpc
        self.ocpp_protocol: str | None = None  # the station's registered one (process_request)
        self.station_id: str | None = None  # and its _id
        self.refused = self.handshaking = self.lost = False
        self.parked = 0  # its reads waiting in the listener's Turns
        self.heard = True  # data came since the watchdog last looked
        self.quiet_since = 0.0
        self.ping_sent: float | None = None  # our keepalive ping waiting for its pong
        self.stuck_since: float | None = None  # since when its write buffer has not drained
        self.unread = 0  # bytes in its write buffer at the last look
        # what we write in this loop turn, all written at its end (Turns.flush): one burst of
        # writes wakes a peer waiting for them once, where writes spread over the turn woke it
        # for each (the kernel's wake-up was a fifth of the server's CPU at 1,000 stations)
        self.out: bytearray | None = None
        self.fragments: list[bytes] | None = None  # a fragmented message's parts so far
        self.unparsed = b""  # the start of a frame whose end has not come yet (see _read)
        self.timer: asyncio.TimerHandle | None = None  # the upgrade's deadline
        self.close_code: int | None = None
        self.log_level = logging.INFO  # of its connected / disconnected lines
        self.waiters: list[asyncio.Future] | None = None  # close() calls waiting for the end

    # --- what process_request and the sessions see of it ------------------------------------

    @property
    def endpoint(self) -> str | None:
        """The station's identity (from the upgrade's path), once the request came."""
        if self.session is not None:
            return self.session.endpoint
        return endpoint_of(self.request.path) if self.request is not None else None

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        """A CALL to the attached station (one in flight, FIFO; see ocppj.Rpc.call)."""
        if self.session is None:
            raise RpcClosed("the station is not attached")
        return await self.session.call(action, payload, timeout)

    @property
    def remote_address(self) -> tuple[str, int]:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return (peer[0], peer[1]) if peer else (self.address, 0)

    def respond(self, status: int, text: str) -> Response:
        """A plain-text HTTP response refusing the upgrade."""
        assert self.ws is not None
        return self.ws.reject(status, text)

    def write(self, frame: bytes) -> None:
        """Send one text frame (the Rpc's answers and CALLs): with the rest of this turn's
        output, at its end (`out`)."""
        if self.lost or self.ws is None or self.ws.state is not OPEN:
            return
        n = len(frame)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + n.to_bytes(8, "big")
        out = self.out
        if out is None:
            self.out = out = bytearray()
            self.listener.turns.written(self)
        out += head
        out += frame

    def flush(self) -> None:
        """Write what this turn has for the station (before anything the protocol sends)."""
        out = self.out
        if out is not None:
            self.out = None
            if not self.lost:
                self.transport.write(out)
                self._check_unread()

    def pause_reading(self) -> None:
        if not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.lost and self.session is not None and not self.parked:
            self.transport.resume_reading()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait for the connection to end."""
        if self.lost:
            return
        ws = self.ws
        if ws is not None and ws.state is OPEN:
            ws.send_close(code, reason)
            self._send_pending()
        elif ws is None or ws.state is CONNECTING:
            self.transport.close()
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        await waiter

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if peer else "?"
        listener = self.listener
        listener.per_address[self.address] += 1
        limit = listener.s.max_per_address
        if limit:
            if listener.per_address[self.address] > limit:
                return self._refuse(transport, f"too many connections from {self.address}")
            if listener.handshakes[self.address] >= MAX_HANDSHAKES_PER_ADDRESS:
                return self._refuse(transport, f"too many upgrades at once from {self.address}")
        listener.handshakes[self.address] += 1
        self.handshaking = True
        listener.open.add(self)
        self.ws = ServerProtocol(
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=_registered_protocol,
            max_size=listener.s.max_frame,
        )
        self.ws.connection = self  # type: ignore[attr-defined]  # for _registered_protocol
        self.timer = asyncio.get_running_loop().call_later(
            listener.s.handshake_timeout, self._handshake_expired
        )

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self.refused = True
        self.listener.refusals.total[503] += 1
        self.listener.refusals.count(None, 503, self.address, reason)
        body = f"{reason}\n".encode()
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
            b"Content-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        transport.close()

    def _handshake_expired(self) -> None:
        self.timer = None
        if not self.lost:
            self.transport.abort()

    def upgraded(self) -> None:
        """The handshake is over (accepted or refused): it no longer counts as one."""
        if self.handshaking:
            self.handshaking = False
            handshakes = self.listener.handshakes
            handshakes[self.address] -= 1
            if handshakes[self.address] <= 0:
                del handshakes[self.address]

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:  # refused: nothing is read
            return
        self.heard = True
        if self.session is None:
            ws.receive_data(data)
            events = ws.events_received()
            if events:
                self._before_open(events)
            self._send_pending()
            return
        turns = self.listener.turns
        if self.parked or (
            (turns.spent >= TURN_BUDGET or turns.waiting) and not self.session.rpc.awaiting
        ):
            # this loop turn had its share of station work (the answer to a command is
            # never kept waiting: the admin waits for it)
            turns.defer(self, data)
            return
        t0 = perf_counter()
        self.handle(data)
        turns.charge(perf_counter() - t0)

    def handle(self, data: bytes) -> None:
        """Bytes from an attached station: its frames to its Rpc (our answers go out at the end
        of the turn), then what the protocol has to send."""
        self._read(data)
        self._send_pending()

    def resume_after_turn(self) -> None:
        """Deferred bytes handled: read on, unless its Rpc has too many frames waiting."""
        if not self.lost and self.session is not None and not self.session.rpc.backlogged:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._send_pending()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        listener = self.listener
        listener.per_address[self.address] -= 1
        if listener.per_address[self.address] <= 0:
            del listener.per_address[self.address]
        if self.refused:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.upgraded()
        listener.open.discard(self)
        ws = self.ws
        if ws is not None:
            ws.receive_eof()  # its state is CLOSED now: what the close said, or 1006
            self.close_code = ws.close_code
        if self.session is not None:
            listener.ended(self)
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # --- frames ---------------------------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        """Whole frames off the front of what came (`unparsed`, then `data`). What stations
        send nearly always, an unfragmented masked text frame, is read here: the library's
        generator-based parser costs several times more. Every other frame (control frames, fragments, binary,
        anything it must refuse) goes whole to the library, so its parser is always between
        two frames. An unfinished frame waits in `unparsed`, at most max_frame bytes: a
        longer one goes to the library at once, which refuses it (1009)."""
        if self.unparsed:
            data = self.unparsed + data
        ws = cast(ServerProtocol, self.ws)
        rpc = self.session.rpc  # type: ignore[union-attr]
        max_size = self.listener.s.max_frame
        pos, n = 0, len(data)
        while pos < n:
            if ws.state is not OPEN:  # closing: the library reads the close or discards
                self._library(data[pos:] if pos else data)
                return
            if n - pos < 2:
                break
            b1 = data[pos + 1]
            size, start = b1 & 0x7F, pos + 6  # past 2 bytes of header and 4 of mask
            if size == 126:
                if n - pos < 4:
                    break
                size, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 8
            elif size == 127:
                if n - pos < 10:
                    break
                size, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 14
            if size > max_size or not b1 & 0x80:  # too long, or not masked: refused there
                self._library(data[pos:] if pos else data)
                return
            end = start + size
            if end > n:
                break
            # FIN, text, no extension bits, and no fragmented message under way (the library
            # refuses a new message before its end)
            if data[pos] == 0x81 and ws.current_size is None:
                try:
                    raw = apply_mask(data[start:end], data[start - 4 : start]).decode()
                except UnicodeDecodeError as e:
                    ws.fail(1007, f"{e.reason} at position {e.start}")
                    return
                rpc.received(raw)
            else:
                self._library(data[pos:end])
            pos = end
        self.unparsed = data[pos:] if pos < n else b""

    def _library(self, data: bytes) -> None:
        ws = cast(ServerProtocol, self.ws)
        ws.receive_data(data)
        self._frames(ws.events_received())

    def _frames(self, events: list) -> None:
        rpc = self.session.rpc  # type: ignore[union-attr]
        for frame in events:
            op = frame.opcode
            if op is TEXT or op is BINARY or op is CONT:
                if not frame.fin:  # a part: kept until the last (max_size bounds the whole)
                    if op is not CONT:
                        self.fragments = [bytes([op is TEXT]), frame.data]
                    elif self.fragments is not None:
                        self.fragments.append(frame.data)
                    continue
                data = frame.data
                if op is CONT:
                    if self.fragments is None:
                        continue
                    parts, self.fragments = self.fragments, None
                    text, data = parts[0] == b"\x01", b"".join(parts[1:]) + data
                else:
                    text = op is TEXT
                if text:
                    try:
                        raw: str | bytes = data.decode()
                    except UnicodeDecodeError as e:
                        self.ws.fail(1007, f"{e.reason} at position {e.start}")  # type: ignore[union-attr]
                        return
                else:
                    raw = data
                rpc.received(raw)
            # pings are answered and closes echoed by the protocol; a pong is only heard

    def _before_open(self, events: list) -> None:
        """The upgrade request (frames cannot come before our 101)."""
        for event in events:
            if isinstance(event, Request) and self.request is None:
                self.request = event
                self.transport.pause_reading()  # until the session is attached
                self.listener.spawn(self._upgrade(event))

    async def _upgrade(self, request: Request) -> None:
        ws = self.ws
        assert ws is not None
        listener = self.listener
        try:
            response = await listener.process_request(self, request)
            if response is None:
                response = ws.accept(request)
        except Exception:
            log.exception("the upgrade of a connection failed")
            response = ws.reject(500, "Failed to open a WebSocket connection.\n")
        if not listener.serving and response.status_code == 101:
            response = ws.reject(503, "Server is shutting down.\n")
        self.upgraded()
        if self.lost:
            return
        ws.send_response(response)
        self._send_pending()
        if response.status_code != 101:
            return
        if self.timer is not None:  # the handshake is done; attaching has its own deadlines
            self.timer.cancel()
            self.timer = None
        await listener.opened(self)

    def _send_pending(self) -> None:
        """What the protocol has to send (pongs, close frames, the handshake's response), and
        the end of the connection once it says so."""
        ws = self.ws
        if ws is None or self.lost:
            return
        data_to_send = ws.data_to_send()
        if not data_to_send:
            return
        self.flush()  # our answers first
        for data in data_to_send:
            if data:
                self.transport.write(data)
            else:  # end of stream: a server closes the TCP connection first
                self.transport.close()
                return
        self._check_unread()

    def _check_unread(self) -> None:
        # a peer that sends but never reads (pings, CALLs) would make this buffer grow for
        # as long as it likes
        waiting = self.transport.get_write_buffer_size()
        if waiting > MAX_UNREAD:
            self.listener.dropped(self, waiting)

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """The watchdog's look: a ping after `interval` s without a byte from the station,
        and closed (1011) if nothing answers it within `timeout` s."""
        ws = self.ws
        if self.session is None or ws is None or ws.state is not OPEN:
            return
        if self.heard:
            self.heard, self.quiet_since, self.ping_sent = False, now, None
        elif self.ping_sent is None:
            if now - self.quiet_since >= interval:
                self.ping_sent = now
                ws.send_ping(b"")
                self._send_pending()
        elif now - self.ping_sent >= timeout:
            ws.fail(1011, "keepalive ping timeout")
            self._send_pending()
            self.transport.abort()


def _registered_protocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Any:
    # process_request checked that the registered protocol is among those offered
    return protocol.connection.ocpp_protocol  # type: ignore[attr-defined]


class Listener:
    def __init__(self, fleet: Fleet, settings: ListenerSettings):
        self.fleet = fleet
        self.stations = Registry(fleet)
        fleet.live = self.stations
        self.s = settings
        self.servers: list[asyncio.Server] = []
        self.serving = True  # False once stop() began: no more upgrades
        self.watchdog: asyncio.Future | None = None
        self.per_address: Counter[str] = Counter()
        self.handshakes: Counter[str] = Counter()  # upgrades in flight per address
        self.buckets: dict[str, TokenBucket] = {}
        self.connections_logged = Throttle()  # per endpoint
        self.drops_logged = Throttle()  # per address
        self.refusals = Refusals(fleet)
        self.guesses = Guesses()
        self.turns = Turns()
        self.open: set[StationConnection] = set()  # every accepted TCP connection
        self.tasks: set[asyncio.Future] = set()  # upgrades, attaches and detaches under way
        self.connection_class = type("StationConnection", (StationConnection,), {"listener": self})

    async def refuse(
        self,
        conn: StationConnection,
        status: int,
        endpoint: str | None,
        reason: str,
        known: bool = False,
    ) -> Response:
        offered = offered_protocols(conn.request) if conn.request is not None else []
        await self.refusals.refused(
            endpoint, status, conn.remote_address[0], reason, known, offered
        )
        response = conn.respond(status, printable(reason, MAX_REASON) + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="edrvctl", charset="UTF-8"'
        return response

    async def process_request(self, conn: StationConnection, request: Request):
        endpoint = endpoint_of(request.path)
        if endpoint is None:
            return await self.refuse(conn, 404, None, "no chargestation identity in the URL path")
        try:
            doc = await self.fleet.is_known(endpoint)
        except StoreUnavailable as e:
            return await self.refuse(conn, 503, endpoint, f"try again later: {e.message}")
        if doc is None:
            return await self.refuse(
                conn,
                404,
                endpoint,
                f"unknown chargestation {endpoint!r}; create it with `edrvctl cs create`",
            )
        reason = await self._refusal(conn, request, endpoint, doc)
        if reason is not None:
            return await self.refuse(conn, reason[0], endpoint, reason[1], known=True)
        if isinstance(conn, StationConnection):  # (always: create_connection makes them)
            conn.ocpp_protocol = doc["protocol"]  # for select_subprotocol
            conn.station_id = doc["_id"]  # for the frame log
        return None

    async def _refusal(
        self, conn: StationConnection, request: Request, endpoint: str, doc: dict
    ) -> tuple[int, str] | None:
        """Why a known station may not connect, if it may not: (HTTP status, reason)."""
        security = doc["security"]
        tls = conn.transport.get_extra_info("ssl_object") is not None
        if model.needs_tls(security) and not tls:
            return 403, f"security profile {security['type']} requires TLS: connect with wss://"
        if security["type"] == "tls_client_cert":
            identity = certificate_identity(conn)
            if identity is None:
                return 403, "a client certificate is required"
            if identity != endpoint:
                return 403, f"the client certificate is for {identity!r}, not this station"
        if model.needs_password(security):
            creds = basic_credentials(request, endpoint)
            if creds is None:
                return 401, "HTTP Basic authentication required (username = the endpoint)"
            if creds[0] != endpoint:
                return 401, "the username must be the endpoint"
            address = conn.remote_address[0]
            if self.guesses.paused(address):
                return 429, "too many wrong passwords from this address; retry later"
            try:
                ok = await self.fleet.check_password(endpoint, creds[1])
            except Busy as e:
                return 503, e.message
            self.guesses.record(address, ok)
            if not ok:
                return 401, "wrong password"
        offered = offered_protocols(request)
        if not offered:
            return (
                400,
                f"no OCPP subprotocol offered; this station is registered for {doc['protocol']}",
            )
        if doc["protocol"] not in offered:
            return (
                400,
                f"this station is registered for {doc['protocol']} but offered "
                f"{', '.join(offered)}",
            )
        return None

    def _connection_log_level(self, endpoint: str) -> int:
        """INFO for a station's connection once a minute at most; a station reconnecting in
        a loop must not grow the log (its repeats go to DEBUG, counted in the next INFO)."""
        level, repeats = self.connections_logged.level(endpoint)
        if repeats:
            log.info("%s: reconnected %d more time(s) since the last line", endpoint, repeats)
        return level

    def dropped(self, conn: StationConnection, waiting: int) -> None:
        """A peer that does not read is dropped: logged once a minute per address."""
        level, repeats = self.drops_logged.level(conn.address, logging.WARNING)
        log.log(
            level,
            "%s: dropped: it does not read what it is sent (%d bytes waiting)%s",
            printable(conn.address),
            waiting,
            f"; {repeats} more drop(s) of it since the last line" if repeats else "",
        )
        conn.transport.abort()

    def _bucket(self, endpoint: str) -> TokenBucket:
        """The station's message budget, kept across its reconnects."""
        bucket = self.buckets.get(endpoint)
        if bucket is None:
            if len(self.buckets) >= 1_000_000:
                self.buckets.clear()
            bucket = self.buckets[endpoint] = TokenBucket(self.s.max_rate, self.s.burst)
        return bucket

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def opened(self, conn: StationConnection) -> None:
        """An upgraded connection: its session is the station's once attached (the frames
        that come meanwhile wait, unread)."""
        # process_request refused connections without an endpoint or a subprotocol
        endpoint = endpoint_of(conn.request.path if conn.request else "/") or ""
        protocol = conn.ocpp_protocol or ""
        station_id = conn.station_id
        session = CHARGE_POINTS[protocol](
            endpoint,
            protocol,
            conn,
            self.fleet,
            self._bucket(endpoint),
            trace=self.fleet.metrics.tracer(
                self.fleet.frames.tracer(station_id) if station_id else None
            ),
        )
        try:
            await self.stations.attach(session)
        except NotFound:  # deleted between the upgrade and now
            await session.close("unknown chargestation")
            return
        except Exception as e:  # the store cannot record it: come back later
            log.error("%s: connection not recorded: %s", endpoint, e)
            await session.close("the central system cannot record this connection; retry")
            return
        conn.log_level = level = self._connection_log_level(endpoint)
        log.log(level, "%s: connected (%s) from %s", endpoint, protocol, conn.address)
        conn.session = session
        conn.request = None  # (its headers: memory held for nothing)
        if conn.lost:  # it went while being attached
            self.ended(conn)
            return
        conn.transport.resume_reading()

    def ended(self, conn: StationConnection) -> None:
        """A session's connection is gone: whatever waits on it fails now, and the station is
        offline unless a newer connection replaced it."""
        assert conn.session is not None
        conn.session.closed()
        self.spawn(self._detach(conn.session, conn.log_level, conn.close_code))

    async def _detach(self, session: StationSession, level: int, close_code: int | None) -> None:
        # what the station said before it went is recorded before it is recorded offline (its
        # events stay in the order it sent them; on PostgreSQL a write begun later sorts later)
        await session.rpc.settled(SETTLE_TIMEOUT)
        await self.stations.detach(session)
        log.log(level, "%s: disconnected (%s)", session.endpoint, close_code)

    async def _serve(self, port: int, tls: ssl.SSLContext | None) -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.connection_class, self.s.host, port, ssl=tls)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        shown = self.s.host if self.s.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        shown = f"[{shown}]" if ":" in shown else shown  # an IPv6 address in a URL
        return f"{'wss' if tls else 'ws'}://{shown}:{port}"

    async def start(self) -> tuple[str, str | None]:
        """Listen; returns the ws:// URL and, with TLS, the wss:// one."""
        plain = await self._serve(self.s.port, None)
        secure = None
        if self.s.tls is not None:
            secure = await self._serve(self.s.tls_port or 0, self.s.tls)
        self.watchdog = asyncio.ensure_future(self._watch())
        return plain, secure

    async def _watch(self) -> None:
        """Keepalive and peers that do not read, for every connection in one loop (no task
        per connection). A station silent for the ping interval is pinged, and closed (1011)
        if nothing comes back within the ping timeout. What we write (answers, pongs to its
        pings) piles up in our buffer if it does not read: past MAX_UNREAD bytes, or not
        draining for the ping timeout, the connection is aborted."""
        deadline = self.s.ping_timeout or 60.0
        interval = self.s.ping_interval
        every = min(5.0, deadline / 4, interval / 4 if interval else 5.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            try:
                now = loop.time()
                self._drop_stuck(now, deadline)
                if interval:
                    for conn in list(self.open):
                        conn.keepalive(now, interval, deadline)
            except Exception:  # never let the watchdog die
                log.exception("watchdog")

    def _drop_stuck(self, now: float, deadline: float) -> None:
        for conn in list(self.open):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            size = transport.get_write_buffer_size()
            if size == 0:
                conn.stuck_since = None
                continue
            if conn.stuck_since is None or size < conn.unread:
                conn.stuck_since = now  # (still) draining
            conn.unread = size
            if size > MAX_UNREAD or now - conn.stuck_since > deadline:
                self.dropped(conn, size)

    async def stop(self) -> None:
        """Close every station's socket (1001, going away), within CLOSE_DEADLINE whatever
        the stations do: those that do not finish the closing handshake are aborted."""
        self.serving = False
        if self.watchdog is not None:
            self.watchdog.cancel()
        for server in self.servers:
            server.close()
        closing = [
            asyncio.ensure_future(conn.close(1001, "going away")) for conn in list(self.open)
        ]
        if closing:
            _, pending = await asyncio.wait(closing, timeout=CLOSE_DEADLINE)
            if pending:
                log.warning(
                    "%d connection(s) did not close in %g s: aborted", len(pending), CLOSE_DEADLINE
                )
                for conn in list(self.open):
                    conn.transport.abort()
                await asyncio.wait(pending)
        for server in self.servers:
            await server.wait_closed()
        while self.tasks:  # the detaches of those that closed
            await asyncio.wait(list(self.tasks))
