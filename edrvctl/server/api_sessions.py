"""The sessions read side of the admin API: list, one, its meter values, and an admin's close
(fleet/sessions.py). Remote start and stop (`POST /v1.1/sessions`, `/v1.1/sessions/{id}/stop`)
are commands, in server/api.py with the other Actions."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edrvctl.errors import UsageError
from edrvctl.fleet import Fleet, sessions
from edrvctl.store import SESSION_STATUSES, SessionQuery

LIST_PARAMS = {
    "chargestation",
    "status",
    "active",
    "since",
    "until",
    "createdAt[$gte]",
    "createdAt[$lte]",
    "paginate_enabled",
    "paginate_limit",
    "paginate_page",
}
SERIES_PARAMS = {"paginate_limit", "paginate_page"}

log = logging.getLogger("edrvctl.api")

SessionId = Annotated[str, Path(description="the session's _id", max_length=64)]


class CloseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="why it is closed (kept in the session and its session.ended event)"
    )
    force: bool = Field(
        False,
        description="close it even if its 2.0.1 station says it is still going on (or is "
        "not asked at all)",
    )
    timeout: Annotated[float, Field(gt=0, le=120)] = Field(
        30.0, description="seconds to wait for the station's answer to GetTransactionStatus"
    )


def _known(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise UsageError(
            f"unknown query parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _one_time(name: str, *values: str | None) -> str | None:
    """One bound of the start time, given by either of its two names (not both)."""
    from edrvctl.server.api import _parse_range

    given = [v for v in values if v is not None]
    if len(given) > 1:
        raise UsageError(f"{name}: give one of its two names, not both")
    return _parse_range(name, given[0]) if given else None


def add_routes(app: FastAPI, fleet: Fleet, auth: list[Any]) -> None:
    from edrvctl.server.api import envelope

    @app.get(
        "/v1.1/sessions",
        dependencies=auth,
        summary="List sessions (transactions), newest first by start time",
    )
    async def list_sessions(
        request: Request,
        chargestation: Annotated[
            str | None, Query(max_length=255, description="a station's _id or endpoint")
        ] = None,
        status: Annotated[str | None, Query(description="|".join(SESSION_STATUSES))] = None,
        active: Annotated[
            bool | None, Query(description="true: only running sessions (status Active)")
        ] = None,
        since: Annotated[
            str | None, Query(max_length=64, description="started at or after (ISO-8601)")
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="started at or before (ISO-8601)")
        ] = None,
        created_gte: Annotated[
            str | None, Query(alias="createdAt[$gte]", max_length=64, description="= since")
        ] = None,
        created_lte: Annotated[
            str | None, Query(alias="createdAt[$lte]", max_length=64, description="= until")
        ] = None,
        paginate_enabled: bool = True,
        paginate_limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        paginate_page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    ) -> Response:
        _known(request, LIST_PARAMS)
        if status is not None and status not in SESSION_STATUSES:
            raise UsageError(f"status must be one of {', '.join(SESSION_STATUSES)}")
        limit = paginate_limit if paginate_enabled else None
        offset = (paginate_page - 1) * paginate_limit if paginate_enabled else 0
        query = SessionQuery(
            status=status,
            active=active,
            since=_one_time("since", since, created_gte),
            until=_one_time("until", until, created_lte),
            limit=limit,
            offset=offset,
        )
        found, total = await sessions.list_(fleet, query, chargestation)
        if not paginate_enabled:
            return envelope(found, f"{total} session(s)")
        return envelope(
            found,
            f"{total} session(s)",
            hasNext=offset + len(found) < total,
            hasPrevious=paginate_page > 1,
            total=total,
        )

    @app.get("/v1.1/sessions/{id}", dependencies=auth, summary="One session")
    async def get_session(id: SessionId) -> Response:
        return envelope(await sessions.get(fleet, id))

    @app.get(
        "/v1.1/sessions/{id}/meter_values",
        dependencies=auth,
        summary="A session's meter values as a series: one row per sampled value, oldest first",
    )
    async def session_meter_values(
        request: Request,
        id: SessionId,
        paginate_limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        paginate_page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    ) -> Response:
        _known(request, SERIES_PARAMS)
        offset = (paginate_page - 1) * paginate_limit
        page, more = await sessions.meter_values(fleet, id, paginate_limit, offset)
        return envelope(
            page,
            f"{len(page)} meter value(s)",
            hasNext=more,
            hasPrevious=paginate_page > 1,
        )

    @app.post(
        "/v1.1/sessions/{id}/close",
        dependencies=auth,
        summary="Close a session its station will never end (2.0.1: the station is asked first)",
    )
    async def close_session(
        request: Request, id: SessionId, body: Annotated[CloseRequest, Body()]
    ) -> Response:
        session = await sessions.close(fleet, id, body.reason, body.force, body.timeout)
        log.info(
            "admin %s: session %s (transaction %s of chargestation %s) closed%s",
            request.client.host if request.client else "unknown",
            id,
            session["transactionId"],
            session["endpoint"],
            " (forced)" if body.force else "",
        )
        energy = session["energyKwh"]
        return envelope(
            session,
            f"session {id} closed" + (f" ({energy} kWh)" if energy is not None else ""),
        )
