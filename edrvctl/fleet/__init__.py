"""Domain rules: the one place that decides what an admin request or a station message does.

The REST routes (server/api.py) and the OCPP handlers (server/ocpp16.py, server/ocpp201.py) are
thin translators into the methods below. `Fleet` owns two ports and imports nothing from the
server:

- `store` (edrvctl.store.Store): every operation is one unit of work, and returns only after
  its unit has committed, so whatever the caller acknowledges (an API response, a CALLRESULT)
  is durable first. That rule lives here, once, not in each adapter.
- `live` (fleet.live.LiveStations): the stations connected now; commands are plain data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from edrvctl import model
from edrvctl.errors import (
    Busy,
    EdrvError,
    InvalidBody,
    NotFound,
    OverBudget,
    StaleRecord,
    StationRejected,
    StationTimeout,
    Unavailable,
    UsageError,
)
from edrvctl.fleet import actions, events, frames, sessions, tokens
from edrvctl.fleet.actions import Follow, Step
from edrvctl.fleet.live import (
    ChangeAvailability,
    Command,
    Configure,
    Disconnect,
    FetchConfig,
    GetDiagnostics,
    LiveStations,
    RemoteStart,
    Router,
    SendLocalList,
    UpdateFirmware,
)
from edrvctl.metrics import Metrics
from edrvctl.store import ActionQuery, EventQuery, StationQuery, Store, Unit
from edrvctl.timefmt import ago

log = logging.getLogger("edrvctl.fleet")

MAX_SAVE_TRIES = 5  # a record changed by another writer meanwhile is read and changed again
MAX_REMEMBERED = 100_000  # memos keyed by something a station sends are cleared past this
MAX_UNKNOWN = 1_000  # endpoints that tried to connect but are no station, kept (last seen)
MAX_REASON = 200  # characters of a refusal's reason kept (it may quote what the client sent)
# stations whose lastMessageAt one unit writes: the 1,000 of a busy second in one unit held the
# event loop 12 ms (its UPDATEs and their COMMIT), and every station and request waited on it
SEEN_PER_UNIT = 100
# Slow password checks at once, on HASH_THREADS threads: each check holds ~8 MiB for ~50 ms,
# and glibc keeps an arena per thread, so more threads only buy memory (2 cores).
MAX_HASHING = 4
HASH_THREADS = 2


@functools.cache
def _hasher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="password")


@dataclass
class Budgets:
    """What one station may grow. Defaults no real charger reaches (one stores well under
    10 MB a day); `serve` flags change them."""

    connectors: int = 128  # (EVSE, connector) pairs in its record
    stored_per_day: int = 50 << 20  # bytes of messages kept (meter values, events, ...) a day
    payload: int = 64 << 10  # bytes of one kept message
    report: int = 8 << 20  # bytes of one assembled 2.0.1 report (csconfig)


def _last_seen(doc: dict) -> str:
    when = doc.get("lastMessageAt") or doc.get("lastConnectAt")
    return f"last seen {ago(when)}" if when else "never connected"


class NoLiveStations:
    """Before a server attaches its listener: every station is offline."""

    def is_online(self, endpoint: str) -> bool:
        return False

    async def send(self, endpoint: str, command: Any, timeout: float) -> Any:
        raise Unavailable(f"chargestation {endpoint} is offline")

    def check(self, endpoint: str, command: Any) -> None:
        raise Unavailable(f"chargestation {endpoint} is offline")


class Fleet:
    def __init__(
        self,
        store: Store,
        live: LiveStations | None = None,
        heartbeat_interval: int = 300,
        budgets: Budgets | None = None,
    ):
        self.store = store
        # committed events, pushed to live readers (the event stream, webhooks, --watch)
        self.feed = events.Feed()
        store.on_events = self.feed.publish
        # every OCPP frame in and out, per station (serve configures it; fleet/frames.py)
        self.frames = frames.FrameLog(store)
        self.metrics = Metrics()  # what /metrics shows (edrvctl/metrics.py)
        store.on_commit = self.metrics.commits.observe
        self.budgets = budgets or Budgets()
        # endpoint -> (UTC day, bytes kept that day); in memory: a restart forgives the day
        self._kept: dict[str, tuple[str, int]] = {}
        self.live: LiveStations = live or NoLiveStations()
        # several nodes (server/cluster.py): carries out Actions for stations held elsewhere
        self.router: Router | None = None
        # base URLs stations are pointed at (`connection_url`), once bound: ws:// and, with a
        # TLS listener, wss:// (for the TLS profiles; None: they cannot connect here)
        self.ocpp_url: str | None = None
        self.ocpp_tls_url: str | None = None
        self.heartbeat_interval = heartbeat_interval
        self.command_timeout = 60.0  # for commands nobody waits on (push_availability)
        self._tasks: set[asyncio.Task] = set()
        # lastMessageAt of stations whose message changed nothing else, not yet written:
        # written at most once a second per station (flush_seen), not once per Heartbeat.
        self._seen: dict[str, str] = {}
        self._ids: dict[str, str] = {}  # endpoint -> _id of connected stations
        # endpoint -> {(evse, connector): what it last said and we committed}, while connected
        self._statuses: dict[str, dict[tuple[int, int], tuple]] = {}
        # running sessions' last check, so that a meter value does not read its session
        self.recent_sessions = sessions.Recent()
        self._process_key = os.urandom(32)
        # stored password hash -> keyed digest of the password that matched it: a hash
        # changed elsewhere misses here and is checked in full again
        self._verified: dict[str, bytes] = {}
        self._hashing = 0  # slow checks running
        # endpoint -> {action _id: long command followed through the station's messages};
        # empty for nearly every station, so a message costs one dict lookup here
        self._following: dict[str, dict[str, Follow]] = {}
        # upload token (server/files.py) -> (endpoint, action _id), while the action is followed
        self._uploads: dict[str, tuple[str, str]] = {}
        # OCPP request ids (remoteStartId, requestId): int32, distinct across restarts
        self._request_ids = itertools.count(int(time.time()) % 1_000_000 * 1000 + 1)
        from edrvctl.fleet.batch import Batches

        self.batches = Batches()  # the last batch runs (fleet/batch.py), in memory
        self.tokens = tokens.Authorizer()  # who may charge (fleet/tokens.py)

    # --- units of work ------------------------------------------------------------------------

    async def _read(self, key: str) -> dict | None:
        async with self.store.unit() as tx:
            return await self._load(tx, key)

    async def _load(self, tx: Unit, key: str) -> dict | None:
        """A record by `_id` or endpoint, with its latest lastMessageAt."""
        doc = await tx.get_station(key)
        if doc is not None and doc["endpoint"] in self._seen:
            doc["lastMessageAt"] = self._seen[doc["endpoint"]]
        return doc

    async def _change(
        self,
        key: str,
        fn: Callable[[dict, str], Any],
        content: bool = True,
        message: bool = True,
        event: str | None = None,
    ) -> tuple[dict, Any]:
        """Read a station, apply fn(doc, now), stamp it, save it, in one unit; read and apply
        again if another writer saved the record meanwhile. Returns (record, fn's result).
        `content`: the record's content changed (updatedAt); `message`: the station said
        something (lastMessageAt). `event`: the type of an event recorded with the change,
        whose data is fn's result (none if that is None)."""
        for attempt in range(MAX_SAVE_TRIES):
            try:
                async with self.store.unit() as tx:
                    doc = await tx.get_station(key)
                    if doc is None:  # deleted meanwhile (its session is being closed)
                        raise NotFound(
                            f"chargestation {key!r} not found",
                            hint="list them with `edrvctl cs list`",
                        )
                    now = model.utcnow()
                    result = fn(doc, now)
                    seen = self._seen.pop(doc["endpoint"], None)
                    if message:
                        doc["lastMessageAt"] = now
                    elif seen:
                        doc["lastMessageAt"] = seen
                    if content:
                        doc["updatedAt"] = now
                    await tx.save_station(doc)
                    if event is not None and result is not None:
                        await tx.add_event(doc["_id"], now, event, result, doc["endpoint"])
                return doc, result
            except StaleRecord:
                if attempt == MAX_SAVE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _charge(self, endpoint: str, payload: object, record: int = 0) -> None:
        """Count what a station's message will keep against its budgets; OverBudget (and
        nothing kept) past them. The first refusal of a day is logged. `record`: bytes of a
        record the message may add besides (a session)."""
        try:
            size = len(orjson.dumps(payload)) + record
        except orjson.JSONEncodeError as e:  # nesting beyond what JSON storage holds
            raise InvalidBody(f"this value cannot be stored: {e}") from None
        if size > self.budgets.payload:
            raise OverBudget(
                f"a message of {size} bytes: a station may have at most "
                f"{self.budgets.payload} bytes kept per message"
            )
        day = model.utcnow()[:10]
        kept_day, kept = self._kept.get(endpoint, (day, 0))
        if kept_day != day:
            kept = 0
        if kept + size > self.budgets.stored_per_day:
            if kept <= self.budgets.stored_per_day:
                log.warning(
                    "%s: over its budget of %d bytes kept a day; its messages are "
                    "refused until tomorrow (UTC)",
                    endpoint,
                    self.budgets.stored_per_day,
                )
                kept = self.budgets.stored_per_day + 1  # logged once
                self._kept[endpoint] = (day, kept)
            raise OverBudget(
                f"this station used its budget of {self.budgets.stored_per_day} bytes kept per day"
            )
        if len(self._kept) >= MAX_REMEMBERED:
            self._kept.clear()
        self._kept[endpoint] = (day, kept + size)

    def _touch(self, endpoint: str) -> None:
        self._seen[endpoint] = model.utcnow()

    async def flush_seen(self) -> None:
        """Write the pending lastMessageAt stamps (the server calls this every second)."""
        if self._seen:
            seen, self._seen = list(self._seen.items()), {}
            for i in range(0, len(seen), SEEN_PER_UNIT):
                async with self.store.unit() as tx:  # committed before the next slice
                    await tx.set_last_message_at(dict(seen[i : i + SEEN_PER_UNIT]))

    async def _station_id(self, endpoint: str) -> str:
        sid = self._ids.get(endpoint)
        if sid is None:
            doc = await self._read(endpoint)
            if doc is None:  # deleted while connected; the session is being closed
                raise NotFound(f"chargestation {endpoint!r} not found")
            sid = doc["_id"]
        return sid

    # --- reading ------------------------------------------------------------------------------

    @staticmethod
    def _tls_profile(doc: dict) -> bool:
        return (doc.get("security") or {}).get("type") in ("tls_basic_auth", "tls_client_cert")

    def connection_url(self, doc: dict) -> str | None:
        """Where this station connects: wss:// for the TLS profiles (2, 3), else ws://."""
        return self.ocpp_tls_url if self._tls_profile(doc) else self.ocpp_url

    def present(self, doc: dict) -> dict:
        return {**doc, "connection_url": self.connection_url(doc)}

    async def get(self, key: str) -> dict:
        doc = await self._read(key)
        if doc is None:
            raise NotFound(
                f"chargestation {key!r} not found", hint="list them with `edrvctl cs list`"
            )
        return doc

    async def list_json(self, query: StationQuery) -> tuple[list[str], int]:
        """A page of records as JSON texts, `connection_url` included. Parsing and re-encoding
        10,000 records costs more than the rest of a list request; splicing costs nothing."""
        async with self.store.unit() as tx:
            docs, total = await tx.list_stations_json(query)
        plain = ',"connection_url":' + orjson.dumps(self.ocpp_url).decode() + "}"
        tls = ',"connection_url":' + orjson.dumps(self.ocpp_tls_url).decode() + "}"
        # Only a record with '"tls_' in it can have a TLS profile: parse just those to know.
        return [
            d[:-1] + (tls if '"tls_' in d and self._tls_profile(orjson.loads(d)) else plain)
            for d in docs
        ], total

    # --- admin changes ------------------------------------------------------------------------

    async def create(self, body: model.StationCreate) -> tuple[dict, str | None]:
        """Returns the record, and the station's password when its profile has one (the only
        time it is ever shown)."""
        now = model.utcnow()
        doc = model.new_station(body, now)
        password, hashed = None, None
        if model.needs_password(doc["security"]):
            password, hashed = await self._new_password()
        async with self.store.unit() as tx:
            await tx.create_station(doc)
            if hashed:
                await tx.set_password_hash(doc["_id"], hashed, now)
            await tx.forget_unknown(doc["endpoint"])
        return doc, password

    @staticmethod
    async def _new_password() -> tuple[str, str]:
        """A new password and its hash (the slow hash runs in a thread, off the event loop)."""
        from edrvctl import passwords

        password = passwords.generate()
        hashed = await asyncio.get_running_loop().run_in_executor(
            _hasher(), passwords.hash_password, password
        )
        return password, hashed

    async def rotate_password(self, key: str) -> tuple[dict, str]:
        """Issue a new password and retire the old one at once; a station connected with the
        old one is disconnected (it must come back with the new one)."""
        doc = await self.get(key)
        if not model.needs_password(doc["security"]):
            raise UsageError(
                f"chargestation {doc['endpoint']} uses security "
                f"{doc['security']['type']!r}, which has no password"
            )
        password, hashed = await self._new_password()
        for attempt in range(MAX_SAVE_TRIES):
            try:
                async with self.store.unit() as tx:
                    found = await self._load(tx, key)
                    if found is None:
                        raise NotFound(f"chargestation {key!r} not found")
                    doc = found
                    now = model.utcnow()
                    await tx.set_password_hash(doc["_id"], hashed, now)
                    doc["updatedAt"] = now
                    await tx.save_station(doc)
                break
            except StaleRecord:
                if attempt == MAX_SAVE_TRIES - 1:
                    raise
        await self._disconnect(doc["endpoint"], "password rotated")
        return doc, password

    async def check_password(self, endpoint: str, password: str) -> bool:
        """Constant-time check of a station's password. The slow hash runs in a thread once
        per stored hash and server run; after that a keyed digest kept in memory answers.
        Slow checks are few at a time: errors.Busy past that."""
        from edrvctl import passwords

        async with self.store.unit() as tx:
            doc = await tx.get_station(endpoint)
            stored = await tx.password_hash(doc["_id"]) if doc else None
        if stored is None:
            return False
        quick = hmac.new(self._process_key, f"{stored}\0{password}".encode(), "sha256").digest()
        known = self._verified.get(stored)
        if known is not None and hmac.compare_digest(known, quick):
            return True
        if self._hashing >= MAX_HASHING:
            raise Busy("too many password checks at once; retry in a moment")
        self._hashing += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                _hasher(), passwords.verify, password, stored
            )
        finally:
            self._hashing -= 1
        if ok:
            if len(self._verified) >= MAX_REMEMBERED:
                self._verified.clear()
            self._verified[stored] = quick
        return ok

    async def update(self, key: str, patch: model.StationUpdate) -> dict:
        """A new `security` takes effect at once: a connected station is disconnected and must
        come back under it. Moving to a profile with a password from one without issues a
        password (its hash is stored first), returned this once in the result as `password`."""
        changes = patch.model_dump(exclude_unset=True)
        security = None
        password = None
        if changes.pop("security", None) is not None:  # ({} when its type is the default)
            security = {
                "type": patch.security.type,
                "profile": model.SECURITY_PROFILES[patch.security.type],
            }
            current = await self.get(key)
            if model.needs_password(security) and not model.needs_password(current["security"]):
                password, hashed = await self._new_password()
                async with self.store.unit() as tx:
                    await tx.set_password_hash(current["_id"], hashed, model.utcnow())
        was: dict[str, Any] = {}

        def apply(doc: dict, now: str) -> None:
            was["active"], was["security"] = doc["active"], doc["security"]["type"]
            doc.update(changes)
            if security is not None:
                doc["security"] = security
            if doc["active"] != was["active"]:
                # told at once if connected, else at its next boot (an Inoperative station
                # stays so across reboots, OCPP says)
                doc["availabilityPending"] = True

        doc, _ = await self._change(key, apply, message=False)
        if doc["active"] != was["active"]:
            self._spawn(self.push_availability(doc["endpoint"]))
        if security is not None and security["type"] != was["security"]:
            await self._disconnect(doc["endpoint"], "security profile changed")
        return {**doc, "password": password} if password else doc

    async def delete(self, key: str) -> dict:
        async with self.store.unit() as tx:
            doc = await self._load(tx, key)
            if doc is None:
                raise NotFound(
                    f"chargestation {key!r} not found", hint="list them with `edrvctl cs list`"
                )
            await tx.delete_station(doc["_id"])
        for memo in (self._seen, self._ids, self._statuses, self._following):
            memo.pop(doc["endpoint"], None)
        self.frames.forget(doc["_id"])
        await self._disconnect(doc["endpoint"], "chargestation deleted")
        return doc

    async def _disconnect(self, endpoint: str, reason: str) -> None:
        if self.live.is_online(endpoint):
            try:
                await self.live.send(endpoint, Disconnect(reason), timeout=10)
            except Unavailable:
                pass  # gone already

    # --- commands to live stations ------------------------------------------------------------

    def _check_reachable(self, doc: dict) -> None:
        if not doc["active"]:
            raise Unavailable(
                f"chargestation {doc['endpoint']} is inactive",
                hint=f"activate it with `edrvctl cs activate {doc['endpoint']}`",
            )
        if not self.live.is_online(doc["endpoint"]):
            raise Unavailable(
                f"chargestation {doc['endpoint']} is offline ({_last_seen(doc)})",
                hint="its stored csconfig is shown by `edrvctl cs inspect`",
            )
        if not doc.get("bootInfo"):  # OCPP: nothing is asked before the first boot
            raise Unavailable(
                f"chargestation {doc['endpoint']} is connected but has not "
                "sent its BootNotification yet",
                hint="try again in a moment",
            )

    async def fetch_config(self, key: str, keys: list[str], timeout: float) -> dict:
        """Ask the live station for its configuration, store it as `csconfig`, return it."""
        doc = await self.get(key)
        self._check_reachable(doc)
        entries, unknown = await self.live.send(doc["endpoint"], FetchConfig(tuple(keys)), timeout)

        def apply(doc: dict, now: str) -> None:
            if keys:  # a partial fetch refreshes those entries and keeps the rest
                # keys are case-insensitive in OCPP: the station's spelling replaces ours
                old = {e["key"].casefold(): e for e in doc["csconfig"]}
                for e in entries:  # GetVariables does not say what is read-only: keep it
                    known = old.get(e["key"].casefold())
                    if e.get("readonly") is None and known is not None:
                        e["readonly"] = known.get("readonly")
                fresh = {e["key"].casefold() for e in entries}
                doc["csconfig"] = [
                    e for e in doc["csconfig"] if e["key"].casefold() not in fresh
                ] + entries
            else:
                doc["csconfig"] = entries
            doc["csconfigFetchedAt"] = now

        doc, _ = await self._change(doc["_id"], apply, message=False)
        return {
            "_id": doc["_id"],
            "endpoint": doc["endpoint"],
            "fetchedAt": doc["csconfigFetchedAt"],
            "csconfig": entries,
            "unknownKeys": unknown,
        }

    async def send_local_list(
        self, key: str, full: bool, timeout: float, wait: bool = True
    ) -> dict:
        """Send a station its local authorization list (fleet/tokens.local_list) as an
        Action: all of it, or what changed since the list it last accepted."""
        doc = await self.get(key)
        self._check_reachable(doc)
        async with self.store.unit() as tx:
            command = await tokens.local_list(tx, doc, full)
        return await self.command(doc["_id"], command, timeout, wait)

    # --- commands as Actions (fleet/actions.py) ------------------------------------------------

    async def command(
        self,
        key: str,
        command: Command,
        timeout: float,
        wait: bool = True,
        batch: str | None = None,
    ) -> dict:
        """Send `command` to a live station as an Action, and return the Action.

        Before anything is recorded or sent: NotFound, Unavailable (offline, inactive, not
        booted) and UsageError (its version cannot take the command). The Action is committed
        before the command is sent; then it holds the answer: status completed (accepted) or
        failed, with `error.code` Rejected (a refusal status), CallError (CALLERROR or an
        invalid answer), Timeout (no answer: outcome timed_out), Offline, Busy or Invalid.
        A long command stays outcome pending, followed through the station's messages until
        its end or its deadline (expire_actions). `wait=False`: return the Action as recorded
        (status requested) and carry the command out in the background. `batch`: the _id of
        the batch (fleet/batch.py) it is part of, kept in the Action."""
        if type(command) not in actions.TYPES:
            raise UsageError(f"{type(command).__name__} is not an operation on a station")
        doc = await self.get(key)
        self._check_reachable(doc)
        endpoint = doc["endpoint"]
        command = self._with_request_id(command)
        check = getattr(self.live, "check", None)
        if check is not None:
            check(endpoint, command)
        now = model.utcnow()
        limit = actions.DEADLINES.get(type(command))
        deadline = None if limit is None else _iso(time.time() + limit)
        action = actions.new_action(doc, command, now, deadline)
        if batch is not None:
            action["batch"] = batch
        async with self.store.unit() as tx:
            await tx.create_action(action)
            await self._action_event(tx, action, "requested")
        if self.router is not None and not self.router.is_local(endpoint):
            carried = self._carry_out_elsewhere(action, command, timeout)
        else:
            self._follow(doc, action["_id"], command)
            carried = self._carry_out(doc, action["_id"], command, timeout)
        task = asyncio.ensure_future(carried)
        self._tasks.add(task)
        task.add_done_callback(self._carried_out)
        if not wait:
            return action
        # shielded: a caller that stops waiting (a client gone) does not leave it unrecorded
        return await asyncio.shield(task)

    def _follow(self, doc: dict, action_id: str, command: Command) -> None:
        """A long command is followed from before it is sent: its first follow-up may beat
        the answer."""
        limit = actions.DEADLINES.get(type(command))
        if limit is None:
            return
        endpoint = doc["endpoint"]
        self._following.setdefault(endpoint, {})[action_id] = Follow(
            action_id,
            command,
            time.time() + limit,
            protocol=doc["protocol"],
            firmware=(doc.get("bootInfo") or {}).get("firmwareVersion"),
        )
        token = getattr(command, "upload_token", None)
        if token:
            self._uploads[token] = (endpoint, action_id)

    async def carry_out_here(self, action_id: str, command: Command, timeout: float) -> dict:
        """Carry out an Action another node recorded for a station connected here (see
        server/cluster.py); the Action once the answer is recorded."""
        async with self.store.unit() as tx:
            action = await tx.get_action(action_id)
        if action is None:
            raise NotFound(f"action {action_id!r} not found")
        doc = await self.get(action["chargestation"])
        self._follow(doc, action_id, command)
        return await self._carry_out(doc, action_id, command, timeout)

    async def _carry_out_elsewhere(self, action: dict, command: Command, timeout: float) -> dict:
        """The node holding the station carries the Action out; if that fails on the way (the
        node is lost, or the station left it), the failure is recorded here."""
        assert self.router is not None
        try:
            return await self.router.carry_out(action, command, timeout)
        except EdrvError as e:
            error, outcome, stage = _failure(e)

        def apply(action: dict, now: str) -> None:
            if action["outcome"] == "pending":
                if action["status"] == "requested":
                    action["status"] = "failed"
                action["outcome"], action["error"], action["stage"] = outcome, error, stage

        return await self._change_action(action["_id"], apply)

    async def lost(self, station_ids: list[str], reason: str) -> None:
        """Stations whose node was lost (server/cluster.py): offline, and the commands that
        node was following for them failed."""
        for station_id in station_ids:
            try:
                await self._change(
                    station_id, _offline({"reason": reason}), message=False, event=events.OFFLINE
                )
                pending = ActionQuery(
                    equals={"chargestation": station_id, "outcome": "pending"}, limit=None
                )
                async with self.store.unit() as tx:
                    found, _ = await tx.list_actions(pending)
                for action in found:
                    await self._change_action(action["_id"], _interrupted(reason))
            except NotFound:
                pass

    def _carried_out(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a command's answer was not recorded", exc_info=task.exception())

    def _with_request_id(self, command: Command) -> Command:
        if isinstance(command, RemoteStart) and command.remote_start_id is None:
            return dataclasses.replace(command, remote_start_id=next(self._request_ids))
        if isinstance(command, (UpdateFirmware, GetDiagnostics)) and command.request_id is None:
            return dataclasses.replace(command, request_id=next(self._request_ids))
        return command

    async def _carry_out(self, doc: dict, action_id: str, command: Command, timeout: float) -> dict:
        endpoint = doc["endpoint"]
        error: dict | None = None
        outcome, stage = "failed", "sent"
        status, answer, note = None, None, None
        readback: dict | None = None
        sent = time.perf_counter()
        try:
            result = await self.live.send(endpoint, command, timeout)
        except EdrvError as e:
            if isinstance(e, StationRejected):
                self._answered(command, sent)
            error, outcome, stage = _failure(e)
        else:
            self._answered(command, sent)
            status, answer = result if isinstance(result, tuple) else (result, {"status": result})
            note = actions.NOTES.get(status)
            if status not in actions.ACCEPTED:
                error = {
                    "code": "Rejected",
                    "description": f"chargestation {endpoint} answered {status}",
                }
            elif isinstance(command, Configure) and status == "Accepted":
                readback, error = await self._read_back(doc, command, timeout)
                outcome, stage = ("succeeded", "done") if error is None else ("failed", "done")
            elif type(command) in actions.DEADLINES and status != "NoFile":
                outcome, stage = "pending", "accepted"
            else:
                outcome, stage = "succeeded", "done"
        if outcome != "pending":  # nothing more to follow
            self._unfollow(endpoint, action_id)
        if status == "Accepted" and isinstance(command, SendLocalList):
            await tokens.local_list_sent(self, doc, command)  # what the station holds now

        def apply(action: dict, now: str) -> None:
            action["status"] = "completed" if status in actions.ACCEPTED else "failed"
            action["response_data"] = answer
            if note:
                action["note"] = note
            if readback is not None:
                action["progress"].append({"status": "ReadBack", "at": now, **readback})
            if action["outcome"] == "pending":  # else a follow-up already ended it
                action["outcome"] = outcome
                if error is not None:
                    action["error"] = error
                if action["stage"] in ("queued", "sent") or outcome != "pending":
                    action["stage"] = stage

        return await self._change_action(action_id, apply)

    def _answered(self, command: Command, sent: float) -> None:
        """A command's round trip, for /metrics: from sending it to the station's answer."""
        self.metrics.commands.observe(time.perf_counter() - sent, actions.TYPES[type(command)])

    async def _read_back(
        self, doc: dict, command: Configure, timeout: float
    ) -> tuple[dict, dict | None]:
        """Read a key just set (csconfig is updated); (what was read, error if not as set)."""
        try:
            got = await self.fetch_config(doc["_id"], [command.key], timeout)
        except EdrvError as e:
            return {"error": e.message}, {
                "code": "NotVerified",
                "description": f"accepted, but reading it back failed: {e.message}",
            }
        wanted = command.key.casefold()
        entries = got["csconfig"]
        entry = next((e for e in entries if e["key"].casefold() == wanted), None)
        if entry is None and len(entries) == 1:
            entry = entries[0]  # a 2.0.1 key spelled another way
        value = entry.get("value") if entry else None
        if value != command.value:
            return {"value": value}, {
                "code": "NotApplied",
                "description": f"accepted, but {command.key} reads {value!r}, not {command.value!r}",
            }
        return {"value": value}, None

    async def _change_action(self, action_id: str, fn: Callable[[dict, str], Any]) -> dict:
        for attempt in range(MAX_SAVE_TRIES):
            try:
                async with self.store.unit() as tx:
                    action = await tx.get_action(action_id)
                    if action is None:
                        raise NotFound(f"action {action_id!r} not found")
                    now = model.utcnow()
                    status, outcome = action["status"], action["outcome"]
                    fn(action, now)
                    action["updatedAt"] = now
                    await tx.save_action(action)
                    if action["status"] != status:
                        done = "accepted" if action["status"] == "completed" else "rejected"
                        await self._action_event(tx, action, done)
                    if action["outcome"] != outcome:
                        await self._action_event(tx, action, action["outcome"])
                return action
            except StaleRecord:
                if attempt == MAX_SAVE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _action_event(tx: Unit, action: dict, stage: str) -> None:
        await tx.add_event(
            action["chargestation"],
            action["updatedAt"],
            events.action_type(action["type"], stage),
            action,
            action.get("endpoint"),
        )

    def upload_target(self, token: str) -> str | None:
        """The _id of the followed action whose upload URL holds `token`; None once it has
        ended (or the file came, or there never was one)."""
        found = self._uploads.get(token)
        return found[1] if found else None

    async def file_uploaded(self, token: str, info: dict) -> bool:
        """Record the file a station uploaded for an action (its `file`), using up `token`.
        False if the action is no longer followed (the file is not wanted)."""
        found = self._uploads.pop(token, None)
        f = self._following.get(found[0], {}).get(found[1]) if found else None
        if found is None or f is None:
            return False
        endpoint, action_id = found
        f.received = True
        extra = {"name": info["name"], "size": info["size"]}
        if f.reported:
            step = Step("FileReceived", stage="done", outcome="succeeded", extra=extra)
            self._unfollow(endpoint, action_id)
        else:
            step = Step("FileReceived", extra=extra)

        def apply(action: dict, now: str) -> None:
            action["file"] = {**info, "receivedAt": now}
            _step(action, now, step)

        await self._change_action(action_id, apply)
        return True

    def _unfollow(self, endpoint: str, action_id: str) -> None:
        follows = self._following.get(endpoint)
        if follows is not None:
            f = follows.pop(action_id, None)
            token = getattr(f.command, "upload_token", None) if f is not None else None
            if token:
                self._uploads.pop(token, None)
            if not follows:
                del self._following[endpoint]

    async def _observe(self, endpoint: str, kind: str, info: dict) -> None:
        """A station message (as a fleet event) that may move its followed actions on."""
        follows = self._following.get(endpoint)
        if not follows:
            return
        for f in list(follows.values()):
            step = actions.follow(f, kind, info)
            if step is None:
                continue
            if step.outcome is not None:
                self._unfollow(endpoint, f.action_id)
            try:
                await self._change_action(f.action_id, functools.partial(_step, step=step))
            except Exception:  # the station's message is recorded whatever happens here
                log.exception("%s: action %s: recording %s failed", endpoint, f.action_id, kind)

    async def expire_actions(self, now: float | None = None) -> int:
        """End the followed actions past their deadline as timed_out (the server calls this
        every few seconds). Returns how many."""
        now = time.time() if now is None else now
        late = [
            (endpoint, f)
            for endpoint, follows in self._following.items()
            for f in follows.values()
            if f.deadline <= now
        ]
        for endpoint, f in late:
            self._unfollow(endpoint, f.action_id)
            limit = actions.DEADLINES.get(type(f.command), 0)
            what = actions.TYPES[type(f.command)]
            step = Step(
                "TimedOut",
                outcome="timed_out",
                error={
                    "code": "Timeout",
                    "description": f"{what}: its end was not seen within {limit:g} s",
                },
            )
            try:
                await self._change_action(f.action_id, functools.partial(_step, step=step))
            except Exception:
                log.exception("%s: action %s: expiring failed", endpoint, f.action_id)
        return len(late)

    async def get_action(self, action_id: str) -> dict:
        async with self.store.unit() as tx:
            action = await tx.get_action(action_id)
        if action is None:
            raise NotFound(f"action {action_id!r} not found")
        return action

    async def list_actions(self, query: ActionQuery) -> tuple[list[dict], int]:
        """A page of Actions, newest first; `chargestation` may be an endpoint or an _id."""
        station = query.equals.get("chargestation")
        if station is not None:
            doc = await self._read(station)
            if doc is not None:
                query = dataclasses.replace(
                    query, equals={**query.equals, "chargestation": doc["_id"]}
                )
        async with self.store.unit() as tx:
            return await tx.list_actions(query)

    async def fail_pending_actions(self, reason: str = "the server stopped") -> int:
        """At start-up nothing is followed yet: an action that was in flight when the server
        died ends failed with `reason`, never stays pending."""
        async with self.store.unit() as tx:
            return await tx.fail_pending_actions(reason, model.utcnow())

    async def push_availability(self, endpoint: str) -> None:
        """Tell a connected station what its `active` switch says (whole station)."""
        doc = await self._read(endpoint)
        if doc is None or not self.live.is_online(endpoint):
            return
        state = "Operative" if doc["active"] else "Inoperative"
        try:
            status = await self.live.send(
                endpoint, ChangeAvailability(doc["active"]), timeout=self.command_timeout
            )
            log.info("%s: ChangeAvailability %s -> %s", endpoint, state, status)
        except Exception as e:  # logged: nobody waits for this answer
            log.warning("%s: ChangeAvailability %s failed: %s", endpoint, state, e)
            return
        if status in ("Accepted", "Scheduled") and doc.get("availabilityPending"):

            def told(doc: dict, now: str) -> None:
                if doc["active"] == (state == "Operative"):  # not switched again meanwhile
                    doc.pop("availabilityPending", None)

            await self._change(endpoint, told, message=False)

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what stations say --------------------------------------------------------------------

    async def is_known(self, endpoint: str) -> dict | None:
        """The station whose endpoint this is (only the endpoint: an `_id` in a station's URL
        is not its identity)."""
        doc = await self._read(endpoint)
        return doc if doc is not None and doc["endpoint"] == endpoint else None

    async def connected(self, endpoint: str, info: dict | None = None) -> None:
        """`info`: what the connection says of itself (address, subprotocol), for the event."""

        def apply(doc: dict, now: str) -> dict:
            doc["online"] = True
            doc["lastConnectAt"] = now
            return info or {}

        doc, _ = await self._change(endpoint, apply, message=False, event=events.ONLINE)
        self._ids[endpoint] = doc["_id"]

    async def disconnected(self, endpoint: str) -> None:
        self._ids.pop(endpoint, None)
        self._statuses.pop(endpoint, None)
        try:
            await self._change(endpoint, _offline({}), message=False, event=events.OFFLINE)
        except NotFound:
            pass
        if endpoint in self._following:
            await self._observe(endpoint, "Disconnected", {})

    def heartbeat(self, endpoint: str) -> None:
        self._touch(endpoint)
        if endpoint in self._following:
            self._spawn(self._observe(endpoint, "Heartbeat", {}))

    async def boot(self, endpoint: str, boot_info: dict) -> tuple[str, int]:
        """Record BootNotification; every known station is Accepted (unknown ones never get
        past the websocket upgrade). Returns (registration status, heartbeat interval). An
        inactive station is told again that it is Inoperative, after this answer."""

        def apply(doc: dict, now: str) -> dict:
            doc["bootInfo"] = {k: v for k, v in boot_info.items() if v is not None}
            doc["manufacturer"] = boot_info.get("chargePointVendor")
            doc["model"] = boot_info.get("chargePointModel")
            return doc["bootInfo"]

        doc, _ = await self._change(endpoint, apply, event=events.BOOTED)
        if endpoint in self._following:
            await self._observe(endpoint, "BootNotification", boot_info)
        if not doc["active"] or doc.get("availabilityPending"):
            self._spawn(self.push_availability(endpoint))
        return "Accepted", self.heartbeat_interval

    def status_repeated(
        self,
        endpoint: str,
        evse_id: int,
        connector_id: int,
        status: str,
        error_code: str | None = None,
        info: str | None = None,
    ) -> bool:
        """Whether a StatusNotification says what the connector last said (committed): then
        the station is only touched, with no read or write (stations repeat their status), and
        the server answers it without a coroutine unless someone follows the station."""
        last = self._statuses.get(endpoint)
        if last is not None and last.get((evse_id, connector_id)) == (status, error_code, info):
            self._touch(endpoint)
            return True
        return False

    def is_followed(self, endpoint: str) -> bool:
        return endpoint in self._following

    async def status_notification(
        self,
        endpoint: str,
        evse_id: int,
        connector_id: int,
        status: str,
        error_code: str | None = None,
        info: str | None = None,
    ) -> None:
        if endpoint in self._following:
            await self._observe(
                endpoint,
                "StatusNotification",
                {"evse": evse_id, "connector": connector_id, "status": status},
            )
        if self.status_repeated(endpoint, evse_id, connector_id, status, error_code, info):
            return

        def apply(doc: dict, now: str) -> dict:
            if evse_id == 0:
                doc["stationStatus"] = status
            else:
                self._check_connectors(doc, evse_id, connector_id)
                model.upsert_connector(
                    doc, evse_id, connector_id, now, status=status, errorCode=error_code, info=info
                )
            doc["status"] = model.status_of(doc)
            said = {"evseId": evse_id, "connectorId": connector_id, "status": status}
            if error_code not in (None, "NoError"):
                said["errorCode"] = error_code
            if info:
                said["info"] = info
            return {**said, "stationStatus": doc["status"]}

        await self._change(endpoint, apply, event=events.CONNECTOR_STATUS)
        # remembered only once committed: a retry after a failed commit is written again
        self._statuses.setdefault(endpoint, {})[(evse_id, connector_id)] = (
            status,
            error_code,
            info,
        )

    async def problem(
        self,
        endpoint: str,
        evse_id: int | None,
        connector_id: int | None,
        present: bool,
        info: str | None = None,
    ) -> None:
        """A problem reported (or cleared) for the station (no EVSE), one EVSE's connectors,
        or one connector: Faulted while present, whatever status they report."""

        def apply(doc: dict, now: str) -> None:
            if evse_id is None:
                doc["stationProblem"] = present
            elif connector_id is None:
                for c in doc["connectors"]:
                    if c["evseId"] == evse_id:
                        c.update(problem=present, problemInfo=info, updatedAt=now)
            else:
                self._check_connectors(doc, evse_id, connector_id)
                model.upsert_connector(
                    doc, evse_id, connector_id, now, problem=present, problemInfo=info
                )
            doc["status"] = model.status_of(doc)

        await self._change(endpoint, apply)
        self._statuses.pop(endpoint, None)  # what a connector last said is no longer enough

    def _check_connectors(self, doc: dict, evse_id: int, connector_id: int) -> None:
        """A record holds at most `budgets.connectors` connectors: a station inventing ever
        new ones must not grow it (and the cost of every later message) without bound."""
        if len(doc["connectors"]) < self.budgets.connectors:
            return
        if any(
            c["evseId"] == evse_id and c["connectorId"] == connector_id for c in doc["connectors"]
        ):
            return
        raise OverBudget(
            f"EVSE {evse_id} connector {connector_id}: a station may have at "
            f"most {self.budgets.connectors} connectors"
        )

    async def authorize(
        self,
        endpoint: str,
        id_tag: str,
        token_type: str | None = None,
        *,
        purpose: tokens.Purpose = "authorize",
        evse: int | None = None,
        tx_key: str | None = None,
    ) -> tokens.Decision:
        """What a station is told about an id tag (fleet/tokens.py decides): at Authorize, a
        token given later in a 2.0.1 transaction (`tx_key`, purpose "start"), or the one
        that ended a transaction (purpose "stop"). An unknown or refused one is an event."""
        async with self.store.unit() as tx:
            doc = await self._load(tx, endpoint)
            if doc is None:  # deleted while connected; the session is being closed
                raise NotFound(f"chargestation {endpoint!r} not found")
            self._touch(endpoint)
            decision, note = await self._judge(tx, doc, id_tag, token_type, purpose, evse, tx_key)
        if note is not None:
            self.tokens.noted(note)
        return decision

    async def _judge(
        self,
        tx: Unit,
        doc: dict,
        id_tag: str | None,
        token_type: str | None,
        purpose: tokens.Purpose,
        evse: int | None = None,
        tx_key: str | None = None,
    ) -> tuple[tokens.Decision, tokens.Note | None]:
        """The decision about an id tag, and its event recorded in `tx` if it is one."""
        decision = await self.tokens.check(tx, doc, id_tag, token_type, purpose, evse, tx_key)
        note = self.tokens.note(doc, id_tag, token_type, decision)
        if note is not None:
            try:  # kept: it counts against the station's daily budget
                self._charge(doc["endpoint"], note.data)
            except OverBudget:
                return decision, None  # answered all the same, not noted
            await tx.add_event(doc["_id"], model.utcnow(), note.type, note.data, doc["endpoint"])
        return decision, note

    async def start_transaction(
        self,
        endpoint: str,
        connector: int,
        id_tag: str | None,
        meter_start: float | None,
        timestamp: str,
        tx_key: str | None = None,
        remote_start_id: int | None = None,
        *,
        connector_id: int | None = None,
        meter_values: list[dict] | None = None,
        charging_state: str | None = None,
        token_type: str | None = None,
    ) -> tuple[str, tokens.Decision]:
        """Record a transaction start: a session (fleet/sessions.py), with the meter values
        sent with it and its session.started event, in one unit. `connector`: the EVSE (1.6:
        the connector); `connector_id`: 2.0.1's connector of it; `meter_start` None: from the
        meter values; `token_type`: 2.0.1's idToken type. Returns (transaction key, what the
        station is told about its id tag: fleet/tokens.py)."""
        self._charge(endpoint, meter_values or [], sessions.RECORD_BYTES)
        async with self.store.unit() as tx:
            doc = await self._load(tx, endpoint)
            if doc is None:
                raise NotFound(f"chargestation {endpoint!r} not found")
            self._touch(endpoint)
            decision, note = await self._judge(
                tx, doc, id_tag, token_type, "start", connector, tx_key
            )
            session, new = await sessions.record_start(
                tx,
                doc,
                tx_key,
                connector,
                connector if doc["protocol"] == "ocpp1.6" else connector_id,
                id_tag,
                meter_start,
                timestamp,
                decision.accepted,
                charging_state,
                meter_values,
                token_type=token_type,
            )
        if note is not None:
            self.tokens.noted(note)
        key = session["tx_key"]
        if new and session["meterStart"] is not None:  # else its first reading is awaited
            self.recent_sessions.checked((doc["_id"], key), charging_state)
        if endpoint in self._following:
            await self._observe(
                endpoint,
                "StartTransaction",
                {
                    "connector": connector,
                    "idTag": id_tag,
                    "transactionId": key,
                    "session": session["_id"],
                    "remoteStartId": remote_start_id,
                },
            )
        return key, decision

    async def stop_transaction(
        self,
        endpoint: str,
        tx_key: str,
        meter_stop: float | None,
        timestamp: str,
        reason: str | None,
        meter_values: list[dict] | None = None,
        *,
        evse: int | None = None,
        id_tag: str | None = None,
        charging_state: str | None = None,
        learn: bool = False,
    ) -> bool:
        """Record a transaction's end, the meter values sent with it and its session.ended
        event (one unit). `meter_stop` None: the energy register in the meter values, else the
        latest reading; `learn`: an end whose start was never seen is a session too (2.0.1).
        False if nothing was recorded (a 1.6 transaction that is not ours)."""
        station = {"_id": await self._station_id(endpoint), "endpoint": endpoint}
        if meter_values or learn:
            self._charge(endpoint, meter_values or [], sessions.RECORD_BYTES if learn else 0)
        self._touch(endpoint)
        self.recent_sessions.forget((station["_id"], tx_key))
        async with self.store.unit() as tx:
            session = await sessions.record_end(
                tx,
                station,
                tx_key,
                meter_stop,
                timestamp,
                reason,
                meter_values,
                evse,
                id_tag,
                charging_state,
                learn,
            )
        if session is None:
            return False
        if endpoint in self._following:
            await self._observe(
                endpoint, "StopTransaction", {"transactionId": tx_key, "reason": reason}
            )
        return True

    async def transaction_connector(self, endpoint: str, tx_key: str) -> int | None:
        """The connector a transaction started on (2.0.1 names it only in the first event)."""
        sid = await self._station_id(endpoint)
        async with self.store.unit() as tx:
            known = await tx.get_transaction(sid, tx_key)
        return known["connector"] if known else None

    async def meter_values(
        self,
        endpoint: str,
        connector: int,
        tx_key: str | None,
        values: list[dict],
        *,
        charging_state: str | None = None,
        id_tag: str | None = None,
        accepted: bool = True,
        learn: bool = False,
    ) -> None:
        """Meter values, kept as sent. Those of a transaction bring its session up to date
        (fleet/sessions.record_values) at most once a minute, and at once when a 2.0.1
        chargingState changes or an id token comes with them (`accepted`: whether it was);
        `learn`: a 2.0.1 transaction not recorded yet is recorded now."""
        sid = await self._station_id(endpoint)
        memo = (sid, tx_key) if tx_key is not None else None
        due = memo is not None and self.recent_sessions.due(memo, charging_state, id_tag)
        # a transaction not seen yet may become a session: its record counts too
        new = learn and memo is not None and not self.recent_sessions.known(memo)
        if values or new:
            self._charge(endpoint, values, sessions.RECORD_BYTES if new else 0)
        self._touch(endpoint)
        if values or due:
            async with self.store.unit() as tx:
                if values:
                    await tx.add_meter_values(sid, tx_key, connector, values)
                if due and tx_key is not None:
                    await sessions.record_values(
                        tx,
                        {"_id": sid, "endpoint": endpoint},
                        tx_key,
                        connector,
                        values,
                        charging_state,
                        id_tag,
                        accepted,
                        learn,
                    )
            if due and memo is not None:  # checked, once committed
                self.recent_sessions.checked(memo, charging_state)
        if endpoint in self._following:
            await self._observe(
                endpoint, "MeterValues", {"connector": connector, "transactionId": tx_key}
            )

    async def record_event(self, endpoint: str, action: str, payload: dict) -> None:
        """A notification kept as the station sent it (firmware, diagnostics, security, ...),
        as an event of its type (events.notification_type)."""
        sid = await self._station_id(endpoint)
        self._charge(endpoint, payload)
        self._touch(endpoint)
        async with self.store.unit() as tx:
            await tx.add_event(
                sid, model.utcnow(), events.notification_type(action), payload, endpoint
            )
        if endpoint in self._following:
            await self._observe(endpoint, action, payload)

    async def refused(self, endpoint: str, status: int, reason: str, info: dict) -> None:
        """A known station's websocket upgrade was refused (`info`: address, subprotocols
        offered): an event, and its record's `lastRefusal` (shown by `cs inspect`)."""

        def apply(doc: dict, now: str) -> dict:
            doc["lastRefusal"] = {"at": now, "status": status, "reason": reason[:MAX_REASON]}
            return {**doc["lastRefusal"], **info}

        await self._change(
            endpoint, apply, content=False, message=False, event=events.CONNECTION_REFUSED
        )

    async def unknown(self, endpoint: str, info: dict, times: int = 1) -> None:
        """An endpoint that is no station tried to connect `times` times (`info`: address,
        subprotocols offered, reason): counted in the unknown list; an event when it is new
        there."""
        now = model.utcnow()
        async with self.store.unit() as tx:
            if await tx.seen_unknown(endpoint, now, info, times, MAX_UNKNOWN):
                await tx.add_event(None, now, events.UNKNOWN, info, endpoint)

    async def unknown_endpoints(self) -> list[dict]:
        async with self.store.unit() as tx:
            return await tx.unknown_endpoints()

    async def list_events(self, query: EventQuery, station: str | None = None) -> list[dict]:
        """Stored events (rows, fleet/events.py); `station`: an _id or an endpoint."""
        if station is not None:
            query = dataclasses.replace(query, station_id=(await self.get(station))["_id"])
        async with self.store.unit() as tx:
            return await tx.list_events(query)

    async def mark_all_offline(self) -> int:
        """At start-up no station is connected here, whatever the last run left behind."""
        async with self.store.unit() as tx:
            return await tx.mark_all_offline(model.utcnow())

    async def probe_store(self) -> None:
        """A real write of a page, committed, that leaves nothing behind (/health):
        StoreUnavailable unless the store can take a station's next message."""
        async with self.store.unit() as tx:
            await tx.probe(model.utcnow())

    async def count_stations(self) -> int:
        async with self.store.unit() as tx:
            return (await tx.list_stations_json(StationQuery(limit=0)))[1]


def _failure(e: EdrvError) -> tuple[dict, str, str]:
    """How a command that failed ends: (error, outcome, stage)."""
    code, outcome, stage = "", "failed", "sent"
    if isinstance(e, StationTimeout):
        code, outcome = "Timeout", "timed_out"
    elif isinstance(e, StationRejected):
        code = "CallError"
    elif isinstance(e, Busy):
        code, stage = "Busy", "queued"
    elif isinstance(e, Unavailable):
        code = "Offline"
    elif isinstance(e, UsageError):
        code, stage = "Invalid", "queued"
    return {"code": code or type(e).__name__, "description": e.message}, outcome, stage


def _offline(said: dict) -> Callable[[dict, str], dict]:
    """A station's socket is gone: its record says so; `said` is the event's data."""

    def apply(doc: dict, now: str) -> dict:
        doc["online"] = False
        doc["lastDisconnectAt"] = now
        return said

    return apply


def _interrupted(reason: str) -> Callable[[dict, str], None]:
    def apply(action: dict, now: str) -> None:
        if action["outcome"] == "pending":
            if action["status"] == "requested":
                action["status"] = "failed"
            action["outcome"] = "failed"
            action["error"] = {"code": "Interrupted", "description": reason}

    return apply


def _iso(t: float) -> str:
    return model.format_time(datetime.fromtimestamp(t, UTC))


def _step(action: dict, now: str, step: Step) -> None:
    if action["outcome"] == "pending":  # ended meanwhile (deadline): later news is not kept
        actions.apply_step(action, step, now)
