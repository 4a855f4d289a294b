"""`GET /metrics` (Prometheus text) and `GET /health`, for monitoring: no token.

Neither holds a secret nor anything a station wrote (metric labels come from fixed sets), and
both are what a Prometheus scraper or a load balancer's probe can reach without credentials;
the admin API listens on loopback unless told otherwise. Neither is in /openapi.json: they are
not eDRV API, and answer outside its envelope (/metrics) or for machines (/health).
/health costs the store at most one small write a second, however often it is asked.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import Response

from edrvctl import __version__, model
from edrvctl.errors import EdrvError
from edrvctl.fleet import Fleet
from edrvctl.metrics import CONTENT_TYPE
from edrvctl.server.api import envelope

if TYPE_CHECKING:
    from edrvctl.fleet.webhooks import Webhooks
    from edrvctl.server.listener import Listener

HEALTH_EVERY = 1.0  # s a probe's answer is reused
HEALTH_TIMEOUT = 5.0  # s a probe may take before /health says the store does not answer


class Health:
    """Whether the store takes a write now: one probe (Fleet.probe_store) at a time, its
    answer reused for HEALTH_EVERY seconds."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.answer: tuple[str | None, str] | None = None  # (why not writable, checkedAt)
        self.answered = 0.0  # time.monotonic() of the answer
        self.probing: asyncio.Task | None = None

    async def check(self) -> tuple[str | None, str]:
        """(None, or why the store cannot be written; when that was found)."""
        if self.answer is not None and time.monotonic() - self.answered < HEALTH_EVERY:
            return self.answer
        if self.probing is None:
            self.probing = asyncio.ensure_future(self._probe())
        try:  # shielded: a client that goes away does not cancel the probe others wait on
            async with asyncio.timeout(HEALTH_TIMEOUT):
                return await asyncio.shield(self.probing)
        except TimeoutError:
            return f"the store did not answer within {HEALTH_TIMEOUT:g} s", model.utcnow()

    async def _probe(self) -> tuple[str | None, str]:
        try:
            await self.fleet.probe_store()
            why = None
        except EdrvError as e:
            why = e.message
        finally:
            self.probing = None
        self.answer, self.answered = (why, model.utcnow()), time.monotonic()
        return self.answer


def add_routes(app: FastAPI, fleet: Fleet) -> None:
    health = Health(fleet)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await fleet.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health", include_in_schema=False)
    async def get_health() -> Response:
        why, checked = await health.check()
        result = {
            "store": "writable" if why is None else "unwritable",
            "checkedAt": checked,
            "version": __version__,
        }
        if why is None and fleet.router is not None:  # one of several nodes: its lease too
            why = fleet.router.healthy()
            result["node"] = fleet.router.node_id
        if why is not None:
            return envelope({**result, "reason": why}, why, 503)
        return envelope(result, "ok")


def register(fleet: Fleet, listener: Listener, webhooks: Webhooks | None = None) -> None:
    """The server's own gauges and counters, read at each scrape."""
    m = fleet.metrics
    if webhooks is not None:
        m.register_gauge(
            "edrvctl_webhook_backlog",
            "Webhook deliveries waiting (pending), by webhook",
            lambda: {(hook,): n for hook, n in webhooks.backlog().items()},
            labels=("webhook",),
        )
        m.register_counter(
            "edrvctl_webhook_dropped_total",
            "Webhook deliveries given up for the backlog budget since the server started",
            lambda: {(hook,): n for hook, n in webhooks.dropped().items()},
            labels=("webhook",),
        )
    m.register_gauge("edrvctl_stations", "Chargestations in the store", fleet.count_stations)
    m.register_gauge(
        "edrvctl_stations_online",
        "Chargestations connected to this server now",
        lambda: len(listener.stations),
    )
    m.register_counter(
        "edrvctl_refused_upgrades_total",
        "Station websocket upgrades refused since the server started, by HTTP status",
        lambda: {(str(status),): n for status, n in listener.refusals.total.items()},
        labels=("status",),
    )
