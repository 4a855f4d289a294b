"""The admin REST API, in eDRV's style: `{ok, message, result}` envelopes, bearer-token auth.

Routes only translate HTTP into `Fleet` calls; `edrvctl.errors` decides the status codes.
Every route is `async def`: FastAPI runs plain `def` routes in threads, and the store belongs
to the event loop.
FastAPI is used for routing, request validation and the OpenAPI document (`/openapi.json`).
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from edrvctl import __version__, model
from edrvctl.errors import AuthError, EdrvError, UsageError
from edrvctl.fleet import Fleet
from edrvctl.store import SORT_FIELDS, StationQuery

log = logging.getLogger("edrvctl.api")

LIST_PARAMS = {
    "online", "active", "location", "organization", "protocol", "status", "endpoint",
    "paginate_enabled", "paginate_limit", "paginate_page", "sort_by", "sort_order",
    "createdAt[$gte]", "createdAt[$lte]", "updatedAt[$gte]", "updatedAt[$lte]",
}

MAX_BODY = 256 * 1024  # no admin request needs more; a bigger body is a 413

# Route signatures are resolved from module globals (postponed annotations), so types live here.
Id = Annotated[str, Path(description="the station's _id or its endpoint")]


def envelope(result: Any, message: str = "", status: int = 200, **extra: Any) -> Response:
    body = {"ok": status < 400, "message": message, "result": result, **extra}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def envelope_of_json(items: list[str], message: str, **extra: Any) -> Response:
    """An `ok` envelope whose result is a list of records that are already JSON text."""
    head = orjson.dumps({"ok": True, "message": message, **extra})[:-1]
    body = b"".join((head, b',"result":[', ",".join(items).encode(), b"]}"))
    return Response(body, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return envelope(None, message, status)


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def create_app(fleet: Fleet, token: str) -> "EnvelopeTooLarge":
    app = FastAPI(
        title="edrvctl admin API", version=__version__,
        description="eDRV-style chargestation API served by `edrvctl serve`. Every response is "
                    "`{ok, message, result}`; send `Authorization: Bearer <token>`.",
        docs_url=None, redoc_url=None,
        redirect_slashes=False,  # a bare 307 would be the one answer without an envelope
        max_body_size=MAX_BODY,
    )
    expected = f"Bearer {token}".encode()

    async def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise AuthError("missing or invalid bearer token" if given else
                            "missing bearer token: send 'Authorization: Bearer <token>'")

    @app.exception_handler(EdrvError)
    async def on_edrv_error(request: Request, exc: EdrvError) -> Response:
        message = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        return _error(exc.http_status, message)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        in_body = any(e["loc"] and e["loc"][0] == "body" for e in errors)
        bad_json = any(e.get("type") == "json_invalid" for e in errors)
        status = 422 if in_body and not bad_json else 400
        return _error(status, ("invalid JSON body: " if bad_json else "invalid request: ")
                      + _describe(errors))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    auth = [Depends(authorized)]

    @app.get("/v1.1/chargestations", dependencies=auth, summary="List chargestations")
    async def list_stations(
        request: Request,
        online: bool | None = None,
        active: bool | None = None,
        location: str | None = None,
        organization: str | None = None,
        protocol: model.Protocol | None = None,
        status: Annotated[str | None, Query(description="|".join(model.STATUSES))] = None,
        endpoint: str | None = None,
        paginate_enabled: bool = True,
        paginate_limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        paginate_page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
        sort_by: Annotated[str, Query(description="|".join(SORT_FIELDS))] = "createdAt",
        sort_order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        created_gte: Annotated[str | None, Query(alias="createdAt[$gte]")] = None,
        created_lte: Annotated[str | None, Query(alias="createdAt[$lte]")] = None,
        updated_gte: Annotated[str | None, Query(alias="updatedAt[$gte]")] = None,
        updated_lte: Annotated[str | None, Query(alias="updatedAt[$lte]")] = None,
    ) -> Response:
        unknown = sorted(set(request.query_params) - LIST_PARAMS)
        if unknown:
            raise UsageError(f"unknown query parameter(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(LIST_PARAMS))}")
        if status is not None and status not in model.STATUSES:
            raise UsageError(f"status must be one of {', '.join(model.STATUSES)}")
        if sort_by not in SORT_FIELDS:
            raise UsageError(f"sort_by must be one of {', '.join(SORT_FIELDS)}")
        equals = {k: v for k, v in (("online", online), ("active", active),
                                    ("location", location), ("organization", organization),
                                    ("protocol", protocol), ("status", status),
                                    ("endpoint", endpoint)) if v is not None}
        ranges = []
        for name, op, value in (("createdAt", ">=", created_gte), ("createdAt", "<=", created_lte),
                                ("updatedAt", ">=", updated_gte), ("updatedAt", "<=", updated_lte)):
            if value is not None:
                try:
                    ranges.append((name, op, model.format_time(model.parse_time(value))))
                except (ValueError, OverflowError):
                    raise UsageError(f"{name} filter: {value!r} is not an ISO-8601 date-time "
                                     "within years 1-9999") from None
        limit = paginate_limit if paginate_enabled else None
        offset = (paginate_page - 1) * paginate_limit if paginate_enabled else 0
        docs, total = await fleet.list_json(StationQuery(equals, ranges, sort_by,
                                                   sort_order == "desc", limit, offset))
        if not paginate_enabled:
            return envelope_of_json(docs, f"{total} chargestation(s)")
        return envelope_of_json(docs, f"{total} chargestation(s)",
                                hasNext=offset + len(docs) < total, hasPrevious=paginate_page > 1,
                                total=total)

    @app.post("/v1.1/chargestations", dependencies=auth, status_code=201,
              summary="Create a chargestation")
    async def create_station(body: model.StationCreate) -> Response:
        doc, password = await fleet.create(body)
        result = fleet.present(doc)
        if password is not None:  # shown this once; only a hash is kept
            result["password"] = password
        return envelope(result, f"chargestation {doc['endpoint']} created", 201)

    @app.get("/v1.1/chargestations/{id}", dependencies=auth, summary="One chargestation")
    async def get_station(id: Id) -> Response:
        return envelope(fleet.present(await fleet.get(id)))

    @app.patch("/v1.1/chargestations/{id}", dependencies=auth, summary="Update a chargestation")
    async def update_station(id: Id, body: model.StationUpdate) -> Response:
        doc = await fleet.update(id, body)
        return envelope(fleet.present(doc), f"chargestation {doc['endpoint']} updated")

    @app.delete("/v1.1/chargestations/{id}", dependencies=auth, summary="Delete a chargestation")
    async def delete_station(id: Id) -> Response:
        doc = await fleet.delete(id)
        return envelope(fleet.present(doc), f"chargestation {doc['endpoint']} deleted")

    @app.patch("/v1.1/chargestations/{id}/reset_password", dependencies=auth,
               summary="Issue a new station password and retire the old one")
    async def reset_password(id: Id) -> Response:
        doc, password = await fleet.rotate_password(id)
        return envelope({**fleet.present(doc), "password": password},
                        f"new password for chargestation {doc['endpoint']}; the old one no "
                        "longer works")

    @app.get("/v1.1/chargestations/{id}/connectors", dependencies=auth,
             summary="A chargestation's connectors")
    async def get_connectors(id: Id) -> Response:
        return envelope((await fleet.get(id))["connectors"])

    @app.post("/v1.1/chargestations/{id}/get_variables", dependencies=auth, status_code=201,
              summary="Fetch the live station's configuration and store it as csconfig")
    async def get_variables(
        id: Id, body: Annotated[model.GetVariablesRequest | None, Body()] = None
    ) -> Response:
        body = body or model.GetVariablesRequest()
        result = await fleet.fetch_config(id, body.keys, body.timeout)
        return envelope(result, f"{len(result['csconfig'])} configuration entries fetched", 201)

    return EnvelopeTooLarge(app)


class EnvelopeTooLarge:
    """Starlette's body limit answers 413 in plain text, outside FastAPI's exception handlers;
    this gives that answer the same envelope as every other."""

    def __init__(self, app: FastAPI):
        self.app = app

    def __getattr__(self, name: str):  # the wrapped app's routes, openapi(), ...
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        replaced = False

        async def send_enveloped(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                body = orjson.dumps({"ok": False, "result": None,
                                     "message": f"request body over {MAX_BODY} bytes"})
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif not replaced:
                await send(message)

        await self.app(scope, receive, send_enveloped)
