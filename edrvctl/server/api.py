"""The admin REST API, in eDRV's style: `{ok, message, result}` envelopes, bearer-token auth.

Routes only translate HTTP into `Fleet` calls; `edrvctl.errors` decides the status codes.
Every route is `async def`: FastAPI runs plain `def` routes in threads, and the store belongs
to the event loop.
FastAPI is used for routing, request validation and the OpenAPI document (`/openapi.json`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from edrvctl import __version__, model
from edrvctl.errors import AuthError, Conflict, EdrvError, UsageError
from edrvctl.fleet import Fleet, actions, batch, sessions
from edrvctl.fleet import live as commands
from edrvctl.fleet.webhooks import Webhooks
from edrvctl.server import api_events, api_tokens
from edrvctl.server.api_events import Streams
from edrvctl.server.files import Files
from edrvctl.store import ACTION_FILTER_FIELDS, SORT_FIELDS, ActionQuery, StationQuery

log = logging.getLogger("edrvctl.api")

LIST_PARAMS = {
    "online",
    "active",
    "location",
    "organization",
    "protocol",
    "status",
    "endpoint",
    "paginate_enabled",
    "paginate_limit",
    "paginate_page",
    "sort_by",
    "sort_order",
    "createdAt[$gte]",
    "createdAt[$lte]",
    "updatedAt[$gte]",
    "updatedAt[$lte]",
}

ACTION_LIST_PARAMS = {
    *ACTION_FILTER_FIELDS,
    "paginate_enabled",
    "paginate_limit",
    "paginate_page",
    "createdAt[$gte]",
    "createdAt[$lte]",
}
ACTION_STATUSES = ("requested", "completed", "failed")
OUTCOMES = ("pending", "succeeded", "failed", "timed_out")

DEFAULT_WAIT = 30.0  # s a command route waits for the station's answer unless ?wait= says
MAX_WAIT = 120.0

MAX_BODY = 256 * 1024  # no admin request needs more; a bigger body is a 413

# Route signatures are resolved from module globals (postponed annotations), so types live here.
Id = Annotated[str, Path(description="the station's _id or its endpoint")]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT,
        description="seconds to wait for the station's answer (0: answer 202 at once, the "
        "command goes on; follow it with GET /v1.1/actions/{id})",
    ),
]


def envelope(result: Any, message: str = "", status: int = 200, **extra: Any) -> Response:
    body = {"ok": status < 400, "message": message, "result": result, **extra}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def envelope_of_json(items: list[str], message: str, **extra: Any) -> Response:
    """An `ok` envelope whose result is a list of records that are already JSON text."""
    head = orjson.dumps({"ok": True, "message": message, **extra})[:-1]
    body = b"".join((head, b',"result":[', ",".join(items).encode(), b"]}"))
    return Response(body, media_type="application/json")


def _parse_range(name: str, value: str) -> str:
    try:
        return model.format_time(model.parse_time(value))
    except (ValueError, OverflowError):
        raise UsageError(
            f"{name} filter: {value!r} is not an ISO-8601 date-time within years 1-9999"
        ) from None


def _action_message(action: dict) -> str:
    what = f"{action['type']} {action['_id']}"
    error = action.get("error") or {}
    if action["status"] == "requested":
        return f"{what} requested; follow it at /v1.1/actions/{action['_id']}"
    if action["status"] == "completed":
        if action["outcome"] == "pending":
            return f"{what} accepted; stage {action['stage']}, outcome pending"
        if action["outcome"] == "failed":
            return f"{what} accepted, but failed: {error.get('description', '')}"
        return f"{what} {action['outcome']}"
    return f"{what} failed: {error.get('description') or error.get('code') or 'refused'}"


def _batch_message(record: dict) -> str:
    c = record["counts"]
    if record["dryRun"]:
        return f"dry run: {c['requested']} of {record['matched']} chargestation(s) would be sent {record['type']}"
    return (
        f"batch {record['_id']} {record['status']}: {c['requested']} requested, "
        f"{c['completed']} completed, {c['failed']} failed, {c['skipped']} skipped"
    )


def _error(status: int, message: str) -> Response:
    return envelope(None, message, status)


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def create_app(
    fleet: Fleet,
    token: str,
    client_certs: bool = False,
    files: Files | None = None,
    webhooks: Webhooks | None = None,
) -> EnvelopeTooLarge:
    """`client_certs`: the wss:// listener asks stations for certificates (--tls-client-ca),
    so profile 3 stations can connect; whether there is a wss:// listener at all is
    `fleet.ocpp_tls_url`. `files`: the files listener (None: `serve --no-files`).
    `webhooks`: the server's (None: records only, nothing delivered)."""
    from edrvctl.server import api_metrics

    app = FastAPI(
        title="edrvctl admin API",
        version=__version__,
        description="eDRV-style chargestation API served by `edrvctl serve`. Every response is "
        "`{ok, message, result}`; send `Authorization: Bearer <token>`.",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # a bare 307 would be the one answer without an envelope
        max_body_size=MAX_BODY,
    )
    expected = f"Bearer {token}".encode()

    async def authorized(request: Request) -> None:
        values = request.headers.getlist("authorization")
        if len(values) > 1:  # which one counts would depend on who reads them: neither
            raise UsageError("more than one Authorization header; send one")
        given = values[0].encode() if values else b""
        if not hmac.compare_digest(given, expected):
            raise AuthError(
                "missing or invalid bearer token"
                if given
                else "missing bearer token: send 'Authorization: Bearer <token>'"
            )

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
        return _error(
            status, ("invalid JSON body: " if bad_json else "invalid request: ") + _describe(errors)
        )

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    auth = [Depends(authorized)]
    streams = Streams()
    api_events.add_routes(app, fleet, auth, streams)
    api_tokens.add_routes(app, fleet, auth)

    def reachable(security: model.Security | None) -> None:
        """A station must be able to connect with the security it is given: refuse a TLS
        profile on a server that has no wss:// listener (or, for profile 3, no client CA)."""
        if security is None or not model.needs_tls({"type": security.type}):
            return
        if fleet.ocpp_tls_url is None:
            raise Conflict(
                f"security {security.type!r} needs wss://, and this server has no "
                "TLS listener, so the station could never connect",
                hint="restart `edrvctl serve` with --tls-cert and --tls-key"
                + (" and --tls-client-ca" if security.type == "tls_client_cert" else ""),
            )
        if security.type == "tls_client_cert" and not client_certs:
            raise Conflict(
                "security 'tls_client_cert' needs station certificates, and this "
                "server asks for none, so the station could never connect",
                hint="restart `edrvctl serve` with --tls-client-ca (the CA that "
                "signs the stations' certificates)",
            )

    def admin(request: Request) -> str:
        """Who made a change, for the log line every change leaves (never with a secret)."""
        return request.client.host if request.client else "unknown"

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
            raise UsageError(
                f"unknown query parameter(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(LIST_PARAMS))}"
            )
        if status is not None and status not in model.STATUSES:
            raise UsageError(f"status must be one of {', '.join(model.STATUSES)}")
        if sort_by not in SORT_FIELDS:
            raise UsageError(f"sort_by must be one of {', '.join(SORT_FIELDS)}")
        equals = {
            k: v
            for k, v in (
                ("online", online),
                ("active", active),
                ("location", location),
                ("organization", organization),
                ("protocol", protocol),
                ("status", status),
                ("endpoint", endpoint),
            )
            if v is not None
        }
        ranges = []
        for name, op, value in (
            ("createdAt", ">=", created_gte),
            ("createdAt", "<=", created_lte),
            ("updatedAt", ">=", updated_gte),
            ("updatedAt", "<=", updated_lte),
        ):
            if value is not None:
                try:
                    ranges.append((name, op, model.format_time(model.parse_time(value))))
                except (ValueError, OverflowError):
                    raise UsageError(
                        f"{name} filter: {value!r} is not an ISO-8601 date-time within years 1-9999"
                    ) from None
        limit = paginate_limit if paginate_enabled else None
        offset = (paginate_page - 1) * paginate_limit if paginate_enabled else 0
        docs, total = await fleet.list_json(
            StationQuery(equals, ranges, sort_by, sort_order == "desc", limit, offset)
        )
        if not paginate_enabled:
            return envelope_of_json(docs, f"{total} chargestation(s)")
        return envelope_of_json(
            docs,
            f"{total} chargestation(s)",
            hasNext=offset + len(docs) < total,
            hasPrevious=paginate_page > 1,
            total=total,
        )

    @app.post(
        "/v1.1/chargestations", dependencies=auth, status_code=201, summary="Create a chargestation"
    )
    async def create_station(request: Request, body: model.StationCreate) -> Response:
        reachable(body.security)
        doc, password = await fleet.create(body)
        log.info(
            "admin %s: chargestation %s created (%s, %s, security %s)",
            admin(request),
            doc["endpoint"],
            doc["_id"],
            doc["protocol"],
            doc["security"]["type"],
        )
        result = fleet.present(doc)
        if password is not None:  # shown this once; only a hash is kept
            result["password"] = password
        return envelope(result, f"chargestation {doc['endpoint']} created", 201)

    @app.get("/v1.1/chargestations/{id}", dependencies=auth, summary="One chargestation")
    async def get_station(id: Id) -> Response:
        return envelope(fleet.present(await fleet.get(id)))

    @app.patch("/v1.1/chargestations/{id}", dependencies=auth, summary="Update a chargestation")
    async def update_station(request: Request, id: Id, body: model.StationUpdate) -> Response:
        reachable(getattr(body, "security", None))
        doc = await fleet.update(id, body)
        fields = sorted(body.model_fields_set)
        log.info(
            "admin %s: chargestation %s updated (%s)",
            admin(request),
            doc["endpoint"],
            ", ".join(fields) or "nothing",
        )
        if "active" in fields:
            log.info(
                "admin %s: chargestation %s %s",
                admin(request),
                doc["endpoint"],
                "activated" if doc["active"] else "deactivated",
            )
        return envelope(fleet.present(doc), f"chargestation {doc['endpoint']} updated")

    @app.delete("/v1.1/chargestations/{id}", dependencies=auth, summary="Delete a chargestation")
    async def delete_station(request: Request, id: Id) -> Response:
        doc = await fleet.delete(id)
        log.info(
            "admin %s: chargestation %s deleted (%s)", admin(request), doc["endpoint"], doc["_id"]
        )
        return envelope(fleet.present(doc), f"chargestation {doc['endpoint']} deleted")

    @app.patch(
        "/v1.1/chargestations/{id}/reset_password",
        dependencies=auth,
        summary="Issue a new station password and retire the old one",
    )
    async def reset_password(request: Request, id: Id) -> Response:
        doc, password = await fleet.rotate_password(id)
        log.info(
            "admin %s: chargestation %s has a new password; the old one is retired",
            admin(request),
            doc["endpoint"],
        )
        return envelope(
            {**fleet.present(doc), "password": password},
            f"new password for chargestation {doc['endpoint']}; the old one no longer works",
        )

    @app.get(
        "/v1.1/chargestations/{id}/connectors",
        dependencies=auth,
        summary="A chargestation's connectors",
    )
    async def get_connectors(id: Id) -> Response:
        return envelope((await fleet.get(id))["connectors"])

    @app.post(
        "/v1.1/chargestations/{id}/get_variables",
        dependencies=auth,
        status_code=201,
        summary="Fetch the live station's configuration and store it as csconfig",
    )
    async def get_variables(
        id: Id, body: Annotated[model.GetVariablesRequest | None, Body()] = None
    ) -> Response:
        body = body or model.GetVariablesRequest()
        result = await fleet.fetch_config(id, body.keys, body.timeout)
        return envelope(result, f"{len(result['csconfig'])} configuration entries fetched", 201)

    # --- commands to live stations: each one an Action (fleet/actions.py) ----------------------

    async def run(request: Request, key: str, command: commands.Command, wait: float) -> Response:
        """Send `command` as an Action, answered with the status `actions.http_status` gives:
        201 accepted, 502 refused or CALLERROR, 504 no answer in time, 202 with wait=0.
        Errors before sending (404, 406, 400, 429) are raised as usual."""
        if wait == 0:
            action = await fleet.command(key, command, DEFAULT_WAIT, wait=False)
        else:
            action = await fleet.command(key, command, wait)
        log.info(
            "admin %s: %s %s on chargestation %s: %s/%s",
            admin(request),
            action["type"],
            action["_id"],
            key,
            action["status"],
            action["outcome"],
        )
        return envelope(action, _action_message(action), actions.http_status(action))

    async def protocol_of(key: str) -> str:
        return str((await fleet.get(key))["protocol"])

    @app.post(
        "/v1.1/chargestations/{id}/reset",
        dependencies=auth,
        status_code=201,
        summary="Reset (reboot) a chargestation: 1.6 Soft|Hard, 2.0.1 OnIdle|Immediate",
    )
    async def reset(
        request: Request,
        id: Id,
        body: Annotated[model.ResetRequest | None, Body()] = None,
        wait: Wait = DEFAULT_WAIT,
    ) -> Response:
        body = body or model.ResetRequest()
        command = batch.reset_command(body, await protocol_of(id) if body.type else "ocpp1.6")
        return await run(request, id, command, wait)

    @app.post(
        "/v1.1/chargestations/{id}/unlock_connector",
        dependencies=auth,
        status_code=201,
        summary="Unlock a connector (1.6: connectorId; 2.0.1: evseId, and connectorId or 1)",
    )
    async def unlock_connector(
        request: Request, id: Id, body: model.UnlockConnectorRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        return await run(request, id, batch.command_of(body), wait)

    @app.post(
        "/v1.1/chargestations/{id}/change_availability",
        dependencies=auth,
        status_code=201,
        summary="Operative or Inoperative: the whole station, one EVSE or one connector",
    )
    async def change_availability(
        request: Request, id: Id, body: model.ChangeAvailabilityRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        return await run(request, id, batch.command_of(body), wait)

    @app.post(
        "/v1.1/chargestations/{id}/trigger_message",
        dependencies=auth,
        status_code=201,
        summary="Ask the station to send a message now (its version's requestedMessage)",
    )
    async def trigger_message(
        request: Request, id: Id, body: model.TriggerMessageRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        return await run(request, id, batch.command_of(body), wait)

    @app.patch(
        "/v1.1/chargestations/{id}/configurations",
        dependencies=auth,
        status_code=201,
        summary="Change configuration keys: one Configure Action per key, each read back",
    )
    async def configure(
        request: Request,
        id: Id,
        body: Annotated[dict[model.ConfigKey, model.ConfigValue], Body()],
        wait: Wait = DEFAULT_WAIT,
    ) -> Response:
        if not body:
            raise UsageError('give at least one key: {"Key": "value", ...}')
        if len(body) > 100:
            raise UsageError(f"{len(body)} keys in one request; at most 100")
        items = [
            commands.Configure(k, str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in body.items()
        ]
        doc = await fleet.get(id)
        check = getattr(fleet.live, "check", None)
        if check is not None and fleet.live.is_online(doc["endpoint"]):
            for c in items:  # every key is checked before the first is sent
                check(doc["endpoint"], c)
        done = []
        for c in items:
            if wait == 0:
                done.append(await fleet.command(id, c, DEFAULT_WAIT, wait=False))
            else:
                done.append(await fleet.command(id, c, wait))
        statuses = [actions.http_status(a) for a in done]
        status = next((s for s in statuses if s >= 300), statuses[0])
        log.info(
            "admin %s: configure %s on chargestation %s: %s",
            admin(request),
            ", ".join(c.key for c in items),
            id,
            ", ".join(f"{a['status']}/{a['outcome']}" for a in done),
        )
        ok = sum(s == 201 for s in statuses)
        return envelope(done, f"{ok} of {len(done)} key(s) accepted", status)

    @app.post(
        "/v1.1/chargestations/{id}/clear_cache",
        dependencies=auth,
        status_code=201,
        summary="Clear the station's authorization cache",
    )
    async def clear_cache(request: Request, id: Id, wait: Wait = DEFAULT_WAIT) -> Response:
        return await run(request, id, commands.ClearCache(), wait)

    @app.post(
        "/v1.1/chargestations/{id}/data_transfer",
        dependencies=auth,
        status_code=201,
        summary="A vendor-specific DataTransfer",
    )
    async def data_transfer(
        request: Request, id: Id, body: model.DataTransferRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        return await run(request, id, batch.command_of(body), wait)

    @app.post(
        "/v1.1/chargestations/{id}/call",
        dependencies=auth,
        status_code=201,
        summary="Any CSMS-to-station OCPP action, its payload validated against the schema",
    )
    async def call(
        request: Request, id: Id, body: model.CallRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        return await run(request, id, batch.command_of(body), wait)

    @app.post(
        "/v1.1/chargestations/{id}/update_firmware",
        dependencies=auth,
        status_code=201,
        summary="Update the firmware from a URL; followed until the new version boots",
    )
    async def update_firmware(
        request: Request, id: Id, body: model.UpdateFirmwareRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        location = body.location
        if body.file is not None:
            location = hosting().firmware(body.file)["url"]
        if location is None:  # (the body model requires one of the two)
            raise UsageError("give either location (a URL) or file (an uploaded file's _id)")
        command = commands.UpdateFirmware(location, body.retrieveDate)
        return await run(request, id, command, wait)

    @app.post(
        "/v1.1/chargestations/{id}/get_diagnostics",
        dependencies=auth,
        status_code=201,
        summary="Have the station upload its diagnostics (or security log) to a URL",
    )
    async def get_diagnostics(
        request: Request, id: Id, body: model.GetDiagnosticsRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        location, token = body.location, None
        if location is None:
            token = secrets.token_urlsafe(24)
            location = f"{hosting().public_url}/uploads/{token}/"
        command = commands.GetDiagnostics(
            location, body.since, body.until, body.security, upload_token=token
        )
        return await run(request, id, command, wait)

    def hosting() -> Files:
        if files is None:
            raise Conflict(
                "this server hosts no files (serve --no-files)",
                hint="give a URL the station can reach (location), or restart `edrvctl "
                "serve` without --no-files",
            )
        return files

    @app.get("/v1.1/files", dependencies=auth, summary="The firmware files stations can fetch")
    async def list_files() -> Response:
        found = hosting().list_firmware()
        return envelope(found, f"{len(found)} file(s)")

    @app.post(
        "/v1.1/files",
        dependencies=auth,
        status_code=201,
        summary="Upload a firmware file (the raw body, ?name=); its _id is its sha256",
        openapi_extra={
            "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}
        },
    )
    async def add_file(name: Annotated[str, Query(max_length=128)]) -> Response:
        # Reached only when the body limit below let it through: POST /v1.1/files is served
        # by EnvelopeTooLarge (Files.add_firmware), with the files listener's size cap.
        raise AssertionError("POST /v1.1/files is served outside FastAPI")

    @app.get(
        "/v1.1/actions/{id}/file",
        dependencies=auth,
        summary="The file a station uploaded for a get_diagnostics Action",
    )
    async def action_file(id: Annotated[str, Path(max_length=64)]) -> Response:
        from starlette.responses import FileResponse

        action = await fleet.get_action(id)
        path = hosting().uploaded_path(action)
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.post(
        "/v1.1/sessions",
        dependencies=auth,
        status_code=201,
        summary="Remote start: a session on a station (1.6 connectorId; 2.0.1 evseId)",
    )
    async def start_session(
        request: Request, body: model.SessionStartRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        command = commands.RemoteStart(body.idTag, evse=body.evseId, connector=body.connectorId)
        return await run(request, body.chargestation, command, wait)

    async def stop(request: Request, transaction: str, station: str | None, wait: float):
        if not station:  # a session's _id names its station and transaction
            session = await sessions.find(fleet, transaction)
            if session is None:
                raise UsageError(
                    "say which chargestation runs the session (chargestation=<id>), "
                    "or give the session's _id"
                )
            station, transaction = session["chargestation"], session["transactionId"]
        return await run(request, station, commands.RemoteStop(transaction), wait)

    @app.post(
        "/v1.1/sessions/{id}/stop",
        dependencies=auth,
        status_code=201,
        summary="Remote stop: end a session (its transaction id and station, or its _id)",
    )
    async def stop_session(
        request: Request,
        id: Annotated[
            str, Path(description="the transaction id, or the session's _id", max_length=64)
        ],
        body: Annotated[model.SessionStopRequest | None, Body()] = None,
        chargestation: Annotated[str | None, Query(max_length=255)] = None,
        wait: Wait = DEFAULT_WAIT,
    ) -> Response:
        station = body.chargestation if body is not None else chargestation
        return await stop(request, id, station, wait)

    @app.get(
        "/v1.1/sessions/{id}/stop",
        dependencies=auth,
        status_code=201,
        summary="Remote stop, as eDRV documents it (GET, ?chargestation=)",
    )
    async def stop_session_get(
        request: Request,
        id: Annotated[
            str, Path(description="the transaction id, or the session's _id", max_length=64)
        ],
        chargestation: Annotated[str | None, Query(max_length=255)] = None,
        wait: Wait = DEFAULT_WAIT,
    ) -> Response:
        return await stop(request, id, chargestation, wait)

    @app.get("/v1.1/actions", dependencies=auth, summary="List Actions, newest first")
    async def list_actions(
        request: Request,
        chargestation: str | None = None,
        type: Annotated[str | None, Query(description="|".join(actions.TYPES.values()))] = None,
        status: Annotated[str | None, Query(description="|".join(ACTION_STATUSES))] = None,
        outcome: Annotated[str | None, Query(description="|".join(OUTCOMES))] = None,
        batch: Annotated[
            str | None, Query(max_length=64, description="the batch it was part of")
        ] = None,
        paginate_enabled: bool = True,
        paginate_limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        paginate_page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
        created_gte: Annotated[str | None, Query(alias="createdAt[$gte]")] = None,
        created_lte: Annotated[str | None, Query(alias="createdAt[$lte]")] = None,
    ) -> Response:
        unknown = sorted(set(request.query_params) - ACTION_LIST_PARAMS)
        if unknown:
            raise UsageError(
                f"unknown query parameter(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(ACTION_LIST_PARAMS))}"
            )
        for name, value, known in (
            ("type", type, tuple(actions.TYPES.values())),
            ("status", status, ACTION_STATUSES),
            ("outcome", outcome, OUTCOMES),
        ):
            if value is not None and value not in known:
                raise UsageError(f"{name} must be one of {', '.join(known)}")
        equals = {
            k: v
            for k, v in (
                ("chargestation", chargestation),
                ("type", type),
                ("status", status),
                ("outcome", outcome),
                ("batch", batch),
            )
            if v is not None
        }
        limit = paginate_limit if paginate_enabled else None
        offset = (paginate_page - 1) * paginate_limit if paginate_enabled else 0
        found, total = await fleet.list_actions(
            ActionQuery(
                equals,
                None if created_gte is None else _parse_range("createdAt", created_gte),
                None if created_lte is None else _parse_range("createdAt", created_lte),
                limit,
                offset,
            )
        )
        if not paginate_enabled:
            return envelope(found, f"{total} action(s)")
        return envelope(
            found,
            f"{total} action(s)",
            hasNext=offset + len(found) < total,
            hasPrevious=paginate_page > 1,
            total=total,
        )

    @app.post(
        "/v1.1/actions/batch",
        dependencies=auth,
        status_code=201,
        summary="One command to many stations (a selector), paced, stopped after failures",
    )
    async def create_batch(
        request: Request, body: model.BatchRequest, wait: Wait = DEFAULT_WAIT
    ) -> Response:
        data = body.data
        if body.type == "update_firmware" and isinstance(data, dict) and data.get("file"):
            # an uploaded file: every station downloads it from the files listener
            data = {k: v for k, v in data.items() if k != "file"}
            data["location"] = hosting().firmware(str(body.data["file"]))["url"]
        if body.type == "get_diagnostics" and not (isinstance(data, dict) and data.get("location")):
            raise UsageError(
                "a batch of get_diagnostics needs a location: serve's own upload target is "
                "one station's (run `cs diagnostics` per station for it)"
            )
        record, plans = await batch.create(
            fleet,
            body.selector,
            body.type,
            data,
            body.max_in_flight,
            body.max_failures,
            body.dry_run,
            body.only_differences,
        )
        log.info(
            "admin %s: batch %s %s on %d chargestation(s)%s",
            admin(request),
            record["_id"],
            record["type"],
            record["counts"]["requested"],
            " (dry run)" if body.dry_run else "",
        )
        task = batch.start(fleet, record, plans, DEFAULT_WAIT if wait == 0 else wait, body.follow)
        if wait != 0 and not body.dry_run:
            await asyncio.shield(task)
        return envelope(record, _batch_message(record), 201 if record["finishedAt"] else 202)

    @app.get("/v1.1/actions/batch/{id}", dependencies=auth, summary="One batch, with counts")
    async def get_batch(id: Annotated[str, Path(max_length=64)]) -> Response:
        record = fleet.batches.get(id)
        return envelope(record, _batch_message(record))

    @app.get("/v1.1/actions/{id}", dependencies=auth, summary="One Action")
    async def get_action(id: Annotated[str, Path(max_length=64)]) -> Response:
        action = await fleet.get_action(id)
        return envelope(action, _action_message(action))

    from edrvctl.server import api_frames  # (it imports this module)

    api_frames.add_routes(app, fleet, auth, streams)
    from edrvctl.server import api_webhooks

    api_webhooks.add_routes(app, fleet, auth, webhooks or Webhooks(fleet.store, fleet.feed))
    from edrvctl.server import api_nodes, api_sessions

    api_sessions.add_routes(app, fleet, auth)
    api_nodes.add_routes(app, fleet, auth)
    api_metrics.add_routes(app, fleet)
    return EnvelopeTooLarge(app, files, expected)


class EnvelopeTooLarge:
    """Starlette's body limit answers 413 in plain text, outside FastAPI's exception handlers;
    this gives that answer the same envelope as every other. It also serves POST /v1.1/files
    itself: a firmware file is bigger than MAX_BODY, so it is streamed to disk under the
    files listener's cap instead (`Files.add_firmware`)."""

    def __init__(self, app: FastAPI, files: Files | None = None, expected: bytes = b""):
        self.app = app
        self.files = files
        self.expected = expected

    def __getattr__(self, name: str):  # the wrapped app's routes, openapi(), ...
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1.1/files"
            and scope["method"] == "POST"
            and self.files is not None
        ):
            await self._add_file(self.files, scope, receive, send)
            return
        replaced = False

        async def send_enveloped(message) -> None:
            nonlocal replaced
            if (
                message["type"] == "http.response.start"
                and message["status"] == 413
                and (b"content-type", b"application/json") not in message.get("headers", ())
            ):  # (an envelope already, e.g. a token import over its own limit, goes as it is)
                replaced = True
                body = orjson.dumps(
                    {"ok": False, "result": None, "message": f"request body over {MAX_BODY} bytes"}
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            elif not replaced:
                await send(message)

        await self.app(scope, receive, send_enveloped)

    async def _add_file(self, files: Files, scope, receive, send) -> None:
        from urllib.parse import parse_qs

        from edrvctl.server.files import Refused, _json

        auth = [v for k, v in scope.get("headers") or [] if k == b"authorization"]
        if len(auth) != 1 or not hmac.compare_digest(auth[0], self.expected):
            await _json(
                send,
                401,
                {"ok": False, "message": "missing or invalid bearer token", "result": None},
            )
            return
        names = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("name") or []
        try:
            if len(names) != 1:
                raise Refused(400, "say the file's name: POST /v1.1/files?name=fw-2.1.bin")
            headers = dict(scope.get("headers") or [])
            info = await files.add_firmware(names[0], headers, receive)
        except Refused as e:
            await _json(send, e.status, {"ok": False, "message": e.message, "result": None})
            return
        await _json(
            send, 201, {"ok": True, "message": f"file {info['name']} stored", "result": info}
        )


# --- the HTTP connection: bounded in time ---------------------------------------------------

API_KEEP_ALIVE = 5  # s an idle kept-alive connection stays open after its last response
API_READ_TIMEOUT = 10.0  # s to send a whole request (headers and body), from connection or idle
API_MAX_CONNECTIONS = 512  # open at once; beyond it, a 503 envelope and the connection closed


def protocol_class(
    read_timeout: float = API_READ_TIMEOUT, max_connections: int = API_MAX_CONNECTIONS
) -> type:
    """uvicorn's h11 protocol with a deadline for reading each request: uvicorn closes a
    kept-alive connection that stays idle after a response, but not one that never sends a
    request, nor one that trickles its headers or body a byte at a time. Past
    API_MAX_CONNECTIONS open at once, a new one is answered 503 (an envelope, like every other
    answer) and closed. Upgrade requests are plain HTTP requests here (the admin API has no
    websockets), answered 404 without a log line."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ApiProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _generation = 0

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._generation += 1
            self._deadline = self.loop.call_later(read_timeout, self._expire, self._generation)

        def _expire(self, generation: int) -> None:
            self._deadline = None
            if generation != self._generation or self.transport.is_closing():
                return
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # request not all read
                self.transport.close()  # a request still running sees http.disconnect

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                body = orjson.dumps(
                    {"ok": False, "message": "too many connections; retry later", "result": None}
                )
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                )
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _unsupported_upgrade_warning(self) -> None:
            pass

    return ApiProtocol
