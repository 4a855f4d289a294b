"""The registry of live station connections: endpoint -> Session.

A Session owns one websocket and its OCPP ChargePoint. `command()` is the only way to send a
call to a station: commands go out one at a time and in order (a FIFO lock), each with one
overall deadline that includes the time spent queued, and a disconnect fails the pending command
at once instead of after the library's response timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from edrvctl.errors import Busy, StationRejected, StationTimeout, Unavailable

MAX_QUEUED = 16  # admin commands waiting for one station; more are refused, not queued


class Session:
    def __init__(self, endpoint: str, protocol: str, cp: Any, ws: Any):
        self.endpoint = endpoint
        self.protocol = protocol
        self.cp = cp
        self.ws = ws
        self._order = asyncio.Lock()  # asyncio.Lock wakes waiters first come, first served
        self.queued = 0

    async def command(self, fn: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
        """Run fn(cp) (which sends OCPP calls) in this station's queue, within `timeout` s."""
        from ocpp.exceptions import OCPPError
        from websockets.exceptions import ConnectionClosed

        if self.queued >= MAX_QUEUED:
            raise Busy(f"chargestation {self.endpoint} has {self.queued} commands waiting; "
                       "try again later")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        closed = asyncio.ensure_future(self.ws.wait_closed())
        self.queued += 1
        waiting, work = True, None
        try:
            async with asyncio.timeout_at(deadline):
                async with self._order:
                    self.queued -= 1
                    waiting = False
                    # The library's own timeout is what is left of ours, so that a late answer
                    # is dropped by the library itself (no orphan reply confusing the next call).
                    self.cp._response_timeout = max(0.001, deadline - loop.time())
                    work = asyncio.ensure_future(fn(self.cp))
                    done, _ = await asyncio.wait({work, closed},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if work not in done:
                        raise Unavailable(f"chargestation {self.endpoint} went offline "
                                          "while the command was pending")
                    return work.result()
        except TimeoutError:
            raise StationTimeout(
                f"chargestation {self.endpoint} did not answer within {timeout:g} s",
                hint="try again with a longer --timeout, or check the station") from None
        except OCPPError as e:
            # a CALLERROR from the station, or an answer that broke the schema
            raise StationRejected(f"chargestation {self.endpoint} answered with a CALLERROR or an "
                                  f"invalid reply: {e.code}: {e.description}") from None
        except ConnectionClosed:
            raise Unavailable(f"chargestation {self.endpoint} went offline") from None
        finally:
            if waiting:
                self.queued -= 1
            if work is not None and not work.done():
                work.cancel()
            closed.cancel()

    async def close(self, reason: str = "") -> None:
        await self.ws.close(1000, reason[:120])


class Stations:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def get(self, endpoint: str) -> Session | None:
        return self._sessions.get(endpoint)

    def add(self, session: Session) -> Session | None:
        """Register a new connection; returns the one it replaces (newest connection wins)."""
        old = self._sessions.get(session.endpoint)
        self._sessions[session.endpoint] = session
        return old

    def remove(self, session: Session) -> bool:
        """Forget a connection, unless a newer one has already replaced it."""
        if self._sessions.get(session.endpoint) is session:
            del self._sessions[session.endpoint]
            return True
        return False

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        return list(self._sessions.values())
