"""The live-stations port: what `fleet` asks of the stations that are connected right now.

Commands are plain data, so a command can be queued, stored, or routed to the process that
holds the station's socket. The server implements the port (server/stations.py); the in-process
tests use a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class FetchConfig:
    """Read the station's configuration: the given keys, or all of it. Answers
    (entries, unknown keys); an entry is {key, value, readonly[, component, variable, evse]}."""

    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeAvailability:
    """Operative or not, for the whole station (no evse) or one EVSE/connector. Answers the
    station's status (Accepted, Rejected, Scheduled)."""

    operative: bool
    evse: int | None = None
    connector: int | None = None


@dataclass(frozen=True)
class Disconnect:
    """Close the station's connection (it may come back)."""

    reason: str


Command = FetchConfig | ChangeAvailability | Disconnect


class LiveStations(Protocol):
    def is_online(self, endpoint: str) -> bool: ...

    async def send(self, endpoint: str, command: Command, timeout: float) -> Any:
        """Carry out `command` on the connected station within `timeout` seconds (queue wait
        included). Raises errors.Unavailable (not connected, or gone meanwhile), Busy (too
        many commands queued), StationTimeout, StationRejected (CALLERROR, refusal or invalid
        answer) or UsageError (the request breaks the OCPP schema: nothing was sent)."""
        ...
