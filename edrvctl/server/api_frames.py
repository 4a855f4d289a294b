"""The frame log's routes (fleet/frames.py): a station's OCPP frames, stored and live.

- `GET /v1.1/chargestations/{id}/messages`: a page of frames, oldest first; by default the
  newest `limit`, `before=` an id the ones before it, `after=` the ones after it; filters
  `action` (comma-separated), `errors`, `since`, `until`.
- `GET /v1.1/chargestations/{id}/messages/stream`: server-sent events, `id: <frame id>`,
  `event: frame`, `data: <the frame as JSON>`, from `after=` or `Last-Event-ID` (else from now);
  a comment line every KEEPALIVE seconds without frames. At most MAX_STREAMS at once; a reader
  that takes more than SEND_TIMEOUT to take a write is let go; all end when the server stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from edrvctl import model
from edrvctl.errors import Busy, UsageError
from edrvctl.fleet import Fleet
from edrvctl.fleet.frames import shape
from edrvctl.server.api import Id, _parse_range, envelope
from edrvctl.store import FrameQuery

MAX_STREAMS = 16  # message streams open at once, all stations together
KEEPALIVE = 15.0  # s between two keep-alive comments of a stream without frames
SEND_TIMEOUT = 30.0  # s a stream's reader has to take one write before it is let go
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


class EventStream(StreamingResponse):
    """Server-sent events. Each write must be taken within SEND_TIMEOUT (a reader that stops
    reading would hold the stream, and the server's shutdown, for ever); `on_close` runs when
    the response ends, however it ends."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()

    async def stream_response(self, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = self.body_iterator
        try:
            async for chunk in body:
                try:
                    async with asyncio.timeout(SEND_TIMEOUT):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    return  # not completed: the server closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()


def add_routes(app: FastAPI, fleet: Fleet, auth: list) -> None:
    open_streams = 0

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
        response_class=EventStream,
        status_code=200,
        responses={200: {"content": {"text/event-stream": {}}, "description": "frames"}},
    )
    async def stream_messages(
        request: Request,
        id: Id,
        action: Actions = None,
        errors: Errors = False,
        since: Annotated[str | None, Query(description="ISO-8601: frames at or after")] = None,
        after: FrameId = None,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", max_length=20, include_in_schema=False)
        ] = None,
    ) -> Response:
        nonlocal open_streams
        _known(request, STREAM_PARAMS)
        if open_streams >= MAX_STREAMS:
            raise Busy(f"{open_streams} message streams are open, the most there may be: close one")
        doc = await fleet.get(id)
        start = after
        if start is None and last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise UsageError("Last-Event-ID must be a frame id (digits)")
            start = int(last_event_id)
        frames = fleet.frames.follow(
            FrameQuery(
                doc["_id"], actions=_actions(action), errors=errors, since=_ms("since", since)
            ),
            start,
            idle=KEEPALIVE,
        )
        endpoint = doc["endpoint"]

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            try:
                async for rows in frames:
                    if fleet.frames.ending:
                        return
                    if not rows:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"".join(
                        b"id: %d\nevent: frame\ndata: %s\n\n"
                        % (r["seq"], orjson.dumps(shape(r, endpoint)))
                        for r in rows
                    )
            finally:
                await frames.aclose()

        def closed() -> None:
            nonlocal open_streams
            open_streams -= 1

        open_streams += 1
        return EventStream(events(), closed)
