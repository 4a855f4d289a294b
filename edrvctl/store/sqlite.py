"""The SQLite store: one file, WAL journal, one connection owned by one event loop.

Each station is one row: its whole record as a JSON document, plus copies of the fields that
lists filter and sort on, as indexed columns, and `rev`, bumped by every write to the row (the
document never holds it: API output is the document as stored).

Group commit: a COMMIT per station message was the largest cost of a busy server. The
connection stays in an open transaction; each unit's writes are a SAVEPOINT in it, and the
first unit to finish in an event-loop turn schedules one COMMIT for the end of the turn, which
every unit of that turn awaits before it returns. With WAL and synchronous=NORMAL a commit is
in the WAL file when it returns, so it survives the process being killed; only a power cut can
lose the last commits.

Units must not interleave on the one connection: the first write of a unit takes a lock that
it keeps to its end (a unit that only reads takes it only to wait for a writer in the middle of
its unit), and no COMMIT runs while a unit holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import orjson

from edrvctl.errors import (
    Conflict,
    InvalidBody,
    StaleRecord,
    StoreUnavailable,
    UsageError,
)
from edrvctl.store import (
    ACTION_FILTER_FIELDS,
    FILTER_FIELDS,
    SORT_FIELDS,
    ActionQuery,
    EventQuery,
    StationQuery,
)

log = logging.getLogger("edrvctl.store")

# Schema 1 is the schema as edrvctl shipped it before user_version was kept (it left
# user_version at 0): copied unchanged, so that such a file passes through every step.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS chargestations (
    id            TEXT PRIMARY KEY,
    endpoint      TEXT NOT NULL UNIQUE,
    protocol      TEXT NOT NULL,
    online        INTEGER NOT NULL,
    active        INTEGER NOT NULL,
    status        TEXT,
    location      TEXT,
    organization  TEXT,
    createdAt     TEXT NOT NULL,
    updatedAt     TEXT NOT NULL,
    lastMessageAt TEXT,
    lastConnectAt TEXT,
    doc           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cs_created ON chargestations(createdAt, id);
CREATE INDEX IF NOT EXISTS cs_updated ON chargestations(updatedAt, id);
CREATE INDEX IF NOT EXISTS cs_online ON chargestations(online);
CREATE TABLE IF NOT EXISTS transactions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    tx_key      TEXT,
    doc         TEXT NOT NULL,
    UNIQUE (station_id, tx_key)
);
CREATE TABLE IF NOT EXISTS meter_values (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    tx_key      TEXT,
    connector   INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_station ON events(station_id, id);
CREATE TABLE IF NOT EXISTS credentials (
    station_id  TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"""

# MIGRATIONS[n] takes a store from schema n to n + 1. Append only; never edit a shipped step.
MIGRATIONS: list[str] = [
    SCHEMA_1,
    # 2: compare-and-set saves
    "ALTER TABLE chargestations ADD COLUMN rev INTEGER NOT NULL DEFAULT 1;",
    # 3: actions (commands sent to stations, followed to their end)
    """
CREATE TABLE IF NOT EXISTS actions (
    id          TEXT PRIMARY KEY,
    station_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    createdAt   TEXT NOT NULL,
    updatedAt   TEXT NOT NULL,
    rev         INTEGER NOT NULL DEFAULT 1,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_created ON actions(createdAt);
CREATE INDEX IF NOT EXISTS actions_station ON actions(station_id, createdAt);
CREATE INDEX IF NOT EXISTS actions_outcome ON actions(outcome);
""",
    # 4: events with eDRV types (fleet/events.py), endpoints that tried but are not stations
    """
CREATE TABLE event_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT NOT NULL,
    station_id  TEXT,
    endpoint    TEXT,
    at          TEXT NOT NULL,
    doc         TEXT NOT NULL
);
INSERT INTO event_log (seq, type, station_id, endpoint, at, doc)
    SELECT e.id,
        CASE e.kind
            WHEN 'ConnectionRefused' THEN 'chargestation.connection_refused'
            WHEN 'FirmwareStatusNotification' THEN 'chargestation.firmware_status.updated'
            WHEN 'DiagnosticsStatusNotification' THEN 'chargestation.log_status.updated'
            WHEN 'LogStatusNotification' THEN 'chargestation.log_status.updated'
            WHEN 'SecurityEventNotification' THEN 'chargestation.security_event'
            ELSE 'chargestation.' || lower(e.kind)
        END,
        e.station_id, c.endpoint, e.at, e.doc
    FROM events e LEFT JOIN chargestations c ON c.id = e.station_id;
DROP TABLE events;
CREATE INDEX event_log_station ON event_log(station_id, seq);
CREATE INDEX event_log_at ON event_log(at);
CREATE TABLE unknown_endpoints (
    endpoint    TEXT PRIMARY KEY,
    seen        INTEGER NOT NULL,
    firstSeenAt TEXT NOT NULL,
    lastSeenAt  TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX unknown_last ON unknown_endpoints(lastSeenAt);
""",
    # 5: retention (fleet/retention.py): when each meter value was stored (those stored before
    # count from now), the indexes pruning walks; the table /health's write probe writes
    """
ALTER TABLE meter_values ADD COLUMN at TEXT NOT NULL DEFAULT '';
UPDATE meter_values SET at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now');
CREATE INDEX meter_values_session ON meter_values(station_id, tx_key, at);
CREATE TABLE health_probe (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    pad         BLOB
);
""",
]
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_MS = 100  # waiting for another process's write lock blocks the event loop

_COLUMNS = (
    "protocol",
    "online",
    "active",
    "status",
    "location",
    "organization",
    "createdAt",
    "updatedAt",
    "lastMessageAt",
    "lastConnectAt",
)
_INSERT = (
    f"INSERT INTO chargestations (id, endpoint, {', '.join(_COLUMNS)}, doc, rev) "
    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 3))}, 1)"
)
_SAVE = (
    f"UPDATE chargestations SET {', '.join(f'{c} = ?' for c in _COLUMNS)}, doc = ?, "
    "rev = rev + 1 WHERE id = ? AND rev = ?"
)


def _json(value) -> bytes:
    """Encode for storage. What JSON cannot hold (nesting beyond 254 levels, integers beyond 64
    bits) is refused as bad input, before anything is written."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as e:
        raise InvalidBody(f"this value cannot be stored: {e}") from None


# the time now in the stored form (model.utcnow's): 2024-01-01T10:00:00.123Z
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _unwritable(e: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the store cannot be written: {e}")


class _Batch:
    """Writes of finished units that one COMMIT makes durable, or that are lost together."""

    __slots__ = ("done", "error", "events", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future] = []
        self.events: list[dict] = []  # rows of its units' events, in seq order
        self.done = False
        self.error: str | None = None

    def finish(self, error: str | None = None) -> None:
        self.done, self.error = True, error
        for w in self.waiters:
            if not w.done():
                w.set_result(None)  # each unit raises its own exception, not a shared one
        self.waiters = []


class SqliteStore:
    def __init__(
        self, location: str | os.PathLike, max_bytes: int | None = None, readonly: bool = False
    ):
        self.path: str | Path = location if location == ":memory:" else Path(location)
        self.readonly = readonly
        self.commits = 0  # COMMITs that succeeded (group commit is observable in tests)
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: SqliteUnit | None = None  # the unit inside its writes, holding _lock
        self._owner_task: asyncio.Task | None = None
        self._savepoint = False  # the owner's SAVEPOINT is open
        self._batch: _Batch | None = None  # writes of finished units, not yet committed
        self._scheduled = False
        self._closed = False
        # called with the event rows of each COMMIT, in seq order, once it succeeded
        self.on_events: Callable[[list[dict]], None] | None = None
        # called with the seconds each COMMIT that succeeded took
        self.on_commit: Callable[[float], None] | None = None
        try:
            self.db = self._connect(max_bytes)
        except (sqlite3.Error, OSError) as e:
            raise UsageError(f"cannot open the store at {location}: {e}") from e

    def _connect(self, max_bytes: int | None) -> sqlite3.Connection:
        if self.path == ":memory:":
            db = sqlite3.connect(":memory:", isolation_level=None)
            self._migrate(db)
        elif self.readonly:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                db.close()
                raise UsageError(
                    f"cannot open the store at {self.path} read-only: it has "
                    f"schema {version}, this edrvctl reads {SCHEMA_VERSION}"
                )
            return db
        else:
            # Station passwords' hashes and the fleet live here: owner only. The -wal and
            # -shm files take the database file's mode.
            old = os.umask(0o077)
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None)
            finally:
                os.umask(old)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # Another process holding the write lock (a backup, the sqlite3 shell) must not
                # freeze the event loop: wait briefly, then refuse the write (InternalError to
                # the station, 507 to the admin) rather than stall every station for seconds.
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self._migrate(db)
            except BaseException:
                db.close()
                raise
        if max_bytes:  # past it, writes fail as on a full disk
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if (
            version == 0
            and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chargestations'").fetchone()
        ):
            version = 1  # written before user_version was kept
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"the store has schema {version}, newer than this edrvctl "
                f"({SCHEMA_VERSION}): upgrade edrvctl"
            )
        if version:
            log.info("store: migrating %s from schema %d to %d", self.path, version, SCHEMA_VERSION)
        # One transaction: a failed step leaves the file as it was. (executescript would
        # commit an open transaction first, so BEGIN is part of the script.)
        try:
            db.executescript(
                "BEGIN IMMEDIATE;"
                + "".join(MIGRATIONS[version:])
                + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def unit(self) -> SqliteUnit:
        return SqliteUnit(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._bind()
        async with self._lock:  # not in the middle of a unit's writes
            try:
                if self._batch is not None or self.db.in_transaction:
                    error = self._commit()
                    if error is not None:
                        raise StoreUnavailable(error)
            finally:
                self._closed = True
                self.db.close()

    # --- units and group commit ---

    def _bind(self) -> None:
        """Follow the running event loop: a store outlives a loop in tests and tools (each
        asyncio.run is a new loop), and a Lock or Future belongs to one loop."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        self._lock = asyncio.Lock()
        if self._savepoint and self.db.in_transaction:  # a unit left behind by its loop
            self.db.execute("ROLLBACK TO unit")
            self.db.execute("RELEASE unit")
        self._owner, self._scheduled, self._savepoint = None, False, False
        if self._batch is not None:  # its waiters were of the old loop: commit it here
            self._batch.waiters = []
            self._schedule()

    async def _begin(self, unit: SqliteUnit) -> None:
        """Before a unit's first write: own the connection, open its savepoint."""
        if self.readonly:
            raise StoreUnavailable(f"the store at {self.path} is open read-only")
        if self._owner is not unit:
            self._not_own_task()
            await self._lock.acquire()
            self._owner, self._owner_task = unit, asyncio.current_task()
        db = self.db
        try:
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
            db.execute("SAVEPOINT unit")
        except sqlite3.Error as e:  # busy, read-only file, I/O error
            raise _unwritable(e) from e
        self._savepoint = True
        if self._batch is None:
            self._batch = _Batch()
        unit._saw(self._batch)

    def _end(self, unit: SqliteUnit, failed: bool) -> None:
        """The owner's body ended: keep or undo its writes, let the next unit in."""
        db = self.db
        try:
            if self._savepoint and db.in_transaction:  # else SQLite rolled it all back
                if failed:
                    db.execute("ROLLBACK TO unit")
                elif unit._events and self._batch is not None:
                    self._batch.events.extend(unit._events)
                db.execute("RELEASE unit")
        finally:
            unit._events = None
            self._savepoint = False
            self._owner = self._owner_task = None
            self._lock.release()
            if self._batch is not None or db.in_transaction:
                self._schedule()

    async def _wait_for_owner(self) -> None:
        """Wait while another unit is in the middle of its writes (they may yet be undone)."""
        self._not_own_task()
        async with self._lock:
            pass

    def _not_own_task(self) -> None:
        if self._owner is not None and self._owner_task is asyncio.current_task():
            raise RuntimeError(
                "a unit of work was opened inside one that has written: it would wait for itself"
            )

    def _run(self, sql: str, args: tuple | list = (), many: bool = False) -> sqlite3.Cursor:
        """Execute a write of the owning unit, mapping failures to our errors."""
        try:
            return self.db.executemany(sql, args) if many else self.db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except OverflowError:  # an integer SQLite cannot hold (beyond signed 64 bits)
            raise InvalidBody("a number is out of range (beyond 64 bits)") from None
        except sqlite3.Error as e:  # full disk, read-only file, I/O error
            self._check_lost(e)
            raise _unwritable(e) from e

    def _check_lost(self, e: sqlite3.Error) -> None:
        if not self.db.in_transaction:
            # SQLite rolled the whole transaction back (it does on a full disk): the writes
            # of every unit in it are gone, so none of them may report success.
            self._savepoint = False
            batch, self._batch = self._batch, None
            if batch is not None:
                batch.finish(f"the store cannot be written: {e}")

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._commit_soon)

    def _commit_soon(self) -> None:
        self._scheduled = False
        if self._owner is None and not self._closed:  # else the owner schedules again when it ends
            self._commit()

    def _commit(self) -> str | None:
        """COMMIT the open transaction; returns why it failed, if it did."""
        batch, self._batch = self._batch, None
        db = self.db
        error = None
        if db.in_transaction:
            try:
                started = time.perf_counter()
                db.execute("COMMIT")
                self.commits += 1
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started)
            except sqlite3.Error as e:
                error = f"the store cannot be written: {e}"
                log.error("commit failed: %s", e)
                if db.in_transaction:  # drop it, so the next transaction can try
                    db.execute("ROLLBACK")
        elif batch is not None:  # rolled back under us, and not noticed by a write
            error = "the store cannot be written: its transaction was rolled back"
        if batch is not None:
            batch.finish(error)
            if error is None and batch.events and self.on_events is not None:
                try:
                    self.on_events(batch.events)
                except Exception:
                    log.exception("publishing committed events failed")
        return error

    async def _durable(self, batches: list[_Batch]) -> None:
        last = batches[-1]
        if not last.done:  # batches finish in order: the last one done means all are
            fut = asyncio.get_running_loop().create_future()
            last.waiters.append(fut)
            self._schedule()
            await fut
        for batch in batches:
            if batch.error is not None:
                raise StoreUnavailable(batch.error)


class SqliteUnit:
    __slots__ = ("_batches", "_db", "_events", "_revs", "_s")

    def __init__(self, store: SqliteStore):
        self._s = store
        self._db = store.db
        self._revs: dict[str, int] = {}  # _id -> rev, of the rows this unit read or wrote
        self._batches: list[_Batch] | None = None  # uncommitted writes it made or saw
        self._events: list[dict] | None = None  # event rows it added (published once committed)

    async def __aenter__(self) -> Self:
        self._s._bind()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        s = self._s
        if s._owner is self:
            s._end(self, failed=et is not None)
        if et is None and self._batches:
            await s._durable(self._batches)

    def _saw(self, batch: _Batch) -> None:
        if self._batches is None:
            self._batches = [batch]
        elif self._batches[-1] is not batch:
            self._batches.append(batch)

    async def _read(self) -> None:
        s = self._s
        if s._owner is not None and s._owner is not self:
            await s._wait_for_owner()

    def _read_done(self) -> None:
        """What was just read may hold uncommitted writes: acknowledge nothing before them."""
        batch = self._s._batch
        if batch is not None:
            self._saw(batch)

    # --- stations ---

    async def create_station(self, doc: dict) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        row = (
            doc["_id"],
            doc["endpoint"],
            *(doc.get(c) for c in _COLUMNS),
            _json(doc).decode(),
        )  # TEXT, so that sqlite3 hands it back as str to splice
        try:
            s._run(_INSERT, row)
        except sqlite3.IntegrityError:
            raise Conflict(f"a chargestation with endpoint {doc['endpoint']!r} exists") from None
        self._revs[doc["_id"]] = 1

    async def get_station(self, key: str) -> dict | None:
        await self._read()
        row = self._db.execute(
            "SELECT id, rev, doc FROM chargestations WHERE id = ? UNION ALL "
            "SELECT id, rev, doc FROM chargestations WHERE endpoint = ? LIMIT 1",
            (key, key),
        ).fetchone()
        self._read_done()
        if row is None:
            return None
        self._revs[row[0]] = row[1]
        return orjson.loads(row[2])

    async def save_station(self, doc: dict) -> None:
        sid = doc["_id"]
        rev = self._revs.get(sid)
        if rev is None:
            raise StaleRecord(
                f"chargestation {doc.get('endpoint', sid)} was not read in this "
                "unit of work: read it first"
            )
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run(_SAVE, (*(doc.get(c) for c in _COLUMNS), _json(doc).decode(), sid, rev))
        if cur.rowcount == 0:
            raise StaleRecord(
                f"chargestation {doc.get('endpoint', sid)} was changed or deleted since it was read"
            )
        self._revs[sid] = rev + 1

    async def set_last_message_at(self, seen: dict[str, str]) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        s._run(
            "UPDATE chargestations SET lastMessageAt = ?, rev = rev + 1, "
            "doc = json_set(doc, '$.lastMessageAt', ?) WHERE endpoint = ?",
            [(at, at, endpoint) for endpoint, at in seen.items()],
            many=True,
        )

    async def delete_station(self, station_id: str) -> bool:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run("DELETE FROM chargestations WHERE id = ?", (station_id,))
        for table in ("transactions", "meter_values", "event_log", "credentials", "actions"):
            s._run(f"DELETE FROM {table} WHERE station_id = ?", (station_id,))
        self._revs.pop(station_id, None)
        return cur.rowcount > 0

    async def list_stations_json(self, query: StationQuery) -> tuple[list[str], int]:
        """The page as the stored JSON texts, unparsed: a list is mostly copying text."""
        where, args = [], []
        for name, value in query.equals.items():
            if name not in FILTER_FIELDS:
                raise UsageError(f"cannot filter on {name!r}; fields: {', '.join(FILTER_FIELDS)}")
            where.append(f"{name} IS ?")
            args.append(value)
        for name, op, value in query.ranges:
            if name not in SORT_FIELDS or op not in (">=", "<="):
                raise UsageError(
                    f"cannot compare {name!r} with {op!r}; fields: "
                    f"{', '.join(SORT_FIELDS)}, operators: >=, <="
                )
            where.append(f"{name} {op} ?")
            args.append(value)
        if query.sort_by not in SORT_FIELDS:
            raise UsageError(f"cannot sort by {query.sort_by!r}; fields: {', '.join(SORT_FIELDS)}")
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT doc FROM chargestations{sql_where} "
            f"ORDER BY {query.sort_by} {order}, id {order}"
        )
        page_args = list(args)
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            page_args += [query.limit, query.offset]
        await self._read()
        db = self._db
        total = db.execute(f"SELECT count(*) FROM chargestations{sql_where}", args).fetchone()[0]
        docs = [r[0] for r in db.execute(sql, page_args)]
        self._read_done()
        return docs, total

    async def mark_all_offline(self, now: str) -> int:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        # lastDisconnectAt: when it was found disconnected, which is after any connect
        cur = s._run(
            "UPDATE chargestations SET online = 0, rev = rev + 1, doc = json_set(doc, "
            "'$.online', json('false'), '$.lastDisconnectAt', ?) WHERE online = 1",
            (now,),
        )
        return cur.rowcount

    # --- station passwords (hashes only; never part of the record) ---

    async def set_password_hash(self, station_id: str, hashed: str, at: str) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        s._run("INSERT OR REPLACE INTO credentials VALUES (?,?,?)", (station_id, hashed, at))

    async def password_hash(self, station_id: str) -> str | None:
        await self._read()
        row = self._db.execute(
            "SELECT hash FROM credentials WHERE station_id = ?", (station_id,)
        ).fetchone()
        self._read_done()
        return row[0] if row else None

    # --- what stations report ---

    async def add_event(
        self,
        station_id: str | None,
        at: str,
        type: str,
        data: dict,
        endpoint: str | None = None,
    ) -> dict:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run(
            "INSERT INTO event_log (type, station_id, endpoint, at, doc) VALUES (?,?,?,?,?)",
            (type, station_id, endpoint, at, _json(data)),
        )
        row = {
            "seq": cur.lastrowid,
            "type": type,
            "chargestation": station_id,
            "endpoint": endpoint,
            "data": data,
            "createdAt": at,
        }
        if self._events is None:
            self._events = [row]
        else:
            self._events.append(row)
        return row

    async def list_events(self, query: EventQuery) -> list[dict]:
        where: list[str] = ["seq > ?"]
        args: list[object] = [query.after]
        if query.station_id is not None:
            where.append("station_id = ?")
            args.append(query.station_id)
        if query.types:
            where.append("(" + " OR ".join("type GLOB ?" for _ in query.types) + ")")
            args.extend(query.types)
        if query.since is not None:
            where.append("at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("at <= ?")
            args.append(query.until)
        order = "DESC" if query.newest else "ASC"
        await self._read()
        rows = self._db.execute(
            "SELECT seq, type, station_id, endpoint, at, doc FROM event_log "
            f"WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?",
            (*args, -1 if query.limit is None else query.limit),
        ).fetchall()
        self._read_done()
        if query.newest:
            rows.reverse()
        return [
            {
                "seq": seq,
                "type": t,
                "chargestation": sid,
                "endpoint": ep,
                "data": orjson.loads(d),
                "createdAt": at,
            }
            for seq, t, sid, ep, at, d in rows
        ]

    async def seen_unknown(self, endpoint: str, at: str, info: dict, times: int, keep: int) -> bool:
        """Count `times` attempts of an endpoint that is no station; True if it is new to the
        list. The list keeps the `keep` endpoints seen last."""
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run(
            "UPDATE unknown_endpoints SET seen = seen + ?, lastSeenAt = ?, doc = ? "
            "WHERE endpoint = ?",
            (times, at, _json(info), endpoint),
        )
        if cur.rowcount:
            return False
        s._run(
            "INSERT INTO unknown_endpoints (endpoint, seen, firstSeenAt, lastSeenAt, doc) "
            "VALUES (?, ?, ?, ?, ?)",
            (endpoint, times, at, at, _json(info)),
        )
        s._run(
            "DELETE FROM unknown_endpoints WHERE endpoint IN (SELECT endpoint FROM "
            "unknown_endpoints ORDER BY lastSeenAt DESC LIMIT -1 OFFSET ?)",
            (keep,),
        )
        return True

    async def unknown_endpoints(self, limit: int | None = None) -> list[dict]:
        await self._read()
        rows = self._db.execute(
            "SELECT endpoint, seen, firstSeenAt, lastSeenAt, doc FROM unknown_endpoints "
            "ORDER BY lastSeenAt DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        self._read_done()
        return [
            {"endpoint": ep, "seen": n, "firstSeenAt": first, "lastSeenAt": last, **orjson.loads(d)}
            for ep, n, first, last, d in rows
        ]

    async def forget_unknown(self, endpoint: str) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        s._run("DELETE FROM unknown_endpoints WHERE endpoint = ?", (endpoint,))

    async def start_transaction(self, tx: dict) -> str:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        try:
            cur = s._run(
                "INSERT INTO transactions (station_id, tx_key, doc) VALUES (?,?,?)",
                (tx["station_id"], tx.get("tx_key"), _json(tx)),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"transaction {tx.get('tx_key')!r} of station {tx['station_id']} exists"
            ) from None
        if tx.get("tx_key") is None:
            rowid = cur.lastrowid
            tx["tx_key"] = str(rowid)
            s._run(
                "UPDATE transactions SET tx_key = ?, doc = ? WHERE id = ?",
                (tx["tx_key"], _json(tx), rowid),
            )
        return tx["tx_key"]

    async def get_transaction(self, station_id: str, tx_key: str) -> dict | None:
        await self._read()
        row = self._db.execute(
            "SELECT doc FROM transactions WHERE station_id = ? AND tx_key = ?", (station_id, tx_key)
        ).fetchone()
        self._read_done()
        return orjson.loads(row[0]) if row else None

    async def update_transaction(self, station_id: str, tx_key: str, fields: dict) -> dict | None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)  # the read and the write are one step
        tx = await self.get_transaction(station_id, tx_key)
        if tx is None:
            return None
        tx.update(fields)
        s._run(
            "UPDATE transactions SET doc = ? WHERE station_id = ? AND tx_key = ?",
            (_json(tx), station_id, tx_key),
        )
        return tx

    async def transactions(self, station_id: str | None = None) -> list[dict]:
        where, args = _where(station_id=station_id)
        await self._read()
        rows = self._db.execute(f"SELECT doc FROM transactions{where} ORDER BY id", args).fetchall()
        self._read_done()
        return [orjson.loads(d) for (d,) in rows]

    async def add_meter_values(
        self, station_id: str, tx_key: str | None, connector: int, values: list[dict]
    ) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        s._run(
            "INSERT INTO meter_values (station_id, tx_key, connector, doc, at) "
            f"VALUES (?,?,?,?,{_NOW})",
            (station_id, tx_key, connector, _json(values)),
        )

    async def meter_values(
        self, station_id: str | None = None, tx_key: str | None = None
    ) -> list[dict]:
        where, args = _where(station_id=station_id, tx_key=tx_key)
        await self._read()
        rows = self._db.execute(
            f"SELECT station_id, tx_key, connector, doc FROM meter_values{where} ORDER BY id", args
        ).fetchall()
        self._read_done()
        return [
            {"station_id": sid, "tx_key": key, "connector": c, "values": orjson.loads(d)}
            for sid, key, c, d in rows
        ]

    # --- actions ---

    async def create_action(self, doc: dict) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        try:
            s._run(
                "INSERT INTO actions (id, station_id, type, status, outcome, createdAt, "
                "updatedAt, rev, doc) VALUES (?,?,?,?,?,?,?,1,?)",
                (*_action_columns(doc), _json(doc).decode()),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"action {doc['_id']} exists") from None
        self._revs["action:" + doc["_id"]] = 1

    async def get_action(self, action_id: str) -> dict | None:
        await self._read()
        row = self._db.execute("SELECT rev, doc FROM actions WHERE id = ?", (action_id,)).fetchone()
        self._read_done()
        if row is None:
            return None
        self._revs["action:" + action_id] = row[0]
        return orjson.loads(row[1])

    async def save_action(self, doc: dict) -> None:
        key = "action:" + doc["_id"]
        rev = self._revs.get(key)
        if rev is None:
            raise StaleRecord(f"action {doc['_id']} was not read in this unit of work")
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        _id, _sid, *columns = _action_columns(doc)
        cur = s._run(
            "UPDATE actions SET type = ?, status = ?, outcome = ?, createdAt = ?, "
            "updatedAt = ?, doc = ?, rev = rev + 1 WHERE id = ? AND rev = ?",
            (*columns, _json(doc).decode(), _id, rev),
        )
        if cur.rowcount == 0:
            raise StaleRecord(f"action {_id} was changed or deleted since it was read")
        self._revs[key] = rev + 1

    async def list_actions(self, query: ActionQuery) -> tuple[list[dict], int]:
        where, args = [], []
        for name, value in query.equals.items():
            if name not in ACTION_FILTER_FIELDS:
                raise UsageError(
                    f"cannot filter actions on {name!r}; fields: {', '.join(ACTION_FILTER_FIELDS)}"
                )
            column = {"chargestation": "station_id", "batch": "json_extract(doc, '$.batch')"}
            where.append(f"{column.get(name, name)} = ?")
            args.append(value)
        if query.created_from is not None:
            where.append("createdAt >= ?")
            args.append(query.created_from)
        if query.created_to is not None:
            where.append("createdAt <= ?")
            args.append(query.created_to)
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        # newest first; within one millisecond, the one created last first (rowid)
        sql = f"SELECT doc FROM actions{sql_where} ORDER BY createdAt DESC, rowid DESC"
        page_args = list(args)
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            page_args += [query.limit, query.offset]
        await self._read()
        db = self._db
        total = db.execute(f"SELECT count(*) FROM actions{sql_where}", args).fetchone()[0]
        docs = [orjson.loads(r[0]) for r in db.execute(sql, page_args)]
        self._read_done()
        return docs, total

    async def fail_pending_actions(self, reason: str, now: str) -> int:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        error = _json({"code": "Interrupted", "description": reason}).decode()
        cur = s._run(
            "UPDATE actions SET outcome = 'failed', updatedAt = ?1, rev = rev + 1, "
            "status = CASE status WHEN 'requested' THEN 'failed' ELSE status END, "
            "doc = json_set(doc, '$.outcome', 'failed', '$.updatedAt', ?1, "
            "'$.status', CASE status WHEN 'requested' THEN 'failed' ELSE status END, "
            "'$.error', json(?2)) WHERE outcome = 'pending'",
            (now, error),
        )
        return cur.rowcount

    # --- retention (fleet/retention.py) and health ---

    async def prune_events(self, before: str, limit: int, keep: int | None = None) -> int:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run(
            "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE at < ? "
            "ORDER BY at LIMIT ?)",
            (before, limit),
        )
        deleted = cur.rowcount
        if keep is not None and deleted < limit:
            cur = s._run(
                "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE seq <= "
                "(SELECT max(seq) FROM event_log) - ? ORDER BY seq LIMIT ?)",
                (keep, limit - deleted),
            )
            deleted += cur.rowcount
        return deleted

    async def prune_meter_values(
        self, before: str, stuck_before: str, cursor: object, limit: int
    ) -> tuple[int, object]:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        db = self._db
        at_ = cursor if isinstance(cursor, _MeterCursor) else _MeterCursor()
        window = 2 * limit  # rows looked at in one batch, kept ones included
        rows = db.execute(
            "SELECT id, at, station_id, tx_key FROM meter_values WHERE id > ? ORDER BY id LIMIT ?",
            (at_.after, window),
        ).fetchall()
        due: list[tuple[int]] = []
        held = at_.held
        lookups = 0
        done = len(rows) < window  # the end of the table is in this window
        for rowid, at, sid, key in rows:
            if at >= before:  # the recent ones: this pass is over
                done = True
                break
            if key is not None and at >= stuck_before:
                keep = held.get((sid, key))
                if keep is None:
                    if lookups == _MeterCursor.LOOKUPS:  # enough for one batch
                        done = False
                        break
                    lookups += 1
                    if len(held) >= _MeterCursor.MAX_HELD:
                        held.clear()
                    keep = held[(sid, key)] = self._session_kept(sid, key, before)
                if keep:
                    at_.after = rowid
                    continue
            at_.after = rowid
            due.append((rowid,))
            if len(due) == limit:
                done = False
                break
        if due:
            s._run("DELETE FROM meter_values WHERE id = ?", due, many=True)
        return len(due), None if done else at_

    def _session_kept(self, station_id: str, tx_key: str, before: str) -> bool:
        """A session keeps its meter values while it has one stored since `before`, and while
        it runs."""
        db = self._db
        if db.execute(
            "SELECT 1 FROM meter_values WHERE station_id = ? AND tx_key = ? AND at >= ? LIMIT 1",
            (station_id, tx_key, before),
        ).fetchone():
            return True
        return bool(
            db.execute(
                "SELECT 1 FROM transactions WHERE station_id = ? AND tx_key = ? AND "
                "json_extract(doc, '$.status') = 'Active'",
                (station_id, tx_key),
            ).fetchone()
        )

    async def prune_actions(self, before: str, limit: int) -> int:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        cur = s._run(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE createdAt < ? "
            "AND outcome != 'pending' ORDER BY createdAt LIMIT ?)",
            (before, limit),
        )
        return cur.rowcount

    async def probe(self, at: str) -> None:
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        # a row bigger than a page: it needs a page of its own, so a store at its size cap
        # (or a full disk) fails here as the next station message would
        s._run(
            "INSERT INTO health_probe (at, pad) VALUES (?, zeroblob((SELECT page_size "
            "FROM pragma_page_size())))",
            (at,),
        )
        s._run("DELETE FROM health_probe")


class _MeterCursor:
    """Where a pass over the meter values has got to (prune_meter_values), and what it found
    out about the sessions it met: each is looked up once a pass, however its rows are spread."""

    __slots__ = ("after", "held")
    MAX_HELD = 100_000  # sessions remembered; past it, forgotten (looked up again)
    LOOKUPS = 200  # sessions looked up in one batch at most (each ~10 µs)

    def __init__(self) -> None:
        self.after = 0  # the last row id looked at
        self.held: dict[tuple[str, str], bool] = {}  # session -> its values are kept


def _action_columns(doc: dict) -> tuple:
    return (
        doc["_id"],
        doc["chargestation"],
        doc["type"],
        doc["status"],
        doc["outcome"],
        doc["createdAt"],
        doc["updatedAt"],
    )


def _where(**equals: str | None) -> tuple[str, list]:
    """A WHERE clause over the columns given a value (names are ours, never a caller's)."""
    given = {k: v for k, v in equals.items() if v is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in given), list(given.values())
