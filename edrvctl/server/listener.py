"""The OCPP websocket listener: who may connect (security profiles, limits), which version they
speak, and the session's life from upgrade to close.

Refusals happen before the upgrade, with an HTTP status and a one-line reason in the body:
404 unknown endpoint, 400 no or wrong subprotocol, 401 missing or wrong password (with
WWW-Authenticate), 403 TLS or a client certificate required / certificate for another identity,
503 too many connections from one address. Each is logged (never with the secret), and kept as
a `ConnectionRefused` event on a known station.
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
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from edrvctl import model
from edrvctl.fleet import Fleet
from edrvctl.ocppj import TokenBucket
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.ocpp201 import Station201
from edrvctl.server.stations import Registry

log = logging.getLogger("edrvctl.ocpp")

CHARGE_POINTS = {"ocpp1.6": Station16, "ocpp2.0.1": Station201}
REFUSAL_EVERY = 60.0  # seconds between two logged/stored refusals that say the same


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
    return [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in h.split(",") if p.strip()]


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
        return endpoint, decoded[len(endpoint) + 1:]
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


class Listener:
    def __init__(self, fleet: Fleet, settings: ListenerSettings):
        self.fleet = fleet
        self.stations = Registry(fleet)
        fleet.live = self.stations
        self.s = settings
        self.servers: list[Server] = []
        self.per_address: Counter[str] = Counter()
        self.buckets: dict[str, TokenBucket] = {}
        # (endpoint, status, reason) -> when that refusal was last logged and stored
        self.refusals_kept: dict[tuple, float] = {}

    async def refuse(self, conn: ServerConnection, status: int, endpoint: str | None,
                     reason: str) -> Response:
        # The same refusal is logged, and kept on a known station for the admin, once a minute
        # at most: a station (or anyone who knows its name) retrying in a loop must grow
        # neither the log nor the store.
        key = (endpoint, status, reason)
        now = time.monotonic()
        if now - self.refusals_kept.get(key, -REFUSAL_EVERY) >= REFUSAL_EVERY:
            if len(self.refusals_kept) > 100_000:
                self.refusals_kept.clear()
            self.refusals_kept[key] = now
            log.warning("refused %s from %s: %s %s", endpoint or "?", conn.remote_address[0],
                        status, reason)
            if endpoint and await self.fleet.is_known(endpoint) is not None:
                await self.fleet.record_event(endpoint, "ConnectionRefused",
                                        {"status": status, "reason": reason},
                                        from_station=False)
        else:
            log.debug("refused %s again: %s %s", endpoint, status, reason)
        response = conn.respond(status, reason + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="edrvctl", charset="UTF-8"'
        return response

    async def process_request(self, conn: ServerConnection, request: Request):
        address = conn.remote_address[0]
        endpoint = endpoint_of(request.path)
        if self.s.max_per_address and self.per_address[address] >= self.s.max_per_address:
            return await self.refuse(conn, 503, endpoint, f"too many connections from {address}")
        if endpoint is None:
            return await self.refuse(conn, 404, None, "no chargestation identity in the URL path")
        doc = await self.fleet.is_known(endpoint)
        if doc is None:
            return await self.refuse(conn, 404, endpoint, f"unknown chargestation {endpoint!r}; "
                               "create it with `edrvctl cs create`")
        security = doc["security"]
        tls = conn.transport.get_extra_info("ssl_object") is not None
        if model.needs_tls(security) and not tls:
            return await self.refuse(conn, 403, endpoint, f"security profile {security['type']} "
                               "requires TLS: connect with wss://")
        if security["type"] == "tls_client_cert":
            identity = certificate_identity(conn)
            if identity is None:
                return await self.refuse(conn, 403, endpoint, "a client certificate is required")
            if identity != endpoint:
                return await self.refuse(conn, 403, endpoint,
                                   f"the client certificate is for {identity!r}, not this station")
        if model.needs_password(security):
            creds = basic_credentials(request, endpoint)
            if creds is None:
                return await self.refuse(conn, 401, endpoint, "HTTP Basic authentication required "
                                   "(username = the station's endpoint)")
            if creds[0] != endpoint:
                return await self.refuse(conn, 401, endpoint, "the username must be the endpoint")
            if not await self.fleet.check_password(endpoint, creds[1]):
                return await self.refuse(conn, 401, endpoint, "wrong password")
        offered = offered_protocols(request)
        if not offered:
            return await self.refuse(conn, 400, endpoint, f"no OCPP subprotocol offered; "
                               f"this station is registered for {doc['protocol']}")
        if doc["protocol"] not in offered:
            return await self.refuse(conn, 400, endpoint, f"this station is registered for "
                               f"{doc['protocol']} but offered {', '.join(offered)}")
        conn.ocpp_protocol = doc["protocol"]  # type: ignore[attr-defined]  (for select_subprotocol)
        return None

    def select_subprotocol(self, conn: ServerConnection, offered):
        # process_request checked that the registered protocol is among those offered
        return getattr(conn, "ocpp_protocol", None)

    async def handle(self, ws: ServerConnection) -> None:
        address = ws.remote_address[0]
        self.per_address[address] += 1
        try:
            await self._session(ws)
        finally:
            self.per_address[address] -= 1
            if self.per_address[address] <= 0:
                del self.per_address[address]

    def _bucket(self, endpoint: str) -> TokenBucket:
        """The station's message budget, kept across its reconnects."""
        bucket = self.buckets.get(endpoint)
        if bucket is None:
            if len(self.buckets) >= 1_000_000:
                self.buckets.clear()
            bucket = self.buckets[endpoint] = TokenBucket(self.s.max_rate, self.s.burst)
        return bucket

    async def _session(self, ws: ServerConnection) -> None:
        endpoint = endpoint_of(ws.request.path) or ""  # process_request refused none
        session = CHARGE_POINTS[ws.subprotocol](endpoint, ws.subprotocol, ws, self.fleet,
                                                self._bucket(endpoint))
        try:
            await self.stations.attach(session)
        except Exception as e:  # deleted between the upgrade and now
            log.info("%s: not attached: %s", endpoint, e)
            await session.close("unknown chargestation")
            return
        log.info("%s: connected (%s) from %s", endpoint, ws.subprotocol, ws.remote_address[0])
        try:
            await session.run()
        finally:
            await self.stations.detach(session)
            log.info("%s: disconnected (%s)", endpoint, ws.close_code)

    async def _serve(self, port: int, tls: ssl.SSLContext | None) -> str:
        server = await serve(
            self.handle, self.s.host, port, ssl=tls,
            process_request=self.process_request,
            select_subprotocol=self.select_subprotocol,
            subprotocols=list(CHARGE_POINTS),
            open_timeout=self.s.handshake_timeout,
            ping_interval=self.s.ping_interval, ping_timeout=self.s.ping_timeout,
            # A station that missed its pong will not finish a closing handshake either; wait
            # for it no longer than for the pong, so it shows offline promptly.
            close_timeout=min(10.0, self.s.ping_timeout or 10.0),
            max_size=self.s.max_frame, max_queue=4, compression=None, server_header=None,
        )
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        shown = self.s.host if self.s.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"{'wss' if tls else 'ws'}://{shown}:{port}"

    async def start(self) -> tuple[str, str | None]:
        """Listen; returns the ws:// URL and, with TLS, the wss:// one."""
        plain = await self._serve(self.s.port, None)
        secure = None
        if self.s.tls is not None:
            secure = await self._serve(self.s.tls_port or 0, self.s.tls)
        return plain, secure

    async def stop(self) -> None:
        for server in self.servers:
            server.close()  # closes every station's socket with 1001 (going away)
        for server in self.servers:
            await server.wait_closed()
