"""The frame log in process: the Rpc's observer hook (pairing, latency, errors) over a fake
websocket, and fleet/frames.py's FrameLog over a fresh in-memory store (batches, cutting,
filters, the errors mode, retention, the buffer's budget, the live feed). End to end (a real
server, `edrvctl logs`, the stream) in test_logs.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from edrvctl.errors import StoreUnavailable
from edrvctl.fleet import frames as frame_log
from edrvctl.fleet.frames import FrameLog
from edrvctl.ocppj import Rpc, RpcError, TokenBucket, Trace
from edrvctl.ocppj.rpc import CALL, CALLERROR, CALLRESULT, IN, INVALID, OUT
from edrvctl.store import FrameQuery, frame_json, open_store
from test_ocppj import HANDLERS, NOW, FakeSocket
from timing import scaled, until_async

P16, P201 = "1.6", "2.0.1"


def run(coro, timeout: float = 10):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


# --------------------------------------------------------------------------- the Rpc's hook


async def traced(version: str, frames: list, handlers: dict | None = None, **kw) -> list[Trace]:
    """Feed `frames` to an Rpc with an observer, then close; every Trace it saw."""
    seen: list[Trace] = []
    sock = FakeSocket()
    sock.feed(*frames, None)
    rpc = Rpc(
        sock,
        version,
        HANDLERS[version] if handlers is None else handlers,
        trace=lambda *fields: seen.append(Trace(*fields)),
        **kw,
    )
    await rpc.run()
    return seen


@pytest.mark.parametrize("version", [P16, P201])
def test_each_answer_is_paired_with_its_call_and_timed(version):
    async def slow_heartbeat(peer, payload):
        await asyncio.sleep(scaled(0.05))
        return {"currentTime": NOW}

    async def scenario():
        seen: list[Trace] = []
        sock = FakeSocket(reply=lambda f: [[3, f[1], {"status": "Accepted"}]] if f[0] == 2 else [])
        rpc = Rpc(
            sock,
            version,
            {"Heartbeat": slow_heartbeat},
            trace=lambda *fields: seen.append(Trace(*fields)),
        )
        reader = asyncio.create_task(rpc.run())
        t0 = time.time()
        sock.feed([2, "hb-1", "Heartbeat", {}])
        await until_async(lambda: len(seen) == 2, what="the Heartbeat answered")
        assert await rpc.call("ClearCache", {}, 5) == {"status": "Accepted"}
        sock.close()
        await reader
        return seen, t0

    seen, t0 = run(scenario())
    call, answer, ours, theirs = seen
    assert call == Trace(
        call.at, IN, CALL, "hb-1", "Heartbeat", len('[2, "hb-1", "Heartbeat", {}]'), None, None,
        '[2, "hb-1", "Heartbeat", {}]',
    )  # fmt: skip
    assert t0 <= call.at <= answer.at <= time.time()
    # our answer: the action of the CALL it answers, and the time we took
    assert answer[1:4] == (OUT, CALLRESULT, "hb-1") and answer.action == "Heartbeat"
    assert answer.latency is not None and answer.latency >= scaled(0.05)
    assert json.loads(answer.text) == [3, "hb-1", {"currentTime": NOW}]
    assert answer.size == len(answer.text) and answer.error is None
    # our CALL, and the peer's answer to it, timed from the send
    assert ours[1:3] == (OUT, CALL) and ours.action == "ClearCache" and ours.latency is None
    assert json.loads(ours.text) == [2, ours.id, "ClearCache", {}]
    assert theirs[1:5] == (IN, CALLRESULT, ours.id, "ClearCache")
    assert theirs.latency is not None and 0 <= theirs.latency < scaled(2)
    assert json.loads(theirs.text) == [3, ours.id, {"status": "Accepted"}]


@pytest.mark.parametrize("version", [P16, P201])
def test_errors_invalid_frames_and_strays_are_traced(version):
    def refuse(peer, payload):
        raise RpcError("PropertyConstraintViolation", "no")

    frames = [
        "not json",
        [2, "c1", "Heartbeat", {}],
        [2, "c2", "NoSuchAction", {}],
        [3, "stray", {}],
        [4, "stray-2", "GenericError", "", {}],
    ]
    seen = run(traced(version, frames, {"Heartbeat": refuse}))
    formation = "FormationViolation" if version == P16 else "RpcFrameworkError"
    assert [(t.direction, t.kind, t.id, t.action, t.error) for t in seen] == [
        (IN, INVALID, "-1", None, formation),
        (OUT, CALLERROR, "-1", None, formation),
        (IN, CALL, "c1", "Heartbeat", None),
        (OUT, CALLERROR, "c1", "Heartbeat", "PropertyConstraintViolation"),
        (IN, CALL, "c2", "NoSuchAction", None),
        (OUT, CALLERROR, "c2", "NoSuchAction", "NotImplemented"),
        (IN, CALLRESULT, "stray", None, None),  # answers no CALL of ours
        (IN, CALLERROR, "stray-2", None, "GenericError"),
    ]
    assert seen[0].text == "not json" and seen[0].latency is None
    assert seen[1].latency is None  # it answers no CALL
    assert seen[3].latency is not None and seen[5].latency is not None
    assert json.loads(seen[3].text)[:3] == [4, "c1", "PropertyConstraintViolation"]


def test_frames_past_the_rate_are_traced_without_their_text():
    frames = [[2, f"c{i}", "Heartbeat", {}] for i in range(4)]
    seen = run(traced(P16, frames, bucket=TokenBucket(0.001, 2)))
    calls = [t for t in seen if t.direction == IN]
    assert [t.text != "" for t in calls] == [True, True, False, False]  # refused unread
    assert all(t.size == len(json.dumps(f)) for t, f in zip(calls, frames, strict=True))
    refusals = [t for t in seen if t.direction == OUT][2:]
    assert [(t.kind, t.action, t.error) for t in refusals] == [
        (CALLERROR, "Heartbeat", "GenericError")
    ] * 2


# --------------------------------------------------------------------------- the FrameLog

SID = "0123456789abcdef01234567"


def trace(i: int, kind: int = CALL, action: str | None = "Heartbeat", **fields) -> Trace:
    text = fields.pop("text", f'[{kind},"m{i}","{action}",{{}}]')
    base = {
        "at": time.time(),
        "direction": IN if kind == CALL else OUT,
        "kind": kind,
        "id": f"m{i}",
        "action": action,
        "size": len(text.encode() if isinstance(text, str) else text),
        "latency": None if kind == CALL else 0.002,
        "error": None,
        "text": text,
    }
    return Trace(**{**base, **fields})


async def stored(fl: FrameLog, sid: str = SID, **query) -> list[dict]:
    found, _ = await fl.read(FrameQuery(sid, limit=1000, **query))
    return found


def test_frames_are_written_in_one_unit_per_batch_off_the_callers_path():
    async def scenario():
        store = open_store(":memory:")
        fl = FrameLog(store)
        log = fl.tracer(SID)
        other = fl.tracer("f" * 24)
        commits = store.commits
        for i in range(50):
            log(*trace(i))  # only appends: nothing is written yet
            other(*trace(1000 + i))
        assert fl.buffered > 0 and await stored(fl) == []
        await until_async(lambda: fl.written == 100, what="the batch written")
        assert store.commits == commits + 1  # both stations' frames, one unit
        assert [f["messageId"] for f in await stored(fl)] == [f"m{i}" for i in range(50)]
        log(*trace(50))
        await fl.close()  # what waits is written when the server stops
        assert len(await stored(fl)) == 51

    run(scenario())


def test_many_waiting_frames_are_written_at_once(monkeypatch):
    monkeypatch.setattr(frame_log, "FLUSH_EVERY", 60.0)
    monkeypatch.setattr(frame_log, "FLUSH_AT", int(9.5 * (len(frame_json(*trace(0))) + 1)))

    async def scenario():
        fl = FrameLog(open_store(":memory:"))
        log = fl.tracer(SID)
        for i in range(9):
            log(*trace(i))
        await asyncio.sleep(scaled(0.2))
        assert fl.written == 0  # not yet: the minute is not over, FLUSH_AT not reached
        log(*trace(9))
        await until_async(lambda: fl.written == 10, timeout=2, what="a write before the minute")

    run(scenario())


BIG = '[2,"m0","DataTransfer",{"data":"' + "é" * 20_000 + '"}]'


def test_a_long_frame_is_kept_cut_to_its_first_8_kib():
    async def scenario():
        fl = FrameLog(open_store(":memory:"))
        log = fl.tracer(SID)
        log(*trace(0, action="DataTransfer", text=BIG))
        log(*trace(1, kind=CALLRESULT, action="DataTransfer", text=b'[3,"m0",{"status":"x"}]'))
        await fl.close()
        return await stored(fl)

    long, short = run(scenario())
    assert long["size"] == len(BIG.encode()) and long["truncated"]
    assert len(long["text"].encode()) <= frame_log.MAX_TEXT
    assert BIG.startswith(long["text"].rstrip("\ufffd"))  # cut inside a character
    assert short["text"] == '[3,"m0",{"status":"x"}]' and not short["truncated"]


def test_errors_mode_keeps_errors_with_the_calls_they_answer():
    async def scenario():
        fl = FrameLog(open_store(":memory:"), mode="errors")
        log = fl.tracer(SID)
        log(*trace(0))  # answered fine: neither is kept
        log(*trace(0, kind=CALLRESULT))
        log(*trace(1, action="Authorize"))  # answered with an error: both kept
        log(*trace(1, kind=CALLERROR, action="Authorize", error="FormatViolation"))
        log(*trace(2, kind=INVALID, action=None, error="RpcFrameworkError", text="garbage"))
        log(*trace(3, kind=CALL, direction=OUT, action="Reset"))  # ours, refused by the station
        log(*trace(3, kind=CALLERROR, direction=IN, action="Reset", error="NotSupported"))
        await fl.close()
        return await stored(fl)

    kept = run(scenario())
    assert [(f["messageId"], f["kind"]) for f in kept] == [
        ("m1", CALL),
        ("m1", CALLERROR),
        ("m2", INVALID),
        ("m3", CALL),
        ("m3", CALLERROR),
    ]


def test_off_means_no_observer():
    fl = FrameLog(open_store(":memory:"), mode="off")
    assert fl.tracer(SID) is None
    with pytest.raises(ValueError):
        fl.configure("sometimes", 10, 1)


def test_the_buffer_has_a_budget_past_it_frames_are_dropped_and_counted(caplog):
    async def scenario():
        each = len(frame_json(*trace(10, text="x" * 100))) + 1
        fl = FrameLog(open_store(":memory:"), max_buffered=int(20.5 * each))  # (times vary)
        log = fl.tracer(SID)
        with caplog.at_level("WARNING", logger="edrvctl.frames"):
            for i in range(10, 110):  # all in one loop turn: nothing can be written meanwhile
                log(*trace(i, text="x" * 100))
        assert fl.dropped == 80
        await fl.close()
        assert len(await stored(fl)) == 20
        log(*trace(110, text="x" * 100))  # room again once written
        await fl.close()
        assert len(await stored(fl)) == 21

    run(scenario())
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1  # once a minute


class FailingStore:
    """A store whose every unit fails (a full disk)."""

    commits = 0

    def unit(self):
        return self

    async def __aenter__(self):
        raise StoreUnavailable("the store cannot be written: database or disk is full")

    async def __aexit__(self, *exc):
        return False


def test_a_failed_write_drops_its_frames_and_the_log_goes_on():
    async def scenario():
        fl = FrameLog(FailingStore())  # type: ignore[arg-type]
        log = fl.tracer(SID)
        for i in range(5):
            log(*trace(i))
        await until_async(lambda: fl.dropped == 5, what="the failed write counted")
        assert fl.buffered == 0 and fl.written == 0
        log(*trace(5))  # still taken, tried again
        await until_async(lambda: fl.dropped == 6, what="the next write tried")

    run(scenario())


def test_a_station_is_pruned_back_to_its_count_once_a_tenth_over():
    async def scenario():
        fl = FrameLog(open_store(":memory:"), keep=20)
        log = fl.tracer(SID)
        for i in range(50):
            log(*trace(i))
        await fl.close()
        await fl.prune()
        assert [f["messageId"] for f in await stored(fl)] == [f"m{i}" for i in range(30, 50)]
        for i in range(50, 52):  # 22 held: within the slack, left alone
            log(*trace(i))
        await fl.close()
        await fl.prune()
        assert len(await stored(fl)) == 22
        log(*trace(52))  # 23: past it
        await fl.close()
        await fl.prune()
        assert [f["messageId"] for f in await stored(fl)] == [f"m{i}" for i in range(33, 53)]

    run(scenario())


def test_frames_older_than_the_days_kept_go():
    async def scenario():
        fl = FrameLog(open_store(":memory:"), days=1)
        log = fl.tracer(SID)
        old = time.time() - 86400 - 60
        for i in range(3):
            log(*trace(i, at=old + i))
        await fl.close()
        log(*trace(3))
        await fl.close()
        await fl.prune()
        assert [f["messageId"] for f in await stored(fl)] == ["m3"]

    run(scenario())


def test_follow_gives_the_stored_frames_then_each_new_one_once_committed():
    async def scenario():
        store = open_store(":memory:")
        fl = FrameLog(store)
        log = fl.tracer(SID)
        log(*trace(0))
        log(*trace(0, kind=CALLRESULT))
        await fl.close()
        first = (await stored(fl))[0]["seq"]
        rows = fl.follow(FrameQuery(SID), after=first, idle=scaled(5))
        got = await anext(rows)
        assert [(f["messageId"], f["kind"]) for f in got] == [("m0", CALLRESULT)]
        commits = store.commits
        nxt = asyncio.ensure_future(anext(rows))
        log(*trace(1, action="MeterValues"))
        live = await asyncio.wait_for(nxt, scaled(5))
        assert [f["messageId"] for f in live] == ["m1"]
        assert store.commits > commits  # published after its commit, not before
        assert live == (await stored(fl))[-1:]  # as stored, the same shape
        await rows.aclose()
        assert not fl.feed(SID).listeners  # nobody follows: nothing is built for the feed

    run(scenario())


def test_follow_keeps_to_its_filters_and_ends_when_the_server_stops():
    async def scenario():
        fl = FrameLog(open_store(":memory:"))
        log = fl.tracer(SID)
        rows = fl.follow(FrameQuery(SID, errors=True), after=None, idle=scaled(5))
        nxt = asyncio.ensure_future(anext(rows))
        await asyncio.sleep(0.05)
        log(*trace(0))
        log(*trace(0, kind=CALLERROR, error="NotSupported"))
        got = await asyncio.wait_for(nxt, scaled(5))
        assert [f["kind"] for f in got] == [CALLERROR]
        nxt = asyncio.ensure_future(anext(rows))
        await asyncio.sleep(0.05)
        fl.end_streams()
        with pytest.raises(StopAsyncIteration):  # the server stops: live readers end
            await asyncio.wait_for(nxt, scaled(2))
        later = fl.follow(FrameQuery(SID), after=None, idle=scaled(5))
        with pytest.raises(StopAsyncIteration):  # and any that comes later
            await asyncio.wait_for(anext(later), scaled(2))

    run(scenario())


def test_a_frame_is_encoded_one_way_whichever_path_it_takes():
    import orjson

    fields = tuple(trace(1, kind=CALLERROR, error="NotSupported", latency=0.25))
    assert orjson.dumps(fields) == frame_json(*fields)  # StationLog's shortcut for a str text


def test_the_outside_shape():
    row = {
        "seq": 65537,
        "chargestation": SID,
        "at": 1_700_000_000_123,
        "direction": "out",
        "kind": CALLERROR,
        "messageId": "m1",
        "action": "Reset",
        "size": 80,
        "latency": 0.0123456,
        "error": "NotSupported",
        "text": "[4]",
        "truncated": True,
    }
    assert frame_log.shape(row, "cs-1") == {
        "_id": "65537",
        "chargestation": SID,
        "endpoint": "cs-1",
        "createdAt": "2023-11-14T22:13:20.123Z",
        "direction": "out",
        "type": "CALLERROR",
        "messageId": "m1",
        "action": "Reset",
        "size": 80,
        "latencyMs": 12.346,
        "error": "NotSupported",
        "text": "[4]",
        "truncated": True,
    }


def test_a_deleted_stations_waiting_frames_are_not_written():
    async def scenario():
        from edrvctl import model
        from edrvctl.fleet import Fleet

        fleet = Fleet(open_store(":memory:"))
        gone, _ = await fleet.create(model.StationCreate(endpoint="GONE"))
        stays, _ = await fleet.create(model.StationCreate(endpoint="STAYS"))
        for doc in (gone, stays):
            log = fleet.frames.tracer(doc["_id"])
            log(*trace(0))
        await fleet.delete("GONE")
        await fleet.frames.close()
        assert await stored(fleet.frames, gone["_id"]) == []
        assert len(await stored(fleet.frames, stays["_id"])) == 1

    run(scenario())


def test_a_busy_station_is_written_at_once_a_quiet_one_within_a_second(monkeypatch):
    monkeypatch.setattr(frame_log, "MAX_WAIT", 60.0)

    async def scenario():
        fl = FrameLog(open_store(":memory:"))
        busy, quiet = fl.tracer(SID), fl.tracer("f" * 24)
        quiet(*trace(0))
        for i in range(frame_log.CHUNK_FRAMES):
            busy(*trace(i))
        await until_async(lambda: fl.written == frame_log.CHUNK_FRAMES, what="the busy one")
        await asyncio.sleep(scaled(0.3))
        assert await stored(fl, "f" * 24) == []  # a single frame waits (here: a minute)
        await fl.close()
        assert len(await stored(fl, "f" * 24)) == 1

    run(scenario())
