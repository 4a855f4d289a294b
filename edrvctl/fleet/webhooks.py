"""Webhooks: committed events pushed to HTTP receivers, signed, at least once, in order per
station, retried for a day, and never in the stations' way.

A webhook is `{_id, object, url, events: [glob], active, description, createdAt, updatedAt}`.
Its secret is generated at create (and by `rotate_secret`), kept in the store beside the record
(the signer needs it as it is), and returned only then.

How an event reaches a receiver:

- Intake: one task follows the event log (`events.follow`) from the lowest cursor of the active
  webhooks. Each committed event whose type matches a webhook's globs becomes a pending delivery
  of that webhook, written in one unit with the webhook's cursor (the last event seq it has
  taken), so that a restart neither loses an event nor takes one twice. The stations' hot path
  does nothing new: it writes the event rows it always wrote.
- Dispatch: one task per active webhook. A delivery is sent only while it is the oldest pending
  one of its lane (its station: FIFO per (webhook, station)); lanes go on independently, at
  most MAX_IN_FLIGHT at once per webhook (one webhook's dead receiver holds no connection
  another needs). The body is `events.envelope(row)` as JSON, POSTed with
  `edrv-signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, `edrv-event-id` (the
  event's `_id`: a receiver deduplicates on it) and `edrv-delivery-id`.
- A 2xx answer delivers it. Anything else (another status, no connection, no answer within
  ATTEMPT_TIMEOUT) is tried again after `backoff(attempts)`: 1 s, doubling, at most 10 min,
  while that is within RETRY_FOR (24 h) of the event; then it fails, and its lane's next event
  goes. An inactive webhook takes no events; its pending deliveries wait.
- Budgets: MAX_WEBHOOKS webhooks; MAX_BACKLOG pending deliveries per webhook, past which the
  oldest pending ones fail ("backlog over N", counted in `dropped()`); finished deliveries kept
  KEEP_DONE per webhook and KEEP_DONE_FOR long; a receiver's answer is read no further than its
  status line and headers; the dispatchers spend at most about 1/DUTY of the time looking for
  due deliveries, however long the backlog. `backlog()` (pending deliveries per webhook) and
  `dropped()` are for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from edrvctl import __version__, model
from edrvctl.errors import Conflict, NotFound
from edrvctl.fleet import events
from edrvctl.store import EventQuery, Store, Unit
from edrvctl.textsafe import printable

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("edrvctl.webhooks")

MAX_WEBHOOKS = 100
MAX_URL = 2048  # characters
MAX_GLOBS = 32  # event-type globs per webhook
MAX_GLOB = 200
MAX_DESCRIPTION = 200
MAX_BACKLOG = 10_000  # pending deliveries per webhook; past it the oldest fail
MAX_IN_FLIGHT = 8  # requests at once per webhook (one per lane at most): so at most
# MAX_WEBHOOKS * MAX_IN_FLIGHT in all, and no webhook ever waits for a connection another holds
CONNECT_TIMEOUT = 5.0  # s
READ_TIMEOUT = 10.0  # s between two reads of the answer
ATTEMPT_TIMEOUT = 15.0  # s for a whole attempt, however the receiver trickles
RETRY_FOR = 24 * 3600.0  # s after the event: then a delivery is given up
BACKOFF_FIRST = 1.0  # s before the second attempt; doubling after each failure ...
BACKOFF_MAX = 600.0  # ... up to this
KEEP_DONE = 1_000  # finished deliveries kept per webhook (the delivery log) ...
KEEP_DONE_FOR = 7 * 24 * 3600.0  # ... and for at most this long
MAX_ERROR = 200  # characters of an error kept
TICK = 0.01  # s: the shortest pause between two looks for due deliveries
DUTY = 20  # ... which is also at least DUTY times what the last look took, times dispatchers
IDLE = 1.0  # s: a change of webhooks reaches the intake within this
HOUSEKEEPING = 5.0  # s between writes of cursors that moved without a delivery
PRUNE_EVERY = 60.0  # s between prunes of the delivery logs
PAGE = 500  # events read at once when catching up
WARN_EVERY = 60.0  # s: at most one warning line per webhook and kind (the others counted)

TEST_EVENT = "webhook.test"
STATUSES = ("pending", "delivered", "failed")

GLOB_RE = r"^[A-Za-z0-9_.*?\[\]!-]+$"


# --- the rules --------------------------------------------------------------------------------


def sign(secret: str, body: bytes, t: int) -> str:
    """The `edrv-signature` header: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    mac = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def backoff(attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts: 1, 2, 4, ... at most BACKOFF_MAX."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(max(attempts - 1, 0), 30))


def lane_of(row: dict) -> str:
    """What deliveries are ordered within (FIFO): the event's station, or the endpoint of one
    that is no station."""
    return row.get("chargestation") or f"endpoint:{row.get('endpoint') or ''}"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def check_url(url: str) -> str:
    """A receiver URL: http or https, a host, no credentials (they would be shown in every
    list: the signature is what proves the sender), nothing unprintable."""
    if len(url) > MAX_URL:
        raise ValueError(f"a URL of at most {MAX_URL} characters")
    if any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("a URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL without user or password (deliveries are signed instead)")
    return url


Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(check_url)]
Glob = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GLOB, pattern=GLOB_RE)]
Globs = Annotated[list[Glob], Field(min_length=1, max_length=MAX_GLOBS)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: Url = Field(description="http(s) URL the events are POSTed to")
    events: Globs = Field(
        description="event-type globs (`chargestation.*`, `session.ended`, `*`); an event "
        "matching any of them is delivered"
    )
    active: bool = True
    description: Description | None = None


class WebhookUpdate(BaseModel):
    """PATCH body: only the fields given change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: Url = None  # type: ignore[assignment]
    events: Globs = None  # type: ignore[assignment]
    active: bool = Field(  # type: ignore[assignment]
        None, description="an inactive webhook takes no events; switched on, it takes those after"
    )
    description: Description | None = None


def _iso(t: float) -> str:
    return model.format_time(datetime.fromtimestamp(t, UTC))


def _epoch(iso: str) -> float:
    return model.parse_time(iso).timestamp()


def _globs(given: list[str]) -> list[str]:
    return list(dict.fromkeys(given))  # once each, in the order given


def _describe(e: BaseException) -> str:
    return printable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, MAX_ERROR)


async def _last_seq(tx: Unit) -> int:
    rows = await tx.list_events(EventQuery(newest=True, limit=1))
    return rows[-1]["seq"] if rows else 0


# --- the service ------------------------------------------------------------------------------


@dataclass(eq=False)
class Hook:
    """A webhook as the worker holds it."""

    doc: dict
    secret: str
    cursor: int  # the last event seq taken (in memory; stored with every delivery added)
    pending: int = 0
    dropped: int = 0  # failed for the backlog budget since the server started
    stored_cursor: int = 0
    in_flight: dict[str, asyncio.Task] = field(default_factory=dict)  # lane -> its attempt
    warned: dict[str, tuple[float, int]] = field(default_factory=dict)  # kind -> (when, held)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None  # its dispatcher

    @property
    def id(self) -> str:
        return self.doc["_id"]


class Webhooks:
    """The webhooks of one server: their records (the API's CRUD) and their delivery worker
    (`start`/`stop`). `clock` and `transport` (an httpx transport) are for tests."""

    def __init__(
        self,
        store: Store,
        feed: events.Feed,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_for: float = RETRY_FOR,
        max_backlog: int = MAX_BACKLOG,
    ):
        self.store, self.feed = store, feed
        self.retry_for = retry_for
        self.max_backlog = max_backlog
        self._clock = clock
        self._transport = transport
        self._hooks: dict[str, Hook] | None = None  # loaded on first use
        self._lock = asyncio.Lock()  # admin changes, one at a time
        self._running = False
        self._generation = 0  # bumped by every change of the webhooks
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._http: httpx.AsyncClient | None = None
        # several nodes share the store: the webhooks another node changed are read again
        # after this many seconds (None: this process is the only one changing them)
        self.shared: float | None = None
        self._read_at = 0.0

    # --- what the metrics read ---

    def backlog(self) -> dict[str, int]:
        """Webhook _id -> its pending deliveries."""
        return {i: h.pending for i, h in (self._hooks or {}).items()}

    def dropped(self) -> dict[str, int]:
        """Webhook _id -> deliveries failed for the backlog budget since the server started."""
        return {i: h.dropped for i, h in (self._hooks or {}).items()}

    # --- records ---

    async def _loaded(self) -> dict[str, Hook]:
        if (
            self._hooks is not None
            and self.shared is not None
            and time.monotonic() - self._read_at >= self.shared
        ):
            await self._refresh(self._hooks)
        if self._hooks is None:
            self._read_at = time.monotonic()
            async with self.store.unit() as tx:
                docs = await tx.list_webhooks()
                internals = await tx.webhook_internals()
                pending = await tx.pending_deliveries()
            if self._hooks is None:
                hooks = {}
                for doc in docs:
                    secret, cursor = internals[doc["_id"]]
                    hook = Hook(doc, secret, cursor, stored_cursor=cursor)
                    hook.pending = pending.get(doc["_id"], 0)
                    hooks[doc["_id"]] = hook
                self._hooks = hooks
        return self._hooks

    async def _refresh(self, hooks: dict[str, Hook]) -> None:
        """Take in what other nodes changed: new webhooks, changed records and secrets,
        cursors moved on by the node that delivered before, deleted webhooks."""
        self._read_at = time.monotonic()
        async with self.store.unit() as tx:
            docs = await tx.list_webhooks()
            internals = await tx.webhook_internals()
        changed = False
        for doc in docs:
            secret, cursor = internals[doc["_id"]]
            hook = hooks.get(doc["_id"])
            if hook is None:
                hooks[doc["_id"]] = Hook(doc, secret, cursor, stored_cursor=cursor)
                changed = True
                continue
            changed = changed or hook.doc != doc
            hook.doc, hook.secret = doc, secret
            if cursor > hook.stored_cursor:
                hook.cursor, hook.stored_cursor = max(hook.cursor, cursor), cursor
        for gone in set(hooks) - {d["_id"] for d in docs}:
            await self._halt(hooks.pop(gone))
            changed = True
        if changed:
            self._changed_hooks()

    async def _hook(self, webhook_id: str) -> Hook:
        hook = (await self._loaded()).get(webhook_id)
        if hook is None:
            raise NotFound(
                f"webhook {webhook_id!r} not found", hint="list them with `edrvctl webhooks list`"
            )
        return hook

    @staticmethod
    def present(hook: Hook) -> dict:
        """The record as the API shows it: never with its secret."""
        return {**hook.doc, "pending": hook.pending}

    async def all(self) -> list[dict]:
        return [self.present(h) for h in (await self._loaded()).values()]

    async def get(self, webhook_id: str) -> dict:
        return self.present(await self._hook(webhook_id))

    async def create(self, body: WebhookCreate) -> tuple[dict, str]:
        """The new webhook and its secret (shown this once). It takes the events committed
        after it."""
        async with self._lock:
            hooks = await self._loaded()
            if len(hooks) >= MAX_WEBHOOKS:
                raise Conflict(
                    f"there are {len(hooks)} webhooks, the most a server keeps",
                    hint="delete one first (`edrvctl webhooks delete ID`)",
                )
            now = model.utcnow()
            doc: dict[str, Any] = {
                "_id": model.new_id(),
                "object": "webhook",
                "url": body.url,
                "events": _globs(body.events),
                "active": body.active,
                "description": body.description,
                "createdAt": now,
                "updatedAt": now,
            }
            secret = new_secret()
            async with self.store.unit() as tx:
                cursor = await _last_seq(tx)
                await tx.create_webhook(doc, secret, cursor)
            hook = hooks[doc["_id"]] = Hook(doc, secret, cursor, stored_cursor=cursor)
            self._changed_hooks()
            return self.present(hook), secret

    async def update(self, webhook_id: str, patch: WebhookUpdate) -> dict:
        async with self._lock:
            hook = await self._hook(webhook_id)
            given = {k: getattr(patch, k) for k in patch.model_fields_set}
            if "events" in given:
                given["events"] = _globs(given["events"])
            doc = {**hook.doc, **given, "updatedAt": model.utcnow()}
            switched_on = doc["active"] and not hook.doc["active"]
            async with self.store.unit() as tx:
                cursor = await _last_seq(tx) if switched_on else None  # from now on
                if not await tx.update_webhook(doc, cursor):
                    raise NotFound(f"webhook {webhook_id!r} not found")
            hook.doc = doc
            if cursor is not None:
                hook.cursor = hook.stored_cursor = cursor
            self._changed_hooks()
            return self.present(hook)

    async def rotate_secret(self, webhook_id: str) -> tuple[dict, str]:
        """A new secret, used from the next attempt on (shown this once)."""
        async with self._lock:
            hook = await self._hook(webhook_id)
            secret = new_secret()
            async with self.store.unit() as tx:
                if not await tx.set_webhook_secret(webhook_id, secret):
                    raise NotFound(f"webhook {webhook_id!r} not found")
            hook.secret = secret
            return self.present(hook), secret

    async def delete(self, webhook_id: str) -> dict:
        """With its deliveries: those pending are never sent."""
        async with self._lock:
            hook = await self._hook(webhook_id)
            await self._halt(hook)
            try:
                async with self.store.unit() as tx:
                    await tx.delete_webhook(webhook_id)
            except BaseException:
                self._dispatcher(hook)  # still there: it goes on
                raise
            hooks = await self._loaded()
            hooks.pop(webhook_id, None)
            self._changed_hooks()
            return {**self.present(hook), "pending": 0}

    async def deliveries(
        self, webhook_id: str, status: str | None = None, limit: int | None = 100
    ) -> list[dict]:
        """The delivery log, newest event first."""
        await self._hook(webhook_id)
        async with self.store.unit() as tx:
            return await tx.list_deliveries(webhook_id, status, limit)

    async def test(self, webhook_id: str) -> dict:
        """Send a signed `webhook.test` event now (outside the delivery log, not retried):
        `{event, delivered, status, error, ms}`."""
        hook = await self._hook(webhook_id)
        envelope: dict[str, Any] = {
            "_id": "test-" + secrets.token_hex(8),
            "object": "webhook",
            "type": TEST_EVENT,
            "chargestation": None,
            "endpoint": None,
            "data": {"webhook": hook.id, "url": hook.doc["url"]},
            "createdAt": model.utcnow(),
        }
        t0 = time.monotonic()
        status, error = await self._post(hook, orjson.dumps(envelope), envelope["_id"], "test")
        return {
            "event": envelope,
            "delivered": error is None,
            "status": status,
            "error": error,
            "ms": round((time.monotonic() - t0) * 1000),
        }

    # --- the worker ---

    async def start(self) -> None:
        hooks = await self._loaded()
        self._running = True
        self._tasks = [
            asyncio.create_task(self._intake_loop(), name="webhooks intake"),
            asyncio.create_task(self._housekeeping(), name="webhooks housekeeping"),
        ]
        for hook in hooks.values():
            self._dispatcher(hook)

    async def stop(self) -> None:
        """Stops sending (an attempt cut short stays pending: it is sent again after a
        restart) and writes the cursors."""
        self._running = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hook in (self._hooks or {}).values():
            await self._halt(hook)
        try:
            await self._save_cursors()
        except Exception as e:
            log.error("webhooks: cursors not written: %s", e)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _changed_hooks(self) -> None:
        self._generation += 1
        self._changed.set()
        for hook in (self._hooks or {}).values():
            self._dispatcher(hook)

    def _dispatcher(self, hook: Hook) -> None:
        """Runs while the worker runs and the webhook is active."""
        if self._running and hook.doc["active"]:
            if hook.task is None or hook.task.done():
                hook.task = asyncio.create_task(self._dispatch(hook), name=f"webhook {hook.id}")
        elif hook.task is not None:
            hook.task.cancel()
            hook.task = None

    async def _halt(self, hook: Hook) -> None:
        tasks = [t for t in (hook.task, *hook.in_flight.values()) if t is not None]
        hook.task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # intake

    async def _read_after(self, seq: int) -> list[dict]:
        async with self.store.unit() as tx:
            return await tx.list_events(EventQuery(after=seq, limit=PAGE))

    async def _intake_loop(self) -> None:
        while not self.feed.closed:  # closed: the server is stopping
            generation = self._generation
            active = [h for h in (await self._loaded()).values() if h.doc["active"]]
            if not active:  # nothing to take: not even a subscription
                self._changed.clear()
                await self._changed.wait()
                continue
            after = min(h.cursor for h in active)
            try:
                stream = cast(
                    AsyncGenerator[list[dict], None],
                    events.follow(self.feed, self._read_after, after, _every, IDLE),
                )
                async with contextlib.aclosing(stream):
                    async for rows in stream:
                        if rows:
                            await self.intake(rows)
                        if self._generation != generation:
                            break  # from the lowest cursor again, with the webhooks as they are
            except Exception as e:  # a full store: nothing was taken, so take it again
                log.error("webhooks: taking events failed (%s); trying again in 1 s", e)
                await asyncio.sleep(1)

    async def intake(self, rows: list[dict]) -> int:
        """Committed event rows (in seq order) become pending deliveries of the active
        webhooks whose globs match them; the webhooks' cursors move past them. Returns how
        many deliveries were added."""
        hooks = [h for h in (await self._loaded()).values() if h.doc["active"]]
        if not rows or not hooks:
            return 0
        last = rows[-1]["seq"]
        now = _iso(self._clock())
        bodies: dict[int, bytes] = {}
        plan: list[tuple[Hook, list[dict]]] = []
        for hook in hooks:
            mine = []
            for row in rows:
                if row["seq"] <= hook.cursor or not events.glob_matches(
                    hook.doc["events"], row["type"]
                ):
                    continue
                body = bodies.get(row["seq"])
                if body is None:
                    body = bodies[row["seq"]] = orjson.dumps(events.envelope(row))
                mine.append(_delivery(hook, row, body, now))
            plan.append((hook, mine))
        if not any(mine for _, mine in plan):
            for hook, _ in plan:  # written by the housekeeping (nothing to replay if lost)
                hook.cursor = max(hook.cursor, last)
            return 0
        added: dict[Hook, int] = {}
        dropped: dict[Hook, int] = {}
        async with self.store.unit() as tx:
            for hook, mine in plan:
                if not mine:
                    continue
                added[hook] = await tx.add_deliveries(hook.id, mine)
                if hook.pending + added[hook] > self.max_backlog:
                    dropped[hook] = await tx.fail_oldest_deliveries(
                        hook.id, self.max_backlog, f"backlog over {self.max_backlog}: given up", now
                    )
            cursors = {hook.id: max(hook.cursor, last) for hook, _ in plan}
            await tx.set_webhook_cursors(cursors)
        for hook, _ in plan:
            hook.cursor = max(hook.cursor, cursors[hook.id])  # (switched on meanwhile: later)
            hook.stored_cursor = max(hook.stored_cursor, cursors[hook.id])
            n, gone = added.get(hook, 0), dropped.get(hook, 0)
            hook.pending += n - gone
            if gone:
                hook.dropped += gone
                _warn(
                    hook,
                    "backlog",
                    f"backlog over {self.max_backlog}: {hook.dropped} oldest pending "
                    "deliveries failed since the start",
                )
            if n:
                hook.wake.set()
        return sum(added.values())

    async def _save_cursors(self) -> None:
        moved = {h.id: h.cursor for h in (self._hooks or {}).values() if h.cursor > h.stored_cursor}
        if not moved:
            return
        async with self.store.unit() as tx:
            await tx.set_webhook_cursors(moved)
        for hook in (self._hooks or {}).values():
            if hook.id in moved:
                hook.stored_cursor = max(hook.stored_cursor, moved[hook.id])

    async def _housekeeping(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            try:
                await self._loaded()  # with other nodes: what they changed
                await self._save_cursors()
                if time.monotonic() - last_prune >= PRUNE_EVERY:
                    last_prune = time.monotonic()
                    await self.prune()
            except Exception as e:  # a full store: the next round tries again
                log.error("webhooks: housekeeping failed: %s", e)

    async def prune(self) -> int:
        """Forget finished deliveries beyond the log's budget; count the pending ones again.
        Returns how many were forgotten."""
        hooks = await self._loaded()
        before = _iso(self._clock() - KEEP_DONE_FOR)
        gone = 0
        async with self.store.unit() as tx:
            for hook in list(hooks.values()):
                gone += await tx.prune_deliveries(hook.id, KEEP_DONE, before)
            pending = await tx.pending_deliveries()
        for hook in hooks.values():
            if not hook.in_flight:  # else an attempt is about to change it
                hook.pending = pending.get(hook.id, 0)
        return gone

    # dispatch

    async def _dispatch(self, hook: Hook) -> None:
        while True:
            hook.wake.clear()
            t0 = time.monotonic()
            try:
                delay = await self._start_due(hook)
            except Exception as e:
                log.error("webhook %s: reading its deliveries failed: %s", hook.id, e)
                delay = 1.0
            took = time.monotonic() - t0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hook.wake.wait(), IDLE * 60 if delay is None else delay)
            dispatchers = sum(1 for h in (self._hooks or {}).values() if h.task is not None)
            await asyncio.sleep(max(TICK, took * DUTY * dispatchers))

    async def _start_due(self, hook: Hook) -> float | None:
        """Start an attempt for each lane head that is due (at most MAX_IN_FLIGHT at once);
        returns the seconds until the next head falls due (None: none waits on time)."""
        free = MAX_IN_FLIGHT - len(hook.in_flight)
        if free <= 0:
            return None  # an attempt that ends wakes the dispatcher
        async with self.store.unit() as tx:
            heads = await tx.delivery_heads(hook.id, MAX_IN_FLIGHT + len(hook.in_flight))
        now = self._clock()
        for d in heads:
            if d["lane"] in hook.in_flight:
                continue
            at = _epoch(d["nextAttemptAt"])
            if at > now:
                return at - now
            if free == 0:
                return None
            hook.in_flight[d["lane"]] = asyncio.create_task(self._attempt(hook, d))
            free -= 1
        return None

    async def run_due(self, webhook_id: str) -> None:
        """One round of dispatch for a webhook, waited for to its end (what the worker's loop
        does on its own; for tests)."""
        hook = await self._hook(webhook_id)
        await self._start_due(hook)
        await asyncio.gather(*hook.in_flight.values())

    async def _attempt(self, hook: Hook, d: dict) -> None:
        lane = d["lane"]
        try:
            deadline = _epoch(d["eventAt"]) + self.retry_for
            if self._clock() > deadline:  # the server was down past the whole window
                status: int | None = None
                error: str | None = f"not sent within {self.retry_for / 3600:g} h of the event"
                sent = False
            else:
                status, error = await self._post(hook, d["body"], d["event"], d["_id"])
                sent = True
            now = self._clock()
            record = {k: v for k, v in d.items() if k not in ("seq", "lane", "body")}
            record["attempts"] += sent
            record["lastStatus"] = status
            record["lastError"] = error
            record["updatedAt"] = _iso(now)
            record["nextAttemptAt"] = None
            if error is None:
                record["status"] = "delivered"
                record["deliveredAt"] = record["updatedAt"]
            elif sent and now + backoff(record["attempts"]) <= deadline:
                record["nextAttemptAt"] = _iso(now + backoff(record["attempts"]))
            else:
                record["status"] = "failed"
                if sent:
                    record["lastError"] = printable(
                        f"{error}; given up after {record['attempts']} attempt(s) in "
                        f"{self.retry_for / 3600:g} h",
                        MAX_ERROR,
                    )
            async with self.store.unit() as tx:
                changed = await tx.save_delivery(record)
            if changed and record["status"] != "pending":
                hook.pending = max(0, hook.pending - 1)
                if record["status"] == "failed":
                    _warn(
                        hook,
                        "failed",
                        f"event {record['event']} ({record['type']}) not delivered: "
                        f"{record['lastError']}",
                    )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a full store: it stays pending, and is tried again
            log.error("webhook %s: delivery %s not recorded: %s", hook.id, d["_id"], e)
            await asyncio.sleep(1)
        finally:
            hook.in_flight.pop(lane, None)
            hook.wake.set()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                follow_redirects=False,
            )
        return self._http

    async def _post(
        self, hook: Hook, body: bytes, event_id: str, delivery_id: str
    ) -> tuple[int | None, str | None]:
        """One signed POST: (HTTP status or None, None if delivered else why not)."""
        import httpx

        headers = {
            "content-type": "application/json",
            "edrv-signature": sign(hook.secret, body, int(self._clock())),
            "edrv-event-id": event_id,
            "edrv-delivery-id": delivery_id,
            "user-agent": f"edrvctl/{__version__}",
        }
        try:
            async with (
                asyncio.timeout(ATTEMPT_TIMEOUT),
                self._client().stream(
                    "POST", hook.doc["url"], content=body, headers=headers
                ) as answer,
            ):
                status = answer.status_code  # the answer's body is never read
        except TimeoutError:
            return None, f"no answer within {ATTEMPT_TIMEOUT:g} s"
        except httpx.HTTPError as e:
            return None, _describe(e)
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"


def _warn(hook: Hook, kind: str, text: str) -> None:
    """A warning line, at most one per WARN_EVERY per webhook and kind: a dead receiver of a
    busy fleet must not flood the log. The lines held back are counted in the next one."""
    now = time.monotonic()
    last, held = hook.warned.get(kind, (-WARN_EVERY, 0))
    if now - last < WARN_EVERY:
        hook.warned[kind] = (last, held + 1)
        return
    hook.warned[kind] = (now, 0)
    more = f" (and {held} more like it)" if held else ""
    log.warning("webhook %s: %s%s", hook.id, text, more)


def _every(row: dict) -> bool:
    return True


def _delivery(hook: Hook, row: dict, body: bytes, now: str) -> dict:
    return {
        "webhook": hook.id,
        "event": str(row["seq"]),
        "type": row["type"],
        "chargestation": row.get("chargestation"),
        "endpoint": row.get("endpoint"),
        "status": "pending",
        "attempts": 0,
        "lastStatus": None,
        "lastError": None,
        "nextAttemptAt": now,
        "deliveredAt": None,
        "eventAt": row["createdAt"],
        "createdAt": now,
        "updatedAt": now,
        # columns, not part of the record
        "seq": row["seq"],
        "lane": lane_of(row),
        "body": body,
    }
