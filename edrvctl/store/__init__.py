"""Persistence behind one small asynchronous port, so that `fleet` never sees SQL.

Every operation is a unit of work: `async with store.unit() as tx:`. Its writes stand or fall
together, and it returns only once they are durable, so whatever a caller acknowledges after it
cannot be lost. `open_store(path)` gives the SQLite store (store/sqlite.py), `open_store(URL)`
with a postgresql:// URL the PostgreSQL one (store/postgres.py): both implement the same two
protocols (methods are async because PostgreSQL really waits on the network).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

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


@dataclass
class FrameQuery:
    """One station's frame log. A page of `limit` frames, oldest first: by default its newest;
    `after` (a frame id): the oldest after it; `before`: the newest before it."""

    station_id: str
    after: int | None = None
    before: int | None = None
    since: int | None = None  # at >= this (milliseconds since the epoch)
    until: int | None = None  # at <= this
    actions: tuple[str, ...] = ()  # any of these actions (an answer's is its CALL's)
    errors: bool = False  # only CALLERRORs and invalid frames
    limit: int = 100


class FrameChunk(NamedTuple):
    """A station's frames written at once (fleet/frames.py), as Unit.add_frames takes them."""

    station_id: str
    first_at: int  # ms since the epoch, of its first frame
    last_at: int  # and of its last
    n: int  # frames in it
    errors: int  # frames with an error (CALLERRORs, invalid frames)
    data: bytes  # chunk_data(...)


COMPRESS_FROM = 1024  # bytes of frames from which a chunk is kept compressed


def chunk_data(frames: bytes | bytearray) -> bytes:
    """A chunk's data from its frames, each frame_json(...) followed by a comma: the JSON
    array of them, zlib-compressed (level 1) from COMPRESS_FROM bytes on. (Frames compress
    to a tenth: a write of a tenth of the bytes costs less than the compression.)"""
    data = b"[" + frames[:-1] + b"]"
    return zlib.compress(data, 1) if len(data) >= COMPRESS_FROM else data


def frame_json(
    at: float,
    direction: str,
    kind: int,
    id: str,
    action: str | None,
    size: int,
    latency: float | None,
    error: str | None,
    text: str | bytes,
) -> bytes:
    """One frame as a FrameChunk holds it (the fields of an ocppj.Trace): `[at (epoch s),
    direction, kind, id, action, size, latency (s), error, text]`. The text is a JSON string,
    but one we sent whole is the JSON it is (our frames are orjson's: read back and written
    again they are the same bytes), so that it is never encoded twice. For a text given as str
    this is `orjson.dumps(fields)`."""
    kept: str | orjson.Fragment = text if isinstance(text, str) else ""
    if isinstance(text, bytes):
        if direction == "out" and len(text) == size:
            kept = orjson.Fragment(text)
        else:  # a binary frame, or one cut short
            kept = text.decode("utf-8", "replace")
    return orjson.dumps((at, direction, kind, id, action, size, latency, error, kept))


def chunk_frames(station_id: str, first_id: int, data: bytes, skip: int = 0) -> list[dict]:
    """The frames of a FrameChunk's data (but its first `skip`), as Unit.list_frames gives
    them; the first has the id `first_id`, the others the ids after it."""
    if data[:1] != b"[":  # compressed
        data = zlib.decompress(data)
    found = []
    for i, (at, direction, kind, mid, action, size, latency, error, text) in enumerate(
        orjson.loads(data)[skip:], skip
    ):
        if type(text) is not str:
            text = orjson.dumps(text).decode()
            truncated = False
        else:
            truncated = (len(text) if text.isascii() else len(text.encode())) < size
        found.append(
            {
                "seq": first_id + i,
                "chargestation": station_id,
                "at": int(at * 1000),
                "direction": direction,
                "kind": kind,
                "messageId": mid,
                "action": action,
                "size": size,
                "latency": latency,
                "error": error,
                "text": text,
                "truncated": truncated,
            }
        )
    return found


SESSION_STATUSES = ("Active", "Completed", "Refused")


@dataclass
class SessionQuery:
    """Sessions (transactions) newest first: by start time (`startedAt`; for one whose start
    was never seen, its `stoppedAt`, else its `createdAt`), then the one recorded last."""

    station_id: str | None = None
    status: str | None = None  # one of SESSION_STATUSES
    active: bool | None = None  # status is (not) Active
    since: str | None = None  # started at or after this
    until: str | None = None  # started at or before this
    limit: int | None = 20  # None: no limit
    offset: int = 0


TOKEN_FILTER_FIELDS = ("physicalId", "type", "active", "organization")


@dataclass
class TokenQuery:
    """Id tokens, newest first (createdAt), or oldest first."""

    equals: dict[str, Any] = field(default_factory=dict)  # TOKEN_FILTER_FIELDS -> value
    usable_in: str | None = None  # only tokens of no organization or of this one
    newest_first: bool = True
    limit: int | None = 20  # None: no limit
    offset: int = 0


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
        unit has committed, the row is handed to the store's `on_events` (SQLite: before the
        unit returns; PostgreSQL: shortly after, by the store's tailer)."""

    async def list_events(self, query: EventQuery) -> list[dict]: ...

    async def add_frames(self, chunks: Sequence[FrameChunk]) -> list[int]:
        """Keeps chunks of frames. Returns for each the id of its first frame; the ids of the
        others follow one by one. Ids rise in the order frames are added."""

    async def list_frames(self, query: FrameQuery) -> tuple[list[dict], bool]:
        """A page of frames oldest first, and whether more match beyond it (older ones; with
        `after`, newer ones). Each is {seq (its id), chargestation, at (milliseconds since the
        epoch), direction, kind, messageId, action, size, latency (s), error, text (str; bytes
        that are no UTF-8 replaced), truncated (the text is shorter than `size`)}."""

    async def prune_frames(self, station_id: str, keep: int, limit: int = 500) -> int:
        """Drops the station's oldest frames beyond its newest `keep` (removing at most `limit`
        groups of frames as written at once); returns how many it holds then."""

    async def expire_frames(self, before: int, limit: int = 500) -> int:
        """Drops frames older than `before` (ms since the epoch), oldest first, at most `limit`
        groups of frames as written at once; returns how many groups went."""

    async def seen_unknown(self, endpoint: str, at: str, info: dict, times: int, keep: int) -> bool:
        """Counts `times` upgrades from an endpoint that is no station; True if new to the
        list, which keeps the `keep` seen last."""

    async def unknown_endpoints(self, limit: int | None = None) -> list[dict]:
        """Last seen first: {endpoint, seen, firstSeenAt, lastSeenAt, ...info}."""

    async def forget_unknown(self, endpoint: str) -> None: ...

    async def start_transaction(self, tx: dict) -> str:
        """Returns the tx_key; without one (OCPP 1.6) the new row's id becomes it. A
        transaction with an `_id` is a session found by it (get_session)."""

    async def get_transaction(self, station_id: str, tx_key: str) -> dict | None: ...

    async def update_transaction(
        self, station_id: str, tx_key: str, fields: dict
    ) -> dict | None: ...

    async def transactions(self, station_id: str | None = None) -> list[dict]:
        """Oldest first."""

    async def get_session(self, session_id: str) -> dict | None:
        """The transaction whose `_id` this is."""

    async def list_sessions(self, query: SessionQuery) -> tuple[list[dict], int]:
        """A page of transactions, newest first (SessionQuery), and how many match in all."""

    async def add_meter_values(
        self, station_id: str, tx_key: str | None, connector: int, values: list[dict]
    ) -> None: ...

    async def meter_values(
        self,
        station_id: str | None = None,
        tx_key: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest: bool = False,
    ) -> list[dict]:
        """Oldest first (`newest`: newest first): {station_id, tx_key, connector, values},
        one per message; `limit` and `offset` page through them."""

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

    # --- webhooks (fleet/webhooks.py) ---

    async def create_webhook(self, doc: dict, secret: str, cursor: int) -> None:
        """A new webhook; `cursor`: the last event seq it does not take."""

    async def get_webhook(self, webhook_id: str) -> dict | None: ...

    async def list_webhooks(self) -> list[dict]:
        """Oldest first."""

    async def update_webhook(self, doc: dict, cursor: int | None = None) -> bool:
        """Replaces the record (and the cursor, if given); False if there is none."""

    async def set_webhook_secret(self, webhook_id: str, secret: str) -> bool: ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """With its deliveries; False if there was none."""

    async def webhook_internals(self) -> dict[str, tuple[str, int]]:
        """_id -> (secret, cursor) of every webhook: what only the delivery worker reads."""

    async def set_webhook_cursors(self, cursors: dict[str, int]) -> None:
        """_id -> the last event seq taken; a cursor never moves back."""

    async def add_deliveries(self, webhook_id: str, deliveries: list[dict]) -> int:
        """New deliveries of events (each a delivery record without `_id`, plus `seq`, `lane`
        and `body`), unless the webhook is gone or already has that event; returns how many
        were added. Their `_id`s rise in the order given."""

    async def delivery_heads(self, webhook_id: str, limit: int) -> list[dict]:
        """The oldest pending delivery of each lane, soonest nextAttemptAt first, with its
        `seq`, `lane` and `body`."""

    async def save_delivery(self, delivery: dict) -> bool:
        """Records an attempt (status, attempts, nextAttemptAt, ...) of a delivery that is
        still pending; False if it is not (given up meanwhile, or gone). The body is kept
        only while it stays pending."""

    async def list_deliveries(
        self, webhook_id: str, status: str | None = None, limit: int | None = 100
    ) -> list[dict]:
        """Newest event first, without body or lane."""

    async def pending_deliveries(self) -> dict[str, int]:
        """Webhook _id -> its pending deliveries (only webhooks that have some)."""

    async def fail_oldest_deliveries(self, webhook_id: str, keep: int, error: str, now: str) -> int:
        """Every pending delivery but the newest `keep` ends failed with lastError `error`;
        returns how many."""

    async def prune_deliveries(self, webhook_id: str, keep: int, before: str) -> int:
        """Forgets finished deliveries (delivered or failed) last changed before `before`, and
        any beyond the newest `keep`; returns how many."""

    # --- id tokens (fleet/tokens.py) ---

    async def create_token(self, doc: dict) -> None:
        """errors.Conflict if a token with that physicalId (in any case) and type exists."""

    async def import_tokens(self, docs: list[dict]) -> int:
        """Create the tokens, or update the one with the same physicalId and type (it keeps
        its _id, createdAt and meta_data); returns how many were created."""

    async def get_token(self, token_id: str) -> dict | None:
        """Remembers the row's revision for save_token."""

    async def find_tokens(self, physical_id: str, type: str | None = None) -> list[dict]:
        """The tokens of this physicalId (compared without case, as OCPP compares id tags),
        of any type or of `type`; oldest first. Remembers their revisions."""

    async def save_token(self, doc: dict) -> None:
        """Compare-and-set, as save_station; errors.Conflict if its new physicalId and type
        are another token's."""

    async def delete_token(self, token_id: str) -> bool: ...

    async def list_tokens(self, query: TokenQuery) -> tuple[list[dict], int]:
        """A page, and how many match in all."""

    async def active_transactions(self, id_tag: str) -> list[dict]:
        """The transactions of this id tag (without case) whose status is Active."""

    async def get_local_list(self, station_id: str) -> dict | None:
        """What was last sent to the station as its local authorization list."""

    async def set_local_list(self, station_id: str, doc: dict) -> None:
        """`doc` has `version`; deleted with the station."""

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

    # called with committed event rows, every one once, in seq order: SQLite's of each commit
    # before its units return; PostgreSQL's of the whole database (every node), shortly after
    # their commit (set it before the first unit)
    on_events: Callable[[list[dict]], None] | None
    # called with the seconds each successful COMMIT took (metrics)
    on_commit: Callable[[float], None] | None

    async def close(self) -> None:
        """Commits what is pending, then closes."""


def is_url(location: object) -> bool:
    """A PostgreSQL URL, not a SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A store URL without its password, for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def open_store(
    location: str | os.PathLike, max_bytes: int | None = None, readonly: bool = False
) -> Store:
    """`location`: a file path, ":memory:", or a postgresql:// (postgres://) URL. `readonly`:
    read a store another process writes (never migrates; writes raise
    errors.StoreUnavailable). `max_bytes` caps a SQLite file only."""
    if is_url(location):
        from edrvctl.store.postgres import PostgresStore  # asyncpg only when asked for

        return PostgresStore(str(location), readonly=readonly)
    from edrvctl.store.sqlite import SqliteStore

    return SqliteStore(location, max_bytes, readonly)
