"""The OCPP websocket listener: who may connect (security profiles, limits), which version they
speak, and the session's life from upgrade to close.

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
from collections import Counter
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edrvctl import model
from edrvctl.errors import Busy, NotFound, StoreUnavailable
from edrvctl.fleet import MAX_REASON, Fleet
from edrvctl.ocppj import TokenBucket
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
UNKNOWN_KEPT_PER_MINUTE = 120  # unknown endpoints' refusals stored a minute, all together


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


def certificate_identity(conn: ServerConnection) -> str | None:
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


class StationConnection(ServerConnection):
    """A websocket connection counted per client address from its first byte (half-open
    upgrades count too) and, until its upgrade is done, as a handshake in flight; refused with
    a 503 past either limit before anything is read. Dropped as soon as more than MAX_UNREAD
    bytes wait for it to read them."""

    listener: Listener  # set on the subclass made per listener
    refused = False
    handshaking = False
    ocpp_protocol: str | None = None  # the station's registered one, once process_request says
    station_id: str | None = None  # and its _id
    stuck_since: float | None = None  # since when its write buffer has not drained
    unread = 0  # bytes in its write buffer at the last look

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)
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
        super().connection_made(transport)

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

    def upgraded(self) -> None:
        """The handshake is over (accepted or refused): it no longer counts as one."""
        if self.handshaking:
            self.handshaking = False
            handshakes = self.listener.handshakes
            handshakes[self.address] -= 1
            if handshakes[self.address] <= 0:
                del handshakes[self.address]

    def send_data(self) -> None:
        # websockets writes pongs (and our frames) without back-pressure: a peer that sends
        # but never reads would make this buffer grow for as long as it likes
        super().send_data()
        waiting = self.transport.get_write_buffer_size()
        if waiting > MAX_UNREAD:
            self.listener.dropped(self, waiting)

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self.listener
        listener.per_address[self.address] -= 1
        if listener.per_address[self.address] <= 0:
            del listener.per_address[self.address]
        if self.refused:
            return
        self.upgraded()
        listener.open.discard(self)
        super().connection_lost(exc)


class Listener:
    def __init__(self, fleet: Fleet, settings: ListenerSettings):
        self.fleet = fleet
        self.stations = Registry(fleet)
        fleet.live = self.stations
        self.s = settings
        self.servers: list[Server] = []
        self.watchdog: asyncio.Future | None = None
        self.per_address: Counter[str] = Counter()
        self.handshakes: Counter[str] = Counter()  # upgrades in flight per address
        self.buckets: dict[str, TokenBucket] = {}
        self.connections_logged = Throttle()  # per endpoint
        self.drops_logged = Throttle()  # per address
        self.refusals = Refusals(fleet)
        self.guesses = Guesses()
        self.open: set[StationConnection] = set()  # every accepted TCP connection
        self.connection_class = type("StationConnection", (StationConnection,), {"listener": self})

    async def refuse(
        self,
        conn: ServerConnection,
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

    async def process_request(self, conn: ServerConnection, request: Request):
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
        self, conn: ServerConnection, request: Request, endpoint: str, doc: dict
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

    def select_subprotocol(self, conn: ServerConnection, offered):
        # process_request checked that the registered protocol is among those offered
        return getattr(conn, "ocpp_protocol", None)

    async def handle(self, ws: ServerConnection) -> None:
        if isinstance(ws, StationConnection):
            ws.upgraded()
        await self._session(ws)

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

    async def _session(self, ws: ServerConnection) -> None:
        # process_request refused connections without an endpoint or a subprotocol
        endpoint = endpoint_of(ws.request.path if ws.request else "/") or ""
        protocol = ws.subprotocol or ""
        station_id = getattr(ws, "station_id", None)
        session = CHARGE_POINTS[protocol](
            endpoint,
            protocol,
            ws,
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
        level = self._connection_log_level(endpoint)
        log.log(level, "%s: connected (%s) from %s", endpoint, protocol, ws.remote_address[0])
        try:
            await session.run()
        finally:
            await self.stations.detach(session)
            log.log(level, "%s: disconnected (%s)", endpoint, ws.close_code)

    async def _serve(self, port: int, tls: ssl.SSLContext | None) -> str:
        server = await serve(
            self.handle,
            self.s.host,
            port,
            ssl=tls,
            process_request=self.process_request,
            create_connection=self.connection_class,
            select_subprotocol=self.select_subprotocol,
            subprotocols=[Subprotocol(p) for p in CHARGE_POINTS],
            open_timeout=self.s.handshake_timeout,
            ping_interval=self.s.ping_interval,
            ping_timeout=self.s.ping_timeout,
            # A station that missed its pong will not finish a closing handshake either; wait
            # for it no longer than for the pong, so it shows offline promptly.
            close_timeout=min(10.0, self.s.ping_timeout or 10.0),
            max_size=self.s.max_frame,
            max_queue=4,
            compression=None,
            server_header=None,
        )
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
        """Drop peers that do not read: what we write them (answers, pongs to their pings)
        piles up in our buffer, and websockets' own keepalive waits for it to drain before
        its pong deadline even starts. Past MAX_UNREAD bytes, or not draining for the ping
        timeout, the connection is aborted."""
        deadline = self.s.ping_timeout or 60.0
        every = min(5.0, deadline / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            try:
                self._drop_stuck(loop.time(), deadline)
            except Exception:  # never let the watchdog die
                log.exception("watchdog")

    def _drop_stuck(self, now: float, deadline: float) -> None:
        for conn in list(self.open):
            transport = getattr(conn, "transport", None)
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
        if self.watchdog is not None:
            self.watchdog.cancel()
        for server in self.servers:
            server.close()
        waiting = asyncio.gather(*(server.wait_closed() for server in self.servers))
        try:
            await asyncio.wait_for(asyncio.shield(waiting), CLOSE_DEADLINE)
        except TimeoutError:
            log.warning(
                "%d connection(s) did not close in %g s: aborted", len(self.open), CLOSE_DEADLINE
            )
            for conn in list(self.open):
                conn.transport.abort()
            await waiting
