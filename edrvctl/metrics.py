"""What `GET /metrics` shows, in Prometheus' text exposition format (0.0.4).

A module of our own rather than `prometheus_client`: the hot path is one station message, and
counting it here is a dict increment (`Metrics.message`: ~100 ns, as a bare dict increment) where a labelled
prometheus_client Counter takes a lock and two lookups (~10x that; bench/metrics.py measures
both). Everything else is read when scraped: histograms are fixed buckets bumped in place, and
gauges and counters that live elsewhere (stations online, refused upgrades, the webhook backlog)
are functions registered once and called at each scrape.

Label values come from fixed sets we own (OCPP action names, CALLERROR codes, command types,
HTTP statuses), never from what a station sends: a station inventing action names cannot grow
the number of series.
"""

from __future__ import annotations

import inspect
import logging
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger("edrvctl.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# a round trip to a station: milliseconds on a LAN, seconds over a mobile link, up to the
# command's timeout
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# one SQLite COMMIT (WAL, synchronous=NORMAL): tens of microseconds, more under I/O pressure
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
# one batch of retention pruning (fleet/retention.py)
PRUNE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

OTHER = "other"  # the label of anything outside the known set
# value, or {label values: value}, or an awaitable of either
Reading = float | Mapping[tuple[str, ...], float]
Reader = Callable[[], Reading | Awaitable[Reading]]


def _number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Histogram:
    """Fixed buckets (upper bounds, `le`), their counts, the sum and the count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value
        self.count += 1

    def lines(self, name: str, label_names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            le = f'le="{_number(float(bound))}"'
            out.append(f"{name}_bucket{_labels(label_names, values, le)} {running}")
        out.append(f"{name}_sum{_labels(label_names, values)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(label_names, values)} {self.count}")
        return out


class Histograms:
    """A histogram per label value (a bounded set: callers pass values they own)."""

    def __init__(self, label: str, bounds: Iterable[float]) -> None:
        self.label = label
        self.bounds = tuple(bounds)
        self.by: dict[str, Histogram] = {}

    def observe(self, value: float, label: str) -> None:
        h = self.by.get(label)
        if h is None:
            h = self.by[label] = Histogram(self.bounds)
        h.observe(value)


class _Registered:
    __slots__ = ("fn", "help", "kind", "labels", "name")

    def __init__(self, name: str, help: str, kind: str, fn: Reader, labels: tuple[str, ...]):
        self.name, self.help, self.kind, self.fn, self.labels = name, help, kind, fn, labels


def _known_actions() -> frozenset[str]:
    from edrvctl.ocppj import schemas

    return schemas.actions("1.6") | schemas.actions("2.0.1")


def _known_results() -> frozenset[str]:
    from edrvctl.ocppj.frames import CODES

    return frozenset({"ok", *CODES["1.6"], *CODES["2.0.1"]})


class Metrics:
    """One server's metrics. The hot path is `message`; the rest is read at a scrape."""

    def __init__(self) -> None:
        # (action, result) -> messages; result "ok" or the CALLERROR code
        self.messages: dict[tuple[str, str], int] = {}
        self.commands = Histograms("type", COMMAND_BUCKETS)  # Action round trips, by type
        self.commits = Histogram(COMMIT_BUCKETS)  # SQLite COMMITs that succeeded
        self.prune_batches = Histogram(PRUNE_BUCKETS)  # retention: one batch in the store
        self._registered: list[_Registered] = []
        self._known: tuple[frozenset[str], frozenset[str]] | None = None  # actions, results

    # --- the hot path ----------------------------------------------------------------------

    def message(self, action: str, result: str = "ok") -> None:
        """One OCPP message handled: `result` is "ok" or the CALLERROR code it got. A dict
        increment; an action or code outside the known sets is counted as "other"."""
        try:
            self.messages[(action, result)] += 1
        except KeyError:
            self._first_message(action, result)

    def tracer(self, inner: Callable[..., None] | None = None) -> Callable[..., None]:
        """An observer for `Rpc(trace=...)` that counts each station message by the answer
        we gave it (`message`), after passing the frame on to `inner` (the frame log's)."""
        from edrvctl.ocppj.frames import CALLERROR, CALLRESULT
        from edrvctl.ocppj.rpc import OUT

        message = self.message

        def count(*t: Any) -> None:
            # (at, direction, kind, id, action, size, latency, error, text): our answers
            if t[1] == OUT and (t[2] == CALLRESULT or t[2] == CALLERROR) and t[4] is not None:
                message(t[4], t[7] or "ok")

        if inner is None:
            return count

        def both(*t: Any) -> None:
            inner(*t)
            count(*t)

        return both

    def _first_message(self, action: str, result: str) -> None:
        if self._known is None:
            self._known = _known_actions(), _known_results()
        actions, results = self._known
        key = (action if action in actions else OTHER, result if result in results else OTHER)
        self.messages[key] = self.messages.get(key, 0) + 1

    # --- what lives elsewhere, read at each scrape --------------------------------------------

    def register_gauge(self, name: str, help: str, fn: Reader, labels: Iterable[str] = ()) -> None:
        """`fn()` (or `await fn()`) at each scrape: a number, or {label values: number} with
        one value per name in `labels`. E.g. the webhooks' backlog:
        `metrics.register_gauge("edrvctl_webhook_backlog", "Deliveries waiting", fn)`."""
        self._register(name, help, "gauge", fn, labels)

    def register_counter(
        self, name: str, help: str, fn: Reader, labels: Iterable[str] = ()
    ) -> None:
        """As register_gauge, for a count that only grows (its name ends in _total)."""
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        self._register(name, help, "counter", fn, labels)

    def _register(self, name: str, help: str, kind: str, fn: Reader, labels: Iterable[str]) -> None:
        if any(r.name == name for r in self._registered):
            raise ValueError(f"metric {name} is registered already")
        self._registered.append(_Registered(name, help, kind, fn, tuple(labels)))

    # --- the scrape ------------------------------------------------------------------------

    async def render(self) -> str:
        """Every metric in the text exposition format."""
        out: list[str] = []

        def family(name: str, help: str, kind: str) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")

        for r in self._registered:
            try:
                value = r.fn()
                if inspect.isawaitable(value):
                    value = await value
            except Exception:
                log.exception("metric %s could not be read", r.name)
                continue
            family(r.name, r.help, r.kind)
            if isinstance(value, Mapping):
                for values, v in sorted(value.items()):
                    out.append(f"{r.name}{_labels(r.labels, values)} {_number(v)}")
            else:
                out.append(f"{r.name} {_number(value)}")

        name = "edrvctl_ocpp_messages_total"
        family(
            name,
            "OCPP messages from stations, by action and result (ok, or the CALLERROR code "
            "they were answered with)",
            "counter",
        )
        for (action, result), n in sorted(self.messages.items()):
            out.append(f"{name}{_labels(('action', 'result'), (action, result))} {n}")

        name = "edrvctl_command_duration_seconds"
        family(
            name,
            "Round trip of a command (Action) to a station, from sending it to its answer "
            "(accepted, refused or CALLERROR), by Action type",
            "histogram",
        )
        for label, h in sorted(self.commands.by.items()):
            out += h.lines(name, ("type",), (label,))

        name = "edrvctl_store_commit_duration_seconds"
        family(
            name, "One store COMMIT (group commit: every write of an event-loop turn)", "histogram"
        )
        out += self.commits.lines(name, (), ())

        name = "edrvctl_retention_batch_duration_seconds"
        family(name, "One batch of retention pruning: the time it held the store", "histogram")
        out += self.prune_batches.lines(name, (), ())
        return "\n".join(out) + "\n"
