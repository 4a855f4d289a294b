"""The frame log: every OCPP frame in and out of each station, kept for a while, and pushed live.

Each station's connection gets a `StationLog`, the observer its `ocppj.Rpc` calls with every
frame (an `ocppj.Trace`'s fields): it only appends the frame, encoded as it will be kept, to the
station's buffer. Every FLUSH_EVERY seconds `FrameLog` writes, in one store unit, the buffers
that are due (CHUNK_FRAMES frames, or MAX_WAIT seconds old, or followed live; all of them once
FLUSH_AT bytes wait), off the stations' path: no station message waits for the frame log, and
the log never holds more than `max_buffered` bytes in memory (past it, frames are dropped and
counted, never waited for). What was committed is published to the feeds of the stations
someone follows.

What is kept: with mode "all" every frame; with "errors" the CALLERRORs and invalid frames, each
with the CALL it answers. A frame's text is kept up to MAX_TEXT bytes (`truncated` says it was
cut). Retention: a station's newest `keep` frames and at most `days` of them, pruned a little at
a time by `prune()` (the server calls it every second): a station is pruned back to `keep` once
it holds a tenth more, and old frames go a few hundred batches at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from edrvctl import model
from edrvctl.fleet.events import Feed, Subscription, follow
from edrvctl.ocppj.rpc import CALL, CALLERROR, INVALID, KINDS
from edrvctl.store import FrameChunk, FrameQuery, Store, chunk_data, chunk_frames, frame_json

log = logging.getLogger("edrvctl.frames")

MODES = ("all", "errors", "off")
MAX_TEXT = 8 * 1024  # bytes of a frame's text kept
FLUSH_EVERY = 0.1  # s between two looks at the buffered frames
CHUNK_FRAMES = 64  # a station's frames written as soon as this many wait,
MAX_WAIT = 1.0  # or once the first of them has waited this long (s), or at once if followed
FLUSH_AT = 4 << 20  # bytes of buffered frames that are all written at once
MAX_BUFFERED = 32 << 20  # bytes of frames waiting to be written; past it, frames are dropped
SLACK = 0.1  # a station is pruned back to `keep` once it holds this share more
PRUNE_STATIONS = 100  # stations pruned per prune() (a unit each)
EXPIRE_BATCH = 500  # groups of frames expired per unit
EXPIRE_UNITS = 20  # units of expiry per prune()
FOLLOW_PAGE = 500  # stored frames a live reader reads at a time
MAX_FEED_QUEUE = 1000  # frames a live reader may be behind before it reads on from the store
WARN_EVERY = 60.0  # s between two log lines about dropped frames


class StationLog:
    """The observer of one station's connection (`Rpc(trace=...)`): each frame is encoded as
    it will be kept (store.frame_json) and appended to the station's buffer, nothing more.
    (Only bytes wait to be written: holding each frame's objects for a while cost more.)"""

    __slots__ = ("buf", "errors", "first", "last", "log", "n", "station_id")

    def __init__(self, frame_log: FrameLog, station_id: str) -> None:
        self.log = frame_log
        self.station_id = station_id
        self.buf = bytearray()  # frame_json(...) + b"," each
        self.n = self.errors = 0
        self.first = self.last = 0.0  # when the first and the last frame waiting came

    def __call__(self, *t: Any) -> None:
        """`t`: a frame's fields, an ocppj.Trace's (at, direction, kind, id, action, size,
        latency, error, text)."""
        if type(t[8]) is str and t[5] <= MAX_TEXT:
            row = orjson.dumps(t)  # what frame_json(*t) gives for a text as str, sooner
        else:
            if t[5] > MAX_TEXT:  # rare: only its first MAX_TEXT bytes are kept
                t = (*t[:8], cut(t[8]))
            row = frame_json(*t)
        fl = self.log
        buffered = fl.buffered + len(row) + 1
        if buffered > fl.max_buffered:
            fl.dropped_frame()
            return
        fl.buffered = buffered
        buf = self.buf
        if not buf:
            self.first = t[0]
            fl.dirty.append(self)
            if len(fl.dirty) == 1:
                fl.schedule()
        buf += row
        buf += b","
        self.n += 1
        if t[7] is not None:
            self.errors += 1
        self.last = t[0]
        if buffered >= FLUSH_AT:
            fl.schedule()

    def take(self) -> FrameChunk | None:
        """What waits to be written, as one chunk (None: nothing); the buffer starts anew."""
        if not self.buf:
            return None
        chunk = FrameChunk(
            self.station_id,
            int(self.first * 1000),
            int(self.last * 1000),
            self.n,
            self.errors,
            bytes(self.buf),  # (chunk_data() in _write, off the event loop)
        )
        self.buf = bytearray()
        self.n = self.errors = 0
        return chunk

    def drop(self) -> int:
        """Forget what waits; how many frames that was."""
        n, self.buf, self.n, self.errors = self.n, bytearray(), 0, 0
        return n


class ErrorsLog(StationLog):
    """--frame-log errors: only CALLERRORs and invalid frames, each with the CALL it answers."""

    __slots__ = ("calls",)

    def __init__(self, frame_log: FrameLog, station_id: str) -> None:
        super().__init__(frame_log, station_id)
        self.calls: dict[str, tuple] = {}  # the last CALL each way, by direction

    def __call__(self, *t: Any) -> None:
        kind, error = t[2], t[7]
        if kind == CALL:
            if t[5] > MAX_TEXT:
                t = (*t[:8], cut(t[8]))
            self.calls[t[1]] = t  # kept if its answer is an error
            return
        if error is None:
            return
        call = self.calls.pop("out" if t[1] == "in" else "in", None)
        if call is not None and call[3] == t[3]:
            super().__call__(*call)
        super().__call__(*t)


def cut(text: str | bytes) -> bytes:
    """The first MAX_TEXT bytes of a frame's text."""
    return (text if isinstance(text, bytes) else text.encode("utf-8", "replace"))[:MAX_TEXT]


class FrameFeed(Feed):
    """A station's committed frames; a reader holds at most MAX_FEED_QUEUE of them."""

    def subscribe(self, max_queued: int = MAX_FEED_QUEUE) -> Subscription:
        return super().subscribe(max_queued)


class FrameLog:
    def __init__(
        self,
        store: Store,
        mode: str = "all",
        keep: int = 10_000,
        days: float = 7.0,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.store = store
        self.max_buffered = max_buffered
        self.configure(mode, keep, days)
        self.dirty: list[StationLog] = []  # logs with frames to write, in the order they came
        self.buffered = 0  # bytes of frames waiting to be written
        self.dropped = 0  # frames dropped: over the buffer budget, or their write failed
        self.written = 0  # frames written
        self._scheduled: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False  # what is scheduled runs in this loop turn
        self._writing: asyncio.Task | None = None
        self._warned = -WARN_EVERY
        self._dropped_since_warning = 0
        # station _id -> frames it holds, as far as this process knows (written since the last
        # prune); a station not seen yet starts at the threshold, so that it is looked at once
        self._held: dict[str, int] = {}
        self._feeds: dict[str, FrameFeed] = {}
        # several nodes: a station's frames may be written by another node, so live readers
        # also read the store again after this many quiet seconds
        self.reread: float | None = None
        self.ending = False  # the server stops: live readers end

    def end_streams(self) -> None:
        """End every live reader, and any that comes later (the server is stopping)."""
        self.ending = True
        for feed in self._feeds.values():
            feed.close()

    def configure(self, mode: str, keep: int, days: float) -> None:
        if mode not in MODES:
            raise ValueError(f"frame log mode must be one of {', '.join(MODES)}")
        self.mode, self.keep, self.days = mode, keep, days

    def tracer(self, station_id: str) -> StationLog | None:
        """The observer for a connection of this station (None: the log is off)."""
        if self.mode == "off":
            return None
        return (ErrorsLog if self.mode == "errors" else StationLog)(self, station_id)

    def forget(self, station_id: str) -> None:
        """A station was deleted: its frames not written yet are dropped with it."""
        self._held.pop(station_id, None)
        for station in self.dirty:
            if station.station_id == station_id:
                self.buffered -= len(station.buf)
                station.drop()

    # --- writing ------------------------------------------------------------------------------

    def dropped_frame(self, n: int = 1) -> None:
        self.dropped += n
        self._dropped_since_warning += n
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "frame log: %d frame(s) dropped (over %d bytes waiting to be written, or the "
                "store refused them); %d in all",
                self._dropped_since_warning,
                self.max_buffered,
                self.dropped,
            )
            self._dropped_since_warning = 0

    def schedule(self) -> None:
        """Write soon: at once when FLUSH_AT bytes wait, else after FLUSH_EVERY."""
        if self._writing is not None:
            return  # the running write looks again when it ends
        now = self.buffered >= FLUSH_AT
        if self._scheduled is not None:
            if self._soon or not now:
                return
            self._scheduled.cancel()
        loop = asyncio.get_running_loop()
        self._soon = now
        self._scheduled = (
            loop.call_soon(self._start) if now else loop.call_later(FLUSH_EVERY, self._start)
        )

    def _start(self) -> None:
        self._scheduled = None
        if self._writing is None and self.dirty:
            self._writing = asyncio.ensure_future(self._write(self._soon))
            self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            log.error("frame log: a write failed", exc_info=task.exception())
        if self.dirty:
            self.schedule()

    async def _write(self, everything: bool = False) -> None:
        """Write the stations whose frames are due (`everything`: all that wait): those with
        CHUNK_FRAMES frames or more, those waiting MAX_WAIT seconds, and the ones someone
        follows live. (A row per station and write costs as much as a dozen frames in it:
        with many stations each sending little, writing each every FLUSH_EVERY cost a fifth
        of the server's time.)"""
        now, feeds = time.time(), self._feeds
        followed = {sid for sid, feed in feeds.items() if feed.listeners} if feeds else ()
        due: list[StationLog] = []
        later: list[StationLog] = []
        for station in self.dirty:
            if (
                everything
                or station.n >= CHUNK_FRAMES
                or now - station.first >= MAX_WAIT
                or station.station_id in followed
            ):
                due.append(station)
            else:
                later.append(station)
        self.dirty = later
        self.buffered -= sum(len(station.buf) for station in due)
        chunks = [c for c in (station.take() for station in due) if c is not None]
        if not chunks:
            return
        # zlib lets go of the GIL: compressing in a thread keeps it off the stations' loop
        chunks = await asyncio.to_thread(_compressed, chunks)
        n = sum(c.n for c in chunks)
        try:
            async with self.store.unit() as tx:
                firsts = await tx.add_frames(chunks)
        except Exception as e:
            self.dropped_frame(n)
            log.error("frame log: %d frame(s) not written: %s", n, e)
            return
        self.written += n
        held = self._held
        threshold = self.keep + int(self.keep * SLACK)
        for chunk, first in zip(chunks, firsts, strict=True):
            sid = chunk.station_id
            held[sid] = held.get(sid, threshold) + chunk.n
            feed = self._feeds.get(sid)
            if feed is not None and feed.listeners:  # (built only for someone)
                feed.publish(chunk_frames(sid, first, chunk.data))

    async def close(self) -> None:
        """Write what is buffered (the server calls this when it stops)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._writing is not None:
            await asyncio.shield(self._writing)
        if self.dirty:
            await self._write(everything=True)

    # --- retention ----------------------------------------------------------------------------

    async def prune(self) -> None:
        """One round of retention, in small units: frames older than `days`, then the
        stations holding more than `keep` (and a tenth)."""
        before = int((time.time() - self.days * 86400) * 1000)
        for _ in range(EXPIRE_UNITS):
            async with self.store.unit() as tx:
                gone = await tx.expire_frames(before, EXPIRE_BATCH)
            if gone < EXPIRE_BATCH:
                break
            await asyncio.sleep(0)  # let the stations in between
        threshold = self.keep + int(self.keep * SLACK)
        over = [sid for sid, n in self._held.items() if n > threshold][:PRUNE_STATIONS]
        for sid in over:
            async with self.store.unit() as tx:
                self._held[sid] = await tx.prune_frames(sid, self.keep)
            await asyncio.sleep(0)
        if len(self._held) > 1_000_000:  # stations deleted meanwhile are never forgotten else
            self._held.clear()

    # --- reading ------------------------------------------------------------------------------

    async def read(self, query: FrameQuery) -> tuple[list[dict], bool]:
        async with self.store.unit() as tx:
            return await tx.list_frames(query)

    async def newest(self, station_id: str) -> int:
        """The id of the station's newest frame (0: none): a live reader's start from now."""
        found, _ = await self.read(FrameQuery(station_id, limit=1))
        return found[-1]["seq"] if found else 0

    def feed(self, station_id: str) -> FrameFeed:
        """The station's committed frames, for live readers (kept while the server runs: one
        per station followed)."""
        feed = self._feeds.get(station_id)
        if feed is None:
            feed = self._feeds[station_id] = FrameFeed()
            if self.ending:
                feed.close()
        return feed

    def reader(
        self, query: FrameQuery
    ) -> tuple[Callable[[int], Awaitable[list[dict]]], Callable[[dict], bool]]:
        """For events.follow: (read the stored frames that match `query` after an id, a
        published frame matches `query`)."""
        actions = set(query.actions)

        async def read_after(seq: int) -> list[dict]:
            page, _ = await self.read(dataclasses.replace(query, after=seq, limit=FOLLOW_PAGE))
            return page

        def keep(r: dict) -> bool:
            return (
                (not actions or r["action"] in actions)
                and (not query.errors or r["error"] is not None)
                and (query.since is None or r["at"] >= query.since)
            )

        return read_after, keep

    async def follow(
        self, query: FrameQuery, after: int | None, idle: float = 15.0
    ) -> AsyncGenerator[list[dict]]:
        """The station's frames that match `query` (its actions, errors, since), after the
        frame id `after` (None: from now on), stored first then live; [] every `idle` seconds
        without any; until the server stops."""
        if after is None:
            after = await self.newest(query.station_id)
        read_after, keep = self.reader(query)
        rows = follow(self.feed(query.station_id), read_after, after, keep, idle, self.reread)
        try:
            async for found in rows:
                yield found
        finally:
            await rows.aclose()  # type: ignore[attr-defined]  # (an async generator: ends now)


def _compressed(chunks: list[FrameChunk]) -> list[FrameChunk]:
    return [c._replace(data=chunk_data(c.data)) for c in chunks]


def shape(r: dict, endpoint: str | None = None) -> dict:
    """A frame's outside shape (the API, the stream, `edrvctl logs -o jsonl`)."""
    out = {
        "_id": str(r["seq"]),
        "chargestation": r["chargestation"],
        "createdAt": model.format_time(datetime.fromtimestamp(r["at"] / 1000, UTC)),
        "direction": r["direction"],
        "type": KINDS.get(r["kind"], str(r["kind"])),
        "messageId": r["messageId"],
        "action": r["action"],
        "size": r["size"],
        "latencyMs": None if r["latency"] is None else round(r["latency"] * 1000, 3),
        "error": r["error"],
        "text": r["text"],
        "truncated": r["truncated"],
    }
    if endpoint is not None:
        out["endpoint"] = endpoint
    return out


__all__ = ["CALLERROR", "INVALID", "MODES", "ErrorsLog", "FrameLog", "StationLog", "shape"]
