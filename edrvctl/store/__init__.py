"""Persistence behind one small interface, so that `fleet` never sees SQL.

`open_store(path)` gives the SQLite store; a PostgreSQL one would implement the same `Store`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol

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


class Store(Protocol):
    def transaction(self) -> ContextManager:
        """Writes inside stand or fall together."""
    def create_station(self, doc: dict) -> None:
        """Insert; raises errors.Conflict if the endpoint exists."""

    def get_station(self, key: str) -> dict | None:
        """By `_id` or by endpoint."""

    def save_station(self, doc: dict) -> None: ...

    def set_last_message_at(self, seen: dict[str, str]) -> None:
        """endpoint -> lastMessageAt, for many stations at once."""

    def delete_station(self, station_id: str) -> bool: ...

    def list_stations_json(self, query: StationQuery) -> tuple[list[str], int]:
        """A page as the stored JSON texts (sent on unchanged), and how many match in all."""

    def mark_all_offline(self, now: str) -> int: ...

    def set_password_hash(self, station_id: str, hashed: str, at: str) -> None: ...

    def password_hash(self, station_id: str) -> str | None: ...

    def add_event(self, station_id: str, at: str, kind: str, payload: dict) -> None: ...

    def start_transaction(self, tx: dict) -> int: ...

    def update_transaction(self, station_id: str, tx_key: str, fields: dict) -> dict | None: ...

    def get_transaction(self, station_id: str, tx_key: str) -> dict | None: ...

    def add_meter_values(self, station_id: str, tx_key: str | None, connector: int,
                         values: list[dict]) -> None: ...

    def close(self) -> None: ...


def open_store(path: str, max_bytes: int | None = None) -> Store:
    from edrvctl.store.sqlite import SqliteStore

    return SqliteStore(path, max_bytes)
