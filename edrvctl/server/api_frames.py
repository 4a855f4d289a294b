"""The frame log's routes (fleet/frames.py): a station's OCPP frames, stored and live.

- `GET /v1.1/chargestations/{id}/messages`: a page of frames, oldest first; by default the
  newest `limit`, `before=` an id the ones before it, `after=` the ones after it; filters
  `action` (comma-separated), `errors`, `since`, `until`.
- `GET /v1.1/chargestations/{id}/messages/stream`: server-sent events, `id: <frame id>`,
  `event: frame`, `data: <the frame as JSON>`, from `after=` or `Last-Event-ID` (else from now);
  a comment line every KEEPALIVE seconds without frames; counted with the event streams
  (api_events.Streams); all end when the server stops (FrameLog.end_streams).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from edrvctl import model
from edrvctl.errors import UsageError
from edrvctl.fleet import Fleet
from edrvctl.fleet.frames import shape
from edrvctl.server.api import Id, _parse_range, envelope
from edrvctl.server.api_events import KEEP_ALIVE, Streams, _after, sse
from edrvctl.store import FrameQuery

KEEPALIVE = KEEP_ALIVE  # s between two keep-alive comments of a stream without frames
LIST_PARAMS = {"action", "errors", "since", "until", "after", "before", "limit"}
STREAM_PARAMS = {"action", "errors", "since", "after"}

Actions = Annotated[
    str | None,
    Query(
        max_length=1000,
        pattern=r"^[A-Za-z0-9]+(,[A-Za-z0-9]+)*$",
        description="only frames of these actions, comma-separated (an answer's action is its "
        "CALL's)",
    ),
]
Errors = Annotated[bool, Query(description="only CALLERRORs and invalid frames")]
FrameId = Annotated[int | None, Query(ge=0, lt=1 << 62)]


def _ms(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    return int(model.parse_time(_parse_range(name, value)).timestamp() * 1000)


def _actions(given: str | None) -> tuple[str, ...]:
    return tuple(given.split(",")) if given else ()


def _known(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise UsageError(
            f"unknown query parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def add_routes(app: FastAPI, fleet: Fleet, auth: list, streams: Streams) -> None:
    def off_note() -> str:
        mode = fleet.frames.mode
        if mode == "all":
            return ""
        return f"; the frame log keeps {'errors only' if mode == 'errors' else 'nothing'} now (serve --frame-log {mode})"

    @app.get(
        "/v1.1/chargestations/{id}/messages",
        dependencies=auth,
        summary="The station's frame log: OCPP frames in and out, oldest first",
    )
    async def list_messages(
        request: Request,
        id: Id,
        action: Actions = None,
        errors: Errors = False,
        since: Annotated[str | None, Query(description="ISO-8601: frames at or after")] = None,
        until: Annotated[str | None, Query(description="ISO-8601: frames at or before")] = None,
        after: FrameId = None,
        before: FrameId = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        _known(request, LIST_PARAMS)
        if after is not None and before is not None:
            raise UsageError("give after or before, not both")
        doc = await fleet.get(id)
        found, more = await fleet.frames.read(
            FrameQuery(
                doc["_id"],
                after=after,
                before=before,
                since=_ms("since", since),
                until=_ms("until", until),
                actions=_actions(action),
                errors=errors,
                limit=limit,
            )
        )
        return envelope(
            [shape(r, doc["endpoint"]) for r in found],
            f"{len(found)} frame(s) of chargestation {doc['endpoint']}{off_note()}",
            hasMore=more,
        )

    @app.get(
        "/v1.1/chargestations/{id}/messages/stream",
        dependencies=auth,
        summary="The station's frames as they happen (server-sent events; Last-Event-ID resumes)",
    )
    async def stream_messages(
        request: Request,
        id: Id,
        action: Actions = None,
        errors: Errors = False,
        since: Annotated[str | None, Query(description="ISO-8601: frames at or after")] = None,
        after: FrameId = None,
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> StreamingResponse:
        _known(request, STREAM_PARAMS)
        doc = await fleet.get(id)
        query = FrameQuery(
            doc["_id"], actions=_actions(action), errors=errors, since=_ms("since", since)
        )
        start = _after(after, last_event_id)
        if start is None:  # from now on
            start = await fleet.frames.newest(doc["_id"])
        read_after, keep = fleet.frames.reader(query)
        endpoint = doc["endpoint"]
        return streams.response(
            sse(
                fleet.frames.feed(doc["_id"]),
                read_after,
                start,
                keep,
                lambda row: ("frame", shape(row, endpoint)),
                KEEPALIVE,
                fleet.frames.reread,
            )
        )
