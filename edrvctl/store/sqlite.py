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

Checkpoints (copying the WAL back into the database file, with its fsync) run off the event
loop: the connection makes none itself (wal_autocheckpoint=0); after a COMMIT, at most once a
CHECKPOINT_EVERY, a PASSIVE checkpoint runs in a worker thread on a connection of its own. Made
by the COMMIT that filled the WAL, one held the loop 5-25 ms several times a second at 1,000
busy stations (off the loop: p99 at 100 stations 15.7 -> 10.5 ms, calls/s +5%). A PASSIVE
checkpoint waits for nobody; the WAL starts over once one has copied all of it.

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
from collections.abc import Callable, Sequence
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
    TOKEN_FILTER_FIELDS,
    ActionQuery,
    EventQuery,
    FrameChunk,
    FrameQuery,
    SessionQuery,
    StationQuery,
    TokenQuery,
    chunk_frames,
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
    # 5: webhooks (fleet/webhooks.py): each one's secret and event-log cursor, and its
    # deliveries (the body kept only while pending)
    """
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    cursor      INTEGER NOT NULL,
    createdAt   TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    lane        TEXT NOT NULL,
    status      TEXT NOT NULL,
    next_at     TEXT,
    updated_at  TEXT NOT NULL,
    body        BLOB,
    doc         TEXT NOT NULL,
    UNIQUE (webhook_id, seq)
);
CREATE INDEX webhook_deliveries_lane ON webhook_deliveries(webhook_id, status, lane, id);
""",
    # 6: sessions: each transaction has an _id, and is listed by station, status and start
    # time (when its start was never seen: its stop time); a session's meter values are
    # found by an index that messages without a transaction do not pay for
    """
ALTER TABLE transactions ADD COLUMN session_id TEXT;
ALTER TABLE transactions ADD COLUMN status TEXT;
ALTER TABLE transactions ADD COLUMN startedAt TEXT;
UPDATE transactions SET session_id = lower(hex(randomblob(12)));
UPDATE transactions SET
    doc = json_set(doc, '$._id', session_id, '$.endpoint',
        (SELECT endpoint FROM chargestations c WHERE c.id = transactions.station_id)),
    status = json_extract(doc, '$.status'),
    startedAt = coalesce(json_extract(doc, '$.startedAt'), json_extract(doc, '$.stoppedAt'));
CREATE UNIQUE INDEX transactions_session ON transactions(session_id);
CREATE INDEX transactions_started ON transactions(startedAt, id);
CREATE INDEX transactions_station_started ON transactions(station_id, startedAt, id);
CREATE INDEX meter_values_tx ON meter_values(station_id, tx_key, id) WHERE tx_key IS NOT NULL;
""",
    # 7: tokens: id tokens (fleet/tokens.py), found by physicalId (case-insensitive, as OCPP
    # compares id tags) and type; the local list last sent to each station; a token's running
    # transactions found by its id tag (ConcurrentTx)
    """
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    physicalId   TEXT NOT NULL COLLATE NOCASE,
    type         TEXT NOT NULL,
    active       INTEGER NOT NULL,
    organization TEXT,
    createdAt    TEXT NOT NULL,
    rev          INTEGER NOT NULL DEFAULT 1,
    doc          TEXT NOT NULL,
    UNIQUE (physicalId, type)
);
CREATE INDEX tokens_created ON tokens(createdAt, id);
CREATE TABLE local_lists (
    station_id  TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX transactions_active_tag ON transactions(json_extract(doc, '$.idTag') COLLATE NOCASE)
    WHERE status = 'Active';
""",
    # 8: the frame log (fleet/frames.py): a station's frames of one flush in one row
    """
CREATE TABLE frame_chunks (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    skip        INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX frame_chunks_station ON frame_chunks(station_id, seq);
""",
    # 9: retention (fleet/retention.py): when each meter value was stored (those stored before
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
IMPORT_CHUNK = 2_000  # tokens written between two turns of the event loop (import_tokens)
CHECKPOINT_EVERY = 1.0  # s at least between two checkpoints (see the module's docstring)
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
        self._checkpointer: sqlite3.Connection | None = None  # its own connection, lazily
        self._checkpointing: asyncio.Future | None = None  # the checkpoint under way
        self._checkpointed = time.monotonic()  # when the last one started
        self._checkpoint_warned = -60.0  # when a failed one was last logged
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
                db.execute("PRAGMA wal_autocheckpoint=0")  # made off the loop: _checkpoint
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
                if self._checkpointing is not None:
                    await asyncio.wait((self._checkpointing,))
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self.db.close()  # (the last connection to close checkpoints what is left)

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
        self._checkpointing = None  # (one of the old loop's ends on its own)
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
                if (
                    self._checkpointing is None
                    and time.monotonic() - self._checkpointed >= CHECKPOINT_EVERY
                ):
                    self._start_checkpoint()
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

    def _start_checkpoint(self) -> None:
        if self._loop is None or self._closed or self.path == ":memory:":
            return
        self._checkpointed = time.monotonic()
        self._checkpointing = fut = self._loop.run_in_executor(None, self._checkpoint)
        fut.add_done_callback(self._checkpoint_done)

    def _checkpoint(self) -> None:
        """In a worker thread: a PASSIVE checkpoint, on a connection one thread uses at a
        time (the next checkpoint starts once this one has ended)."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _checkpoint_done(self, fut: asyncio.Future) -> None:
        self._checkpointing = None
        if not fut.cancelled() and (e := fut.exception()) is not None:
            now = time.monotonic()
            if now - self._checkpoint_warned >= 60:  # a disk that stays full: once a minute
                self._checkpoint_warned = now
                log.warning("store: WAL checkpoint failed (tried again): %s", e)

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

    async def _page(
        self, table: str, where: list[str], args: list, order: str, limit: int | None, offset: int
    ) -> tuple[list[dict], int]:
        """A page of a table's JSON documents (`where`: conditions ANDed; names are ours) and
        how many match in all."""
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        await self._read()
        db = self._db
        total = db.execute(f"SELECT count(*) FROM {table}{sql_where}", args).fetchone()[0]
        rows = db.execute(
            f"SELECT doc FROM {table}{sql_where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else limit, offset),
        ).fetchall()
        self._read_done()
        return [orjson.loads(d) for (d,) in rows], total

    async def _writing(self) -> SqliteStore:
        """Before a write: this unit owns the connection, inside its savepoint."""
        s = self._s
        if s._owner is not self or not s._savepoint:
            await s._begin(self)
        return s

    def _read_done(self) -> None:
        """What was just read may hold uncommitted writes: acknowledge nothing before them."""
        batch = self._s._batch
        if batch is not None:
            self._saw(batch)

    # --- stations ---

    async def create_station(self, doc: dict) -> None:
        s = await self._writing()
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
        s = await self._writing()
        cur = s._run(_SAVE, (*(doc.get(c) for c in _COLUMNS), _json(doc).decode(), sid, rev))
        if cur.rowcount == 0:
            raise StaleRecord(
                f"chargestation {doc.get('endpoint', sid)} was changed or deleted since it was read"
            )
        self._revs[sid] = rev + 1

    async def set_last_message_at(self, seen: dict[str, str]) -> None:
        s = await self._writing()
        s._run(
            "UPDATE chargestations SET lastMessageAt = ?, rev = rev + 1, "
            "doc = json_set(doc, '$.lastMessageAt', ?) WHERE endpoint = ?",
            [(at, at, endpoint) for endpoint, at in seen.items()],
            many=True,
        )

    async def delete_station(self, station_id: str) -> bool:
        s = await self._writing()
        cur = s._run("DELETE FROM chargestations WHERE id = ?", (station_id,))
        for table in (
            "transactions",
            "meter_values",
            "event_log",
            "credentials",
            "actions",
            "local_lists",
            "frame_chunks",
        ):
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
        s = await self._writing()
        # lastDisconnectAt: when it was found disconnected, which is after any connect
        cur = s._run(
            "UPDATE chargestations SET online = 0, rev = rev + 1, doc = json_set(doc, "
            "'$.online', json('false'), '$.lastDisconnectAt', ?) WHERE online = 1",
            (now,),
        )
        return cur.rowcount

    # --- station passwords (hashes only; never part of the record) ---

    async def set_password_hash(self, station_id: str, hashed: str, at: str) -> None:
        s = await self._writing()
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
        s = await self._writing()
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

    # --- the frame log: a row per station and write (FrameChunk), frame ids seq << 16 | index ---

    async def add_frames(self, chunks: Sequence[FrameChunk]) -> list[int]:
        s = await self._writing()
        if any(c.n > MAX_CHUNK for c in chunks):
            raise ValueError(f"at most {MAX_CHUNK} frames in one chunk")
        s._run(
            "INSERT INTO frame_chunks (station_id, first_at, last_at, n, errors, data) "
            "VALUES (?,?,?,?,?,?)",
            list(chunks),
            many=True,
        )
        last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
        # one statement: consecutive seqs
        return [seq << CHUNK_BITS for seq in range(last - len(chunks) + 1, last + 1)]

    async def list_frames(self, query: FrameQuery) -> tuple[list[dict], bool]:
        where: list[str] = ["station_id = ?"]
        args: list[object] = [query.station_id]
        if query.errors:
            where.append("errors > 0")
        if query.since is not None:
            where.append("last_at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("first_at <= ?")
            args.append(query.until)
        forward = query.after is not None
        if query.after is not None:
            where.append("seq >= ?")
            args.append(query.after >> CHUNK_BITS)
        if query.before is not None:
            where.append("seq <= ?")
            args.append(query.before >> CHUNK_BITS)
        actions = set(query.actions)
        low = query.after if query.after is not None else -1
        high = query.before if query.before is not None else 1 << 62
        since = query.since if query.since is not None else -(1 << 62)
        until = query.until if query.until is not None else 1 << 62
        found: list[dict] = []
        more = False
        await self._read()
        try:
            cur = self._db.execute(
                "SELECT seq, skip, data FROM frame_chunks "
                f"WHERE {' AND '.join(where)} ORDER BY seq {'ASC' if forward else 'DESC'}",
                args,
            )
            for seq, skip, data in cur:
                frames = chunk_frames(query.station_id, seq << CHUNK_BITS, data, skip)
                for f in frames if forward else reversed(frames):
                    if (
                        not low < f["seq"] < high
                        or not since <= f["at"] <= until
                        or (actions and f["action"] not in actions)
                        or (query.errors and f["error"] is None)
                    ):
                        continue
                    if len(found) == query.limit:
                        more = True
                        break
                    found.append(f)
                if more:
                    break
            cur.close()
        finally:
            self._read_done()
        if not forward:
            found.reverse()
        return found, more

    async def prune_frames(self, station_id: str, keep: int, limit: int = 500) -> int:
        await self._read()  # (most stations hold less: no write, no lock)
        chunks = self._db.execute(
            "SELECT seq, n, skip FROM frame_chunks WHERE station_id = ? ORDER BY seq DESC",
            (station_id,),
        ).fetchall()
        self._read_done()
        held = 0
        straddles: tuple[int, int] | None = None  # (its seq, its new skip)
        older: int | None = None  # chunks up to this seq all go
        for seq, n, skip in chunks:
            if held >= keep:
                older = seq
                break
            held += n - skip
            if held > keep:  # this chunk straddles the limit: its oldest frames go
                straddles, held = (seq, skip + held - keep), keep
        if straddles is None and older is None:
            return held
        s = await self._writing()
        if straddles is not None:
            s._run("UPDATE frame_chunks SET skip = ? WHERE seq = ?", (straddles[1], straddles[0]))
        if older is not None:
            s._run(
                "DELETE FROM frame_chunks WHERE seq IN (SELECT seq FROM frame_chunks "
                "WHERE station_id = ? AND seq <= ? ORDER BY seq LIMIT ?)",
                (station_id, older, limit),
            )
            held += self._db.execute(
                "SELECT coalesce(sum(n - skip), 0) FROM frame_chunks "
                "WHERE station_id = ? AND seq <= ?",
                (station_id, older),
            ).fetchone()[0]
        return held

    async def expire_frames(self, before: int, limit: int = 500) -> int:
        await self._read()
        # chunks are written in time order: the oldest ones by seq are the oldest in time
        gone = [
            (seq,)
            for seq, last_at in self._db.execute(
                "SELECT seq, last_at FROM frame_chunks ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            if last_at < before
        ]
        self._read_done()
        if gone:
            s = await self._writing()
            s._run("DELETE FROM frame_chunks WHERE seq = ?", gone, many=True)
        return len(gone)

    async def seen_unknown(self, endpoint: str, at: str, info: dict, times: int, keep: int) -> bool:
        """Count `times` attempts of an endpoint that is no station; True if it is new to the
        list. The list keeps the `keep` endpoints seen last."""
        s = await self._writing()
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
        s = await self._writing()
        s._run("DELETE FROM unknown_endpoints WHERE endpoint = ?", (endpoint,))

    async def start_transaction(self, tx: dict) -> str:
        s = await self._writing()
        try:
            cur = s._run(
                "INSERT INTO transactions (station_id, tx_key, session_id, status, startedAt, "
                "doc) VALUES (?,?,?,?,?,?)",
                (tx["station_id"], tx.get("tx_key"), *_session_columns(tx), _json(tx)),
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
        s = await self._writing()  # the read and the write are one step
        tx = await self.get_transaction(station_id, tx_key)
        if tx is None:
            return None
        tx.update(fields)
        _, status, started = _session_columns(tx)
        s._run(
            "UPDATE transactions SET status = ?, startedAt = ?, doc = ? "
            "WHERE station_id = ? AND tx_key = ?",
            (status, started, _json(tx), station_id, tx_key),
        )
        return tx

    async def transactions(self, station_id: str | None = None) -> list[dict]:
        where, args = _where(station_id=station_id)
        await self._read()
        rows = self._db.execute(f"SELECT doc FROM transactions{where} ORDER BY id", args).fetchall()
        self._read_done()
        return [orjson.loads(d) for (d,) in rows]

    async def get_session(self, session_id: str) -> dict | None:
        await self._read()
        row = self._db.execute(
            "SELECT doc FROM transactions WHERE session_id = ?", (session_id,)
        ).fetchone()
        self._read_done()
        return orjson.loads(row[0]) if row else None

    async def list_sessions(self, query: SessionQuery) -> tuple[list[dict], int]:
        where: list[str] = ["session_id IS NOT NULL"]
        args: list[object] = []
        if query.station_id is not None:
            where.append("station_id = ?")
            args.append(query.station_id)
        if query.status is not None:
            where.append("status = ?")
            args.append(query.status)
        if query.active is not None:
            where.append("status = 'Active'" if query.active else "status IS NOT 'Active'")
        if query.since is not None:
            where.append("startedAt >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("startedAt <= ?")
            args.append(query.until)
        return await self._page(
            "transactions", where, args, "startedAt DESC, id DESC", query.limit, query.offset
        )

    async def add_meter_values(
        self, station_id: str, tx_key: str | None, connector: int, values: list[dict]
    ) -> None:
        s = await self._writing()
        s._run(
            "INSERT INTO meter_values (station_id, tx_key, connector, doc, at) "
            f"VALUES (?,?,?,?,{_NOW})",
            (station_id, tx_key, connector, _json(values)),
        )

    async def meter_values(
        self,
        station_id: str | None = None,
        tx_key: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest: bool = False,
    ) -> list[dict]:
        where, args = _where(station_id=station_id, tx_key=tx_key)
        await self._read()
        rows = self._db.execute(
            f"SELECT station_id, tx_key, connector, doc FROM meter_values{where} "
            f"ORDER BY id {'DESC' if newest else 'ASC'} LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else limit, offset),
        ).fetchall()
        self._read_done()
        return [
            {"station_id": sid, "tx_key": key, "connector": c, "values": orjson.loads(d)}
            for sid, key, c, d in rows
        ]

    # --- actions ---

    async def create_action(self, doc: dict) -> None:
        s = await self._writing()
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
        s = await self._writing()
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
        # newest first; within one millisecond, the one created last first (rowid)
        return await self._page(
            "actions", where, args, "createdAt DESC, rowid DESC", query.limit, query.offset
        )

    async def fail_pending_actions(self, reason: str, now: str) -> int:
        s = await self._writing()
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

    # --- webhooks ---

    async def create_webhook(self, doc: dict, secret: str, cursor: int) -> None:
        s = await self._writing()
        try:
            s._run(
                "INSERT INTO webhooks (id, secret, cursor, createdAt, doc) VALUES (?,?,?,?,?)",
                (doc["_id"], secret, cursor, doc["createdAt"], _json(doc).decode()),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"webhook {doc['_id']} exists") from None

    async def get_webhook(self, webhook_id: str) -> dict | None:
        await self._read()
        row = self._db.execute("SELECT doc FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
        self._read_done()
        return orjson.loads(row[0]) if row else None

    async def list_webhooks(self) -> list[dict]:
        await self._read()
        rows = self._db.execute("SELECT doc FROM webhooks ORDER BY createdAt, rowid").fetchall()
        self._read_done()
        return [orjson.loads(d) for (d,) in rows]

    async def update_webhook(self, doc: dict, cursor: int | None = None) -> bool:
        s = await self._writing()
        cur = s._run(
            "UPDATE webhooks SET doc = ?, cursor = coalesce(?, cursor) WHERE id = ?",
            (_json(doc).decode(), cursor, doc["_id"]),
        )
        return cur.rowcount > 0

    async def set_webhook_secret(self, webhook_id: str, secret: str) -> bool:
        s = await self._writing()
        cur = s._run("UPDATE webhooks SET secret = ? WHERE id = ?", (secret, webhook_id))
        return cur.rowcount > 0

    async def delete_webhook(self, webhook_id: str) -> bool:
        s = await self._writing()
        cur = s._run("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
        s._run("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
        return cur.rowcount > 0

    async def webhook_internals(self) -> dict[str, tuple[str, int]]:
        await self._read()
        rows = self._db.execute("SELECT id, secret, cursor FROM webhooks").fetchall()
        self._read_done()
        return {i: (secret, cursor) for i, secret, cursor in rows}

    async def set_webhook_cursors(self, cursors: dict[str, int]) -> None:
        s = await self._writing()
        s._run(
            "UPDATE webhooks SET cursor = max(cursor, ?) WHERE id = ?",
            [(seq, i) for i, seq in cursors.items()],
            many=True,
        )

    async def add_deliveries(self, webhook_id: str, deliveries: list[dict]) -> int:
        s = await self._writing()
        rows = []
        for d in deliveries:
            doc = {k: v for k, v in d.items() if k not in _DELIVERY_COLUMNS}
            rows.append(
                (
                    webhook_id,
                    d["seq"],
                    d["lane"],
                    doc["status"],
                    doc.get("nextAttemptAt"),
                    doc["updatedAt"],
                    d["body"],
                    _json(doc).decode(),
                    webhook_id,
                )
            )
        # not for a webhook deleted meanwhile; an event it has already is kept as it is
        cur = s._run(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, seq, lane, status, "
            "next_at, updated_at, body, doc) SELECT ?,?,?,?,?,?,?,? "
            "WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?)",
            rows,
            many=True,
        )
        return cur.rowcount

    async def delivery_heads(self, webhook_id: str, limit: int) -> list[dict]:
        await self._read()
        rows = self._db.execute(
            "SELECT d.id, d.seq, d.lane, d.body, d.doc FROM webhook_deliveries d JOIN "
            "(SELECT min(id) AS id FROM webhook_deliveries WHERE webhook_id = ? AND "
            "status = 'pending' GROUP BY lane) h ON h.id = d.id "
            "ORDER BY d.next_at, d.id LIMIT ?",
            (webhook_id, limit),
        ).fetchall()
        self._read_done()
        return [
            {"_id": str(i), **orjson.loads(doc), "seq": seq, "lane": lane, "body": body}
            for i, seq, lane, body, doc in rows
        ]

    async def save_delivery(self, delivery: dict) -> bool:
        s = await self._writing()
        doc = {k: v for k, v in delivery.items() if k not in _DELIVERY_COLUMNS and k != "_id"}
        cur = s._run(
            "UPDATE webhook_deliveries SET status = ?, next_at = ?, updated_at = ?, doc = ?, "
            "body = CASE ? WHEN 'pending' THEN body END WHERE id = ? AND status = 'pending'",
            (
                doc["status"],
                doc.get("nextAttemptAt"),
                doc["updatedAt"],
                _json(doc).decode(),
                doc["status"],
                int(delivery["_id"]),
            ),
        )
        return cur.rowcount > 0

    async def list_deliveries(
        self, webhook_id: str, status: str | None = None, limit: int | None = 100
    ) -> list[dict]:
        where, args = _where(webhook_id=webhook_id, status=status)
        await self._read()
        rows = self._db.execute(
            f"SELECT id, doc FROM webhook_deliveries{where} ORDER BY seq DESC LIMIT ?",
            (*args, -1 if limit is None else limit),
        ).fetchall()
        self._read_done()
        return [{"_id": str(i), **orjson.loads(doc)} for i, doc in rows]

    async def pending_deliveries(self) -> dict[str, int]:
        await self._read()
        rows = self._db.execute(
            "SELECT webhook_id, count(*) FROM webhook_deliveries WHERE status = 'pending' "
            "GROUP BY webhook_id"
        ).fetchall()
        self._read_done()
        return dict(rows)

    async def fail_oldest_deliveries(self, webhook_id: str, keep: int, error: str, now: str) -> int:
        s = await self._writing()
        cur = s._run(
            "UPDATE webhook_deliveries SET status = 'failed', next_at = NULL, updated_at = ?1, "
            "body = NULL, doc = json_set(doc, '$.status', 'failed', '$.lastError', ?2, "
            "'$.nextAttemptAt', json('null'), '$.updatedAt', ?1) WHERE id IN (SELECT id FROM "
            "webhook_deliveries WHERE webhook_id = ?3 AND status = 'pending' "
            "ORDER BY id DESC LIMIT -1 OFFSET ?4)",
            (now, error, webhook_id, keep),
        )
        return cur.rowcount

    async def prune_deliveries(self, webhook_id: str, keep: int, before: str) -> int:
        s = await self._writing()
        cur = s._run(
            "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND status != 'pending' "
            "AND (updated_at < ?2 OR id IN (SELECT id FROM webhook_deliveries WHERE "
            "webhook_id = ?1 AND status != 'pending' ORDER BY id DESC LIMIT -1 OFFSET ?3))",
            (webhook_id, before, keep),
        )
        return cur.rowcount

    # --- id tokens (fleet/tokens.py) ---

    async def create_token(self, doc: dict) -> None:
        s = await self._writing()
        try:
            s._run(_TOKEN_INSERT, (*_token_columns(doc), _json(doc).decode()))
        except sqlite3.IntegrityError:
            raise Conflict(
                f"a token {doc['physicalId']!r} of type {doc['type']} exists",
                hint="change that one (`edrvctl tokens inspect`), or give another type",
            ) from None
        self._revs["token:" + doc["_id"]] = 1

    async def import_tokens(self, docs: list[dict]) -> int:
        s = await self._writing()
        before = s.db.execute("SELECT count(*) FROM tokens").fetchone()[0]
        for start in range(0, len(docs), IMPORT_CHUNK):
            if start:  # the event loop goes on between chunks (pings, heartbeats)
                await asyncio.sleep(0)
            # a token that exists (physicalId and type) is updated: it keeps its _id,
            # createdAt and meta_data
            s._run(
                _TOKEN_INSERT + " ON CONFLICT (physicalId, type) DO UPDATE SET "
                "physicalId = excluded.physicalId, active = excluded.active, "
                "organization = excluded.organization, rev = rev + 1, "
                "doc = json_set(excluded.doc, '$._id', tokens.id, '$.createdAt', "
                "tokens.createdAt, '$.meta_data', json(json_extract(tokens.doc, '$.meta_data')))",
                [
                    (*_token_columns(d), _json(d).decode())
                    for d in docs[start : start + IMPORT_CHUNK]
                ],
                many=True,
            )
        return s.db.execute("SELECT count(*) FROM tokens").fetchone()[0] - before

    def _tokens(self, rows: list) -> list[dict]:
        docs = []
        for token_id, rev, doc in rows:
            self._revs["token:" + token_id] = rev
            docs.append(orjson.loads(doc))
        return docs

    async def get_token(self, token_id: str) -> dict | None:
        await self._read()
        rows = self._db.execute(
            "SELECT id, rev, doc FROM tokens WHERE id = ?", (token_id,)
        ).fetchall()
        self._read_done()
        found = self._tokens(rows)
        return found[0] if found else None

    async def find_tokens(self, physical_id: str, type: str | None = None) -> list[dict]:
        sql = "SELECT id, rev, doc FROM tokens WHERE physicalId = ?"
        args: tuple = (physical_id,)
        if type is not None:
            sql += " AND type = ?"
            args = (physical_id, type)
        await self._read()
        rows = self._db.execute(sql + " ORDER BY createdAt, id", args).fetchall()
        self._read_done()
        return self._tokens(rows)

    async def save_token(self, doc: dict) -> None:
        key = "token:" + doc["_id"]
        rev = self._revs.get(key)
        if rev is None:
            raise StaleRecord(f"token {doc['_id']} was not read in this unit of work")
        s = await self._writing()
        _id, *columns = _token_columns(doc)
        try:
            cur = s._run(
                "UPDATE tokens SET physicalId = ?, type = ?, active = ?, organization = ?, "
                "createdAt = ?, doc = ?, rev = rev + 1 WHERE id = ? AND rev = ?",
                (*columns, _json(doc).decode(), _id, rev),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"a token {doc['physicalId']!r} of type {doc['type']} exists") from None
        if cur.rowcount == 0:
            raise StaleRecord(f"token {_id} was changed or deleted since it was read")
        self._revs[key] = rev + 1

    async def delete_token(self, token_id: str) -> bool:
        s = await self._writing()
        self._revs.pop("token:" + token_id, None)
        return s._run("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

    async def list_tokens(self, query: TokenQuery) -> tuple[list[dict], int]:
        where, args = [], []
        for name, value in query.equals.items():
            if name not in TOKEN_FILTER_FIELDS:
                raise UsageError(
                    f"cannot filter tokens on {name!r}; fields: {', '.join(TOKEN_FILTER_FIELDS)}"
                )
            where.append(f"{name} IS ?")
            args.append(value)
        if query.usable_in is not None:
            where.append("(organization IS NULL OR organization = ?)")
            args.append(query.usable_in)
        order = "DESC" if query.newest_first else "ASC"
        return await self._page(
            "tokens", where, args, f"createdAt {order}, id {order}", query.limit, query.offset
        )

    async def active_transactions(self, id_tag: str) -> list[dict]:
        await self._read()
        rows = self._db.execute(
            "SELECT doc FROM transactions WHERE json_extract(doc, '$.idTag') = ? COLLATE NOCASE "
            "AND status = 'Active' ORDER BY id",
            (id_tag,),
        ).fetchall()
        self._read_done()
        return [orjson.loads(d) for (d,) in rows]

    async def get_local_list(self, station_id: str) -> dict | None:
        await self._read()
        row = self._db.execute(
            "SELECT doc FROM local_lists WHERE station_id = ?", (station_id,)
        ).fetchone()
        self._read_done()
        return orjson.loads(row[0]) if row else None

    async def set_local_list(self, station_id: str, doc: dict) -> None:
        s = await self._writing()
        s._run(
            "INSERT OR REPLACE INTO local_lists (station_id, version, doc) VALUES (?,?,?)",
            (station_id, doc["version"], _json(doc).decode()),
        )

    # --- retention (fleet/retention.py) and health ---

    async def prune_events(self, before: str, limit: int, keep: int | None = None) -> int:
        s = await self._writing()
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
        s = await self._writing()
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
        s = await self._writing()
        cur = s._run(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE createdAt < ? "
            "AND outcome != 'pending' ORDER BY createdAt LIMIT ?)",
            (before, limit),
        )
        return cur.rowcount

    async def probe(self, at: str) -> None:
        s = await self._writing()
        # a row bigger than a page: it needs a page of its own, so a store at its size cap
        # (or a full disk) fails here as the next station message would
        s._run(
            "INSERT INTO health_probe (at, pad) VALUES (?, zeroblob((SELECT page_size "
            "FROM pragma_page_size())))",
            (at,),
        )
        s._run("DELETE FROM health_probe")


# keys of a delivery (fleet/webhooks.py) that are columns, not part of its stored document
_DELIVERY_COLUMNS = ("seq", "lane", "body")

_TOKEN_INSERT = (
    "INSERT INTO tokens (id, physicalId, type, active, organization, createdAt, rev, doc) "
    "VALUES (?,?,?,?,?,?,1,?)"
)


def _token_columns(doc: dict) -> tuple:
    return (
        doc["_id"],
        doc["physicalId"],
        doc["type"],
        doc["active"],
        doc.get("organization"),
        doc["createdAt"],
    )


CHUNK_BITS = 16  # a frame's id: its chunk's seq << CHUNK_BITS | its index in the chunk
MAX_CHUNK = 1 << CHUNK_BITS


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


def _session_columns(tx: dict) -> tuple:
    """The columns a transaction is found and listed by: its session `_id`, status, and
    start time (when its start was never seen: its stop time, else when it was recorded)."""
    started = tx.get("startedAt") or tx.get("stoppedAt") or tx.get("createdAt")
    return tx.get("_id"), tx.get("status"), started


def _where(**equals: str | None) -> tuple[str, list]:
    """A WHERE clause over the columns given a value (names are ours, never a caller's)."""
    given = {k: v for k, v in equals.items() if v is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in given), list(given.values())
