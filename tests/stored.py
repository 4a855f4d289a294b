"""What a running server has stored, read the way the end-to-end tests may read it: through a
read-only Store and the Unit readers, never through SQL, so that the tests hold for any backend
and any schema version."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

from edrvctl.store import EventQuery, Unit, open_store

T = TypeVar("T")


async def read_async(location: str | Path, fn: Callable[[Unit], Awaitable[T]]) -> T:
    """fn(unit) on a read-only store opened for this one read (it sees every commit so far)."""
    store = open_store(location, readonly=True)
    try:
        async with store.unit() as tx:
            return await fn(tx)
    finally:
        await store.close()


def read(location: str | Path, fn: Callable[[Unit], Awaitable[T]]) -> T:
    """`read_async` from synchronous test code."""
    return asyncio.run(read_async(location, fn))


def events_of(location: str | Path, station_id: str | None, *types: str) -> list[dict]:
    """Stored events of a station (None: of any), oldest first; `types`: globs, any of them."""
    query = EventQuery(station_id=station_id, types=types, limit=None)
    return read(location, lambda tx: tx.list_events(query))


def sqlite_intact(path: str | Path) -> bool:
    """SQLite's own check of a store file (after a crash, say): not a read of our data, so
    the one place that speaks to the file directly."""
    import sqlite3

    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@contextlib.contextmanager
def write_lock_held(path: str | Path) -> Iterator[None]:
    """Another process's view: SQLite's write lock on a store file held, as a backup tool or
    the sqlite3 shell would hold it."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()
