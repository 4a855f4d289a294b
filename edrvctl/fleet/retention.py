"""Retention: what the store keeps of what only grows (events, meter values, finished Actions),
pruned by age (events also by count) a little at a time, from the server's once-a-second loop.

Each batch is one unit of work deleting at most BATCH rows, so the store's connection is never
held longer than one small DELETE (how long is measured: `longest`, and /metrics'
edrvctl_retention_batch_duration_seconds); a tick spends at most BUDGET seconds, then lets the
next second go on, starting with the next kind of row so none starves. A kind found with
nothing more due rests REST seconds: ages are days, so a few seconds late costs nothing, and
an idle store is not asked every second. Sessions (transactions) themselves are billing records
and are kept; their meter values go together, once the session has ended and its last value is
as old as the meter values' age (at most twice that age for a session that never ends).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from edrvctl import model
from edrvctl.metrics import Metrics
from edrvctl.store import Store

DAY = 86400.0
BATCH = 500  # rows one unit deletes at most
BUDGET = 0.05  # seconds of each tick spent pruning at most (5% of the loop)
REST = 10.0  # seconds a kind with nothing more due waits before it is looked at again

T = TypeVar("T")

# one kind of row: fn(now, limit) -> (rows deleted, whether more may be due now)
Step = Callable[[float, int], Awaitable[tuple[int, bool]]]


@dataclass
class Retention:
    """Ages in days (0: kept for ever) and the events' count (None: no cap); `serve` flags.

    Defaults: an incident or a billing question about last month can still be answered
    (events and Actions: 30 days), and a disputed bill of last quarter (meter values: 90
    days); each station's daily budget (--max-stored-mb-per-day) bounds what it adds in the
    meantime."""

    events_days: float = 30
    meter_values_days: float = 90
    actions_days: float = 30
    events_max: int | None = None


def _iso(t: float) -> str:
    return model.format_time(datetime.fromtimestamp(t, UTC))


class Pruner:
    """The retention steps the server runs each second (`tick`)."""

    def __init__(self, store: Store, retention: Retention, metrics: Metrics | None = None):
        self.store = store
        self.retention = retention
        self.metrics = metrics
        self.pruned: Counter[str] = Counter()  # kind -> rows deleted since start
        self.longest = 0.0  # seconds the longest batch held the store
        self.steps: list[tuple[str, Step]] = []
        self._first = 0  # the step a tick starts with (turns, so that none starves)
        self._rest: dict[str, float] = {}  # kind -> time.monotonic() it is looked at again
        self._held: float | None = None  # the last batch's time in the store (`held`)
        self._cursor: object = None  # the meter values' pass (None: the next starts anew)
        r = retention
        if r.events_days > 0 or r.events_max:
            self.add("events", self._events)
        if r.meter_values_days > 0:
            self.add("meter_values", self._meter_values)
        if r.actions_days > 0:
            self.add("actions", self._actions)
        if metrics is not None:
            metrics.register_counter(
                "edrvctl_retention_pruned_total",
                "Rows deleted by retention since the server started, by kind",
                lambda: {(kind,): n for kind, n in self.pruned.items()},
                labels=("kind",),
            )
            metrics.register_gauge(
                "edrvctl_retention_longest_batch_seconds",
                "The longest batch of retention pruning since the server started",
                lambda: self.longest,
            )

    def add(self, kind: str, step: Step) -> None:
        """Another kind of row to prune in the same budget (the frame log's, say). A step
        that wraps its store call in `held` is measured by it, else as a whole."""
        self.steps.append((kind, step))

    async def held(self, call: Awaitable[T]) -> T:
        """Await a store call, measuring it as the batch's time in the store (its unit's
        commit is left out: that is not the batch's to hold)."""
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self._held = time.perf_counter() - t0

    async def tick(self, now: float | None = None) -> int:
        """Prune what is due, batch by batch, until nothing is or BUDGET is spent; returns
        the rows deleted."""
        now = time.time() if now is None else now
        started = time.perf_counter()
        total = 0
        n = len(self.steps)
        for i in range(n):
            if i and time.perf_counter() - started >= BUDGET:
                break
            kind, step = self.steps[(self._first + i) % n]
            if self._rest.get(kind, 0.0) > time.monotonic():
                continue
            while True:
                t0 = time.perf_counter()
                self._held = None
                deleted, more = await step(now, BATCH)
                took = time.perf_counter() - t0 if self._held is None else self._held
                self.longest = max(self.longest, took)
                if self.metrics is not None:
                    self.metrics.prune_batches.observe(took)
                if deleted:
                    self.pruned[kind] += deleted
                    total += deleted
                if not more:
                    self._rest[kind] = time.monotonic() + REST
                    break
                if time.perf_counter() - started >= BUDGET:
                    break
        if n:
            self._first = (self._first + 1) % n
        return total

    async def _events(self, now: float, limit: int) -> tuple[int, bool]:
        r = self.retention
        before = _iso(now - r.events_days * DAY) if r.events_days > 0 else ""
        async with self.store.unit() as tx:
            deleted = await self.held(tx.prune_events(before, limit, r.events_max or None))
        return deleted, deleted == limit

    async def _meter_values(self, now: float, limit: int) -> tuple[int, bool]:
        age = self.retention.meter_values_days * DAY
        async with self.store.unit() as tx:
            deleted, self._cursor = await self.held(
                tx.prune_meter_values(_iso(now - age), _iso(now - 2 * age), self._cursor, limit)
            )
        return deleted, self._cursor is not None

    async def _actions(self, now: float, limit: int) -> tuple[int, bool]:
        before = _iso(now - self.retention.actions_days * DAY)
        async with self.store.unit() as tx:
            deleted = await self.held(tx.prune_actions(before, limit))
        return deleted, deleted == limit
