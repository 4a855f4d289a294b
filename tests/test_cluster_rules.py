"""What several nodes rely on, in process and fast: commands and answers survive their trip as
JSON; an Action for a station another node holds is carried out and followed there and its
failure on the way is recorded here; a lost node's stations go offline with their followed
commands failed; live readers see rows another process stored. (tests/test_cluster.py runs
the real thing: three nodes, PostgreSQL, HAProxy.)"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from edrvctl.errors import EdrvError, Unavailable
from edrvctl.fleet import Fleet, events
from edrvctl.fleet.live import (
    ClearCache,
    Command,
    LocalListEntry,
    Reset,
    SendLocalList,
    decode_answer,
    decode_command,
    encode_answer,
    encode_command,
)
from edrvctl.store import EventQuery, open_store
from test_actions import TRANSLATED, FakeLive, boot_info, settle, station


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def json_trip(data: Any) -> Any:
    return orjson.loads(orjson.dumps(data))


@pytest.mark.parametrize(
    "command",
    [c for c, _, _ in TRANSLATED]
    + [SendLocalList(4, False, (LocalListEntry("AB12", "ISO14443", None),)), ClearCache()],
)
def test_every_command_comes_back_the_same_from_json(command: Command):
    assert decode_command(json_trip(encode_command(command))) == command


def test_answers_come_back_as_they_were_sent():
    for answer in (("Accepted", {"status": "Accepted"}), "Rejected", None, ([{"key": "a"}], [])):
        back = decode_answer(json_trip(encode_answer(answer)))
        assert back == answer and type(back) is type(answer)


def test_an_unknown_command_kind_is_refused():
    with pytest.raises(ValueError, match="unknown command kind"):
        decode_command({"kind": "FormatDisk", "fields": {}})


class Router:
    """Fleet.router of node A: every station is held by node B (another Fleet on the same
    store), or the trip fails with `fail`."""

    node_id = "a"

    def __init__(self, there: Fleet) -> None:
        self.there = there
        self.fail: EdrvError | None = None

    def healthy(self) -> str | None:
        return None

    def is_local(self, endpoint: str) -> bool:
        return False

    async def carry_out(self, action: dict, command: Command, timeout: float) -> dict:
        if self.fail is not None:
            raise self.fail
        return await self.there.carry_out_here(action["_id"], command, timeout)


@pytest.fixture
def nodes():
    store = open_store(":memory:")
    b = Fleet(store, FakeLive())
    a = Fleet(store, FakeLive())
    a.router = Router(b)
    return a, b


def test_an_action_asked_of_one_node_is_sent_and_followed_by_the_one_holding_it(nodes):
    a, b = nodes

    async def scenario():
        doc = await station(b)
        a.live.online[doc["endpoint"]] = "ocpp1.6"  # type: ignore[attr-defined]
        b.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        action = await a.command(doc["endpoint"], Reset(), timeout=5)
        assert (action["status"], action["outcome"], action["stage"]) == (
            "completed",
            "pending",
            "accepted",
        )
        assert [sent for _, sent in b.live.sent if isinstance(sent, Reset)] == [Reset()]
        assert a.live.sent == []
        # the reboot's BootNotification reaches node B, which follows the Reset to its end
        await b.boot(doc["endpoint"], boot_info("1.0.0"))
        await settle(b)
        done = await a.get_action(action["_id"])
        assert (done["outcome"], done["stage"]) == ("succeeded", "done")

    run(scenario())


def test_a_trip_that_fails_on_the_way_is_recorded_as_the_action_s_failure(nodes):
    a, b = nodes

    async def scenario():
        doc = await station(b)
        a.live.online[doc["endpoint"]] = "ocpp1.6"  # type: ignore[attr-defined]
        a.router.fail = Unavailable("node b lost")  # type: ignore[union-attr]
        action = await a.command(doc["endpoint"], ClearCache(), timeout=5)
        assert (action["status"], action["outcome"]) == ("failed", "failed")
        assert action["error"] == {"code": "Offline", "description": "node b lost"}
        assert b.live.sent == [] or all(not isinstance(c, ClearCache) for _, c in b.live.sent)

    run(scenario())


def test_a_lost_node_s_stations_go_offline_and_their_followed_commands_fail(nodes):
    a, b = nodes

    async def scenario():
        doc = await station(b)
        b.live.answers[Reset] = ("Accepted", {"status": "Accepted"})
        action = await b.command(doc["endpoint"], Reset(), timeout=5)
        assert action["outcome"] == "pending"
        await a.lost([doc["_id"]], "node b lost")
        after = await a.get(doc["_id"])
        assert after["online"] is False and after["lastDisconnectAt"]
        failed = await a.get_action(action["_id"])
        assert failed["outcome"] == "failed"
        assert failed["error"] == {"code": "Interrupted", "description": "node b lost"}
        offline = await a.list_events(
            EventQuery(station_id=doc["_id"], types=(events.OFFLINE,), limit=None)
        )
        assert offline[-1]["data"] == {"reason": "node b lost"}

    run(scenario())


def test_a_live_reader_with_reread_sees_rows_another_process_stored():
    async def scenario():
        store = open_store(":memory:")
        stored: list[dict] = []

        async def read_after(seq: int) -> list[dict]:
            return [r for r in stored if r["seq"] > seq]

        feed = events.Feed()  # nothing is ever published on it: another node wrote them
        rows = events.follow(feed, read_after, 0, lambda r: True, idle=10, reread=0.05)
        got = asyncio.ensure_future(rows.__anext__())
        await asyncio.sleep(0.1)
        stored.append({"seq": 1, "type": "x"})
        assert await asyncio.wait_for(got, 2) == [{"seq": 1, "type": "x"}]
        await rows.aclose()  # type: ignore[attr-defined]
        await store.close()

    run(scenario())
