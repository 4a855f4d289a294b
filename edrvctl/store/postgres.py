"""The PostgreSQL store: `serve --store postgresql://USER@HOST:PORT/DB`, for one node or several.

The same Store / Unit contract as the SQLite store, and the same rows: a station's record is one
JSON text (stored and sent on as it is), with copies of the fields lists filter and sort on in
indexed columns, and `rev` for compare-and-set saves (`UPDATE ... WHERE id = $1 AND rev = $2`).
Documents are `text`, never `jsonb`: jsonb refuses `\\u0000` (hostile stations send it) and
reorders keys, so what a document says is changed in Python and written back.

Units: a unit takes one pooled connection at its first operation and keeps it to its end. Reads
before its first write run outside a transaction (they see only committed data, so nothing read
can be acknowledged before it is durable); its first write opens a transaction, and its end
COMMITs it (ROLLBACK if it raised). `synchronous_commit` stays on: PostgreSQL groups the WAL
flushes of concurrent commits itself, which is this backend's group commit. A lost connection,
a database that is down, a failed COMMIT: errors.StoreUnavailable (the station gets a CALLERROR
and sends again; nothing acknowledged is lost), and the pool reconnects by itself.

Events: transactions commit out of order, so an event's `seq` is its transaction's id times
2**16 plus its index in the unit. Every transaction whose id is below the oldest one still
running (in this database) has ended, and every later one gets a higher id: events below
`that id << 16` are final, and a reader that takes only those, in seq order, never skips one that
commits late (a bigserial seq would: a transaction that got its id first may take a higher seq
and commit first). A tailer task reads them and hands them to `on_events`: woken right after a
local commit that added events, by `LISTEN edrv_events` (other nodes), and every second (NOTIFY
is not durable). A process sends at most one NOTIFY per NOTIFY_EVERY, on its own connection and
never inside a data transaction (NOTIFY takes a global lock at COMMIT: 3-6x fewer commits/s).

Fencing (several nodes): `claims` holds the stations this node owns, with their epoch. A unit
that wrote for one of them checks, just before its COMMIT, that station_owner still gives it to
this node at that epoch (FOR SHARE, so a claim waits for the commit); if not, it rolls back and
raises errors.Fenced. Writes for other stations (admin writes from any node) are not fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson

from edrvctl.errors import (
    Conflict,
    EdrvError,
    Fenced,
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
    redact,
)
from edrvctl.store.sqlite import CHUNK_BITS, IMPORT_CHUNK, MAX_CHUNK, _MeterCursor

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("edrvctl.store")

# MIGRATIONS[n] takes a database from schema n to n + 1. Append only; never edit a shipped step.
MIGRATIONS: list[str] = [
    # 1: everything SQLite's schema 9 has, and the cluster's nodes and station owners
    """
CREATE TABLE chargestations (
    id            text COLLATE "C" PRIMARY KEY,
    endpoint      text COLLATE "C" NOT NULL UNIQUE,
    protocol      text COLLATE "C" NOT NULL,
    online        boolean NOT NULL,
    active        boolean NOT NULL,
    status        text COLLATE "C",
    location      text COLLATE "C",
    organization  text COLLATE "C",
    createdAt     text COLLATE "C" NOT NULL,
    updatedAt     text COLLATE "C" NOT NULL,
    lastMessageAt text COLLATE "C",
    lastConnectAt text COLLATE "C",
    rev           bigint NOT NULL DEFAULT 1,
    doc           text NOT NULL
);
CREATE INDEX cs_created ON chargestations(createdAt, id);
CREATE INDEX cs_updated ON chargestations(updatedAt, id);
CREATE INDEX cs_online ON chargestations(online);
CREATE TABLE transactions (
    id          bigserial PRIMARY KEY,
    station_id  text COLLATE "C" NOT NULL,
    tx_key      text COLLATE "C",
    session_id  text COLLATE "C" UNIQUE,
    status      text COLLATE "C",
    startedAt   text COLLATE "C",
    id_tag      text COLLATE "C",
    doc         text NOT NULL,
    UNIQUE (station_id, tx_key)
);
CREATE INDEX transactions_started ON transactions(startedAt, id);
CREATE INDEX transactions_station_started ON transactions(station_id, startedAt, id);
CREATE INDEX transactions_active_tag ON transactions(lower(id_tag)) WHERE status = 'Active';
CREATE TABLE meter_values (
    id          bigserial PRIMARY KEY,
    station_id  text COLLATE "C" NOT NULL,
    tx_key      text COLLATE "C",
    connector   bigint NOT NULL,
    at          text COLLATE "C" NOT NULL,
    doc         text NOT NULL
);
CREATE INDEX meter_values_tx ON meter_values(station_id, tx_key, id) WHERE tx_key IS NOT NULL;
CREATE INDEX meter_values_session ON meter_values(station_id, tx_key, at);
CREATE TABLE event_log (
    seq         bigint PRIMARY KEY,  -- transaction id << 16 | index in the unit
    type        text COLLATE "C" NOT NULL,
    station_id  text COLLATE "C",
    endpoint    text COLLATE "C",
    at          text COLLATE "C" NOT NULL,
    doc         text NOT NULL
);
CREATE INDEX event_log_station ON event_log(station_id, seq);
CREATE INDEX event_log_at ON event_log(at);
CREATE TABLE credentials (
    station_id  text COLLATE "C" PRIMARY KEY,
    hash        text COLLATE "C" NOT NULL,
    created_at  text COLLATE "C" NOT NULL
);
CREATE TABLE actions (
    id          text COLLATE "C" PRIMARY KEY,
    n           bigserial,
    station_id  text COLLATE "C" NOT NULL,
    type        text COLLATE "C" NOT NULL,
    status      text COLLATE "C" NOT NULL,
    outcome     text COLLATE "C" NOT NULL,
    batch       text COLLATE "C",
    createdAt   text COLLATE "C" NOT NULL,
    updatedAt   text COLLATE "C" NOT NULL,
    rev         bigint NOT NULL DEFAULT 1,
    doc         text NOT NULL
);
CREATE INDEX actions_created ON actions(createdAt, n);
CREATE INDEX actions_station ON actions(station_id, createdAt);
CREATE INDEX actions_outcome ON actions(outcome);
CREATE TABLE unknown_endpoints (
    endpoint    text COLLATE "C" PRIMARY KEY,
    seen        bigint NOT NULL,
    firstSeenAt text COLLATE "C" NOT NULL,
    lastSeenAt  text COLLATE "C" NOT NULL,
    doc         text NOT NULL
);
CREATE INDEX unknown_last ON unknown_endpoints(lastSeenAt);
CREATE TABLE webhooks (
    id          text COLLATE "C" PRIMARY KEY,
    n           bigserial,
    secret      text COLLATE "C" NOT NULL,
    cursor      bigint NOT NULL,
    createdAt   text COLLATE "C" NOT NULL,
    doc         text NOT NULL
);
CREATE TABLE webhook_deliveries (
    id          bigserial PRIMARY KEY,
    webhook_id  text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    lane        text COLLATE "C" NOT NULL,
    status      text COLLATE "C" NOT NULL,
    next_at     text COLLATE "C",
    updated_at  text COLLATE "C" NOT NULL,
    body        bytea,
    doc         text NOT NULL,
    UNIQUE (webhook_id, seq)
);
CREATE INDEX webhook_deliveries_lane ON webhook_deliveries(webhook_id, status, lane, id);
CREATE TABLE tokens (
    id           text COLLATE "C" PRIMARY KEY,
    physicalId   text COLLATE "C" NOT NULL,
    type         text COLLATE "C" NOT NULL,
    active       boolean NOT NULL,
    organization text COLLATE "C",
    createdAt    text COLLATE "C" NOT NULL,
    rev          bigint NOT NULL DEFAULT 1,
    doc          text NOT NULL
);
CREATE UNIQUE INDEX tokens_physical ON tokens(lower(physicalId), type);
CREATE INDEX tokens_created ON tokens(createdAt, id);
CREATE TABLE local_lists (
    station_id  text COLLATE "C" PRIMARY KEY,
    version     bigint NOT NULL,
    doc         text NOT NULL
);
CREATE TABLE frame_chunks (
    seq         bigserial PRIMARY KEY,
    station_id  text COLLATE "C" NOT NULL,
    first_at    bigint NOT NULL,
    last_at     bigint NOT NULL,
    n           integer NOT NULL,
    skip        integer NOT NULL DEFAULT 0,
    errors      integer NOT NULL,
    data        bytea NOT NULL
);
CREATE INDEX frame_chunks_station ON frame_chunks(station_id, seq);
CREATE TABLE health_probe (
    id          bigserial PRIMARY KEY,
    at          text COLLATE "C" NOT NULL,
    pad         bytea
);
CREATE TABLE nodes (
    node_id     text COLLATE "C" PRIMARY KEY,
    api_url     text COLLATE "C",
    public_url  text COLLATE "C",
    lease_until timestamptz NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE TABLE station_owner (
    station_id  text COLLATE "C" PRIMARY KEY,
    node_id     text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL,
    claimed_at  timestamptz NOT NULL
);
""",
    # 2: the cluster's routed commands, and whether a station's owner still holds its socket
    # (store/pgcluster.py)
    """
ALTER TABLE station_owner ADD COLUMN connected boolean NOT NULL DEFAULT true;
ALTER TABLE station_owner ADD COLUMN endpoint text COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX station_owner_node ON station_owner (node_id) WHERE connected;
CREATE TABLE node_commands (
    id bigserial PRIMARY KEY,
    station_id text COLLATE "C" NOT NULL,
    endpoint text COLLATE "C" NOT NULL,
    node_id text COLLATE "C" NOT NULL,
    epoch bigint NOT NULL,
    reply_node text COLLATE "C" NOT NULL,
    kind text COLLATE "C" NOT NULL,
    body jsonb NOT NULL,
    status text COLLATE "C" NOT NULL DEFAULT 'queued',
    result jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    deadline timestamptz NOT NULL
);
CREATE INDEX node_commands_open ON node_commands (node_id) WHERE status <> 'done';
CREATE INDEX node_commands_station ON node_commands (station_id) WHERE status <> 'done';
CREATE INDEX node_commands_done ON node_commands (created_at) WHERE status = 'done';
""",
]
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x65647276  # pg_advisory_lock key: nodes starting at once migrate one by one

CHANNEL = "edrv_events"
NOTIFY_EVERY = 0.05  # s: at most one NOTIFY per process in this time
POLL_EVERY = 1.0  # s: the tailer reads anyway (a NOTIFY may be lost)
RETRY_SOON = 0.01  # s: events committed but held behind a transaction still running
TAIL_EVERY = 0.005  # s: the tailer reads at most this often (at high rates, one read a batch)
TAIL_PAGE = 1000  # events handed over at once
EVENT_BITS = 16  # an event's seq: its transaction id << EVENT_BITS | its index in the unit
MAX_EVENTS = 1 << EVENT_BITS  # events in one unit at most
# Connections per process. A unit holds one from its first statement to its COMMIT, across
# turns of a busy event loop: 16 held 1,000 busy stations to a fifth of SQLite's calls/s (units
# queued for a connection, some past ACQUIRE_TIMEOUT), 32 to about half (bench/store.py).
# PostgreSQL's default max_connections (100) takes 3 nodes of 32 (plus a LISTEN each).
POOL_SIZE = 32
ACQUIRE_TIMEOUT = 30.0  # s: a unit waits this long for a pooled connection (an overload)
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0  # s: a statement that takes longer is a store that is not answering
FRAMES_PAGE = 64  # chunks read at once by list_frames
SEEN_TRIES = 3  # set_last_message_at: a station saved meanwhile each time is stamped next flush

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
_BOOL_COLUMNS = ("online", "active")
_INSERT = (
    f"INSERT INTO chargestations (id, endpoint, {', '.join(_COLUMNS)}, doc, rev) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 4))}, 1)"
)
_SAVE = (
    f"UPDATE chargestations SET {', '.join(f'{c} = ${i}' for i, c in enumerate(_COLUMNS, 1))}, "
    f"doc = ${len(_COLUMNS) + 1}, rev = rev + 1 "
    f"WHERE id = ${len(_COLUMNS) + 2} AND rev = ${len(_COLUMNS) + 3}"
)
# Events below this seq are final: no transaction still running can commit one below it. It is
# the oldest transaction running (in this snapshot), or the next to start. Transaction ids are
# the whole server's: those pg_stat_activity shows in another database are left out (a long one
# there must not hold our events back); one it does not show (ended meanwhile, or hidden from
# this role) counts, which only delays.
_SAFE = f"""(SELECT coalesce(
    (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE x::text::bigint % 4294967296 NOT IN (
        SELECT backend_xid::text::bigint FROM pg_stat_activity
        WHERE datname IS DISTINCT FROM current_database() AND backend_xid IS NOT NULL)),
    pg_snapshot_xmax(pg_current_snapshot())::text::bigint) << {EVENT_BITS})"""
_EVENT_COLUMNS = "seq, type, station_id, endpoint, at, doc"


def _json(value) -> str:
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError) as e:
        raise InvalidBody(f"this value cannot be stored: {e}") from None


def _bool(value: Any) -> Any:
    return value if value is None or isinstance(value, bool) else bool(value)


def _glob_like(pattern: str) -> str:
    """A type glob (`session.*`) as a LIKE pattern."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _utcnow() -> str:
    from edrvctl import model

    return model.utcnow()


class _Args:
    """Positional parameters for a statement being built: `add` gives the `$n` of a value."""

    __slots__ = ("values",)

    def __init__(self, *values: Any):
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


async def _no_reset(con: asyncpg.Connection) -> None:
    """Units leave no session state behind (each ends its transaction; LISTEN has its own
    connection): skip asyncpg's reset, a round trip at every release."""


class PostgresStore:
    def __init__(self, url: str, readonly: bool = False, pool_size: int = POOL_SIZE):
        self.url = url
        self.readonly = readonly
        self.pool_size = pool_size
        self._on_events: Callable[[list[dict]], None] | None = None
        self.on_commit: Callable[[float], None] | None = None
        # station _id -> the ownership epoch this node holds (several nodes; fleet sets it)
        self.claims: dict[str, int] = {}
        self.node_id: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._starting: asyncio.Lock | None = None
        self._migrated = False
        self._closed = False
        self._tailer: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._listener: asyncpg.Connection | None = None
        self._notify_due = False  # a NOTIFY is scheduled
        self._notified_at = 0.0

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    def unit(self) -> PostgresUnit:
        return PostgresUnit(self)

    # --- the pool, following the running event loop ---

    def _bind(self) -> None:
        """A store outlives a loop in tests and tools (each asyncio.run is a new loop); a pool
        belongs to one: a new loop drops the old pool (its connections with it)."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        old, self._pool = self._pool, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.terminate()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.terminate()
            self._listener = None
        self._tailer = None
        self._wake = None
        self._starting = asyncio.Lock()
        self._notify_due = False

    @property
    def on_events(self) -> Callable[[list[dict]], None] | None:
        return self._on_events

    @on_events.setter
    def on_events(self, publish: Callable[[list[dict]], None] | None) -> None:
        """Set once the store is open (serve opens it first): the tailer starts now."""
        self._on_events = publish
        if publish is not None and self._pool is not None and self._tailer is None:
            self._start_tailer()

    def _start_tailer(self) -> None:
        async def tail() -> None:
            while True:  # (the database may be down a while)
                try:
                    start = await self._safe_seq()
                    break
                except StoreUnavailable as e:
                    log.warning("events: %s; trying again", e)
                    await asyncio.sleep(POLL_EVERY)
            await self._tail(start)

        self._wake = asyncio.Event()
        self._tailer = asyncio.create_task(tail())

    async def open(self) -> None:
        """Connect, migrate, start the event tailer (the first unit does it otherwise)."""
        self._bind()
        await self._get_pool()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        pool = self._pool
        if pool is not None:
            return pool
        assert self._starting is not None
        async with self._starting:
            if self._pool is None:
                import asyncpg

                if not self._migrated:
                    await self._migrate()
                try:
                    self._pool = await asyncpg.create_pool(
                        self.url,
                        min_size=1,
                        max_size=self.pool_size,
                        reset=_no_reset,
                        timeout=CONNECT_TIMEOUT,
                        command_timeout=COMMAND_TIMEOUT,
                        max_inactive_connection_lifetime=60,
                    )
                except (TimeoutError, OSError, asyncpg.PostgresError) as e:
                    raise StoreUnavailable(self._cannot(e)) from None
                if self.on_events is not None and self._tailer is None:
                    self._start_tailer()
        assert self._pool is not None
        return self._pool

    def _cannot(self, e: BaseException) -> str:
        return f"the store at {redact(self.url)} cannot be reached: {type(e).__name__}: {e}"

    async def _connect(self) -> asyncpg.Connection:
        import asyncpg

        try:
            return await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, OSError, asyncpg.PostgresError) as e:
            raise StoreUnavailable(self._cannot(e)) from None
        except ValueError as e:  # a malformed URL
            raise UsageError(f"cannot open the store at {redact(self.url)}: {e}") from None

    async def _migrate(self) -> None:
        con = await self._connect()
        try:
            # several nodes may start at once: one migrates, the others wait and find it done
            await con.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
            try:
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                version = await con.fetchval(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations"
                )
                if version > SCHEMA_VERSION:
                    raise UsageError(
                        f"the store at {redact(self.url)} has schema {version}, newer than this "
                        f"edrvctl ({SCHEMA_VERSION}): upgrade edrvctl"
                    )
                if version < SCHEMA_VERSION:
                    if self.readonly:
                        raise UsageError(
                            f"cannot open the store at {redact(self.url)} read-only: it has "
                            f"schema {version}, this edrvctl reads {SCHEMA_VERSION}"
                        )
                    if version:
                        log.info(
                            "store: migrating %s from schema %d to %d",
                            redact(self.url),
                            version,
                            SCHEMA_VERSION,
                        )
                    async with con.transaction():  # a failed step leaves it as it was
                        for n in range(version, SCHEMA_VERSION):
                            await con.execute(MIGRATIONS[n])
                            await con.execute(
                                "INSERT INTO schema_migrations (version) VALUES ($1)", n + 1
                            )
            finally:
                await con.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        except EdrvError:
            raise
        except Exception as e:
            raise StoreUnavailable(self._cannot(e)) from None
        finally:
            await con.close()
        self._migrated = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not asyncio.get_running_loop():
            self._bind()  # a pool of a loop gone: nothing to wait for
            return
        tailer, self._tailer = self._tailer, None
        if tailer is not None:
            tailer.cancel()
            with contextlib.suppress(BaseException):
                await tailer
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), CONNECT_TIMEOUT)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except (TimeoutError, Exception):
                pool.terminate()

    # --- events: the tailer ---

    async def _safe_seq(self) -> int:
        """Where the tailer starts: every event below it is final (and old news)."""
        assert self._pool is not None
        try:
            return await self._pool.fetchval(f"SELECT {_SAFE} - 1")
        except Exception as e:
            raise StoreUnavailable(self._cannot(e)) from None

    def _committed_events(self) -> None:
        """A local unit committed events: wake the tailer, and tell the other nodes soon."""
        if self._wake is not None:
            self._wake.set()
        if not self._notify_due:
            self._notify_due = True
            delay = max(0.0, self._notified_at + NOTIFY_EVERY - time.monotonic())
            assert self._loop is not None
            self._loop.call_later(delay, self._notify_now)

    def _notify_now(self) -> None:
        if self._closed or self._loop is not asyncio.get_event_loop():
            return
        self._loop.create_task(self._notify())

    async def _notify(self) -> None:
        self._notify_due = False
        self._notified_at = time.monotonic()
        con = self._listener
        if con is None or con.is_closed():
            return  # the other nodes poll
        try:
            await con.execute(f"NOTIFY {CHANNEL}")
        except Exception as e:
            log.debug("events: NOTIFY failed: %s", e)

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection; the tailer polls meanwhile."""
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = None
        con = await self._connect()
        wake = self._wake
        pid = con.get_server_pid()

        def heard(_con: object, sender: int, _channel: str, _payload: str) -> None:
            if sender != pid and wake is not None:
                wake.set()

        await con.add_listener(CHANNEL, heard)
        self._listener = con

    async def _tail(self, last: int) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            soon = False
            try:
                await self._listen()
            except Exception as e:
                log.debug("events: LISTEN failed (polling meanwhile): %s", e)
            try:
                assert self._pool is not None
                rows = await self._pool.fetch(
                    f"WITH s AS (SELECT {_SAFE} AS safe) SELECT {_EVENT_COLUMNS}, seq < s.safe "
                    "FROM event_log, s WHERE seq > $1 ORDER BY seq LIMIT $2",
                    last,
                    TAIL_PAGE,
                )
                final = []
                for r in rows:
                    if not r[6]:
                        soon = True  # held behind a transaction still running
                        break
                    final.append(_event(r))
                if final:
                    last = final[-1]["seq"]
                    soon = soon or len(rows) == TAIL_PAGE
                    if self.on_events is not None:
                        try:
                            self.on_events(final)
                        except Exception:
                            log.exception("publishing committed events failed")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("events: reading the event log failed: %s", e)
            try:
                await asyncio.wait_for(wake.wait(), RETRY_SOON if soon else POLL_EVERY)
                await asyncio.sleep(TAIL_EVERY)  # the commits of this moment, in one read
            except TimeoutError:
                pass
            wake.clear()


def _event(r: Any) -> dict:
    seq, t, sid, ep, at, d = r[0], r[1], r[2], r[3], r[4], r[5]
    return {
        "seq": seq,
        "type": t,
        "chargestation": sid,
        "endpoint": ep,
        "data": orjson.loads(d),
        "createdAt": at,
    }


class PostgresUnit:
    __slots__ = ("_con", "_events", "_fenced", "_in_tx", "_later", "_n_events", "_revs", "_s")

    def __init__(self, store: PostgresStore):
        self._s = store
        self._con: asyncpg.Connection | None = None
        self._in_tx = False
        self._revs: dict[str, int] = {}
        self._events = False  # it added events (the tailer is woken at its commit)
        self._n_events = 0
        self._fenced: set[str] | None = None  # claimed stations it wrote for
        # A write that returns nothing, made before any other statement: held until the next
        # statement (then BEGIN, it, that one) or the unit's end, where alone it runs without
        # BEGIN and COMMIT: one round trip, not three, for a unit of one such write (a
        # station's MeterValues).
        self._later: tuple[str, tuple] | None = None

    async def __aenter__(self) -> Self:
        self._s._bind()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        later, self._later = self._later, None  # (then the unit ran no other statement)
        if later is not None and et is None:
            if not self._fenced:
                await self._alone(later)
                return
            await self._conn()  # a fenced write: checked inside a transaction
        con = self._con
        if con is None:
            return
        s = self._s
        self._con = None
        broken = False
        try:
            if later is not None and et is None:
                try:
                    await self._run_later(con, later)
                except BaseException:
                    if self._in_tx:
                        self._in_tx, broken = False, True
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(con.execute("ROLLBACK"), 1)
                            broken = False
                    raise
            if self._in_tx:
                if et is None:
                    try:
                        if self._fenced:
                            await self._check_fence(con)
                        started = time.perf_counter()
                        await con.execute("COMMIT")
                    except BaseException as err:
                        broken = True
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(con.execute("ROLLBACK"), 1)
                            broken = False
                        if isinstance(err, EdrvError):
                            raise
                        if isinstance(err, Exception):
                            log.error("commit failed: %s", err)
                            raise StoreUnavailable(
                                f"the store cannot be written: {type(err).__name__}: {err}"
                            ) from None
                        raise
                    if s.on_commit is not None:
                        s.on_commit(time.perf_counter() - started)
                    if self._events:
                        s._committed_events()
                else:
                    broken = True
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(con.execute("ROLLBACK"), 1)
                        broken = False
        finally:
            self._in_tx = False
            pool = s._pool
            if pool is not None:
                with contextlib.suppress(Exception):  # (a lost one is released already)
                    if broken:
                        con.terminate()
                    await pool.release(con)

    async def _check_fence(self, con: asyncpg.Connection) -> None:
        s = self._s
        assert self._fenced is not None
        wanted = {sid: s.claims[sid] for sid in self._fenced if sid in s.claims}
        if not wanted:
            return
        rows = await con.fetch(
            "SELECT station_id, epoch FROM station_owner WHERE station_id = ANY($1) "
            "AND node_id = $2 FOR SHARE",
            list(wanted),
            s.node_id,
        )
        held = {r[0]: r[1] for r in rows}
        for sid, epoch in wanted.items():
            if held.get(sid) != epoch:
                raise Fenced(f"this node no longer owns chargestation {sid}")

    def _for(self, station_id: str | None) -> None:
        """A write for this station: fenced at commit if this node claims it."""
        if station_id is not None and station_id in self._s.claims:
            if self._fenced is None:
                self._fenced = set()
            self._fenced.add(station_id)

    # --- running statements ---

    async def _conn(self) -> asyncpg.Connection:
        con = self._con
        if con is None:
            s = self._s
            pool = await s._get_pool()
            try:
                con = self._con = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
            except Exception as e:
                raise StoreUnavailable(s._cannot(e)) from None
        if self._later is not None:  # the held write goes first: this statement may read it
            later, self._later = self._later, None
            await self._run_later(con, later)
        return con

    async def _run_later(self, con: asyncpg.Connection, later: tuple[str, tuple]) -> None:
        if not self._in_tx:
            await self._do(con.execute, "BEGIN")
            self._in_tx = True
        await self._do(con.execute, later[0], *later[1])

    async def _alone(self, later: tuple[str, tuple]) -> None:
        """The unit's one write, committed by itself (its own implicit transaction)."""
        s = self._s
        pool = await s._get_pool()
        started = time.perf_counter()
        try:
            await pool.execute(later[0], *later[1], timeout=COMMAND_TIMEOUT)
        except Exception as e:
            import asyncpg

            if isinstance(e, asyncpg.DataError | OverflowError):
                raise InvalidBody(f"this value cannot be stored: {e}") from None
            raise StoreUnavailable(
                f"the store cannot be written: {type(e).__name__}: {e}"
            ) from None
        if s.on_commit is not None:
            s.on_commit(time.perf_counter() - started)

    def _hold(self, sql: str, *args: Any) -> bool:
        """Hold this write for later if it is the unit's first statement (see _later)."""
        if self._s.readonly:
            raise StoreUnavailable(f"the store at {redact(self._s.url)} is open read-only")
        if self._con is not None or self._in_tx or self._later is not None:
            return False
        self._later = (sql, args)
        return True

    async def _writing(self) -> None:
        if self._in_tx:
            return
        if self._s.readonly:
            raise StoreUnavailable(f"the store at {redact(self._s.url)} is open read-only")
        con = await self._conn()
        if not self._in_tx:  # (_conn ran a held write in one)
            await self._do(con.execute, "BEGIN")
            self._in_tx = True

    async def _do(self, method: Callable, sql: str, *args: Any) -> Any:
        import asyncpg

        try:
            return await method(sql, *args)
        except asyncpg.UniqueViolationError:
            raise
        except (asyncpg.DataError, OverflowError) as e:
            raise InvalidBody(f"this value cannot be stored: {e}") from None
        except (
            TimeoutError,
            OSError,
            asyncpg.PostgresError,  # (in a transaction: aborted; the unit's exit rolls back)
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection lost in the middle of a statement
        ) as e:
            raise StoreUnavailable(
                f"the store cannot be written: {type(e).__name__}: {e}"
            ) from None

    async def _fetch(self, sql: str, *args: Any) -> list:
        con = await self._conn()
        return await self._do(con.fetch, sql, *args)

    async def _row(self, sql: str, *args: Any) -> Any:
        con = await self._conn()
        return await self._do(con.fetchrow, sql, *args)

    async def _val(self, sql: str, *args: Any) -> Any:
        con = await self._conn()
        return await self._do(con.fetchval, sql, *args)

    async def _exec(self, sql: str, *args: Any) -> int:
        """A write; returns the rows it changed."""
        await self._writing()
        assert self._con is not None
        status = await self._do(self._con.execute, sql, *args)
        tail = status.rpartition(" ")[2]
        return int(tail) if tail.isdigit() else 0

    async def _exec_fetch(self, sql: str, *args: Any) -> list:
        await self._writing()
        assert self._con is not None
        return await self._do(self._con.fetch, sql, *args)

    async def _many(self, sql: str, rows: list) -> None:
        if not rows:
            return
        await self._writing()
        assert self._con is not None
        await self._do(self._con.executemany, sql, rows)

    async def _page(
        self, table: str, where: list[str], args: _Args, order: str, limit: int | None, offset: int
    ) -> tuple[list[dict], int]:
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        total = await self._val(f"SELECT count(*) FROM {table}{sql_where}", *args.values)
        lim, off = args.add(limit), args.add(offset)
        rows = await self._fetch(
            f"SELECT doc FROM {table}{sql_where} ORDER BY {order} LIMIT {lim} OFFSET {off}",
            *args.values,
        )
        return [orjson.loads(r[0]) for r in rows], total

    # --- stations ---

    async def create_station(self, doc: dict) -> None:
        import asyncpg

        row = (
            doc["_id"],
            doc["endpoint"],
            *_station_columns(doc),
            _json(doc),
        )
        try:
            await self._exec(_INSERT, *row)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a chargestation with endpoint {doc['endpoint']!r} exists") from None
        self._revs[doc["_id"]] = 1

    async def get_station(self, key: str) -> dict | None:
        if "\x00" in key:  # no stored text holds one (PostgreSQL refuses it)
            return None
        row = await self._row(
            "SELECT id, rev, doc FROM chargestations WHERE id = $1 UNION ALL "
            "SELECT id, rev, doc FROM chargestations WHERE endpoint = $1 LIMIT 1",
            key,
        )
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
        text = _json(doc)
        self._for(sid)
        n = await self._exec(_SAVE, *_station_columns(doc), text, sid, rev)
        if n == 0:
            raise StaleRecord(
                f"chargestation {doc.get('endpoint', sid)} was changed or deleted since it was read"
            )
        self._revs[sid] = rev + 1

    async def set_last_message_at(self, seen: dict[str, str]) -> None:
        # The documents say it too: read, change them here, write them back if unchanged
        # since (rev). No row locks while Python rewrites a thousand documents: a StatusNotification
        # of one of those stations would wait for them, holding its pooled connection.
        pending = dict(seen)
        for _ in range(SEEN_TRIES):
            await self._writing()
            rows = await self._fetch(
                "SELECT id, endpoint, rev, doc FROM chargestations WHERE endpoint = ANY($1)",
                list(pending),
            )
            if not rows:
                return
            ids, revs, ats, docs = [], [], [], []
            for sid, endpoint, rev, text in rows:
                self._for(sid)
                doc = orjson.loads(text)
                doc["lastMessageAt"] = at = pending[endpoint]
                ids.append(sid)
                revs.append(rev)
                ats.append(at)
                docs.append(_json(doc))
            done = await self._exec_fetch(
                "UPDATE chargestations c SET lastMessageAt = u.at, doc = u.doc, rev = c.rev + 1 "
                "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) "
                "AS u(id, rev, at, doc) WHERE c.id = u.id AND c.rev = u.rev RETURNING c.endpoint",
                ids,
                revs,
                ats,
                docs,
            )
            if len(done) == len(rows):
                return
            written = {r[0] for r in done}  # the others changed meanwhile: again
            pending = {r[1]: pending[r[1]] for r in rows if r[1] not in written}

    async def delete_station(self, station_id: str) -> bool:
        n = await self._exec("DELETE FROM chargestations WHERE id = $1", station_id)
        for table in (
            "transactions",
            "meter_values",
            "event_log",
            "credentials",
            "actions",
            "local_lists",
            "frame_chunks",
        ):
            await self._exec(f"DELETE FROM {table} WHERE station_id = $1", station_id)
        self._revs.pop(station_id, None)
        return n > 0

    async def list_stations_json(self, query: StationQuery) -> tuple[list[str], int]:
        where: list[str] = []
        args = _Args()
        for name, value in query.equals.items():
            if name not in FILTER_FIELDS:
                raise UsageError(f"cannot filter on {name!r}; fields: {', '.join(FILTER_FIELDS)}")
            if name in _BOOL_COLUMNS:
                value = _bool(value)
            elif value is not None:
                value = str(value)
            where.append(f"{name} IS NOT DISTINCT FROM {args.add(value)}")
        for name, op, value in query.ranges:
            if name not in SORT_FIELDS or op not in (">=", "<="):
                raise UsageError(
                    f"cannot compare {name!r} with {op!r}; fields: "
                    f"{', '.join(SORT_FIELDS)}, operators: >=, <="
                )
            where.append(f"{name} {op} {args.add(value)}")
        if query.sort_by not in SORT_FIELDS:
            raise UsageError(f"cannot sort by {query.sort_by!r}; fields: {', '.join(SORT_FIELDS)}")
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        # SQLite puts NULLs first ascending, last descending: so does PostgreSQL's NULLS option
        order = "DESC NULLS LAST" if query.descending else "ASC NULLS FIRST"
        id_order = "DESC" if query.descending else "ASC"
        total = await self._val(f"SELECT count(*) FROM chargestations{sql_where}", *args.values)
        sql = (
            f"SELECT doc FROM chargestations{sql_where} "
            f"ORDER BY {query.sort_by} {order}, id {id_order}"
        )
        if query.limit is not None:
            sql += f" LIMIT {args.add(query.limit)} OFFSET {args.add(query.offset)}"
        rows = await self._fetch(sql, *args.values)
        return [r[0] for r in rows], total

    async def mark_all_offline(self, now: str) -> int:
        rows = await self._exec_fetch(
            "SELECT id, doc FROM chargestations WHERE online ORDER BY id FOR UPDATE"
        )
        ids, docs = [], []
        for sid, text in rows:
            doc = orjson.loads(text)
            # lastDisconnectAt: when it was found disconnected, which is after any connect
            doc["online"], doc["lastDisconnectAt"] = False, now
            ids.append(sid)
            docs.append(_json(doc))
        if ids:
            await self._exec(
                "UPDATE chargestations c SET online = false, doc = u.doc, rev = c.rev + 1 "
                "FROM unnest($1::text[], $2::text[]) AS u(id, doc) WHERE c.id = u.id",
                ids,
                docs,
            )
        return len(ids)

    # --- station passwords ---

    async def set_password_hash(self, station_id: str, hashed: str, at: str) -> None:
        self._for(station_id)
        await self._exec(
            "INSERT INTO credentials VALUES ($1, $2, $3) ON CONFLICT (station_id) DO UPDATE "
            "SET hash = excluded.hash, created_at = excluded.created_at",
            station_id,
            hashed,
            at,
        )

    async def password_hash(self, station_id: str) -> str | None:
        if "\x00" in station_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        return await self._val("SELECT hash FROM credentials WHERE station_id = $1", station_id)

    # --- events ---

    async def add_event(
        self,
        station_id: str | None,
        at: str,
        type: str,
        data: dict,
        endpoint: str | None = None,
    ) -> dict:
        text = _json(data)
        if self._n_events >= MAX_EVENTS:
            raise InvalidBody(f"at most {MAX_EVENTS} events in one unit of work")
        self._for(station_id)
        await self._writing()
        assert self._con is not None
        seq = await self._do(
            self._con.fetchval,
            "INSERT INTO event_log (seq, type, station_id, endpoint, at, doc) VALUES "
            f"((pg_current_xact_id()::text::bigint << {EVENT_BITS}) + $1, $2, $3, $4, $5, $6) "
            "RETURNING seq",
            self._n_events,
            type,
            station_id,
            endpoint,
            at,
            text,
        )
        self._n_events += 1
        self._events = True
        return {
            "seq": seq,
            "type": type,
            "chargestation": station_id,
            "endpoint": endpoint,
            "data": data,
            "createdAt": at,
        }

    async def list_events(self, query: EventQuery) -> list[dict]:
        args = _Args(query.after)
        # only final events (and this unit's own): a later page never finds one below it
        where = [
            "seq > $1",
            f"(seq < {_SAFE} OR seq >> {EVENT_BITS} = "
            "pg_current_xact_id_if_assigned()::text::bigint)",
        ]
        if query.station_id is not None:
            where.append(f"station_id = {args.add(query.station_id)}")
        if query.types:
            where.append(
                "(" + " OR ".join(f"type LIKE {args.add(_glob_like(t))}" for t in query.types) + ")"
            )
        if query.since is not None:
            where.append(f"at >= {args.add(query.since)}")
        if query.until is not None:
            where.append(f"at <= {args.add(query.until)}")
        order = "DESC" if query.newest else "ASC"
        rows = await self._fetch(
            f"SELECT {_EVENT_COLUMNS} FROM event_log WHERE {' AND '.join(where)} "
            f"ORDER BY seq {order} LIMIT {args.add(query.limit)}",
            *args.values,
        )
        found = [_event(r) for r in rows]
        if query.newest:
            found.reverse()
        return found

    # --- the frame log ---

    async def add_frames(self, chunks: Sequence[FrameChunk]) -> list[int]:
        if any(c.n > MAX_CHUNK for c in chunks):
            raise ValueError(f"at most {MAX_CHUNK} frames in one chunk")
        if not chunks:
            return []
        for c in chunks:
            self._for(c.station_id)
        rows = await self._exec_fetch(
            "INSERT INTO frame_chunks (station_id, first_at, last_at, n, errors, data) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], "
            "$5::int[], $6::bytea[]) RETURNING seq",
            [c.station_id for c in chunks],
            [c.first_at for c in chunks],
            [c.last_at for c in chunks],
            [c.n for c in chunks],
            [c.errors for c in chunks],
            [c.data for c in chunks],
        )
        # the sequence gives rising seqs in the order rows are inserted
        return [seq << CHUNK_BITS for seq in sorted(r[0] for r in rows)]

    async def list_frames(self, query: FrameQuery) -> tuple[list[dict], bool]:
        args = _Args(query.station_id)
        where = ["station_id = $1"]
        if query.errors:
            where.append("errors > 0")
        if query.since is not None:
            where.append(f"last_at >= {args.add(query.since)}")
        if query.until is not None:
            where.append(f"first_at <= {args.add(query.until)}")
        forward = query.after is not None
        if query.after is not None:
            where.append(f"seq >= {args.add(query.after >> CHUNK_BITS)}")
        if query.before is not None:
            where.append(f"seq <= {args.add(query.before >> CHUNK_BITS)}")
        actions = set(query.actions)
        low = query.after if query.after is not None else -1
        high = query.before if query.before is not None else 1 << 62
        since = query.since if query.since is not None else -(1 << 62)
        until = query.until if query.until is not None else 1 << 62
        found: list[dict] = []
        more = False
        cursor_arg = args.add(None)  # pages of chunks: after (or before) the last one read
        sql = (
            f"SELECT seq, skip, data FROM frame_chunks WHERE {' AND '.join(where)} AND "
            f"({cursor_arg}::bigint IS NULL OR seq {'>' if forward else '<'} {cursor_arg}) "
            f"ORDER BY seq {'ASC' if forward else 'DESC'} LIMIT {FRAMES_PAGE}"
        )
        while not more:
            rows = await self._fetch(sql, *args.values)
            for seq, skip, data in rows:
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
            if len(rows) < FRAMES_PAGE:
                break
            args.values[-1] = rows[-1][0]
        if not forward:
            found.reverse()
        return found, more

    async def prune_frames(self, station_id: str, keep: int, limit: int = 500) -> int:
        chunks = await self._fetch(
            "SELECT seq, n, skip FROM frame_chunks WHERE station_id = $1 ORDER BY seq DESC",
            station_id,
        )
        held = 0
        straddles: tuple[int, int] | None = None
        older: int | None = None
        for seq, n, skip in chunks:
            if held >= keep:
                older = seq
                break
            held += n - skip
            if held > keep:
                straddles, held = (seq, skip + held - keep), keep
        if straddles is None and older is None:
            return held
        if straddles is not None:
            await self._exec(
                "UPDATE frame_chunks SET skip = $1 WHERE seq = $2", straddles[1], straddles[0]
            )
        if older is not None:
            await self._exec(
                "DELETE FROM frame_chunks WHERE seq IN (SELECT seq FROM frame_chunks "
                "WHERE station_id = $1 AND seq <= $2 ORDER BY seq LIMIT $3)",
                station_id,
                older,
                limit,
            )
            held += await self._val(
                "SELECT coalesce(sum(n - skip), 0) FROM frame_chunks "
                "WHERE station_id = $1 AND seq <= $2",
                station_id,
                older,
            )
        return held

    async def expire_frames(self, before: int, limit: int = 500) -> int:
        rows = await self._fetch(
            "SELECT seq, last_at FROM frame_chunks ORDER BY seq LIMIT $1", limit
        )
        gone = [seq for seq, last_at in rows if last_at < before]
        if gone:
            await self._exec("DELETE FROM frame_chunks WHERE seq = ANY($1)", gone)
        return len(gone)

    async def seen_unknown(self, endpoint: str, at: str, info: dict, times: int, keep: int) -> bool:
        text = _json(info)
        n = await self._exec(
            "UPDATE unknown_endpoints SET seen = seen + $1, lastSeenAt = $2, doc = $3 "
            "WHERE endpoint = $4",
            times,
            at,
            text,
            endpoint,
        )
        if n:
            return False
        await self._exec(
            "INSERT INTO unknown_endpoints (endpoint, seen, firstSeenAt, lastSeenAt, doc) "
            "VALUES ($1, $2, $3, $3, $4) ON CONFLICT (endpoint) DO UPDATE SET "
            "seen = unknown_endpoints.seen + excluded.seen, lastSeenAt = excluded.lastSeenAt, "
            "doc = excluded.doc",
            endpoint,
            times,
            at,
            text,
        )
        await self._exec(
            "DELETE FROM unknown_endpoints WHERE endpoint IN (SELECT endpoint FROM "
            "unknown_endpoints ORDER BY lastSeenAt DESC OFFSET $1)",
            keep,
        )
        return True

    async def unknown_endpoints(self, limit: int | None = None) -> list[dict]:
        rows = await self._fetch(
            "SELECT endpoint, seen, firstSeenAt, lastSeenAt, doc FROM unknown_endpoints "
            "ORDER BY lastSeenAt DESC LIMIT $1",
            limit,
        )
        return [
            {"endpoint": ep, "seen": n, "firstSeenAt": first, "lastSeenAt": last, **orjson.loads(d)}
            for ep, n, first, last, d in rows
        ]

    async def forget_unknown(self, endpoint: str) -> None:
        await self._exec("DELETE FROM unknown_endpoints WHERE endpoint = $1", endpoint)

    # --- transactions (sessions) and meter values ---

    async def start_transaction(self, tx: dict) -> str:
        import asyncpg

        sid = tx["station_id"]
        self._for(sid)
        await self._writing()
        if tx.get("tx_key") is None:  # OCPP 1.6: the row's id becomes its key
            rowid = await self._val("SELECT nextval('transactions_id_seq')")
            tx["tx_key"] = str(rowid)
        else:
            rowid = None
        text = _json(tx)
        try:
            await self._exec(
                "INSERT INTO transactions (id, station_id, tx_key, session_id, status, "
                "startedAt, id_tag, doc) VALUES (coalesce($1, nextval('transactions_id_seq')), "
                "$2, $3, $4, $5, $6, $7, $8)",
                rowid,
                sid,
                tx["tx_key"],
                *_session_columns(tx),
                _id_tag(tx),
                text,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"transaction {tx.get('tx_key')!r} of station {sid} exists") from None
        return tx["tx_key"]

    async def get_transaction(self, station_id: str, tx_key: str) -> dict | None:
        if "\x00" in station_id + tx_key:  # no stored text holds one (PostgreSQL refuses it)
            return None
        text = await self._val(
            "SELECT doc FROM transactions WHERE station_id = $1 AND tx_key = $2",
            station_id,
            tx_key,
        )
        return orjson.loads(text) if text is not None else None

    async def update_transaction(self, station_id: str, tx_key: str, fields: dict) -> dict | None:
        self._for(station_id)
        await self._writing()  # the read and the write are one step
        text = await self._val(
            "SELECT doc FROM transactions WHERE station_id = $1 AND tx_key = $2 FOR UPDATE",
            station_id,
            tx_key,
        )
        if text is None:
            return None
        tx = orjson.loads(text)
        tx.update(fields)
        _, status, started = _session_columns(tx)
        await self._exec(
            "UPDATE transactions SET status = $1, startedAt = $2, id_tag = $3, doc = $4 "
            "WHERE station_id = $5 AND tx_key = $6",
            status,
            started,
            _id_tag(tx),
            _json(tx),
            station_id,
            tx_key,
        )
        return tx

    async def transactions(self, station_id: str | None = None) -> list[dict]:
        where, args = _where(station_id=station_id)
        rows = await self._fetch(f"SELECT doc FROM transactions{where} ORDER BY id", *args)
        return [orjson.loads(r[0]) for r in rows]

    async def get_session(self, session_id: str) -> dict | None:
        if "\x00" in session_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        text = await self._val("SELECT doc FROM transactions WHERE session_id = $1", session_id)
        return orjson.loads(text) if text is not None else None

    async def list_sessions(self, query: SessionQuery) -> tuple[list[dict], int]:
        where = ["session_id IS NOT NULL"]
        args = _Args()
        if query.station_id is not None:
            where.append(f"station_id = {args.add(query.station_id)}")
        if query.status is not None:
            where.append(f"status = {args.add(query.status)}")
        if query.active is not None:
            where.append(
                "status = 'Active'" if query.active else "status IS DISTINCT FROM 'Active'"
            )
        if query.since is not None:
            where.append(f"startedAt >= {args.add(query.since)}")
        if query.until is not None:
            where.append(f"startedAt <= {args.add(query.until)}")
        return await self._page(
            "transactions",
            where,
            args,
            "startedAt DESC NULLS LAST, id DESC",
            query.limit,
            query.offset,
        )

    async def add_meter_values(
        self, station_id: str, tx_key: str | None, connector: int, values: list[dict]
    ) -> None:
        text = _json(values)
        self._for(station_id)
        args = (station_id, tx_key, connector, text, _utcnow())
        sql = (
            "INSERT INTO meter_values (station_id, tx_key, connector, doc, at) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        if not self._hold(sql, *args):
            await self._exec(sql, *args)

    async def meter_values(
        self,
        station_id: str | None = None,
        tx_key: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest: bool = False,
    ) -> list[dict]:
        where, args = _where(station_id=station_id, tx_key=tx_key)
        n = len(args)
        rows = await self._fetch(
            f"SELECT station_id, tx_key, connector, doc FROM meter_values{where} "
            f"ORDER BY id {'DESC' if newest else 'ASC'} LIMIT ${n + 1} OFFSET ${n + 2}",
            *args,
            limit,
            offset,
        )
        return [
            {"station_id": sid, "tx_key": key, "connector": c, "values": orjson.loads(d)}
            for sid, key, c, d in rows
        ]

    # --- actions ---

    async def create_action(self, doc: dict) -> None:
        import asyncpg

        text = _json(doc)
        try:
            await self._exec(
                "INSERT INTO actions (id, station_id, type, status, outcome, createdAt, "
                "updatedAt, batch, rev, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9)",
                *_action_columns(doc),
                _batch(doc),
                text,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"action {doc['_id']} exists") from None
        self._revs["action:" + doc["_id"]] = 1

    async def get_action(self, action_id: str) -> dict | None:
        if "\x00" in action_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        row = await self._row("SELECT rev, doc FROM actions WHERE id = $1", action_id)
        if row is None:
            return None
        self._revs["action:" + action_id] = row[0]
        return orjson.loads(row[1])

    async def save_action(self, doc: dict) -> None:
        key = "action:" + doc["_id"]
        rev = self._revs.get(key)
        if rev is None:
            raise StaleRecord(f"action {doc['_id']} was not read in this unit of work")
        _id, _sid, *columns = _action_columns(doc)
        text = _json(doc)
        n = await self._exec(
            "UPDATE actions SET type = $1, status = $2, outcome = $3, createdAt = $4, "
            "updatedAt = $5, batch = $6, doc = $7, rev = rev + 1 WHERE id = $8 AND rev = $9",
            *columns,
            _batch(doc),
            text,
            _id,
            rev,
        )
        if n == 0:
            raise StaleRecord(f"action {_id} was changed or deleted since it was read")
        self._revs[key] = rev + 1

    async def list_actions(self, query: ActionQuery) -> tuple[list[dict], int]:
        where: list[str] = []
        args = _Args()
        for name, value in query.equals.items():
            if name not in ACTION_FILTER_FIELDS:
                raise UsageError(
                    f"cannot filter actions on {name!r}; fields: {', '.join(ACTION_FILTER_FIELDS)}"
                )
            column = {"chargestation": "station_id"}.get(name, name)
            where.append(f"{column} = {args.add(None if value is None else str(value))}")
        if query.created_from is not None:
            where.append(f"createdAt >= {args.add(query.created_from)}")
        if query.created_to is not None:
            where.append(f"createdAt <= {args.add(query.created_to)}")
        return await self._page(
            "actions", where, args, "createdAt DESC, n DESC", query.limit, query.offset
        )

    async def fail_pending_actions(self, reason: str, now: str) -> int:
        rows = await self._exec_fetch(
            "SELECT id, doc FROM actions WHERE outcome = 'pending' ORDER BY id FOR UPDATE"
        )
        error = {"code": "Interrupted", "description": reason}
        ids, statuses, docs = [], [], []
        for aid, text in rows:
            doc = orjson.loads(text)
            doc["outcome"], doc["updatedAt"] = "failed", now
            if doc.get("status") == "requested":
                doc["status"] = "failed"
            doc["error"] = error
            ids.append(aid)
            statuses.append(doc["status"])
            docs.append(_json(doc))
        if ids:
            await self._exec(
                "UPDATE actions a SET outcome = 'failed', updatedAt = $1, status = u.status, "
                "doc = u.doc, rev = a.rev + 1 FROM unnest($2::text[], $3::text[], $4::text[]) "
                "AS u(id, status, doc) WHERE a.id = u.id",
                now,
                ids,
                statuses,
                docs,
            )
        return len(ids)

    # --- webhooks ---

    async def create_webhook(self, doc: dict, secret: str, cursor: int) -> None:
        import asyncpg

        text = _json(doc)
        try:
            await self._exec(
                "INSERT INTO webhooks (id, secret, cursor, createdAt, doc) "
                "VALUES ($1, $2, $3, $4, $5)",
                doc["_id"],
                secret,
                cursor,
                doc["createdAt"],
                text,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"webhook {doc['_id']} exists") from None

    async def get_webhook(self, webhook_id: str) -> dict | None:
        if "\x00" in webhook_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        text = await self._val("SELECT doc FROM webhooks WHERE id = $1", webhook_id)
        return orjson.loads(text) if text is not None else None

    async def list_webhooks(self) -> list[dict]:
        rows = await self._fetch("SELECT doc FROM webhooks ORDER BY createdAt, n")
        return [orjson.loads(r[0]) for r in rows]

    async def update_webhook(self, doc: dict, cursor: int | None = None) -> bool:
        text = _json(doc)
        n = await self._exec(
            "UPDATE webhooks SET doc = $1, cursor = coalesce($2, cursor) WHERE id = $3",
            text,
            cursor,
            doc["_id"],
        )
        return n > 0

    async def set_webhook_secret(self, webhook_id: str, secret: str) -> bool:
        n = await self._exec("UPDATE webhooks SET secret = $1 WHERE id = $2", secret, webhook_id)
        return n > 0

    async def delete_webhook(self, webhook_id: str) -> bool:
        n = await self._exec("DELETE FROM webhooks WHERE id = $1", webhook_id)
        await self._exec("DELETE FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
        return n > 0

    async def webhook_internals(self) -> dict[str, tuple[str, int]]:
        rows = await self._fetch("SELECT id, secret, cursor FROM webhooks")
        return {i: (secret, cursor) for i, secret, cursor in rows}

    async def set_webhook_cursors(self, cursors: dict[str, int]) -> None:
        if cursors:
            await self._exec(
                "UPDATE webhooks w SET cursor = greatest(w.cursor, u.seq) "
                "FROM unnest($1::text[], $2::bigint[]) AS u(id, seq) WHERE w.id = u.id",
                list(cursors),
                list(cursors.values()),
            )

    async def add_deliveries(self, webhook_id: str, deliveries: list[dict]) -> int:
        if not deliveries:
            return 0
        cols: list[list] = [[] for _ in range(7)]
        for d in deliveries:
            doc = {k: v for k, v in d.items() if k not in _DELIVERY_COLUMNS}
            for col, value in zip(
                cols,
                (
                    d["seq"],
                    d["lane"],
                    doc["status"],
                    doc.get("nextAttemptAt"),
                    doc["updatedAt"],
                    d["body"],
                    _json(doc),
                ),
                strict=True,
            ):
                col.append(value)
        # not for a webhook deleted meanwhile; an event it has already is kept as it is
        return await self._exec(
            "INSERT INTO webhook_deliveries (webhook_id, seq, lane, status, next_at, "
            "updated_at, body, doc) SELECT $1, u.seq, u.lane, u.status, u.next_at, "
            "u.updated_at, u.body, u.doc FROM unnest($2::bigint[], $3::text[], "
            "$4::text[], $5::text[], $6::text[], $7::bytea[], $8::text[]) WITH ORDINALITY "
            "AS u(seq, lane, status, next_at, updated_at, body, doc, i) "
            "WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $1) ORDER BY u.i "
            "ON CONFLICT (webhook_id, seq) DO NOTHING",
            webhook_id,
            *cols,
        )

    async def delivery_heads(self, webhook_id: str, limit: int) -> list[dict]:
        rows = await self._fetch(
            "SELECT d.id, d.seq, d.lane, d.body, d.doc FROM webhook_deliveries d JOIN "
            "(SELECT min(id) AS id FROM webhook_deliveries WHERE webhook_id = $1 AND "
            "status = 'pending' GROUP BY lane) h ON h.id = d.id "
            "ORDER BY d.next_at NULLS FIRST, d.id LIMIT $2",
            webhook_id,
            limit,
        )
        return [
            {"_id": str(i), **orjson.loads(doc), "seq": seq, "lane": lane, "body": body}
            for i, seq, lane, body, doc in rows
        ]

    async def save_delivery(self, delivery: dict) -> bool:
        doc = {k: v for k, v in delivery.items() if k not in _DELIVERY_COLUMNS and k != "_id"}
        text = _json(doc)
        n = await self._exec(
            "UPDATE webhook_deliveries SET status = $1, next_at = $2, updated_at = $3, "
            "doc = $4, body = CASE WHEN $1 = 'pending' THEN body END "
            "WHERE id = $5 AND status = 'pending'",
            doc["status"],
            doc.get("nextAttemptAt"),
            doc["updatedAt"],
            text,
            int(delivery["_id"]),
        )
        return n > 0

    async def list_deliveries(
        self, webhook_id: str, status: str | None = None, limit: int | None = 100
    ) -> list[dict]:
        where, args = _where(webhook_id=webhook_id, status=status)
        rows = await self._fetch(
            f"SELECT id, doc FROM webhook_deliveries{where} ORDER BY seq DESC "
            f"LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return [{"_id": str(i), **orjson.loads(doc)} for i, doc in rows]

    async def pending_deliveries(self) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT webhook_id, count(*) FROM webhook_deliveries WHERE status = 'pending' "
            "GROUP BY webhook_id"
        )
        return {w: n for w, n in rows}

    async def fail_oldest_deliveries(self, webhook_id: str, keep: int, error: str, now: str) -> int:
        rows = await self._exec_fetch(
            "SELECT id, doc FROM webhook_deliveries WHERE webhook_id = $1 AND "
            "status = 'pending' ORDER BY id DESC OFFSET $2 FOR UPDATE",
            webhook_id,
            keep,
        )
        ids, docs = [], []
        for i, text in rows:
            doc = orjson.loads(text)
            doc.update(status="failed", lastError=error, nextAttemptAt=None, updatedAt=now)
            ids.append(i)
            docs.append(_json(doc))
        if ids:
            await self._exec(
                "UPDATE webhook_deliveries d SET status = 'failed', next_at = NULL, "
                "updated_at = $1, body = NULL, doc = u.doc "
                "FROM unnest($2::bigint[], $3::text[]) AS u(id, doc) WHERE d.id = u.id",
                now,
                ids,
                docs,
            )
        return len(ids)

    async def prune_deliveries(self, webhook_id: str, keep: int, before: str) -> int:
        return await self._exec(
            "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND status != 'pending' "
            "AND (updated_at < $2 OR id IN (SELECT id FROM webhook_deliveries WHERE "
            "webhook_id = $1 AND status != 'pending' ORDER BY id DESC OFFSET $3))",
            webhook_id,
            before,
            keep,
        )

    # --- id tokens ---

    async def create_token(self, doc: dict) -> None:
        import asyncpg

        text = _json(doc)
        try:
            await self._exec(_TOKEN_INSERT, *_token_columns(doc), text)
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"a token {doc['physicalId']!r} of type {doc['type']} exists",
                hint="change that one (`edrvctl tokens inspect`), or give another type",
            ) from None
        self._revs["token:" + doc["_id"]] = 1

    async def import_tokens(self, docs: list[dict]) -> int:
        await self._writing()
        created = 0
        for start in range(0, len(docs), IMPORT_CHUNK):
            if start:
                await asyncio.sleep(0)
            # the last of each physicalId (without case) and type wins, as one by one would
            chunk: dict[tuple[str, str], dict] = {}
            for d in docs[start : start + IMPORT_CHUNK]:
                chunk[(d["physicalId"].lower(), d["type"])] = d
            keys = list(chunk)
            rows = await self._exec_fetch(
                "SELECT t.id, lower(t.physicalId), t.type, t.createdAt, t.doc FROM tokens t "
                "JOIN unnest($1::text[], $2::text[]) AS u(p, type) "
                "ON lower(t.physicalId) = u.p AND t.type = u.type FOR UPDATE OF t",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            # a token that exists (physicalId and type) is updated: it keeps its _id,
            # createdAt and meta_data
            updates = []
            for tid, lowered, type_, created_at, text in rows:
                new = dict(chunk.pop((lowered, type_)))
                new["_id"], new["createdAt"] = tid, created_at
                new["meta_data"] = orjson.loads(text).get("meta_data")
                updates.append(
                    (new["physicalId"], new["active"], new.get("organization"), _json(new), tid)
                )
            await self._many(
                "UPDATE tokens SET physicalId = $1, active = $2, organization = $3, doc = $4, "
                "rev = rev + 1 WHERE id = $5",
                updates,
            )
            await self._many(
                _TOKEN_INSERT, [(*_token_columns(d), _json(d)) for d in chunk.values()]
            )
            created += len(chunk)
        return created

    def _tokens(self, rows: list) -> list[dict]:
        docs = []
        for token_id, rev, doc in rows:
            self._revs["token:" + token_id] = rev
            docs.append(orjson.loads(doc))
        return docs

    async def get_token(self, token_id: str) -> dict | None:
        if "\x00" in token_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        rows = await self._fetch("SELECT id, rev, doc FROM tokens WHERE id = $1", token_id)
        found = self._tokens(rows)
        return found[0] if found else None

    async def find_tokens(self, physical_id: str, type: str | None = None) -> list[dict]:
        if "\x00" in physical_id:
            return []
        if type is None:
            rows = await self._fetch(
                "SELECT id, rev, doc FROM tokens WHERE lower(physicalId) = lower($1) "
                "ORDER BY createdAt, id",
                physical_id,
            )
        else:
            rows = await self._fetch(
                "SELECT id, rev, doc FROM tokens WHERE lower(physicalId) = lower($1) "
                "AND type = $2 ORDER BY createdAt, id",
                physical_id,
                type,
            )
        return self._tokens(rows)

    async def save_token(self, doc: dict) -> None:
        import asyncpg

        key = "token:" + doc["_id"]
        rev = self._revs.get(key)
        if rev is None:
            raise StaleRecord(f"token {doc['_id']} was not read in this unit of work")
        _id, *columns = _token_columns(doc)
        text = _json(doc)
        try:
            n = await self._exec(
                "UPDATE tokens SET physicalId = $1, type = $2, active = $3, organization = $4, "
                "createdAt = $5, doc = $6, rev = rev + 1 WHERE id = $7 AND rev = $8",
                *columns,
                text,
                _id,
                rev,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a token {doc['physicalId']!r} of type {doc['type']} exists") from None
        if n == 0:
            raise StaleRecord(f"token {_id} was changed or deleted since it was read")
        self._revs[key] = rev + 1

    async def delete_token(self, token_id: str) -> bool:
        self._revs.pop("token:" + token_id, None)
        return await self._exec("DELETE FROM tokens WHERE id = $1", token_id) > 0

    async def list_tokens(self, query: TokenQuery) -> tuple[list[dict], int]:
        where: list[str] = []
        args = _Args()
        for name, value in query.equals.items():
            if name not in TOKEN_FILTER_FIELDS:
                raise UsageError(
                    f"cannot filter tokens on {name!r}; fields: {', '.join(TOKEN_FILTER_FIELDS)}"
                )
            if name == "active":
                value = _bool(value)
            elif value is not None:
                value = str(value)
            if name == "physicalId":  # without case, as OCPP compares id tags
                where.append(f"lower(physicalId) IS NOT DISTINCT FROM lower({args.add(value)})")
            else:
                where.append(f"{name} IS NOT DISTINCT FROM {args.add(value)}")
        if query.usable_in is not None:
            where.append(f"(organization IS NULL OR organization = {args.add(query.usable_in)})")
        order = "DESC" if query.newest_first else "ASC"
        return await self._page(
            "tokens", where, args, f"createdAt {order}, id {order}", query.limit, query.offset
        )

    async def active_transactions(self, id_tag: str) -> list[dict]:
        rows = await self._fetch(
            "SELECT doc FROM transactions WHERE lower(id_tag) = lower($1) "
            "AND status = 'Active' ORDER BY id",
            id_tag,
        )
        return [orjson.loads(r[0]) for r in rows]

    async def get_local_list(self, station_id: str) -> dict | None:
        if "\x00" in station_id:  # no stored text holds one (PostgreSQL refuses it)
            return None
        text = await self._val("SELECT doc FROM local_lists WHERE station_id = $1", station_id)
        return orjson.loads(text) if text is not None else None

    async def set_local_list(self, station_id: str, doc: dict) -> None:
        text = _json(doc)
        self._for(station_id)
        await self._exec(
            "INSERT INTO local_lists (station_id, version, doc) VALUES ($1, $2, $3) "
            "ON CONFLICT (station_id) DO UPDATE SET version = excluded.version, doc = excluded.doc",
            station_id,
            doc["version"],
            text,
        )

    # --- retention and health ---

    async def prune_events(self, before: str, limit: int, keep: int | None = None) -> int:
        deleted = await self._exec(
            "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE at < $1 "
            "ORDER BY at LIMIT $2)",
            before,
            limit,
        )
        if keep is not None and deleted < limit:
            # (seqs have gaps here: the `keep` latest are counted, not computed)
            deleted += await self._exec(
                "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE seq <= "
                "(SELECT seq FROM event_log ORDER BY seq DESC OFFSET $1 LIMIT 1) "
                "ORDER BY seq LIMIT $2)",
                keep,
                limit - deleted,
            )
        return deleted

    async def prune_meter_values(
        self, before: str, stuck_before: str, cursor: object, limit: int
    ) -> tuple[int, object]:
        await self._writing()
        at_ = cursor if isinstance(cursor, _MeterCursor) else _MeterCursor()
        window = 2 * limit
        rows = await self._fetch(
            "SELECT id, at, station_id, tx_key FROM meter_values WHERE id > $1 "
            "ORDER BY id LIMIT $2",
            at_.after,
            window,
        )
        due: list[int] = []
        held = at_.held
        lookups = 0
        done = len(rows) < window
        for rowid, at, sid, key in rows:
            if at >= before:
                done = True
                break
            if key is not None and at >= stuck_before:
                keep = held.get((sid, key))
                if keep is None:
                    if lookups == _MeterCursor.LOOKUPS:
                        done = False
                        break
                    lookups += 1
                    if len(held) >= _MeterCursor.MAX_HELD:
                        held.clear()
                    keep = held[(sid, key)] = await self._session_kept(sid, key, before)
                if keep:
                    at_.after = rowid
                    continue
            at_.after = rowid
            due.append(rowid)
            if len(due) == limit:
                done = False
                break
        if due:
            await self._exec("DELETE FROM meter_values WHERE id = ANY($1)", due)
        return len(due), None if done else at_

    async def _session_kept(self, station_id: str, tx_key: str, before: str) -> bool:
        return bool(
            await self._val(
                "SELECT EXISTS (SELECT 1 FROM meter_values WHERE station_id = $1 AND "
                "tx_key = $2 AND at >= $3) OR EXISTS (SELECT 1 FROM transactions WHERE "
                "station_id = $1 AND tx_key = $2 AND status = 'Active')",
                station_id,
                tx_key,
                before,
            )
        )

    async def prune_actions(self, before: str, limit: int) -> int:
        return await self._exec(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE createdAt < $1 "
            "AND outcome != 'pending' ORDER BY createdAt LIMIT $2)",
            before,
            limit,
        )

    async def probe(self, at: str) -> None:
        # the unit's COMMIT is the real test: it fails while the database cannot take writes
        await self._exec("INSERT INTO health_probe (at) VALUES ($1)", at)
        await self._exec("DELETE FROM health_probe")


_DELIVERY_COLUMNS = ("seq", "lane", "body")

_TOKEN_INSERT = (
    "INSERT INTO tokens (id, physicalId, type, active, organization, createdAt, rev, doc) "
    "VALUES ($1, $2, $3, $4, $5, $6, 1, $7)"
)


def _station_columns(doc: dict) -> list:
    values = []
    for c in _COLUMNS:
        v = doc.get(c)
        values.append(_bool(v) if c in _BOOL_COLUMNS else v)
    return values


def _token_columns(doc: dict) -> tuple:
    return (
        doc["_id"],
        doc["physicalId"],
        doc["type"],
        _bool(doc["active"]),
        doc.get("organization"),
        doc["createdAt"],
    )


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


def _batch(doc: dict) -> str | None:
    b = doc.get("batch")
    return None if b is None else str(b)


def _id_tag(tx: dict) -> str | None:
    tag = tx.get("idTag")
    return tag if isinstance(tag, str) else None


def _session_columns(tx: dict) -> tuple:
    started = tx.get("startedAt") or tx.get("stoppedAt") or tx.get("createdAt")
    return tx.get("_id"), tx.get("status"), started


def _where(**equals: str | None) -> tuple[str, list]:
    given = {k: v for k, v in equals.items() if v is not None}
    if not given:
        return "", []
    return (
        " WHERE " + " AND ".join(f"{k} = ${i}" for i, k in enumerate(given, 1)),
        list(given.values()),
    )
