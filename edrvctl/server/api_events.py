"""The event routes: the event log (`GET /v1.1/events`), its live stream as server-sent events
(`GET /v1.1/events/stream`, resuming from `Last-Event-ID`) and the endpoints that tried to
connect but are no station (`GET /v1.1/unknown_chargestations`).

A stream writes `id: <seq>`, `event: <type>` and `data: <envelope JSON>` per event, and a
comment line every KEEP_ALIVE seconds so that proxies and clients see it is alive. At most
MAX_STREAMS are open at once (each holds a bounded queue, fleet/events.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Query
from fastapi.responses import Response, StreamingResponse

from edrvctl.errors import Busy, UsageError
from edrvctl.fleet import Fleet, events
from edrvctl.store import EventQuery

MAX_STREAMS = 64  # live streams open at once (events and frames together)
KEEP_ALIVE = 15.0  # s between two keep-alive comments of a quiet stream
PAGE = 500  # events read from the store at a time while a stream catches up
MAX_TYPES = 16  # type globs in one request
MAX_ID = (1 << 63) - 1  # an event _id is a SQLite integer

GLOB = r"[A-Za-z0-9_.*?\[\]!-]{1,128}"
Types = Annotated[
    str | None,
    Query(
        alias="type",
        pattern=f"^{GLOB}(,{GLOB}){{0,{MAX_TYPES - 1}}}$",
        description="event-type globs, comma-separated (`session.*,chargestation.*.failed`); "
        "any of them",
    ),
]
Station = Annotated[str | None, Query(max_length=255, description="a station's _id or endpoint")]


def _after(after: int | None, last_event_id: str | None) -> int | None:
    """Where a stream resumes: `?after=` or the Last-Event-ID header (a seq)."""
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return None
    try:
        return min(MAX_ID, max(0, int(last_event_id.strip())))
    except ValueError:
        raise UsageError(f"Last-Event-ID {last_event_id[:40]!r} is not an event id") from None


SEND_TIMEOUT = 30.0  # s a stream's reader has to take one write before it is let go


class _Bounded(StreamingResponse):
    """A stream whose every write must be taken within SEND_TIMEOUT: a reader that stops
    reading would hold its stream, and the server's shutdown, for ever."""

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
                    return  # left incomplete: the server closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()


class Streams:
    """Counts the open streams against MAX_STREAMS."""

    def __init__(self, limit: int | None = None) -> None:
        self.open = 0
        self.limit = MAX_STREAMS if limit is None else limit

    def response(self, frames: AsyncIterator[bytes]) -> StreamingResponse:
        if self.open >= self.limit:
            raise Busy(f"{self.limit} streams are open already; retry later")
        self.open += 1

        async def counted() -> AsyncIterator[bytes]:
            try:
                async for chunk in frames:
                    yield chunk
            finally:
                self.open -= 1

        return _Bounded(
            counted(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )


def sse(
    feed: events.Feed,
    read_after: Callable[[int], Awaitable[list[dict]]],
    after: int,
    keep: Callable[[dict], bool],
    render: Callable[[dict], tuple[str, Any]],
    idle: float = KEEP_ALIVE,
    reread: float | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events of the rows `events.follow` yields; render(row) -> (event, data)."""

    async def frames() -> AsyncIterator[bytes]:
        yield b": stream open\n\n"  # headers and a first byte at once: the client knows
        async for rows in events.follow(feed, read_after, after, keep, idle, reread):
            if not rows:
                yield b": keep-alive\n\n"
                continue
            chunk = []
            for row in rows:
                name, data = render(row)
                chunk.append(
                    b"id: %d\nevent: %s\ndata: %s\n\n"
                    % (row["seq"], name.encode(), orjson.dumps(data))
                )
            yield b"".join(chunk)

    return frames()


def add_routes(app: FastAPI, fleet: Fleet, auth: list, streams: Streams) -> None:
    from edrvctl.server.api import _parse_range, envelope

    async def query_of(
        types: str | None, station: str | None, since: str | None, until: str | None
    ) -> EventQuery:
        query = EventQuery(
            types=tuple(types.split(",")) if types else (),
            since=None if since is None else _parse_range("since", since),
            until=None if until is None else _parse_range("until", until),
        )
        if station is not None:
            query.station_id = (await fleet.get(station))["_id"]
        return query

    @app.get("/v1.1/events", dependencies=auth, summary="Stored events (the latest, or after one)")
    async def list_events(
        type: Types = None,
        chargestation: Station = None,
        since: str | None = None,
        until: str | None = None,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_ID, description="events after this _id")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        query = await query_of(type, chargestation, since, until)
        query.limit = limit
        if after is None:
            query.newest = True  # the latest `limit`, oldest first
        else:
            query.after = after
        rows = await fleet.list_events(query)
        return envelope(
            [events.envelope(r) for r in rows],
            f"{len(rows)} event(s)",
            last=rows[-1]["seq"] if rows else after,
        )

    @app.get(
        "/v1.1/events/stream",
        dependencies=auth,
        summary="Events as they are committed (server-sent events; resumes from Last-Event-ID)",
    )
    async def stream_events(
        type: Types = None,
        chargestation: Station = None,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_ID, description="replay events after this _id")
        ] = None,
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> StreamingResponse:
        query = await query_of(type, chargestation, None, None)
        start = _after(after, last_event_id)
        if start is None:  # from now on
            latest = await fleet.list_events(EventQuery(limit=1, newest=True))
            start = latest[-1]["seq"] if latest else 0

        async def read_after(seq: int) -> list[dict]:
            return await fleet.list_events(
                EventQuery(after=seq, station_id=query.station_id, types=query.types, limit=PAGE)
            )

        station, globs = query.station_id, query.types

        def keep(row: dict) -> bool:
            return (station is None or row["chargestation"] == station) and events.glob_matches(
                globs, row["type"]
            )

        return streams.response(
            sse(
                fleet.feed,
                read_after,
                start,
                keep,
                lambda row: (row["type"], events.envelope(row)),
            )
        )

    @app.get(
        "/v1.1/unknown_chargestations",
        dependencies=auth,
        summary="Endpoints that tried to connect but are no chargestation (last seen first)",
    )
    async def unknown_stations() -> Response:
        found = await fleet.unknown_endpoints()
        return envelope(found, f"{len(found)} unknown endpoint(s)")
