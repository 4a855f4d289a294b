"""The OCPP websocket listener: who may connect, which version they speak, and the session's
life from upgrade to close."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from edrvctl.fleet import Fleet
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.ocpp201 import Station201
from edrvctl.server.stations import Session

log = logging.getLogger("edrvctl.ocpp")

CHARGE_POINTS = {"ocpp1.6": Station16, "ocpp2.0.1": Station201}


def endpoint_of(path: str) -> str | None:
    """The station identity is the last path segment: '/ocpp/CP%2001?x=1' -> 'CP 01'."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    return unquote(parts[-1]) if parts else None


def offered_protocols(request: Request) -> list[str]:
    return [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in h.split(",") if p.strip()]


class Listener:
    def __init__(self, fleet: Fleet, host: str, port: int, *, ping_interval: float | None = 30,
                 ping_timeout: float | None = 60, response_timeout: float = 30,
                 max_size: int = 2**20):
        self.fleet = fleet
        self.host, self.port = host, port
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.response_timeout = response_timeout
        self.max_size = max_size
        self.server = None

    def refuse(self, conn: ServerConnection, status: int, endpoint: str | None, reason: str):
        log.warning("refused %s from %s: %s %s", endpoint or "?", conn.remote_address[0],
                    status, reason)
        doc = self.fleet.is_known(endpoint) if endpoint else None
        if doc is not None:  # kept on the station, for the admin to see later
            self.fleet.record_event(endpoint, "ConnectionRefused",
                                    {"status": status, "reason": reason}, from_station=False)
        return conn.respond(status, reason + "\n")

    def process_request(self, conn: ServerConnection, request: Request):
        endpoint = endpoint_of(request.path)
        if endpoint is None:
            return self.refuse(conn, 404, None, "no chargestation identity in the URL path")
        doc = self.fleet.is_known(endpoint)
        if doc is None:
            return self.refuse(conn, 404, endpoint, f"unknown chargestation {endpoint!r}; "
                               "create it with `edrvctl cs create`")
        offered = offered_protocols(request)
        if not offered:
            return self.refuse(conn, 400, endpoint, f"no OCPP subprotocol offered; "
                               f"this station is registered for {doc['protocol']}")
        if doc["protocol"] not in offered:
            return self.refuse(conn, 400, endpoint, f"this station is registered for "
                               f"{doc['protocol']} but offered {', '.join(offered)}")
        return None

    def select_subprotocol(self, conn: ServerConnection, offered):
        # process_request already checked that the registered protocol is among those offered
        return self.fleet.is_known(endpoint_of(conn.request.path))["protocol"]

    async def handle(self, ws: ServerConnection) -> None:
        endpoint = endpoint_of(ws.request.path)
        cp = CHARGE_POINTS[ws.subprotocol](
            endpoint, ws, self.fleet, response_timeout=self.response_timeout,
            logger=logging.getLogger("edrvctl.ocpp.frames"))
        session = Session(endpoint, ws.subprotocol, cp, ws)
        old = self.fleet.stations.add(session)
        if old is not None:  # newest connection wins; the old one may be half-open
            log.info("%s: reconnected, closing the previous connection", endpoint)
            asyncio.ensure_future(old.close("replaced by a newer connection"))
        try:
            self.fleet.connected(endpoint)
        except Exception:  # deleted between the upgrade and now
            self.fleet.stations.remove(session)
            await ws.close(1008, "unknown chargestation")
            return
        log.info("%s: connected (%s) from %s", endpoint, ws.subprotocol, ws.remote_address[0])
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            if self.fleet.stations.remove(session):
                self.fleet.disconnected(endpoint)
                log.info("%s: disconnected (%s)", endpoint, ws.close_code)

    async def start(self) -> str:
        self.server = await serve(
            self.handle, self.host, self.port,
            process_request=self.process_request,
            select_subprotocol=self.select_subprotocol,
            subprotocols=list(CHARGE_POINTS),
            ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
            # A station that missed its pong will not finish a closing handshake either; wait
            # for it no longer than for the pong, so it shows offline promptly.
            close_timeout=min(10.0, self.ping_timeout or 10.0),
            max_size=self.max_size, compression=None, server_header=None,
        )
        host, port = self.server.sockets[0].getsockname()[:2]
        shown = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"ws://{shown}:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # closes every station's socket with 1001 (going away)
            await self.server.wait_closed()
