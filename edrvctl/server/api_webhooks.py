"""The webhook routes: `/v1.1/webhooks` CRUD, a webhook's delivery log, a test event, a new
secret. The rules and the delivery worker are in fleet/webhooks.py."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response

from edrvctl.errors import UsageError
from edrvctl.fleet import Fleet
from edrvctl.fleet.webhooks import STATUSES, WebhookCreate, Webhooks, WebhookUpdate
from edrvctl.server.api import envelope

log = logging.getLogger("edrvctl.api")

WebhookId = Annotated[str, Path(max_length=64, description="the webhook's _id")]


def add_routes(app: FastAPI, fleet: Fleet, auth: list[Any], webhooks: Webhooks) -> None:
    app.state.webhooks = webhooks  # for the metrics: webhooks.backlog()

    def admin(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.get("/v1.1/webhooks", dependencies=auth, summary="List webhooks (never their secrets)")
    async def list_webhooks() -> Response:
        found = await webhooks.all()
        return envelope(found, f"{len(found)} webhook(s)")

    @app.post(
        "/v1.1/webhooks",
        dependencies=auth,
        status_code=201,
        summary="Create a webhook; the response carries its secret, this once",
    )
    async def create_webhook(request: Request, body: WebhookCreate) -> Response:
        doc, secret = await webhooks.create(body)
        log.info(
            "admin %s: webhook %s created (%s, events %s)",
            admin(request),
            doc["_id"],
            doc["url"],
            ",".join(doc["events"]),
        )
        return envelope(
            {**doc, "secret": secret},
            f"webhook {doc['_id']} created; its secret is shown this once",
            201,
        )

    @app.get("/v1.1/webhooks/{id}", dependencies=auth, summary="One webhook")
    async def get_webhook(id: WebhookId) -> Response:
        return envelope(await webhooks.get(id))

    @app.patch("/v1.1/webhooks/{id}", dependencies=auth, summary="Change a webhook")
    async def update_webhook(request: Request, id: WebhookId, body: WebhookUpdate) -> Response:
        doc = await webhooks.update(id, body)
        fields = ", ".join(sorted(body.model_fields_set)) or "nothing"
        log.info("admin %s: webhook %s updated (%s)", admin(request), id, fields)
        return envelope(doc, f"webhook {id} updated")

    @app.delete("/v1.1/webhooks/{id}", dependencies=auth, summary="Delete a webhook")
    async def delete_webhook(request: Request, id: WebhookId) -> Response:
        doc = await webhooks.delete(id)
        log.info("admin %s: webhook %s deleted", admin(request), id)
        return envelope(doc, f"webhook {id} deleted")

    @app.post(
        "/v1.1/webhooks/{id}/rotate_secret",
        dependencies=auth,
        summary="A new secret (shown this once); the old one signs nothing from now on",
    )
    async def rotate_secret(request: Request, id: WebhookId) -> Response:
        doc, secret = await webhooks.rotate_secret(id)
        log.info("admin %s: webhook %s has a new secret", admin(request), id)
        return envelope(
            {**doc, "secret": secret}, f"new secret for webhook {id}; it is shown this once"
        )

    @app.get(
        "/v1.1/webhooks/{id}/deliveries",
        dependencies=auth,
        summary="A webhook's delivery log, newest event first",
    )
    async def deliveries(
        id: WebhookId,
        status: Annotated[str | None, Query(description="|".join(STATUSES))] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        if status is not None and status not in STATUSES:
            raise UsageError(f"status must be one of {', '.join(STATUSES)}")
        found = await webhooks.deliveries(id, status, limit)
        return envelope(found, f"{len(found)} deliver{'y' if len(found) == 1 else 'ies'}")

    @app.post(
        "/v1.1/webhooks/{id}/test",
        dependencies=auth,
        status_code=201,
        summary="Send a signed webhook.test event now (502 if the receiver did not take it)",
    )
    async def test_webhook(id: WebhookId) -> Response:
        result = await webhooks.test(id)
        url = result["event"]["data"]["url"]
        if result["delivered"]:
            message = f"test event delivered to {url}: HTTP {result['status']} in {result['ms']} ms"
            return envelope(result, message, 201)
        return envelope(
            result, f"the receiver at {url} did not take the test event: {result['error']}", 502
        )
