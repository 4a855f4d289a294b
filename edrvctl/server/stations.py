"""The live-stations port, for one process: endpoint -> the session holding its websocket.

Attach/detach, newest-connection-wins, online bookkeeping and the "is this session still the
current one" guard live here and nowhere else. A command (fleet.live) is carried out by the
station's session in its version's OCPP, within one deadline that includes the wait behind
earlier commands (ocppj.Rpc sends one CALL at a time, FIFO, with a cap).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from websockets.exceptions import ConnectionClosed

from edrvctl.errors import (
    Busy,
    EdrvError,
    OverBudget,
    StationRejected,
    StationTimeout,
    Unavailable,
    UsageError,
)
from edrvctl.fleet.live import ANSWERED, ChangeAvailability, Command, Disconnect, FetchConfig
from edrvctl.ocppj import (
    VERSIONS,
    InvalidCall,
    QueueFull,
    RemoteError,
    Rpc,
    RpcClosed,
    RpcError,
    TokenBucket,
    Tracer,
)
from edrvctl.ocppj.rpc import Handler

log = logging.getLogger("edrvctl.ocpp")

MAX_QUEUED = 16  # admin commands waiting for one station; more are refused, not queued
CLOSE_TIMEOUT = 10.0  # seconds a close may take before the socket is dropped


def rpc_error_for(exc: Exception) -> RpcError:
    """What a station is told when its message could not be handled."""
    if isinstance(exc, OverBudget):  # valid, but more than a station may keep
        return RpcError("PropertyConstraintViolation", exc.message)
    if isinstance(exc, UsageError):  # valid per the schema, but not storable (e.g. nesting)
        return RpcError("FormatViolation", exc.message)
    if isinstance(exc, EdrvError):  # e.g. the store is full: not acknowledged, and said why
        log.error("a station message was not recorded: %s", exc.message)
        return RpcError("InternalError", exc.message)
    log.error("a station message handler failed", exc_info=exc)
    return RpcError("InternalError", "the central system failed to handle this request")


def translated(
    table: Mapping[type, Callable[[Any], tuple[str, dict]]], version: str, command: Command
) -> tuple[str, dict]:
    """`command` in one version's OCPP, by its translation table: (action, payload);
    UsageError if the version has no translation for it (or, from the table, cannot take it)."""
    fn = table.get(type(command))
    if fn is None:
        raise UsageError(f"{type(command).__name__} is not an OCPP {version} command here")
    return fn(command)


class StationSession:
    """One station's connection: its websocket, its Rpc, and its version's handlers
    (`HANDLERS`, action -> function(session, payload), built once per class)."""

    HANDLERS: ClassVar[Mapping[str, Handler]] = {}
    __slots__ = ("endpoint", "fleet", "protocol", "rpc", "ws")

    def __init__(
        self,
        endpoint: str,
        protocol: str,
        ws: Any,
        fleet: Any,
        bucket: TokenBucket | None = None,
        trace: Tracer | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.ws = ws
        self.fleet = fleet
        self.rpc = Rpc(
            ws,
            VERSIONS[protocol],
            self.HANDLERS,
            self,
            name=endpoint,
            max_queued=MAX_QUEUED,
            bucket=bucket,
            on_error=rpc_error_for,
            trace=trace,  # the frame log's observer (fleet/frames.py), if it is on
        )

    def describe(self) -> dict:
        """What the connection says of itself (for the chargestation.online event)."""
        address = getattr(self.ws, "remote_address", None)
        return {"protocol": self.protocol, "address": address[0] if address else None}

    async def run(self) -> None:
        """Answer the station until its socket closes."""
        try:
            await self.rpc.run()
        except ConnectionClosed:
            pass
        finally:
            self.closed()

    def closed(self) -> None:
        """The socket is gone: whatever waits on this station fails now."""
        self.rpc.close()

    async def close(self, reason: str = "", code: int = 1000) -> None:
        """Close the socket with a deadline, whatever the station does."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason[:120]), CLOSE_TIMEOUT)
        except TimeoutError:
            self.ws.transport.abort()

    async def call(self, action: str, payload: dict, timeout: float) -> dict:
        return await self.rpc.call(action, payload, timeout)

    # the version's translation of each command (server/ocpp16.py, server/ocpp201.py)
    async def fetch_config(
        self, keys: tuple[str, ...], timeout: float
    ) -> tuple[list[dict], list[str]]:
        raise NotImplementedError

    async def change_availability(self, command: ChangeAvailability, timeout: float) -> str:
        raise NotImplementedError

    def translate(self, command: Command) -> tuple[str, dict]:
        """The OCPP (action, payload) of a command in this version; UsageError if this
        version cannot take it. No I/O."""
        raise NotImplementedError

    def answer_status(self, command: Command, action: str, answer: dict) -> str:
        """The status word of an answer (see fleet.live.ANSWERED)."""
        status = answer.get("status")
        return status if isinstance(status, str) else "Accepted"

    async def perform(self, command: Command, timeout: float) -> tuple[str, dict]:
        """Send a command of fleet.live.ANSWERED; (status, the station's answer)."""
        action, payload = self.translate(command)
        answer = await self.call(action, payload, timeout)
        return self.answer_status(command, action, answer), answer


async def _close(s: StationSession, c: Any, timeout: float) -> None:
    return await s.close(c.reason)


async def _fetch_config(s: StationSession, c: Any, timeout: float) -> Any:
    return await s.fetch_config(c.keys, timeout)


async def _change_availability(s: StationSession, c: Any, timeout: float) -> Any:
    return await s.change_availability(c, timeout)


async def _perform(s: StationSession, c: Any, timeout: float) -> Any:
    return await s.perform(c, timeout)


# command type -> how a session carries it out
COMMANDS: dict[type, Any] = {
    Disconnect: _close,
    FetchConfig: _fetch_config,
    ChangeAvailability: _change_availability,
    **{kind: _perform for kind in ANSWERED},
}


class Registry:
    """fleet.live.LiveStations for the stations connected to this process."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self._sessions: dict[str, StationSession] = {}
        self._closing: set[asyncio.Future] = set()  # replaced connections being closed
        # several nodes (server/cluster.py): stations are claimed and released through it
        self.cluster: Any = None
        self._evicted: set[StationSession] = set()  # another node holds their station now
        # offline writes under way: a newer connection's online write waits for its
        # station's, or the two could commit in either order (they do, on PostgreSQL)
        self._leaving: dict[str, asyncio.Future] = {}

    def is_online(self, endpoint: str) -> bool:
        return endpoint in self._sessions

    def get(self, endpoint: str) -> StationSession | None:
        return self._sessions.get(endpoint)

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[StationSession]:
        return list(self._sessions.values())

    async def attach(self, session: StationSession) -> bool:
        """A new connection becomes the station's (newest wins: an older one, perhaps
        half-open, is closed). False if the station was deleted meanwhile."""
        old = self._sessions.get(session.endpoint)
        self._sessions[session.endpoint] = session
        if old is not None:
            log.info("%s: reconnected, closing the previous connection", session.endpoint)
            old.closed()
            self._closing.add(
                task := asyncio.ensure_future(old.close("replaced by a newer connection"))
            )
            task.add_done_callback(self._closing.discard)
        try:
            if (leaving := self._leaving.get(session.endpoint)) is not None:
                await asyncio.shield(leaving)
            info = session.describe()
            if self.cluster is not None:  # owned here, under a new epoch, before any write
                info.update(await self.cluster.claim(session.endpoint))
            await self.fleet.connected(session.endpoint, info)
        except Exception:  # deleted between the upgrade and now, or the store failed
            if self._sessions.get(session.endpoint) is session:
                del self._sessions[session.endpoint]
            raise
        return True

    async def detach(self, session: StationSession) -> None:
        """A connection ended; the station is offline unless a newer one replaced it."""
        if self._sessions.get(session.endpoint) is not session:
            return
        del self._sessions[session.endpoint]
        if session in self._evicted:  # its station is another node's: nothing to write
            self._evicted.discard(session)
            return
        self._leaving[session.endpoint] = leaving = asyncio.get_running_loop().create_future()
        try:
            await self.fleet.disconnected(session.endpoint)
        finally:
            try:
                if self.cluster is not None:  # before a newer connection claims it here
                    await self.cluster.release(session.endpoint)
            finally:
                if self._leaving.get(session.endpoint) is leaving:
                    del self._leaving[session.endpoint]
                leaving.set_result(None)

    async def evict(self, endpoint: str, reason: str) -> None:
        """Another node holds the station now: close our socket, write nothing for it."""
        session = self._sessions.get(endpoint)
        if session is not None:
            self._evicted.add(session)
            session.closed()
            await session.close(reason)

    async def shed(self, endpoint: str, reason: str) -> None:
        """Close the socket with 1012 (service restart): the station reconnects, through
        the load balancer, to another node."""
        session = self._sessions.get(endpoint)
        if session is not None:
            await session.close(reason, 1012)

    def check(self, endpoint: str, command: Command) -> None:
        session = self._sessions.get(endpoint)
        if session is None:
            raise Unavailable(f"chargestation {endpoint} is offline")
        if isinstance(command, ANSWERED):
            session.translate(command)

    async def send(self, endpoint: str, command: Command, timeout: float) -> Any:
        session = self._sessions.get(endpoint)
        if session is None:
            raise Unavailable(f"chargestation {endpoint} is offline")
        run = COMMANDS.get(type(command))
        if run is None:
            raise UsageError(f"unknown command {command!r}")
        try:
            async with asyncio.timeout(timeout):
                return await run(session, command, timeout)
        except TimeoutError:
            raise StationTimeout(
                f"chargestation {endpoint} did not answer within {timeout:g} s",
                hint="try again with a longer --timeout, or check the station",
            ) from None
        except QueueFull:
            raise Busy(
                f"chargestation {endpoint} has {session.rpc.queued} commands "
                "waiting; try again later"
            ) from None
        except RemoteError as e:
            raise StationRejected(
                f"chargestation {endpoint} answered with a CALLERROR or an "
                f"invalid reply: {e.code}: {e.description}"
            ) from None
        except (RpcClosed, ConnectionClosed):
            raise Unavailable(
                f"chargestation {endpoint} went offline while the command was pending"
            ) from None
        except InvalidCall as e:
            raise UsageError(f"not sent: {e}") from None
