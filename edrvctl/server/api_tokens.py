"""The token routes: id tokens (`/v1.1/tokens`, CRUD in eDRV's style, and a CSV import) and a
station's local authorization list (`send_local_list`, `get_local_list_version` as Actions,
and `GET .../local_list`: what it was last sent). The policy is fleet/tokens.py's.

A CSV import is bigger than the 256 KiB of other bodies: it is read here, up to
tokens.MAX_IMPORT_BYTES (16 MiB, about 250,000 tokens), and a bigger one is 413.

Annotations are evaluated when the routes are defined (no `from __future__ import
annotations`): their types (`Id`, `Wait`) come from server/api.py at that time.
"""

import logging
from typing import Annotated, Literal

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from edrvctl.errors import OverBudget, UsageError
from edrvctl.fleet import Fleet, actions, tokens
from edrvctl.fleet.live import GetLocalListVersion
from edrvctl.store import TOKEN_FILTER_FIELDS, TokenQuery

log = logging.getLogger("edrvctl.api")

LIST_PARAMS = {*TOKEN_FILTER_FIELDS, "paginate_enabled", "paginate_limit", "paginate_page"}

TokenKey = Annotated[str, Path(max_length=64, description="the token's _id or its physicalId")]
TypeParam = Annotated[
    tokens.TokenType | None,
    Query(description="the token's type, when several types have its physicalId"),
]


class SendLocalListRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    updateType: Literal["Full", "Differential"] = "Full"


def add_routes(app: FastAPI, fleet: Fleet, auth: list) -> None:
    from edrvctl.server.api import DEFAULT_WAIT, Id, Wait, _action_message, envelope

    def admin(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.get("/v1.1/tokens", dependencies=auth, summary="List id tokens, newest first")
    async def list_tokens(
        request: Request,
        physicalId: Annotated[str | None, Query(max_length=36)] = None,
        type: tokens.TokenType | None = None,
        active: bool | None = None,
        organization: Annotated[str | None, Query(max_length=200)] = None,
        paginate_enabled: bool = True,
        paginate_limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        paginate_page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    ) -> Response:
        unknown = sorted(set(request.query_params) - LIST_PARAMS)
        if unknown:
            raise UsageError(
                f"unknown query parameter(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(LIST_PARAMS))}"
            )
        equals = {
            k: v
            for k, v in (
                ("physicalId", physicalId),
                ("type", type),
                ("active", active),
                ("organization", organization),
            )
            if v is not None
        }
        limit = paginate_limit if paginate_enabled else None
        offset = (paginate_page - 1) * paginate_limit if paginate_enabled else 0
        found, total = await tokens.list_(fleet, TokenQuery(equals, limit=limit, offset=offset))
        if not paginate_enabled:
            return envelope(found, f"{total} token(s)")
        return envelope(
            found,
            f"{total} token(s)",
            hasNext=offset + len(found) < total,
            hasPrevious=paginate_page > 1,
            total=total,
        )

    @app.post("/v1.1/tokens", dependencies=auth, status_code=201, summary="Create an id token")
    async def create_token(request: Request, body: tokens.TokenCreate) -> Response:
        doc = await tokens.create(fleet, body)
        log.info(
            "admin %s: token %s created (%s, %s)",
            admin(request),
            doc["physicalId"],
            doc["type"],
            doc["_id"],
        )
        return envelope(doc, f"token {doc['physicalId']} created", 201)

    @app.post(
        "/v1.1/tokens/import",
        dependencies=auth,
        status_code=201,
        summary="Create or update many tokens from CSV: all rows or none",
        description="Header row: physicalId,type,active,organization,expiryDate,parentIdTag "
        "(physicalId required, any order); one token per row. A row whose physicalId and type "
        "exist updates that token. A bad row is 400 naming its line, and nothing is imported. "
        f"At most {tokens.MAX_IMPORT_BYTES} bytes and {tokens.MAX_IMPORT_ROWS} rows.",
        openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}}},
        # read and capped below (tokens.MAX_IMPORT_BYTES), with an answer that says so
        max_body_size=2 * tokens.MAX_IMPORT_BYTES,
    )
    async def import_tokens(request: Request) -> Response:
        body = await _read_capped(request, tokens.MAX_IMPORT_BYTES)
        result = await tokens.import_csv(fleet, body)
        log.info(
            "admin %s: %d token(s) imported (%d created, %d updated)",
            admin(request),
            result["rows"],
            result["created"],
            result["updated"],
        )
        return envelope(
            result,
            f"{result['rows']} token(s) imported: {result['created']} created, "
            f"{result['updated']} updated",
            201,
        )

    @app.get("/v1.1/tokens/{key}", dependencies=auth, summary="One id token")
    async def get_token(key: TokenKey, type: TypeParam = None) -> Response:
        return envelope(await tokens.get(fleet, key, type))

    @app.patch("/v1.1/tokens/{key}", dependencies=auth, summary="Update an id token")
    async def update_token(
        request: Request, key: TokenKey, body: tokens.TokenUpdate, type: TypeParam = None
    ) -> Response:
        doc = await tokens.update(fleet, key, body, type)
        log.info(
            "admin %s: token %s updated (%s)",
            admin(request),
            doc["physicalId"],
            ", ".join(sorted(body.model_fields_set)) or "nothing",
        )
        return envelope(doc, f"token {doc['physicalId']} updated")

    @app.delete("/v1.1/tokens/{key}", dependencies=auth, summary="Delete an id token")
    async def delete_token(request: Request, key: TokenKey, type: TypeParam = None) -> Response:
        doc = await tokens.delete(fleet, key, type)
        log.info("admin %s: token %s deleted (%s)", admin(request), doc["physicalId"], doc["_id"])
        return envelope(doc, f"token {doc['physicalId']} deleted")

    async def run(request: Request, key: str, send, what: str) -> Response:
        action = await send()
        log.info(
            "admin %s: %s %s on chargestation %s: %s/%s",
            admin(request),
            what,
            action["_id"],
            key,
            action["status"],
            action["outcome"],
        )
        return envelope(action, _action_message(action), actions.http_status(action))

    @app.post(
        "/v1.1/chargestations/{id}/send_local_list",
        dependencies=auth,
        status_code=201,
        summary="Send the station its local authorization list: Full, or the Differential "
        "since the list it last accepted",
    )
    async def send_local_list(
        request: Request,
        id: Id,
        body: Annotated[SendLocalListRequest | None, Body()] = None,
        wait: Wait = DEFAULT_WAIT,
    ) -> Response:
        full = (body or SendLocalListRequest()).updateType == "Full"
        return await run(
            request,
            id,
            lambda: fleet.send_local_list(id, full, wait or DEFAULT_WAIT, wait=wait != 0),
            "send_local_list",
        )

    @app.post(
        "/v1.1/chargestations/{id}/get_local_list_version",
        dependencies=auth,
        status_code=201,
        summary="Ask the station the version of its local authorization list",
    )
    async def get_local_list_version(request: Request, id: Id, wait: Wait = DEFAULT_WAIT):
        return await run(
            request,
            id,
            lambda: fleet.command(id, GetLocalListVersion(), wait or DEFAULT_WAIT, wait=wait != 0),
            "get_local_list_version",
        )

    @app.get(
        "/v1.1/chargestations/{id}/local_list",
        dependencies=auth,
        summary="The local authorization list the station last accepted (version 0: none)",
    )
    async def local_list(id: Id) -> Response:
        found = await tokens.local_list_of(fleet, id)
        return envelope(
            found, f"local list version {found['version']}, {len(found['entries'])} token(s)"
        )


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes: said at once when Content-Length
    says so, else once that many have come."""
    declared = request.headers.get("content-length")
    too_big = OverBudget(
        f"an import has at most {limit} bytes ({limit >> 20} MiB)", hint="split the file"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        parts.append(chunk)
    return b"".join(parts)
