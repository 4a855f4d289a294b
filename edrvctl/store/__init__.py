"""Persistence behind one small asynchronous port, so that `fleet` never sees SQL.

Every operation is a unit of work: `async with store.unit() as tx:`. Its writes stand or fall
together, and it returns only once they are durable, so whatever a caller acknowledges after it
cannot be lost. `open_store(path)` gives the SQLite store; a PostgreSQL one implements the same
two protocols (methods are async because that one really waits on the network).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

# Fields a list can be filtered on exactly, and fields it can be sorted by.
FILTER_FIELDS = ("online", "active", "location", "organization", "protocol", "status", "endpoint")
SORT_FIELDS = ("createdAt", "updatedAt", "endpoint", "status", "lastMessageAt", "lastConnectAt")


@dataclass
class StationQuery:
    equals: dict[str, Any] = field(default_factory=dict)  # field in FILTER_FIELDS -> value
    ranges: list[tuple[str, str, str]] = field(default_factory=list)  # (createdAt, '>=', iso)
    sort_by: str = "createdAt"
    descending: bool = True
    limit: int | None = 20  # None: no limit
    offset: int = 0


ACTION_FILTER_FIELDS = ("chargestation", "type", "status", "outcome", "batch")


@dataclass
class ActionQuery:
    """Actions newest first (createdAt, then the one created last)."""

    equals: dict[str, Any] = field(default_factory=dict)  # ACTION_FILTER_FIELDS -> value
    created_from: str | None = None  # createdAt >= this
    created_to: str | None = None  # createdAt <= this
    limit: int | None = 20  # None: no limit
    offset: int = 0


@dataclass
class EventQuery:
    """Events oldest first, after `after` (a seq); `newest`: the latest `limit` of them."""

    after: int = 0
    station_id: str | None = None
    types: tuple[str, ...] = ()  # globs (`session.*`); any of them
    since: str | None = None  # createdAt >= this
    until: str | None = None  # createdAt <= this
    limit: int | None = 100  # None: no limit
    newest: bool = False


class Unit(Protocol):
    """One unit of work, used by one task. Units may overlap (other tasks, or one opened
    inside another that has only read); once a unit has written it may hold the connection
    until it ends, so keep slow awaits (the network) out of it after its first write."""

    async def create_station(self, doc: dict) -> None:
        """Raises errors.Conflict if the endpoint exists."""

    async def get_station(self, key: str) -> dict | None:
        """By `_id` or endpoint. Remembers the row's revision for save_station."""

    async def save_station(self, doc: dict) -> None:
        """Compare-and-set against the revision read in this unit, so that a concurrent
        writer's change is never overwritten unseen: errors.StaleRecord if the row changed
        since, or if this unit never read it."""

    async def set_last_message_at(self, seen: dict[str, str]) -> None:
        """endpoint -> lastMessageAt for many stations, without rewriting their records."""

    async def delete_station(self, station_id: str) -> bool:
        """With everything that hangs off the station; False if there was none."""

    async def list_stations_json(self, query: StationQuery) -> tuple[list[str], int]:
        """A page as the stored JSON texts (sent on unchanged), and how many match in all."""

    async def mark_all_offline(self, now: str) -> int:
        """At start-up no station is connected, whatever the last run left behind."""

    async def set_password_hash(self, station_id: str, hashed: str, at: str) -> None: ...

    async def password_hash(self, station_id: str) -> str | None: ...

    async def add_event(
        self,
        station_id: str | None,
        at: str,
        type: str,
        data: dict,
        endpoint: str | None = None,
    ) -> dict:
        """Adds to the event log; returns the row (fleet/events.py), its `seq` set. Once the
        unit has committed, the row is handed to the store's `on_events`."""

    async def list_events(self, query: EventQuery) -> list[dict]: ...

    async def seen_unknown(self, endpoint: str, at: str, info: dict, times: int, keep: int) -> bool:
        """Counts `times` upgrades from an endpoint that is no station; True if new to the
        list, which keeps the `keep` seen last."""

    async def unknown_endpoints(self, limit: int | None = None) -> list[dict]:
        """Last seen first: {endpoint, seen, firstSeenAt, lastSeenAt, ...info}."""

    async def forget_unknown(self, endpoint: str) -> None: ...

    async def start_transaction(self, tx: dict) -> str:
        """Returns the tx_key; without one (OCPP 1.6) the new row's id becomes it."""

    async def get_transaction(self, station_id: str, tx_key: str) -> dict | None: ...

    async def update_transaction(
        self, station_id: str, tx_key: str, fields: dict
    ) -> dict | None: ...

    async def transactions(self, station_id: str | None = None) -> list[dict]:
        """Oldest first."""

    async def add_meter_values(
        self, station_id: str, tx_key: str | None, connector: int, values: list[dict]
    ) -> None: ...

    async def meter_values(
        self, station_id: str | None = None, tx_key: str | None = None
    ) -> list[dict]:
        """Oldest first: {station_id, tx_key, connector, values}."""

    # --- actions (commands sent to stations, fleet/actions.py) ---

    async def create_action(self, doc: dict) -> None:
        """A new Action record (its `_id` is new)."""

    async def get_action(self, action_id: str) -> dict | None:
        """Remembers the row's revision for save_action."""

    async def save_action(self, doc: dict) -> None:
        """Compare-and-set, as save_station: errors.StaleRecord if the row changed since this
        unit read it, or if this unit never read it."""

    async def list_actions(self, query: ActionQuery) -> tuple[list[dict], int]:
        """A page, newest first, and how many match in all."""

    async def fail_pending_actions(self, reason: str, now: str) -> int:
        """Every action whose outcome is still pending ends failed (status failed if it was
        never answered), with error {code: "Interrupted", description: reason}."""

    # --- retention (fleet/retention.py) and health ---

    async def prune_events(self, before: str, limit: int, keep: int | None = None) -> int:
        """Delete at most `limit` events stored before `before`, oldest first, then (with
        `keep`) those beyond the `keep` latest; returns how many."""

    async def prune_meter_values(
        self, before: str, stuck_before: str, cursor: object, limit: int
    ) -> tuple[int, object]:
        """Delete at most `limit` meter values stored before `before`, in a pass from the
        oldest that each call carries on: `cursor` is what the previous call returned (None:
        start a pass), and the call returns (deleted, the cursor for the next call, or None
        once the pass is over). Each call looks at a bounded number of rows, kept ones
        included. A session's values are kept together while it runs and until it has none
        stored since `before`, unless they were stored before `stuck_before` (a session that
        never ends)."""

    async def prune_actions(self, before: str, limit: int) -> int:
        """Delete at most `limit` actions created before `before` whose outcome is no longer
        pending, oldest first; returns how many."""

    async def probe(self, at: str) -> None:
        """A small real write that leaves nothing behind (/health): it needs as much room as
        a station's next message, so it fails (StoreUnavailable, at the unit's commit or
        before) whenever the store cannot take one."""


class Store(Protocol):
    def unit(self) -> AbstractAsyncContextManager[Unit]:
        """Exits only after a commit holding the unit's writes (or anything it read that was
        not yet committed); errors.StoreUnavailable if that commit failed."""

    # called with the event rows of each commit, in seq order, once it is durable
    on_events: Callable[[list[dict]], None] | None
    # called with the seconds each successful COMMIT took (metrics)
    on_commit: Callable[[float], None] | None

    async def close(self) -> None:
        """Commits what is pending, then closes."""


def open_store(
    location: str | os.PathLike, max_bytes: int | None = None, readonly: bool = False
) -> Store:
    """`location`: a file path, or ":memory:". `readonly`: read a store another process
    writes (never migrates; writes raise errors.StoreUnavailable)."""
    from edrvctl.store.sqlite import SqliteStore

    return SqliteStore(location, max_bytes, readonly)
