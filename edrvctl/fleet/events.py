"""Events: everything that changes a station, kept in the store and pushed to whoever listens.

An event is a row of the store's event log: `{seq, type, chargestation, endpoint, data,
createdAt}`, `seq` rising in commit order. Its outside shape (`envelope`) is eDRV's webhook
envelope, `{_id, object, type, data, createdAt, chargestation}`, the same in the API, the
server-sent-events stream and webhook deliveries.

The store hands every committed batch of events to `Feed.publish`, in `seq` order and only
after its COMMIT, so a listener never sees an event that may yet be lost. A listener that
falls behind is told so (`Lagged`) and reads on from the store after the last `seq` it saw:
memory per listener is bounded, and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

# eDRV's names (api-next.md), and ours in the same pattern.
ONLINE = "chargestation.online"
OFFLINE = "chargestation.offline"
BOOTED = "chargestation.booted"
CONNECTOR_STATUS = "chargestation.connector_status.updated"
CONNECTION_REFUSED = "chargestation.connection_refused"
UNKNOWN = "chargestation.unknown"
FIRMWARE_STATUS = "chargestation.firmware_status.updated"
LOG_STATUS = "chargestation.log_status.updated"
SECURITY_EVENT = "chargestation.security_event"
SESSION_STARTED = "session.started"
SESSION_UPDATED = "session.updated"
SESSION_ENDED = "session.ended"
TOKEN_UNKNOWN = "token.unknown"  # an id tag no token has (fleet/tokens.py)
TOKEN_REFUSED = "token.refused"  # a token refused for itself: blocked, expired, ...

# OCPP notifications kept as events: their type (others: chargestation.<snake_case action>)
NOTIFICATIONS = {
    "FirmwareStatusNotification": FIRMWARE_STATUS,
    "SignedFirmwareStatusNotification": FIRMWARE_STATUS,  # 1.6 security extension
    "DiagnosticsStatusNotification": LOG_STATUS,
    "LogStatusNotification": LOG_STATUS,
    "SecurityEventNotification": SECURITY_EVENT,
}

MAX_QUEUED = 10_000  # events a listener may be behind before it reads on from the store


def notification_type(action: str) -> str:
    """The event type of an OCPP notification a station sent (`NotifyEvent` ->
    `chargestation.notify_event`)."""
    known = NOTIFICATIONS.get(action)
    if known:
        return known
    return "chargestation." + re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def action_type(action_type: str, status: str) -> str:
    """`chargestation.<action type>.<requested|accepted|rejected|succeeded|failed|timed_out>`."""
    return f"chargestation.{action_type}.{status}"


def envelope(row: dict) -> dict:
    """The outside shape of a stored event row."""
    kind = row["type"]
    head = kind.split(".", 1)[0]
    if head == "chargestation" and kind.count(".") == 2 and not kind.endswith(".updated"):
        obj = "action"  # chargestation.<action>.<stage>
    else:
        obj = head
    return {
        "_id": str(row["seq"]),
        "object": obj,
        "type": kind,
        "chargestation": row.get("chargestation"),
        "endpoint": row.get("endpoint"),
        "data": row["data"],
        "createdAt": row["createdAt"],
    }


def glob_matches(patterns: list[str] | tuple[str, ...], kind: str) -> bool:
    """Event-type globs (`session.*`, `chargestation.*.failed`); none: every type."""
    return not patterns or any(fnmatch.fnmatchcase(kind, p) for p in patterns)


class Lagged(Exception):
    """The listener fell more than MAX_QUEUED events behind: read on from the store."""


class Closed(Exception):
    """The feed was closed (the server is stopping): listeners end."""


class Subscription:
    __slots__ = ("_feed", "_queue", "_wake", "closed", "lagged")

    def __init__(self, feed: Feed, max_queued: int):
        self._feed = feed
        self._queue: deque[dict] = deque(maxlen=max_queued)
        self._wake = asyncio.Event()
        self.lagged = False
        self.closed = False

    def _put(self, rows: list[dict]) -> None:
        if len(self._queue) + len(rows) > (self._queue.maxlen or 0):
            self.lagged = True
            self._queue.clear()
        else:
            self._queue.extend(rows)
        self._wake.set()

    async def next(self, timeout: float | None = None) -> list[dict]:
        """The events published since the last call, oldest first ([] after `timeout`
        seconds without any). Raises Lagged if some were dropped meanwhile, Closed once the
        feed is closed."""
        if not self._queue and not self.lagged and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []
        if self.closed:
            raise Closed()
        if self.lagged:
            self.lagged = False
            raise Lagged()
        rows = list(self._queue)
        self._queue.clear()
        return rows

    def close(self) -> None:
        self._feed._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Feed:
    """Committed rows (events, frames), fanned out to listeners in the order published."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.closed = False

    @property
    def listeners(self) -> int:
        return len(self._subs)

    def publish(self, rows: list[dict]) -> None:
        for sub in self._subs:
            sub._put(rows)

    def subscribe(self, max_queued: int = MAX_QUEUED) -> Subscription:
        sub = Subscription(self, max_queued)
        sub.closed = self.closed
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        """End every listener (and any that subscribes later): the server is stopping."""
        self.closed = True
        for sub in self._subs:
            sub.closed = True
            sub._wake.set()


async def follow(
    feed: Feed,
    read_after: Callable[[int], Awaitable[list[dict]]],
    after: int,
    keep: Callable[[dict], bool],
    idle: float = 15.0,
    reread: float | None = None,
) -> AsyncIterator[list[dict]]:
    """Rows past `after`, first those stored, then as they are published, for as long as the
    caller iterates or until the feed is closed; [] every `idle` seconds without any (a
    keep-alive). `read_after(seq)` reads a page of stored rows after seq, oldest first (empty
    once there are none). `reread`: also read the store again after that many quiet seconds
    (rows another process stores are never published here)."""
    cursor = after
    quiet = 0.0
    while True:
        with feed.subscribe() as sub:  # before reading: nothing published meanwhile is missed
            while True:
                page = await read_after(cursor)
                if not page:
                    break
                cursor = page[-1]["seq"]
                rows = [r for r in page if keep(r)]
                if rows:
                    yield rows
            try:
                while True:
                    fresh = await sub.next(reread or idle)
                    if not fresh and reread is not None:
                        quiet += reread
                        if quiet >= idle:
                            quiet = 0.0
                            yield []
                        break  # read on from the store
                    rows = []
                    for r in fresh:
                        if r["seq"] > cursor:  # published in seq order; the replay held some
                            cursor = r["seq"]
                            if keep(r):
                                rows.append(r)
                    if rows or not fresh:
                        yield rows
            except Lagged:
                continue  # read on from the store
            except Closed:
                return
