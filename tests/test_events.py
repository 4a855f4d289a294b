"""Events: what the fleet records of its own accord (in-process, a fresh in-memory fleet), the
feed that pushes them once committed, and end to end: `GET /v1.1/events`, the server-sent
events stream with Last-Event-ID, `edrvctl events`, refusals in `cs inspect` and
`cs unknown`, and `cs list --watch`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading

import httpx
import pytest

from edrvctl import model
from edrvctl.client import Client
from edrvctl.errors import StoreUnavailable
from edrvctl.fleet import Fleet, events
from edrvctl.fleet.live import Reset
from edrvctl.store import EventQuery, open_store
from test_actions import FakeLive, boot_info, settle
from test_cli import cli, ok, uniq
from test_ocpp import _refused, sim_running
from timing import scaled, until, until_async

P16, P201 = "ocpp1.6", "ocpp2.0.1"


@pytest.fixture
def fleet():
    return Fleet(open_store(":memory:"), FakeLive())


def run(coro):
    return asyncio.run(coro)


async def online_station(fleet: Fleet, protocol: str = P16) -> dict:
    doc, _ = await fleet.create(model.StationCreate(endpoint=uniq("ev"), protocol=protocol))
    fleet.live.online[doc["endpoint"]] = protocol  # type: ignore[attr-defined]
    await fleet.connected(doc["endpoint"], {"protocol": protocol, "address": "192.0.2.7"})
    await fleet.boot(doc["endpoint"], boot_info("1.0"))
    await settle(fleet)
    return doc


async def types_of(fleet: Fleet, doc: dict) -> list[str]:
    return [e["type"] for e in await fleet.list_events(EventQuery(limit=None), station=doc["_id"])]


# --- what the fleet records -----------------------------------------------------------------


def test_a_station_life_is_a_sequence_of_events(fleet):
    async def scenario():
        doc = await online_station(fleet)
        ep = doc["endpoint"]
        await fleet.status_notification(ep, 1, 1, "Available")
        await fleet.status_notification(ep, 1, 1, "Available")  # repeated: no event
        await fleet.status_notification(ep, 1, 1, "Faulted", "GroundFailure", "leak")
        await fleet.record_event(ep, "FirmwareStatusNotification", {"status": "Downloading"})
        await fleet.disconnected(ep)
        rows = await fleet.list_events(EventQuery(limit=None), station=ep)
        assert [e["type"] for e in rows] == [
            events.ONLINE,
            events.BOOTED,
            events.CONNECTOR_STATUS,
            events.CONNECTOR_STATUS,
            events.FIRMWARE_STATUS,
            events.OFFLINE,
        ]
        assert rows[0]["data"] == {"protocol": P16, "address": "192.0.2.7"}
        assert rows[1]["data"]["firmwareVersion"] == "1.0"
        assert rows[3]["data"] == {
            "evseId": 1,
            "connectorId": 1,
            "status": "Faulted",
            "errorCode": "GroundFailure",
            "info": "leak",
            "stationStatus": "Faulted",
        }
        assert all(e["chargestation"] == doc["_id"] and e["endpoint"] == ep for e in rows)
        assert [e["seq"] for e in rows] == sorted(e["seq"] for e in rows)
        shaped = events.envelope(rows[2])
        assert shaped == {
            "_id": str(rows[2]["seq"]),
            "object": "chargestation",
            "type": events.CONNECTOR_STATUS,
            "chargestation": doc["_id"],
            "endpoint": ep,
            "data": rows[2]["data"],
            "createdAt": rows[2]["createdAt"],
        }

    run(scenario())


def test_an_action_is_an_event_at_each_change_of_status_and_outcome(fleet):
    async def scenario():
        doc = await online_station(fleet)
        fleet.live.answers[Reset] = "Accepted"  # type: ignore[attr-defined]
        action = await fleet.command(doc["_id"], Reset("Soft"), timeout=5)
        await fleet.boot(doc["endpoint"], boot_info("1.0"))  # the reset's end
        rows = await fleet.list_events(
            EventQuery(types=("chargestation.reset.*",), limit=None), station=doc["_id"]
        )
        assert [e["type"] for e in rows] == [
            "chargestation.reset.requested",
            "chargestation.reset.accepted",
            "chargestation.reset.succeeded",
        ]
        assert {e["data"]["_id"] for e in rows} == {action["_id"]}
        assert events.envelope(rows[0])["object"] == "action"
        fleet.live.answers[Reset] = "Rejected"  # type: ignore[attr-defined]
        await fleet.command(doc["_id"], Reset("Hard"), timeout=5)
        assert (await types_of(fleet, doc))[-3:] == [
            "chargestation.reset.requested",
            "chargestation.reset.rejected",
            "chargestation.reset.failed",
        ]

    run(scenario())


def test_a_known_station_refused_keeps_its_last_refusal(fleet):
    async def scenario():
        doc, _ = await fleet.create(model.StationCreate(endpoint=uniq("ref")))
        await fleet.refused(doc["endpoint"], 401, "wrong password" + "x" * 500, {"address": "a"})
        got = await fleet.get(doc["_id"])
        assert got["lastRefusal"]["status"] == 401
        assert got["lastRefusal"]["reason"].startswith("wrong password")
        assert len(got["lastRefusal"]["reason"]) <= 200
        assert got["lastMessageAt"] is None and got["updatedAt"] == doc["updatedAt"]
        assert await types_of(fleet, doc) == [events.CONNECTION_REFUSED]

    run(scenario())


def test_unknown_endpoints_are_counted_bounded_and_forgotten_once_created(fleet, monkeypatch):
    monkeypatch.setattr("edrvctl.fleet.MAX_UNKNOWN", 3)

    async def scenario():
        info = {"address": "192.0.2.9", "subprotocols": [P16], "reason": "unknown"}
        await fleet.unknown("lost-1", info)
        await fleet.unknown("lost-1", {**info, "address": "192.0.2.10"}, times=4)
        listed = await fleet.unknown_endpoints()
        assert [(u["endpoint"], u["seen"], u["address"]) for u in listed] == [
            ("lost-1", 5, "192.0.2.10")
        ]
        for n in range(2, 6):
            await fleet.unknown(f"lost-{n}", info)
        assert [u["endpoint"] for u in await fleet.unknown_endpoints()] == [
            "lost-5",
            "lost-4",
            "lost-3",
        ]
        await fleet.create(model.StationCreate(endpoint="lost-4"))
        assert [u["endpoint"] for u in await fleet.unknown_endpoints()] == ["lost-5", "lost-3"]
        # an event when an endpoint is new to the list, not at every attempt
        unknown = await fleet.list_events(EventQuery(types=(events.UNKNOWN,), limit=None))
        assert [e["endpoint"] for e in unknown] == [f"lost-{n}" for n in range(1, 6)]
        assert all(e["chargestation"] is None for e in unknown)

    run(scenario())


# --- the feed -------------------------------------------------------------------------------


def test_the_feed_gets_events_only_once_committed_and_in_order(fleet):
    async def scenario():
        with fleet.feed.subscribe() as sub:
            doc = await online_station(fleet)
            got = await sub.next(0)
            assert [e["type"] for e in got] == [events.ONLINE, events.BOOTED]
            # a unit that fails publishes nothing of what it added
            with contextlib.suppress(RuntimeError):
                async with fleet.store.unit() as tx:
                    await tx.add_event(doc["_id"], model.utcnow(), "test.undone", {})
                    raise RuntimeError("undone")
            assert await sub.next(0) == []
            # events of several units of one loop turn come in seq order
            await asyncio.gather(
                *(fleet.status_notification(doc["endpoint"], 1, c, "Available") for c in (1, 2, 3))
            )
            seqs = [e["seq"] for e in await sub.next(0)]
            assert len(seqs) == 3 and seqs == sorted(seqs)

    run(scenario())


def test_a_failed_commit_publishes_nothing(tmp_path):
    async def scenario():
        store = open_store(tmp_path / "s.db", max_bytes=64 * 1024)
        fleet = Fleet(store, FakeLive())
        doc = await online_station(fleet)
        with fleet.feed.subscribe() as sub:
            with pytest.raises(StoreUnavailable):
                await fleet.record_event(doc["endpoint"], "DataTransfer", {"d": "x" * 60_000})
            assert await sub.next(0) == []
        await store.close()

    run(scenario())


def test_a_listener_that_falls_behind_reads_on_from_the_store(fleet):
    async def scenario():
        doc = await online_station(fleet)
        ep = doc["endpoint"]

        async def read_after(seq: int) -> list[dict]:
            return await fleet.list_events(EventQuery(after=seq, limit=2))

        seen: list[int] = []
        stream = events.follow(fleet.feed, read_after, 0, lambda r: True, idle=scaled(5))
        seen += [r["seq"] for r in await anext(stream)]  # the stored ones, a page at a time
        seen += [r["seq"] for r in await anext(stream)]
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        for sub in list(fleet.feed._subs):  # make the live subscription overflow
            sub._queue = type(sub._queue)(maxlen=1)
        for c in range(1, 5):
            await fleet.status_notification(ep, 1, c, "Available")
        seen += [r["seq"] for r in await pending]
        while len(seen) < 6:
            seen += [r["seq"] for r in await anext(stream)]
        stored = [e["seq"] for e in await fleet.list_events(EventQuery(limit=None))]
        assert seen == stored  # every one, once, in order
        fleet.feed.close()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    run(scenario())


# --- end to end -----------------------------------------------------------------------------


def test_events_are_listed_filtered_and_shown_by_the_cli(server, cli_env):
    doc = server.create(uniq("ev"), protocol=P201)

    async def scenario():
        async with sim_running(server, doc["endpoint"], P201):
            pass

    run(scenario())
    with server.api() as c:
        rows = until(
            lambda: (
                (
                    r := c.get(
                        "/v1.1/events", params={"chargestation": doc["endpoint"], "limit": 1000}
                    ).json()["result"]
                )
                and rows_end_offline(r)
                and r
            ),
            what="the station's events",
        )
        kinds = [e["type"] for e in rows]
        assert kinds[:2] == [events.ONLINE, events.BOOTED] and kinds[-1] == events.OFFLINE
        assert events.CONNECTOR_STATUS in kinds
        only = c.get(
            "/v1.1/events",
            params={"chargestation": doc["_id"], "type": "*.online,*.offline"},
        ).json()["result"]
        assert [e["type"] for e in only] == [events.ONLINE, events.OFFLINE]
        assert c.get("/v1.1/events", params={"chargestation": "nobody"}).status_code == 404
    r = ok(cli_env, "events", "--station", doc["endpoint"], "-o", "plain")
    assert "chargestation.booted" in r.stdout and doc["endpoint"] in r.stdout
    r = ok(cli_env, "events", "--station", doc["endpoint"], "--type", "*.online", "-o", "jsonl")
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and '"type":"chargestation.online"' in lines[0]


def rows_end_offline(rows: list[dict]) -> bool:
    return bool(rows) and rows[-1]["type"] == events.OFFLINE


def sse_reader(server, params: dict, after: int | None = None):
    """Read the stream in a thread (the CLI's own client), collected into a list; returns
    once the stream is open (its first line, a comment, has come)."""
    client = Client(server.api_url, server.token)
    got: list[tuple[int, str, dict]] = []
    opened = threading.Event()

    def read() -> None:
        with contextlib.suppress(Exception):
            for item in client.stream("/v1.1/events/stream", params, after=after):
                if item is None:
                    opened.set()
                else:
                    got.append(item)

    threading.Thread(target=read, daemon=True).start()
    assert opened.wait(scaled(10)), "the stream did not open"
    return got


def test_the_stream_pushes_events_and_resumes_after_the_last_id(server):
    doc = server.create(uniq("sse"))
    params = {"chargestation": doc["endpoint"], "type": "*.online,*.booted,*.offline"}
    live = sse_reader(server, params)

    async def session():
        async with sim_running(server, doc["endpoint"], P16):
            await until_async(lambda: len(live) >= 2, what="online and booted on the stream")

    run(session())
    until(lambda: len(live) >= 3, what="offline on the stream")
    assert [name for _, name, _ in live] == [events.ONLINE, events.BOOTED, events.OFFLINE]
    assert [int(e["_id"]) for _, _, e in live] == [seq for seq, _, _ in live]
    # resuming after the first: the later ones again, nothing before
    resumed = sse_reader(server, params, after=live[0][0])
    until(lambda: len(resumed) >= 2, what="the replay")
    assert [seq for seq, _, _ in resumed] == [seq for seq, _, _ in live[1:]]
    # the header the CLI sends when it reconnects does the same
    with (
        httpx.Client(base_url=server.api_url, timeout=scaled(10)) as c,
        c.stream(
            "GET",
            "/v1.1/events/stream",
            params=params,
            headers={
                "Authorization": f"Bearer {server.token}",
                "Last-Event-ID": str(live[1][0]),
            },
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        text = ""
        for chunk in r.iter_text():
            text += chunk
            if "event: chargestation.offline" in text:
                break
        assert f"id: {live[2][0]}\n" in text and f"id: {live[1][0]}\n" not in text


def test_a_stream_needs_the_token(server):
    with httpx.Client(base_url=server.api_url, timeout=scaled(10)) as c:
        r = c.get("/v1.1/events/stream")
    assert r.status_code == 401 and r.json()["ok"] is False


def test_refusals_show_in_inspect_and_unknown_endpoints_in_cs_unknown(server, cli_env):
    doc = server.create(uniq("refi"))
    stranger = uniq("stranger")

    async def scenario():
        await _refused(f"{server.ocpp_url}/{doc['endpoint']}", [P201])
        await _refused(f"{server.ocpp_url}/{stranger}", [P16, "bogus"])
        await _refused(f"{server.ocpp_url}/{stranger}-%1b[31mred", [P16])

    run(scenario())
    got = until(lambda: server.get(doc["_id"]).get("lastRefusal"), what="the last refusal")
    assert got["status"] == 400 and "registered for" in got["reason"]
    r = ok(cli_env, "cs", "inspect", doc["endpoint"])
    assert "Last refusal\t400 this station is registered for" in r.stdout
    r = until(
        lambda: (x := ok(cli_env, "cs", "unknown", "-o", "plain")) and stranger in x.stdout and x,
        what="the stranger in cs unknown",
    )
    row = next(line for line in r.stdout.splitlines() if line.split("\t")[0] == stranger)
    assert "127.0.0.1" in row and f"{P16},bogus" in row
    assert "red" not in r.stdout  # an endpoint no station could have is not listed
    listed = ok(cli_env, "cs", "unknown", "-o", "json").stdout
    assert stranger in listed
    ok(cli_env, "cs", "create", stranger)
    listed = ok(cli_env, "cs", "unknown", "-o", "plain").stdout.splitlines()
    assert stranger not in [line.split("\t")[0] for line in listed]
    unknown = cli(cli_env, "events", "--type", events.UNKNOWN, "-o", "jsonl").stdout
    assert stranger in unknown


def test_cs_list_watch_prints_a_line_per_change_without_a_terminal(server, cli_env, tmp_path):
    doc = server.create(uniq("watch"))
    env = {**os.environ, **cli_env}
    env.pop("COLUMNS", None)
    out = tmp_path / "watch.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edrvctl", "cs", "list", "--watch", "-o", "plain"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        until(lambda: doc["endpoint"] in out.read_text(), what="the first listing")

        async def session():
            async with sim_running(server, doc["endpoint"], P16):
                pass

        run(session())
        text = until(
            lambda: (
                (t := out.read_text()) and f"chargestation.offline {doc['endpoint']}" in t and t
            ),
            what="a line per change",
        )
        assert f"chargestation.online {doc['endpoint']}" in text
        assert f"chargestation.booted {doc['endpoint']}" in text
    finally:
        proc.terminate()
        proc.wait(scaled(10))


def test_invented_endpoints_cannot_grow_the_store_without_bound(fleet):
    from edrvctl.server.listener import UNKNOWN_KEPT_PER_MINUTE, Refusals

    async def scenario():
        refusals = Refusals(fleet)
        for n in range(3 * UNKNOWN_KEPT_PER_MINUTE):
            await refusals.refused(f"made-up-{n}", 404, "192.0.2.3", "unknown", known=False)
        kept = await fleet.list_events(EventQuery(types=(events.UNKNOWN,), limit=None))
        assert len(kept) == UNKNOWN_KEPT_PER_MINUTE
        assert len(await fleet.unknown_endpoints()) == UNKNOWN_KEPT_PER_MINUTE
        # the same endpoint again within the minute: counted with its next record, not stored
        await refusals.refused("made-up-0", 404, "192.0.2.3", "unknown", known=False)
        assert len(await fleet.list_events(EventQuery(limit=None))) == UNKNOWN_KEPT_PER_MINUTE

    run(scenario())


def test_ids_beyond_64_bits_are_refused_or_clamped_not_a_crash(server):
    with server.api() as c:
        r = c.get("/v1.1/events", params={"after": str(1 << 63)})
        assert r.status_code == 400 and r.json()["ok"] is False
        r = c.get("/v1.1/events", params={"after": str((1 << 63) - 1)})
        assert r.status_code == 200 and r.json()["result"] == []
        with c.stream("GET", "/v1.1/events/stream", headers={"Last-Event-ID": str(1 << 70)}) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()) == ": stream open"
