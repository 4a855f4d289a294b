"""The SQLite store: one file, WAL journal, one connection owned by the server's event loop.

Each station is one row: its whole record as a JSON document, plus copies of the fields that
lists filter and sort on, as indexed columns. Reads return the document as is.

Durability: with `autocommit` (the default) every write is committed at once. The server turns
it off and commits in groups instead (server/commit.py): writes made in one turn of the event
loop share one COMMIT, and nothing is acknowledged to a station or an admin before the COMMIT
that holds it. With WAL and synchronous=NORMAL a commit is in the WAL file when it returns, so it
survives the process being killed; only a power cut can lose the last commits.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import orjson

from edrvctl.errors import Conflict, InvalidBody, StoreUnavailable, UsageError
from edrvctl.store import FILTER_FIELDS, SORT_FIELDS, StationQuery

SCHEMA = """
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

_COLUMNS = ("protocol", "online", "active", "status", "location", "organization",
            "createdAt", "updatedAt", "lastMessageAt", "lastConnectAt")


def _json(value) -> bytes:
    """Encode for storage. What JSON cannot hold (nesting beyond 254 levels, integers beyond 64
    bits) is refused as bad input, before anything is written."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as e:
        raise InvalidBody(f"this value cannot be stored: {e}") from None


def _row(doc: dict) -> tuple:
    # The document is stored as TEXT so that sqlite3 hands it back as str, ready to splice.
    return (doc["_id"], doc["endpoint"], *(doc.get(c) for c in _COLUMNS),
            _json(doc).decode())


class SqliteStore:
    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        path = Path(path)
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(SCHEMA)
            if max_bytes:  # past it, writes fail as on a full disk
                page = self.db.execute("PRAGMA page_size").fetchone()[0]
                self.db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
        except (sqlite3.Error, OSError) as e:
            raise UsageError(f"cannot open the store at {path}: {e}") from e
        self.path = path
        self.autocommit = True
        self.on_write: Callable[[], None] | None = None  # told after each uncommitted write

    def _write(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        try:
            if not self.db.in_transaction:
                self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except OverflowError:  # an integer SQLite cannot hold (beyond signed 64 bits)
            raise InvalidBody("a number is out of range (beyond 64 bits)") from None
        except sqlite3.Error as e:  # full disk, read-only file, I/O error
            if not self.db.in_transaction:
                # SQLite rolled the whole transaction back (it does on a full disk): earlier
                # writes in it are gone too, so their commit must fail, not report success.
                self._lost = e
            raise StoreUnavailable(f"the store cannot be written: {e}") from e
        if self._depth == 0:
            self._written()
        return cur

    def _written(self) -> None:
        if self.autocommit:
            self.commit()
        elif self.on_write is not None:
            self.on_write()

    _lost: sqlite3.Error | None = None

    def has_pending(self) -> bool:
        """Writes not yet committed (or lost, which commit() will report)."""
        return self.db.in_transaction or self._lost is not None

    def commit(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            raise StoreUnavailable(f"the store cannot be written: {lost}")
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            # Nothing in this transaction was acknowledged yet; drop it so the next can try.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise StoreUnavailable(f"the store cannot be written: {e}") from e

    _depth = 0

    @contextmanager
    def transaction(self):
        """Several writes that stand or fall together (a savepoint inside the open
        transaction, so a failure undoes only them)."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("SAVEPOINT multi")
        self._depth += 1
        try:
            yield
        except BaseException:
            if self.db.in_transaction:  # else SQLite already rolled everything back
                self.db.execute("ROLLBACK TO multi")
                self.db.execute("RELEASE multi")
            raise
        finally:
            self._depth -= 1
        self.db.execute("RELEASE multi")
        self._written()

    # --- stations ---

    def create_station(self, doc: dict) -> None:
        try:
            self._write(
                "INSERT INTO chargestations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", _row(doc)
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"a chargestation with endpoint {doc['endpoint']!r} exists") from None

    def get_station(self, key: str) -> dict | None:
        row = self.db.execute(
            "SELECT doc FROM chargestations WHERE id = ? UNION ALL "
            "SELECT doc FROM chargestations WHERE endpoint = ? LIMIT 1",
            (key, key),
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def save_station(self, doc: dict) -> None:
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS)
        _, _, *values, blob = _row(doc)
        self._write(
            f"UPDATE chargestations SET {sets}, doc = ? WHERE id = ?", (*values, blob, doc["_id"])
        )

    def set_last_message_at(self, seen: dict[str, str]) -> None:
        """endpoint -> time: only that field, without rewriting each whole record in Python."""
        with self.transaction():
            for endpoint, at in seen.items():
                self._write("UPDATE chargestations SET lastMessageAt = ?, "
                            "doc = json_set(doc, '$.lastMessageAt', ?) WHERE endpoint = ?",
                            (at, at, endpoint))

    def delete_station(self, station_id: str) -> bool:
        with self.transaction():  # one transaction: the station and what hangs off it
            cur = self._write("DELETE FROM chargestations WHERE id = ?", (station_id,))
            for table in ("transactions", "meter_values", "events", "credentials"):
                self._write(f"DELETE FROM {table} WHERE station_id = ?", (station_id,))
        return cur.rowcount > 0

    def list_stations_json(self, query: StationQuery) -> tuple[list[str], int]:
        """The page as the stored JSON texts, unparsed: a list is mostly copying text."""
        where, args = [], []
        for name, value in query.equals.items():
            assert name in FILTER_FIELDS, name
            where.append(f"{name} IS ?")
            args.append(value)
        for name, op, value in query.ranges:
            assert name in SORT_FIELDS and op in (">=", "<="), (name, op)
            where.append(f"{name} {op} ?")
            args.append(value)
        assert query.sort_by in SORT_FIELDS, query.sort_by
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.db.execute(f"SELECT count(*) FROM chargestations{sql_where}", args).fetchone()[0]
        order = "DESC" if query.descending else "ASC"
        sql = (f"SELECT doc FROM chargestations{sql_where} "
               f"ORDER BY {query.sort_by} {order}, id {order}")
        if query.limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [query.limit, query.offset]
        return [r[0] for r in self.db.execute(sql, args)], total

    def mark_all_offline(self, now: str) -> int:
        """At start-up no station is connected, whatever the last run left behind."""
        rows = self.db.execute("SELECT doc FROM chargestations WHERE online = 1").fetchall()
        with self.transaction():
            for (blob,) in rows:
                doc = orjson.loads(blob)
                doc["online"] = False
                doc["lastDisconnectAt"] = now  # when it was found disconnected: after any connect
                self.save_station(doc)
        return len(rows)

    # --- station passwords (hashes only; never part of the record) ---

    def set_password_hash(self, station_id: str, hashed: str, at: str) -> None:
        self._write("INSERT OR REPLACE INTO credentials VALUES (?,?,?)", (station_id, hashed, at))

    def password_hash(self, station_id: str) -> str | None:
        row = self.db.execute("SELECT hash FROM credentials WHERE station_id = ?",
                              (station_id,)).fetchone()
        return row[0] if row else None

    # --- what stations report ---

    def add_event(self, station_id: str, at: str, kind: str, payload: dict) -> None:
        self._write(
            "INSERT INTO events (station_id, at, kind, doc) VALUES (?,?,?,?)",
            (station_id, at, kind, _json(payload)),
        )

    def start_transaction(self, tx: dict) -> int:
        """Insert a transaction; without a `tx_key` (OCPP 1.6) the new row id becomes the key."""
        with self.transaction():
            cur = self._write(
                "INSERT INTO transactions (station_id, tx_key, doc) VALUES (?,?,?)",
                (tx["station_id"], tx.get("tx_key"), _json(tx)),
            )
            rowid = cur.lastrowid
            if tx.get("tx_key") is None:
                tx["tx_key"] = str(rowid)
                self._write("UPDATE transactions SET tx_key = ?, doc = ? WHERE id = ?",
                                (tx["tx_key"], _json(tx), rowid))
        return rowid

    def get_transaction(self, station_id: str, tx_key: str) -> dict | None:
        row = self.db.execute(
            "SELECT doc FROM transactions WHERE station_id = ? AND tx_key = ?", (station_id, tx_key)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def update_transaction(self, station_id: str, tx_key: str, fields: dict) -> dict | None:
        tx = self.get_transaction(station_id, tx_key)
        if tx is None:
            return None
        tx.update(fields)
        self._write("UPDATE transactions SET doc = ? WHERE station_id = ? AND tx_key = ?",
                        (_json(tx), station_id, tx_key))
        return tx

    def add_meter_values(self, station_id: str, tx_key: str | None, connector: int,
                         values: list[dict]) -> None:
        self._write(
            "INSERT INTO meter_values (station_id, tx_key, connector, doc) VALUES (?,?,?,?)",
            (station_id, tx_key, connector, _json(values)),
        )

    def close(self) -> None:
        self.db.close()
