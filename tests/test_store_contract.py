"""The Store contract: what `fleet` may rely on, whichever backend holds the data.

Every test in the first part runs against each backend through the `store` fixture and uses
only the Store / Unit protocols: SQLite (a file, and in memory) and PostgreSQL (a fresh
database per test, tests/pg.py). The last parts check what only one backend has: SQLite's file,
schema versions and read-only opening; PostgreSQL's schema versions, outages and fencing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import stat
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import pg
from edrvctl.errors import (
    Conflict,
    InvalidBody,
    StaleRecord,
    StoreUnavailable,
    UsageError,
)
from edrvctl.store import (
    FILTER_FIELDS,
    SORT_FIELDS,
    ActionQuery,
    EventQuery,
    SessionQuery,
    StationQuery,
    Store,
    TokenQuery,
    open_store,
)
from edrvctl.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from timing import scaled, until_async

BACKENDS = ["sqlite-file", "sqlite-memory", "postgresql"]


def run(coro, timeout: float = 5):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


class Backend:
    """Opens stores of one kind: `fresh` ones, and a read-only `reader` of the test's store."""

    def __init__(self, kind: str, root: Path, databases: ExitStack):
        self.kind, self.root = kind, root
        self.path: Path | str = root / "store" / "edrvctl.db"
        self._n = itertools.count()
        self.opened: list[Store] = []
        self._databases = databases
        if kind == "postgresql":
            self.path = databases.enter_context(pg.database())

    def _open(self, location, **kw) -> Store:
        s = open_store(location, **kw)
        self.opened.append(s)
        return s

    def main(self) -> Store:
        return self._open(self.path if self.kind != "sqlite-memory" else ":memory:")

    def fresh(self, **kw) -> Store:
        """Another, empty store of this kind."""
        if self.kind == "sqlite-file":
            return self._open(self.root / f"other-{next(self._n)}.db", **kw)
        if self.kind == "postgresql":
            return self._open(self._databases.enter_context(pg.database()), **kw)
        return self._open(":memory:", **kw)

    def reader(self) -> Store | None:
        """A read-only store on the same data through another connection, if the kind has
        one (an in-memory database is private to its connection)."""
        if self.kind != "sqlite-memory":
            return self._open(self.path, readonly=True)
        return None

    def close_all(self) -> None:
        async def close():
            for s in reversed(self.opened):
                await s.close()

        run(close())


BACKEND = pytest.StashKey[Backend]()


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Store:
    with ExitStack() as databases:
        backend = Backend(request.param, tmp_path, databases)
        request.node.stash[BACKEND] = backend
        yield backend.main()
        backend.close_all()


@pytest.fixture
def backend(request, store) -> Backend:
    return request.node.stash[BACKEND]


_seq = itertools.count()
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def station(endpoint: str | None = None, **fields) -> dict:
    """A record shaped like model.new_station's; createdAt increases with each one."""
    n = next(_seq)
    at = (EPOCH + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    doc = {
        "_id": f"{n:024x}",
        "endpoint": endpoint or f"ep-{n}",
        "protocol": "ocpp1.6",
        "online": False,
        "active": True,
        "status": None,
        "evses": [],
        "connectors": [],
        "location": None,
        "organization": None,
        "manufacturer": None,
        "model": None,
        "bootInfo": {},
        "createdAt": at,
        "updatedAt": at,
        "lastConnectAt": None,
        "lastDisconnectAt": None,
        "lastMessageAt": None,
        "csconfig": [],
        "security": {"type": "none", "profile": 0},
    }
    doc.update(fields)
    return doc


async def create(store: Store, *docs: dict) -> None:
    async with store.unit() as tx:
        for doc in docs:
            await tx.create_station(doc)


async def get(store: Store, key: str) -> dict | None:
    async with store.unit() as tx:
        return await tx.get_station(key)


# --- stations ---------------------------------------------------------------------------------


def test_create_then_get_by_id_and_by_endpoint(store):
    doc = station(location="depot", meta={"nested": [1, 2.5, None, "ü"]})

    async def scenario():
        await create(store, doc)
        assert await get(store, doc["_id"]) == doc
        assert await get(store, doc["endpoint"]) == doc
        assert await get(store, "no-such-station") is None
        async with store.unit() as tx:  # the revision is the store's, never in the record
            page, total = await tx.list_stations_json(StationQuery())
        assert total == 1 and '"rev"' not in page[0]
        assert "rev" not in await get(store, doc["_id"])

    run(scenario())


def test_a_duplicate_endpoint_is_a_conflict_and_undoes_its_unit(store):
    first = station()

    async def scenario():
        await create(store, first)
        other = station(first["endpoint"])
        with pytest.raises(Conflict):
            async with store.unit() as tx:
                await tx.add_event(first["_id"], "t", "Before", {})
                await tx.create_station(other)
        assert await get(store, other["_id"]) is None
        assert await get(store, first["endpoint"]) == first
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery()) == []

    run(scenario())


def test_save_is_a_compare_and_set_on_what_this_unit_read(store):
    doc = station()

    async def scenario():
        await create(store, doc)
        a_read, b_read, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def a():
            async with store.unit() as tx:
                mine = await tx.get_station(doc["_id"])
                a_read.set()
                await b_read.wait()
                mine["status"] = "Charging"
                await tx.save_station(mine)
            a_done.set()

        async def b():
            await a_read.wait()
            async with store.unit() as tx:
                mine = await tx.get_station(doc["endpoint"])
                b_read.set()
                await a_done.wait()
                mine["location"] = "would overwrite Charging unseen"
                with pytest.raises(StaleRecord) as e:
                    await tx.save_station(mine)
                assert isinstance(e.value, Conflict)

        await asyncio.gather(a(), b())
        assert (await get(store, doc["_id"]))["status"] == "Charging"
        assert (await get(store, doc["_id"]))["location"] is None

        # Read again, and the save goes through; a unit may save what it saved again.
        async with store.unit() as tx:
            mine = await tx.get_station(doc["_id"])
            mine["location"] = "depot"
            await tx.save_station(mine)
            mine["organization"] = "acme"
            await tx.save_station(mine)
        assert await get(store, doc["_id"]) == {
            **doc,
            "status": "Charging",
            "location": "depot",
            "organization": "acme",
        }

    run(scenario())


def test_saving_a_record_not_read_in_this_unit_is_stale(store):
    doc = station()

    async def scenario():
        await create(store, doc)
        old = await get(store, doc["_id"])
        old["status"] = "Faulted"
        with pytest.raises(StaleRecord):
            async with store.unit() as tx:
                await tx.save_station(old)
        with pytest.raises(StaleRecord):  # nor one read by another unit
            async with store.unit() as tx:
                await tx.get_station("something else")
                await tx.save_station(old)
        async with store.unit() as tx:  # deleted since it was read: stale too
            gone = await tx.get_station(doc["_id"])
            async with store.unit() as other:
                assert await other.delete_station(doc["_id"]) is True
            with pytest.raises(StaleRecord):
                await tx.save_station(gone)
        assert await get(store, doc["_id"]) is None

    run(scenario())


def test_a_unit_that_raises_writes_nothing(store):
    doc, kept = station(), station()

    class Boom(Exception):
        pass

    async def scenario():
        await create(store, doc)

        async def failing():
            with pytest.raises(Boom):
                async with store.unit() as tx:
                    mine = await tx.get_station(doc["_id"])
                    mine["status"] = "Faulted"
                    await tx.save_station(mine)
                    await tx.create_station(station())
                    await tx.add_event(doc["_id"], "t", "Lost", {"x": 1})
                    await tx.set_password_hash(doc["_id"], "h", "t")
                    await tx.start_transaction({"station_id": doc["_id"], "tx_key": None})
                    await tx.add_meter_values(doc["_id"], None, 1, [{"v": 1}])
                    await tx.set_last_message_at({doc["endpoint"]: "t"})
                    assert await tx.delete_station("no-such-station") is False
                    raise Boom

        async def succeeding():  # in the same turn, so in the same transaction
            await create(store, kept)

        await asyncio.gather(failing(), succeeding())
        assert await get(store, doc["_id"]) == doc
        assert await get(store, kept["_id"]) == kept
        async with store.unit() as tx:
            assert (await tx.list_stations_json(StationQuery()))[1] == 2
            assert await tx.list_events(EventQuery()) == []
            assert await tx.password_hash(doc["_id"]) is None
            assert await tx.transactions() == []
            assert await tx.meter_values() == []
        # and the revision did not move: a fresh read saves
        async with store.unit() as tx:
            mine = await tx.get_station(doc["_id"])
            await tx.save_station(mine)

    run(scenario())


def test_a_unit_never_reads_another_units_unfinished_writes(store, backend):
    doc, kept = station(), station()

    class Boom(Exception):
        pass

    async def scenario():
        written, release = asyncio.Event(), asyncio.Event()

        async def writer(d, fail):
            try:
                async with store.unit() as tx:
                    await tx.create_station(d)
                    written.set()
                    await release.wait()  # in the middle of its unit
                    if fail:
                        raise Boom
            except Boom:
                pass

        async def reader(d):
            await written.wait()
            async with store.unit() as tx:
                release.set()
                return await tx.get_station(d["_id"])

        async def reads_first(d):  # it does not wait: it sees what is committed
            await written.wait()
            async with store.unit() as tx:
                seen = await tx.get_station(d["_id"])
            release.set()
            return seen

        if backend.kind == "postgresql":
            reader = reads_first
        _, seen = await asyncio.gather(writer(doc, True), reader(doc))
        assert seen is None  # it waited, and the writer's unit was undone (or it saw nothing)
        written.clear()
        release.clear()
        _, seen = await asyncio.gather(writer(kept, False), reader(kept))
        if backend.kind == "postgresql":
            assert seen is None  # not yet committed when it read
            seen = await get(store, kept["_id"])
        assert seen == kept

    run(scenario())


def test_units_of_one_loop_turn_share_one_commit(store):
    if not hasattr(store, "commits"):
        pytest.skip("this backend does not commit in groups")
    docs = [station() for _ in range(25)]

    async def one(doc):
        async with store.unit() as tx:
            await tx.create_station(doc)
            await tx.add_event(doc["_id"], "t", "Created", {})

    async def scenario():
        before = store.commits
        await asyncio.gather(*(one(d) for d in docs))
        assert store.commits == before + 1
        await one(station())  # alone, outside any batch: still committed before returning
        assert store.commits == before + 2
        async with store.unit() as tx:  # reading committed data commits nothing
            assert len(await tx.list_events(EventQuery())) == 26
        assert store.commits == before + 2

    run(scenario())


def test_a_unit_returns_only_once_its_writes_are_committed(store, backend):
    reader = backend.reader()
    doc = station()

    async def visible(key: str) -> bool:
        if reader is None:
            return False
        return await get(reader, key) is not None

    async def scenario():
        before = getattr(store, "commits", 0)
        async with store.unit() as tx:
            await tx.create_station(doc)
            assert not await visible(doc["_id"])
        if reader is not None:
            assert await visible(doc["_id"])
        if hasattr(store, "commits"):
            assert store.commits == before + 1
        if backend.kind == "postgresql":
            return  # its reads see only committed data: the part below is SQLite's

        # A unit that only read another unit's uncommitted write waits for its commit too.
        later = station()

        async def writer():
            await create(store, later)

        async def reads_it():
            async with store.unit() as tx:
                seen = await tx.get_station(later["endpoint"])
                assert seen is not None  # not committed yet: same turn as the writer
                if reader is not None:
                    assert not await visible(later["_id"])
            if reader is not None:
                assert await visible(later["_id"])
            if hasattr(store, "commits"):
                assert store.commits == before + 2

        await asyncio.gather(writer(), reads_it())

    run(scenario())


def test_a_lost_transaction_fails_every_unit_in_it(backend):
    if backend.kind == "postgresql":
        pytest.skip("a size cap is SQLite's (max_bytes); PostgreSQL's failures: test_pg_*")
    store = backend.fresh(max_bytes=256 * 1024)
    docs = [station() for _ in range(3)]
    results: dict[str, BaseException | None] = {}

    async def small(doc):
        try:
            await create(store, doc)
            results[doc["_id"]] = None
        except StoreUnavailable as e:
            results[doc["_id"]] = e

    async def read_pending():
        try:
            async with store.unit() as tx:
                seen = await tx.get_station(docs[0]["_id"])
            results["reader"] = None
            return seen
        except StoreUnavailable as e:
            results["reader"] = e

    async def huge():
        with pytest.raises(StoreUnavailable):
            async with store.unit() as tx:
                await tx.add_event(docs[0]["_id"], "t", "Huge", {"x": "x" * 1024 * 1024})

    late = station()

    async def scenario():
        await asyncio.gather(*(small(d) for d in docs), read_pending(), huge(), small(late))
        for doc in (*docs, late):  # whatever returned is stored, whatever raised is not
            stored = await get(store, doc["_id"])
            assert (stored is None) == (results[doc["_id"]] is not None), results
        if hasattr(store, "commits"):  # one transaction for the turn: all lost together
            assert all(
                isinstance(results[k], StoreUnavailable)
                for k in (*(d["_id"] for d in docs), "reader")
            ), results
        # and the store goes on: the next unit writes and commits
        after = station()
        await create(store, after)
        assert await get(store, after["_id"]) == after

    run(scenario())


def test_values_that_cannot_be_stored_are_refused_before_writing(store):
    doc = station()

    async def scenario():
        await create(store, doc)
        with pytest.raises(InvalidBody):
            async with store.unit() as tx:
                await tx.add_event(doc["_id"], "t", "Fine", {})
                await tx.add_event(doc["_id"], "t", "Big", {"n": 2**70})
        with pytest.raises(InvalidBody):
            async with store.unit() as tx:
                mine = await tx.get_station(doc["_id"])
                mine["meta"] = {"n": 2**64}
                await tx.save_station(mine)
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery()) == []
        assert await get(store, doc["_id"]) == doc

    run(scenario())


# --- lists ------------------------------------------------------------------------------------


def test_list_filters_sorts_pages_and_ranges(store):
    a = station(
        online=True,
        location="north",
        organization="o1",
        status="Available",
        updatedAt="2024-02-03T00:00:00.000Z",
        lastMessageAt="2024-03-01T00:00:00.000Z",
    )
    b = station(
        online=False,
        location="south",
        organization="o1",
        status="Charging",
        protocol="ocpp2.0.1",
        updatedAt="2024-02-01T00:00:00.000Z",
    )
    c = station(
        online=True,
        location="north",
        organization="o2",
        status=None,
        active=False,
        updatedAt="2024-02-02T00:00:00.000Z",
        lastMessageAt="2024-01-01T00:00:00.000Z",
    )
    by_created = [a, b, c]  # station() hands out increasing createdAt

    async def page(**kw) -> tuple[list[str], int]:
        async with store.unit() as tx:
            docs, total = await tx.list_stations_json(StationQuery(**kw))
        return docs, total

    async def ids(**kw) -> list[str]:
        docs, _ = await page(**kw)
        return [orjson.loads(d)["_id"] for d in docs]

    def of(*docs) -> list[str]:
        return [d["_id"] for d in docs]

    async def scenario():
        await create(store, *by_created)
        assert await ids() == of(c, b, a)  # newest first by default
        assert await ids(descending=False) == of(a, b, c)
        assert await ids(equals={"online": True}) == of(c, a)
        assert await ids(equals={"online": False}) == of(b)
        assert await ids(equals={"active": False}) == of(c)
        assert await ids(equals={"location": "north", "organization": "o1"}) == of(a)
        assert await ids(equals={"protocol": "ocpp2.0.1"}) == of(b)
        assert await ids(equals={"status": None}) == of(c)  # null matches null
        assert await ids(equals={"endpoint": b["endpoint"]}) == of(b)
        assert await ids(equals={"location": "nowhere"}) == []
        assert await ids(sort_by="updatedAt", descending=False) == of(b, c, a)
        assert await ids(sort_by="endpoint", descending=False) == of(
            *sorted(by_created, key=lambda d: d["endpoint"])
        )
        assert (await ids(sort_by="lastMessageAt", descending=True))[:2] == of(a, c)

        docs, total = await page(limit=2)
        assert total == 3 and len(docs) == 2
        assert await ids(limit=2, offset=2) == of(a)
        assert await ids(limit=1, offset=1, descending=False) == of(b)
        assert (await page(limit=2, offset=5)) == ([], 3)
        assert (await page(limit=None))[1] == 3 and len((await page(limit=None))[0]) == 3
        _, total = await page(equals={"online": True}, limit=1)
        assert total == 2  # the total counts every match, not the page

        assert await ids(ranges=[("createdAt", ">=", b["createdAt"])]) == of(c, b)
        assert await ids(ranges=[("createdAt", "<=", b["createdAt"])]) == of(b, a)
        assert await ids(
            ranges=[("createdAt", ">=", b["createdAt"]), ("createdAt", "<=", b["createdAt"])]
        ) == of(b)
        assert await ids(
            ranges=[("updatedAt", ">=", "2024-02-02T00:00:00.000Z")], equals={"online": True}
        ) == of(c, a)

    run(scenario())


@pytest.mark.parametrize(
    "query",
    [
        StationQuery(equals={"doc": "x"}),
        StationQuery(equals={"online = 1 OR 1": 1}),
        StationQuery(ranges=[("doc", ">=", "x")]),
        StationQuery(ranges=[("createdAt", "!=", "x")]),
        StationQuery(ranges=[("createdAt", "; DROP TABLE chargestations; --", "x")]),
        StationQuery(sort_by="doc"),
        StationQuery(sort_by="createdAt; DROP TABLE chargestations"),
    ],
    ids=["filter", "filter-sql", "range-field", "range-op", "range-sql", "sort", "sort-sql"],
)
def test_list_refuses_fields_it_does_not_know(store, query):
    doc = station()

    async def scenario():
        await create(store, doc)
        async with store.unit() as tx:
            with pytest.raises(UsageError):  # an explicit check: holds under python -O too
                await tx.list_stations_json(query)
            assert (await tx.list_stations_json(StationQuery()))[1] == 1

    run(scenario())
    assert set(FILTER_FIELDS) and set(SORT_FIELDS)


# --- targeted writes --------------------------------------------------------------------------


def test_set_last_message_at_writes_only_that_field_and_bumps_the_revision(store):
    a, b, untouched = station(), station(), station()

    async def scenario():
        await create(store, a, b, untouched)
        async with store.unit() as tx:
            read_before = await tx.get_station(a["_id"])
        async with store.unit() as tx:
            stale = await tx.get_station(a["_id"])
            async with store.unit() as other:
                await other.set_last_message_at(
                    {
                        a["endpoint"]: "2024-05-01T00:00:00.000Z",
                        b["endpoint"]: "2024-05-02T00:00:00.000Z",
                        "unknown-endpoint": "2024-05-03T00:00:00.000Z",
                    }
                )
            with pytest.raises(StaleRecord):
                await tx.save_station(stale)
        assert await get(store, a["_id"]) == {
            **read_before,
            "lastMessageAt": "2024-05-01T00:00:00.000Z",
        }
        assert (await get(store, b["_id"]))["lastMessageAt"] == "2024-05-02T00:00:00.000Z"
        assert await get(store, untouched["_id"]) == untouched
        async with store.unit() as tx:  # the sort column follows the record
            page, _ = await tx.list_stations_json(StationQuery(sort_by="lastMessageAt"))
        assert [orjson.loads(d)["_id"] for d in page][:2] == [b["_id"], a["_id"]]
        async with store.unit() as tx:
            await tx.set_last_message_at({})  # nothing to do is fine

    run(scenario())


def test_delete_takes_everything_that_hangs_off_the_station(store):
    gone, stays = station(), station()

    async def fill(tx, doc):
        await tx.add_event(doc["_id"], "t", "Kind", {"of": doc["_id"]})
        key = await tx.start_transaction({"station_id": doc["_id"], "tx_key": None})
        await tx.add_meter_values(doc["_id"], key, 1, [{"v": 1}])
        await tx.set_password_hash(doc["_id"], f"hash-{doc['_id']}", "t")

    async def scenario():
        async with store.unit() as tx:
            for doc in (gone, stays):
                await tx.create_station(doc)
                await fill(tx, doc)
        async with store.unit() as tx:
            assert await tx.delete_station(gone["_id"]) is True
        async with store.unit() as tx:
            assert await tx.get_station(gone["_id"]) is None
            assert await tx.get_station(gone["endpoint"]) is None
            assert await tx.list_events(EventQuery(station_id=gone["_id"])) == []
            assert await tx.transactions(gone["_id"]) == []
            assert await tx.meter_values(gone["_id"]) == []
            assert await tx.password_hash(gone["_id"]) is None
            assert await tx.get_station(stays["_id"]) == stays
            assert len(await tx.list_events(EventQuery(station_id=stays["_id"]))) == 1
            assert len(await tx.transactions(stays["_id"])) == 1
            assert len(await tx.meter_values(stays["_id"])) == 1
            assert await tx.password_hash(stays["_id"]) == f"hash-{stays['_id']}"
            assert await tx.delete_station(gone["_id"]) is False
        async with store.unit() as tx:  # the endpoint is free again
            await tx.create_station(station(gone["endpoint"]))

    run(scenario())


def test_mark_all_offline(store):
    on1 = station(online=True, lastConnectAt="2024-01-01T00:00:00.000Z")
    on2 = station(online=True)
    off = station(online=False, lastDisconnectAt="2023-01-01T00:00:00.000Z")
    now = "2024-06-01T00:00:00.000Z"

    async def scenario():
        await create(store, on1, on2, off)
        async with store.unit() as tx:
            stale = await tx.get_station(on1["_id"])
            async with store.unit() as other:
                assert await other.mark_all_offline(now) == 2
            with pytest.raises(StaleRecord):  # a write to the row like any other
                await tx.save_station(stale)
        assert await get(store, on1["_id"]) == {**on1, "online": False, "lastDisconnectAt": now}
        assert await get(store, on2["_id"]) == {**on2, "online": False, "lastDisconnectAt": now}
        assert await get(store, off["_id"]) == off
        async with store.unit() as tx:
            assert (await tx.list_stations_json(StationQuery(equals={"online": True})))[1] == 0
            assert (await tx.list_stations_json(StationQuery(equals={"online": False})))[1] == 3
            assert await tx.mark_all_offline(now) == 0

    run(scenario())


def test_passwords(store):
    doc = station()

    async def scenario():
        await create(store, doc)
        async with store.unit() as tx:
            assert await tx.password_hash(doc["_id"]) is None
            await tx.set_password_hash(doc["_id"], "first", "2024-01-01T00:00:00.000Z")
            assert await tx.password_hash(doc["_id"]) == "first"  # a unit reads its writes
        async with store.unit() as tx:
            assert await tx.password_hash(doc["_id"]) == "first"
            await tx.set_password_hash(doc["_id"], "second", "2024-01-02T00:00:00.000Z")
        async with store.unit() as tx:
            assert await tx.password_hash(doc["_id"]) == "second"
        assert "first" not in str(await get(store, doc["_id"]))  # never part of the record

    run(scenario())


# --- what stations report ---------------------------------------------------------------------


def test_events_oldest_first_filtered_and_limited(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            for i in range(5):
                await tx.add_event(
                    a["_id"],
                    f"2024-01-01T00:00:0{i}.000Z",
                    "session.odd" if i % 2 else "chargestation.even",
                    {"i": i, "deep": {"x": [i]}},
                    a["endpoint"],
                )
            await tx.add_event(
                b["_id"], "2024-01-02T00:00:00.000Z", "chargestation.even", {"i": 99}
            )
            await tx.add_event(None, "2024-01-03T00:00:00.000Z", "chargestation.unknown", {"i": 7})
        async with store.unit() as tx:

            async def numbers(**query) -> list[int]:
                return [e["data"]["i"] for e in await tx.list_events(EventQuery(**query))]

            every = await tx.list_events(EventQuery())
            assert [e["data"]["i"] for e in every] == [0, 1, 2, 3, 4, 99, 7]
            assert [e["seq"] for e in every] == sorted(e["seq"] for e in every)
            first = every[0]
            assert first == {
                "seq": first["seq"],
                "type": "chargestation.even",
                "chargestation": a["_id"],
                "endpoint": a["endpoint"],
                "createdAt": "2024-01-01T00:00:00.000Z",
                "data": {"i": 0, "deep": {"x": [0]}},
            }
            assert await numbers(station_id=a["_id"]) == [0, 1, 2, 3, 4]
            assert await numbers(types=("chargestation.even",)) == [0, 2, 4, 99]
            assert await numbers(types=("chargestation.*",)) == [0, 2, 4, 99, 7]
            assert await numbers(types=("session.*", "*.unknown")) == [1, 3, 7]
            assert await numbers(station_id=a["_id"], types=("session.*",)) == [1, 3]
            assert await numbers(after=every[4]["seq"]) == [99, 7]
            assert await numbers(
                since="2024-01-01T00:00:03.000Z", until="2024-01-02T00:00:00.000Z"
            ) == [3, 4, 99]
            assert await numbers(limit=2) == [0, 1]
            # newest: the latest, still oldest first
            assert await numbers(station_id=a["_id"], limit=2, newest=True) == [3, 4]
            assert await numbers(station_id="nobody") == []

    run(scenario())


def test_transactions(store):
    a, b = station(), station()

    def tx_doc(doc, key=None, **kw):
        return {
            "station_id": doc["_id"],
            "tx_key": key,
            "connector": 1,
            "idTag": "TAG",
            "meterStart": 10.5,
            "startedAt": "2024-01-01T00:00:00.000Z",
            "stoppedAt": None,
            "meterStop": None,
            "stopReason": None,
            "status": "Active",
            **kw,
        }

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            k1 = await tx.start_transaction(tx_doc(a))  # OCPP 1.6: the store picks the key
            k2 = await tx.start_transaction(tx_doc(a))
            k3 = await tx.start_transaction(tx_doc(b, "uuid-201"))  # OCPP 2.0.1: the station's
        assert isinstance(k1, str) and isinstance(k2, str) and k1 != k2
        assert int(k1) > 0 and int(k2) > 0
        assert k3 == "uuid-201"
        with pytest.raises(Conflict):  # one key per station
            async with store.unit() as tx:
                await tx.start_transaction(tx_doc(b, "uuid-201"))
        async with store.unit() as tx:
            assert await tx.get_transaction(a["_id"], k1) == tx_doc(a, k1)
            assert await tx.get_transaction(b["_id"], k3) == tx_doc(b, "uuid-201")
            assert await tx.get_transaction(b["_id"], k1) is None  # keys are per station
            done = await tx.update_transaction(
                a["_id"], k1, {"meterStop": 20.0, "status": "Completed"}
            )
            assert done == tx_doc(a, k1, meterStop=20.0, status="Completed")
            assert await tx.update_transaction(a["_id"], "nope", {"status": "x"}) is None
        async with store.unit() as tx:
            assert await tx.get_transaction(a["_id"], k1) == done
            assert [t["tx_key"] for t in await tx.transactions(a["_id"])] == [k1, k2]
            assert [t["tx_key"] for t in await tx.transactions()] == [k1, k2, k3]
            assert await tx.transactions("nobody") == []

    run(scenario())


def test_meter_values(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        values = [
            {
                "timestamp": "2024-01-01T00:00:00.000Z",
                "sampledValue": [{"value": "12.5", "measurand": "Energy.Active.Import.Register"}],
            }
        ]
        async with store.unit() as tx:
            await tx.add_meter_values(a["_id"], "7", 1, values)
            await tx.add_meter_values(a["_id"], None, 2, [{"v": 2}])
            await tx.add_meter_values(b["_id"], "7", 1, [{"v": 3}])
        async with store.unit() as tx:
            every = await tx.meter_values()
            assert every == [
                {"station_id": a["_id"], "tx_key": "7", "connector": 1, "values": values},
                {"station_id": a["_id"], "tx_key": None, "connector": 2, "values": [{"v": 2}]},
                {"station_id": b["_id"], "tx_key": "7", "connector": 1, "values": [{"v": 3}]},
            ]
            assert await tx.meter_values(a["_id"]) == every[:2]
            assert await tx.meter_values(a["_id"], "7") == every[:1]
            assert await tx.meter_values(tx_key="7") == [every[0], every[2]]

    run(scenario())


def session_doc(doc: dict, key: str | None, started: str | None, **kw) -> dict:
    """A transaction with a session `_id`, shaped like fleet/sessions.new's."""
    return {
        "_id": f"{next(_seq):024x}",
        "station_id": doc["_id"],
        "endpoint": doc["endpoint"],
        "tx_key": key,
        "connector": 1,
        "idTag": "TAG",
        "status": "Active",
        "startedAt": started,
        "stoppedAt": None,
        "meterStart": 0,
        "meterStop": None,
        **kw,
    }


def test_sessions_by_id_and_listed_newest_first(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        s1 = session_doc(a, "t1", "2024-01-01T10:00:00.000Z")
        s2 = session_doc(a, None, "2024-01-02T10:00:00.000Z", status="Completed")
        s3 = session_doc(b, "t3", "2024-01-03T10:00:00.000Z", status="Refused")
        # its start never seen: listed by its stop time
        s4 = session_doc(b, "t4", None, status="Completed", stoppedAt="2024-01-04T10:00:00.000Z")
        async with store.unit() as tx:
            for s in (s1, s2, s3, s4):
                await tx.start_transaction(s)
            await tx.start_transaction({"station_id": a["_id"], "tx_key": "no-id"})  # no _id
        ids = [s["_id"] for s in (s1, s2, s3, s4)]

        async def listed(**kw):
            async with store.unit() as tx:
                docs, total = await tx.list_sessions(SessionQuery(**kw))
            return [d["_id"] for d in docs], total

        async with store.unit() as tx:
            assert await tx.get_session(s2["_id"]) == s2  # its tx_key given by the store
            assert s2["tx_key"] not in (None, "t1")
            assert await tx.get_session("f" * 24) is None
        assert await listed() == (ids[::-1], 4)  # a transaction without _id is no session
        assert await listed(limit=2, offset=1) == (ids[2:0:-1], 4)
        assert await listed(limit=None) == (ids[::-1], 4)
        assert await listed(station_id=a["_id"]) == ([ids[1], ids[0]], 2)
        assert await listed(station_id="nobody") == ([], 0)
        assert await listed(status="Completed") == ([ids[3], ids[1]], 2)
        assert await listed(active=True) == ([ids[0]], 1)
        assert await listed(active=False) == ([ids[3], ids[2], ids[1]], 3)
        assert await listed(since="2024-01-02T10:00:00.000Z") == (ids[:0:-1], 3)
        assert await listed(until="2024-01-02T10:00:00.000Z") == ([ids[1], ids[0]], 2)
        both = {"since": "2024-01-02T00:00:00.000Z", "until": "2024-01-03T23:00:00.000Z"}
        assert await listed(**both) == ([ids[2], ids[1]], 2)
        # an update moves it in the lists (status, and a start learnt later)
        async with store.unit() as tx:
            await tx.update_transaction(a["_id"], "t1", {"status": "Completed"})
            await tx.update_transaction(b["_id"], "t4", {"startedAt": "2023-12-31T00:00:00.000Z"})
        assert await listed(active=True) == ([], 0)
        assert (await listed())[0] == [ids[2], ids[1], ids[0], ids[3]]
        assert (await listed(status="Completed"))[1] == 3

    run(scenario())


def test_a_session_without_a_start_is_listed_by_its_stop_or_when_recorded(store):
    a = station()

    async def scenario():
        await create(store, a)
        running = session_doc(a, "r", None, createdAt="2024-01-03T00:00:00.000Z")
        ended = session_doc(
            a,
            "e",
            None,
            status="Completed",
            stoppedAt="2024-01-02T00:00:00.000Z",
            createdAt="2024-01-09T00:00:00.000Z",
        )
        started = session_doc(a, "s", "2024-01-01T00:00:00.000Z")
        async with store.unit() as tx:
            for s in (running, ended, started):
                await tx.start_transaction(s)
            docs, _ = await tx.list_sessions(SessionQuery())
            assert [d["tx_key"] for d in docs] == ["r", "e", "s"]
            window = SessionQuery(
                since="2024-01-02T00:00:00.000Z", until="2024-01-02T23:00:00.000Z"
            )
            assert [d["tx_key"] for d in (await tx.list_sessions(window))[0]] == ["e"]

    run(scenario())


def test_meter_values_are_paged_oldest_or_newest_first(store):
    a = station()

    async def scenario():
        await create(store, a)
        async with store.unit() as tx:
            for i in range(5):
                await tx.add_meter_values(a["_id"], "7", 1, [{"i": i}])
            await tx.add_meter_values(a["_id"], None, 1, [{"i": 99}])

        async def page(**kw):
            async with store.unit() as tx:
                rows = await tx.meter_values(a["_id"], "7", **kw)
            return [r["values"][0]["i"] for r in rows]

        assert await page() == [0, 1, 2, 3, 4]
        assert await page(limit=2) == [0, 1]
        assert await page(limit=2, offset=2) == [2, 3]
        assert await page(limit=2, offset=4) == [4]
        assert await page(offset=5) == []
        assert await page(limit=2, newest=True) == [4, 3]
        assert await page(limit=2, offset=4, newest=True) == [0]

    run(scenario())


# --- the frame log (fleet/frames.py) ---------------------------------------------------------

T0 = 1_700_000_000.0  # epoch seconds of the first test frame


def frame(i: int, kind: int = 2, action: str | None = "Heartbeat", **fields) -> tuple:
    """A frame's fields (an ocppj.Trace's, as store.frame_json takes them), `i` ms after T0."""
    text = fields.pop("text", f'[{kind},"m{i}","{action}",{{}}]')
    f = {
        "at": T0 + i / 1000,
        "direction": "in" if i % 2 == 0 else "out",
        "kind": kind,
        "id": f"m{i}",
        "action": action,
        "size": len(text.encode() if isinstance(text, str) else text),
        "latency": None if i % 2 == 0 else 0.0125,
        "error": None,
        "text": text,
        **fields,
    }
    return tuple(f.values())


def chunk(sid: str, frames: list[tuple]):
    """A station's frames as written at once (store.FrameChunk)."""
    from edrvctl.store import FrameChunk, chunk_data, frame_json

    return FrameChunk(
        sid,
        int(frames[0][0] * 1000),
        int(frames[-1][0] * 1000),
        len(frames),
        sum(f[7] is not None for f in frames),
        chunk_data(b"".join(frame_json(*f) + b"," for f in frames)),
    )


async def frames_of(store: Store, sid: str, **query) -> tuple[list[dict], bool]:
    from edrvctl.store import FrameQuery

    async with store.unit() as tx:
        return await tx.list_frames(FrameQuery(sid, **query))


def test_frames_are_kept_with_rising_ids_and_read_back_oldest_first(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            firsts = await tx.add_frames(
                [chunk(a["_id"], [frame(0), frame(1)]), chunk(b["_id"], [frame(2)])]
            )
            later = await tx.add_frames([chunk(a["_id"], [frame(3, kind=4, error="NotSupported")])])
        assert firsts[0] < firsts[1] < later[0]  # ids rise in the order frames are added
        found, more = await frames_of(store, a["_id"])
        assert not more
        assert [f["seq"] for f in found] == [firsts[0], firsts[0] + 1, later[0]]
        assert found[0] == {
            "seq": firsts[0],
            "chargestation": a["_id"],
            "at": int(T0 * 1000),
            "direction": "in",
            "kind": 2,
            "messageId": "m0",
            "action": "Heartbeat",
            "size": len('[2,"m0","Heartbeat",{}]'),
            "latency": None,
            "error": None,
            "text": '[2,"m0","Heartbeat",{}]',
            "truncated": False,
        }
        assert found[1]["latency"] == 0.0125 and found[1]["direction"] == "out"
        assert found[2]["error"] == "NotSupported" and found[2]["kind"] == 4
        assert [f["messageId"] for f in (await frames_of(store, b["_id"]))[0]] == ["m2"]
        assert await frames_of(store, "nobody") == ([], False)

    run(scenario())


def test_frames_pages_and_filters(store):
    a = station()

    async def scenario():
        await create(store, a)
        async with store.unit() as tx:
            for start in range(0, 30, 10):  # three writes of ten
                await tx.add_frames(
                    [
                        chunk(
                            a["_id"],
                            [
                                frame(i, action="MeterValues" if i % 3 == 0 else "Heartbeat")
                                if i % 7
                                else frame(i, kind=0, action=None, error="FormatViolation")
                                for i in range(start, start + 10)
                            ],
                        )
                    ]
                )
        every, _ = await frames_of(store, a["_id"], limit=1000)
        ids = [f["seq"] for f in every]
        assert [f["messageId"] for f in every] == [f"m{i}" for i in range(30)]
        # the newest page, oldest first; then the one before it; then the rest
        page, more = await frames_of(store, a["_id"], limit=12)
        assert [f["seq"] for f in page] == ids[18:] and more
        page, more = await frames_of(store, a["_id"], limit=12, before=ids[18])
        assert [f["seq"] for f in page] == ids[6:18] and more
        page, more = await frames_of(store, a["_id"], limit=12, before=ids[6])
        assert [f["seq"] for f in page] == ids[:6] and not more
        # forward from an id
        page, more = await frames_of(store, a["_id"], limit=12, after=ids[4])
        assert [f["seq"] for f in page] == ids[5:17] and more
        page, more = await frames_of(store, a["_id"], limit=100, after=ids[-1])
        assert page == [] and not more
        # filters: action (an answer's too), errors, since/until (ms)
        page, _ = await frames_of(store, a["_id"], actions=("MeterValues",), limit=100)
        assert [f["messageId"] for f in page] == [
            f"m{i}" for i in range(30) if i % 21 and not i % 3
        ]
        page, _ = await frames_of(store, a["_id"], errors=True, limit=100)
        assert [(f["messageId"], f["kind"]) for f in page] == [
            ("m0", 0),
            ("m7", 0),
            ("m14", 0),
            ("m21", 0),
            ("m28", 0),
        ]
        page, _ = await frames_of(store, a["_id"], errors=True, limit=2)
        assert [f["messageId"] for f in page] == ["m21", "m28"]
        t = int(T0 * 1000)
        page, _ = await frames_of(store, a["_id"], since=t + 8, until=t + 12, limit=100)
        assert [f["messageId"] for f in page] == ["m8", "m9", "m10", "m11", "m12"]

    run(scenario())


def test_a_frame_text_is_kept_as_given_cut_ones_say_so(store):
    a = station()
    whole = '[2,"x","DataTransfer",{"data":"\u00e9t\u00e9 \u2603"}]'
    cut = '[2,"y","DataTransfer",{"data":"\u00e9'.encode()  # ends inside a character
    cut = cut[:-1]
    ours = orjson.dumps([3, "z", {"a": 0.1, "b": '\u00e9\u2603\n"', "c": [1e-7, 2**62, -0.0]}])

    async def scenario():
        await create(store, a)
        async with store.unit() as tx:
            await tx.add_frames(
                [
                    chunk(
                        a["_id"],
                        [
                            frame(0, text=whole),
                            frame(1, text=b'[3,"x",{"status":"Accepted"}]'),
                            frame(2, text=cut, size=9000),
                            frame(3, text="", size=120),  # refused unread: no text kept
                            frame(5, text=ours),  # sent by us (odd: out), exactly as sent
                        ],
                    )
                ]
            )
        found, _ = await frames_of(store, a["_id"])
        assert found[0]["text"] == whole and not found[0]["truncated"]
        assert found[0]["size"] == len(whole.encode())
        assert found[1]["text"] == '[3,"x",{"status":"Accepted"}]' and not found[1]["truncated"]
        assert found[2]["truncated"] and found[2]["size"] == 9000
        assert found[2]["text"].endswith("\ufffd")  # the cut character, replaced
        assert found[3] | {"text": "", "truncated": True} == found[3]
        assert found[4]["text"].encode() == ours and not found[4]["truncated"]

    run(scenario())


def test_frames_read_back_the_same_however_they_were_written(store):
    from edrvctl.store import frame_json

    a, b = station(), station()  # a: one write of 100 (compressed), b: 100 writes of one

    async def scenario():
        await create(store, a, b)
        frames = [frame(i, kind=2 + i % 3, action=f"Action{i % 7}") for i in range(100)]
        as_json = len(b",".join(frame_json(*f) for f in frames)) + 2
        assert len(chunk(a["_id"], frames).data) < as_json / 2  # compressed
        async with store.unit() as tx:
            await tx.add_frames([chunk(a["_id"], frames)])
            await tx.add_frames([chunk(b["_id"], [f]) for f in frames])
        in_one = (await frames_of(store, a["_id"], limit=1000))[0]
        one_by_one = (await frames_of(store, b["_id"], limit=1000))[0]
        ignore = ("seq", "chargestation")
        assert [{k: v for k, v in f.items() if k not in ignore} for f in in_one] == [
            {k: v for k, v in f.items() if k not in ignore} for f in one_by_one
        ]
        assert len(in_one) == 100

    run(scenario())


def test_prune_frames_keeps_a_stations_newest(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            for start in range(0, 25, 5):
                await tx.add_frames([chunk(a["_id"], [frame(i) for i in range(start, start + 5)])])
            await tx.add_frames([chunk(b["_id"], [frame(i) for i in range(3)])])
        async with store.unit() as tx:
            assert await tx.prune_frames(a["_id"], 12) == 12  # whole writes and part of one
        found, _ = await frames_of(store, a["_id"], limit=100)
        assert [f["messageId"] for f in found] == [f"m{i}" for i in range(13, 25)]
        async with store.unit() as tx:
            assert await tx.prune_frames(a["_id"], 12) == 12  # nothing more to do
            # a limit of one write a time: the oldest goes, the next one waits for the next call
            assert await tx.prune_frames(a["_id"], 3, limit=1) == 3 + 5
            assert await tx.prune_frames(a["_id"], 3, limit=1) == 3
        found, _ = await frames_of(store, a["_id"], limit=100)
        assert [f["messageId"] for f in found] == ["m22", "m23", "m24"]
        assert len((await frames_of(store, b["_id"]))[0]) == 3  # another station's stay
        async with store.unit() as tx:
            assert await tx.prune_frames(a["_id"], 0) == 0
            assert await tx.prune_frames("nobody", 5) == 0
        assert (await frames_of(store, a["_id"]))[0] == []

    run(scenario())


def test_expire_frames_drops_the_old_ones_a_batch_at_a_time(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            for i in range(6):  # six writes, 1 s apart, of two stations
                sid = (a, b)[i % 2]["_id"]
                await tx.add_frames([chunk(sid, [frame(1000 * i), frame(1000 * i + 1)])])
        cutoff = int(T0 * 1000) + 3500  # the first four writes are older
        async with store.unit() as tx:
            assert await tx.expire_frames(cutoff, limit=3) == 3
        async with store.unit() as tx:
            assert await tx.expire_frames(cutoff, limit=3) == 1
            assert await tx.expire_frames(cutoff, limit=3) == 0
        assert [f["messageId"] for f in (await frames_of(store, a["_id"]))[0]] == ["m4000", "m4001"]
        assert [f["messageId"] for f in (await frames_of(store, b["_id"]))[0]] == ["m5000", "m5001"]

    run(scenario())


def test_frames_go_with_their_station(store):
    gone, stays = station(), station()

    async def scenario():
        await create(store, gone, stays)
        async with store.unit() as tx:
            await tx.add_frames([chunk(gone["_id"], [frame(0)]), chunk(stays["_id"], [frame(1)])])
        async with store.unit() as tx:
            assert await tx.delete_station(gone["_id"])
        assert (await frames_of(store, gone["_id"]))[0] == []
        assert len((await frames_of(store, stays["_id"]))[0]) == 1

    run(scenario())


def test_frames_are_written_only_with_their_unit(store):
    a = station()

    async def scenario():
        await create(store, a)
        with pytest.raises(RuntimeError):
            async with store.unit() as tx:
                await tx.add_frames([chunk(a["_id"], [frame(0)])])
                raise RuntimeError("undone")
        assert (await frames_of(store, a["_id"]))[0] == []

    run(scenario())


# --- actions ------------------------------------------------------------------------------


def action(station_id: str, **fields) -> dict:
    """An Action shaped like fleet.actions.new_action's; createdAt increases with each one."""
    n = next(_seq)
    at = (EPOCH + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    doc = {
        "_id": f"a{n:023x}",
        "type": "reset",
        "status": "requested",
        "chargestation": station_id,
        "connector": None,
        "data": {"hard": False},
        "response_data": None,
        "createdAt": at,
        "updatedAt": at,
        "stage": "queued",
        "progress": [],
        "outcome": "pending",
        "error": None,
        "deadline": None,
    }
    doc.update(fields)
    return doc


def test_actions_create_get_and_compare_and_set_save(store):
    cs = station()
    a = action(cs["_id"])

    async def scenario():
        await create(store, cs)
        async with store.unit() as tx:
            await tx.create_action(a)
        async with store.unit() as tx:
            with pytest.raises(Conflict):
                await tx.create_action(a)
        async with store.unit() as tx:
            assert await tx.get_action(a["_id"]) == a
            assert await tx.get_action("nope") is None
        async with store.unit() as tx:
            with pytest.raises(StaleRecord):  # never read in this unit
                await tx.save_action({**a, "status": "completed"})
        async with store.unit() as tx:
            mine = await tx.get_action(a["_id"])
            async with store.unit() as other:
                theirs = await other.get_action(a["_id"])
                theirs["progress"].append({"status": "Downloading", "at": "t"})
                await other.save_action(theirs)
            mine["status"] = "completed"
            with pytest.raises(StaleRecord):  # the other writer's change is not overwritten
                await tx.save_action(mine)
        async with store.unit() as tx:
            mine = await tx.get_action(a["_id"])
            assert mine["progress"] == [{"status": "Downloading", "at": "t"}]
            mine.update(status="completed", outcome="succeeded", stage="done")
            await tx.save_action(mine)
            mine["updatedAt"] = "2030-01-01T00:00:00.000Z"
            await tx.save_action(mine)  # twice in one unit: its own write is no conflict
        async with store.unit() as tx:
            assert await tx.get_action(a["_id"]) == mine

    run(scenario())


def test_actions_list_filters_pages_newest_first(store):
    one, two = station(), station()
    docs = [
        action(one["_id"]),
        action(one["_id"], type="clear_cache", status="completed", outcome="succeeded"),
        action(two["_id"], status="failed", outcome="failed"),
        action(one["_id"], type="clear_cache", status="completed", outcome="succeeded"),
    ]
    docs[1]["batch"] = docs[2]["batch"] = "b1"

    async def ids(**kw) -> tuple[list[str], int]:
        async with store.unit() as tx:
            found, total = await tx.list_actions(ActionQuery(**kw))
        return [d["_id"] for d in found], total

    async def scenario():
        await create(store, one, two)
        async with store.unit() as tx:
            for d in reversed(docs):  # not in createdAt order
                await tx.create_action(d)
        every = [d["_id"] for d in reversed(docs)]
        assert await ids() == (every, 4)
        assert await ids(limit=2, offset=1) == (every[1:3], 4)
        assert await ids(limit=None) == (every, 4)
        assert await ids(equals={"chargestation": two["_id"]}) == ([docs[2]["_id"]], 1)
        assert await ids(equals={"type": "clear_cache", "chargestation": one["_id"]}) == (
            [docs[3]["_id"], docs[1]["_id"]],
            2,
        )
        assert await ids(equals={"status": "failed"}) == ([docs[2]["_id"]], 1)
        assert await ids(equals={"outcome": "pending"}) == ([docs[0]["_id"]], 1)
        assert await ids(equals={"batch": "b1"}) == ([docs[2]["_id"], docs[1]["_id"]], 2)
        assert await ids(equals={"batch": "b2"}) == ([], 0)
        assert await ids(created_from=docs[1]["createdAt"], created_to=docs[2]["createdAt"]) == (
            [docs[2]["_id"], docs[1]["_id"]],
            2,
        )
        async with store.unit() as tx:
            with pytest.raises(UsageError, match="cannot filter actions"):
                await tx.list_actions(ActionQuery(equals={"doc": "x"}))
        async with store.unit() as tx:  # a deleted station takes its actions along
            await tx.delete_station(two["_id"])
        assert (await ids())[1] == 3

    run(scenario())


def test_fail_pending_actions(store):
    cs = station()
    asked = action(cs["_id"])  # never answered
    following = action(cs["_id"], status="completed", stage="downloading")
    done = action(cs["_id"], status="completed", outcome="succeeded", stage="done")
    now = "2024-06-01T00:00:00.000Z"
    error = {"code": "Interrupted", "description": "the server stopped"}

    async def scenario():
        await create(store, cs)
        async with store.unit() as tx:
            for d in (asked, following, done):
                await tx.create_action(d)
        async with store.unit() as tx:
            stale = await tx.get_action(asked["_id"])
            async with store.unit() as other:
                assert await other.fail_pending_actions("the server stopped", now) == 2
            with pytest.raises(StaleRecord):  # a write to the row like any other
                await tx.save_action(stale)
        async with store.unit() as tx:
            got = await tx.get_action(asked["_id"])
            assert got == {
                **asked,
                "status": "failed",
                "outcome": "failed",
                "error": error,
                "updatedAt": now,
            }
            got = await tx.get_action(following["_id"])
            assert got == {**following, "outcome": "failed", "error": error, "updatedAt": now}
            assert await tx.get_action(done["_id"]) == done
            _, total = await tx.list_actions(ActionQuery(equals={"outcome": "failed"}))
            assert total == 2
            assert await tx.fail_pending_actions("again", now) == 0

    run(scenario())


def test_read_only_store_refuses_writes(store, backend):
    doc = station()
    run(create(store, doc))
    reader = backend.reader()
    if reader is None:
        pytest.skip("this backend has no second connection to the same data")

    async def scenario():
        assert await get(reader, doc["_id"]) == doc
        writes = [
            lambda tx: tx.create_station(station()),
            lambda tx: tx.add_event(doc["_id"], "t", "k", {}),
            lambda tx: tx.set_last_message_at({doc["endpoint"]: "t"}),
            lambda tx: tx.mark_all_offline("t"),
            lambda tx: tx.delete_station(doc["_id"]),
            lambda tx: tx.set_password_hash(doc["_id"], "h", "t"),
            lambda tx: tx.start_transaction({"station_id": doc["_id"], "tx_key": None}),
            lambda tx: tx.add_meter_values(doc["_id"], None, 1, []),
            lambda tx: tx.create_webhook(webhook(), "s", 0),
        ]
        for write in writes:
            with pytest.raises(StoreUnavailable):
                async with reader.unit() as tx:
                    await write(tx)
        async with reader.unit() as tx:
            mine = await tx.get_station(doc["_id"])
            with pytest.raises(StoreUnavailable):
                await tx.save_station(mine)
        assert await get(store, doc["_id"]) == doc
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery()) == []

    run(scenario())


# --- webhooks ---------------------------------------------------------------------------------


def webhook(**fields) -> dict:
    """A record shaped like fleet.webhooks.Webhooks.create's."""
    n = next(_seq)
    at = (EPOCH + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    doc = {
        "_id": f"w{n:023x}",
        "object": "webhook",
        "url": "http://receiver.test/hook",
        "events": ["chargestation.*"],
        "active": True,
        "description": None,
        "createdAt": at,
        "updatedAt": at,
    }
    doc.update(fields)
    return doc


def delivery(webhook_id: str, seq: int, lane: str, at: str = "2024-01-01T00:00:00.000Z") -> dict:
    """A new delivery shaped like fleet.webhooks'; `seq`, `lane` and `body` are columns."""
    return {
        "webhook": webhook_id,
        "event": str(seq),
        "type": "chargestation.online",
        "chargestation": lane,
        "endpoint": None,
        "status": "pending",
        "attempts": 0,
        "lastStatus": None,
        "lastError": None,
        "nextAttemptAt": at,
        "deliveredAt": None,
        "eventAt": at,
        "createdAt": at,
        "updatedAt": at,
        "seq": seq,
        "lane": lane,
        "body": b'{"_id":"%d"}' % seq,
    }


def record(d: dict) -> dict:
    """A delivery as lists show it: no columns."""
    return {k: v for k, v in d.items() if k not in ("seq", "lane", "body")}


def test_webhooks_create_get_update_and_delete_with_their_deliveries(store):
    a, b = webhook(), webhook(active=False)

    async def scenario():
        async with store.unit() as tx:
            await tx.create_webhook(a, "secret-a", 5)
            await tx.create_webhook(b, "secret-b", 0)
        async with store.unit() as tx:
            with pytest.raises(Conflict):
                await tx.create_webhook(a, "other", 0)
        async with store.unit() as tx:
            assert await tx.get_webhook(a["_id"]) == a
            assert await tx.get_webhook("nope") is None
            assert await tx.list_webhooks() == [a, b]  # oldest first
            assert await tx.webhook_internals() == {
                a["_id"]: ("secret-a", 5),
                b["_id"]: ("secret-b", 0),
            }
            changed = {**a, "url": "https://elsewhere.test/", "updatedAt": "later"}
            assert await tx.update_webhook(changed) is True
            assert await tx.update_webhook({**b, "active": True}, cursor=9) is True
            assert await tx.update_webhook(webhook()) is False
            assert await tx.set_webhook_secret(a["_id"], "secret-a2") is True
            assert await tx.set_webhook_secret("nope", "x") is False
            await tx.add_deliveries(a["_id"], [delivery(a["_id"], 1, "S")])
            await tx.add_deliveries(b["_id"], [delivery(b["_id"], 1, "S")])
        async with store.unit() as tx:
            assert await tx.get_webhook(a["_id"]) == changed
            assert await tx.webhook_internals() == {
                a["_id"]: ("secret-a2", 5),
                b["_id"]: ("secret-b", 9),
            }
            assert await tx.delete_webhook(a["_id"]) is True
            assert await tx.delete_webhook(a["_id"]) is False
        async with store.unit() as tx:
            assert await tx.get_webhook(a["_id"]) is None
            assert await tx.list_deliveries(a["_id"]) == []  # gone with it
            assert len(await tx.list_deliveries(b["_id"])) == 1
            assert await tx.pending_deliveries() == {b["_id"]: 1}

    run(scenario())


def test_webhook_cursors_never_move_back(store):
    a = webhook()

    async def scenario():
        async with store.unit() as tx:
            await tx.create_webhook(a, "s", 5)
            await tx.set_webhook_cursors({a["_id"]: 9, "gone": 3})
        async with store.unit() as tx:
            await tx.set_webhook_cursors({a["_id"]: 7})
        async with store.unit() as tx:
            assert await tx.webhook_internals() == {a["_id"]: ("s", 9)}

    run(scenario())


def test_deliveries_are_added_once_and_only_for_a_webhook_that_exists(store):
    a = webhook()

    async def scenario():
        async with store.unit() as tx:
            await tx.create_webhook(a, "s", 0)
            first = [delivery(a["_id"], seq, "S") for seq in (3, 4, 5)]
            assert await tx.add_deliveries(a["_id"], first) == 3
        async with store.unit() as tx:
            again = [delivery(a["_id"], seq, "S") for seq in (5, 6)]
            assert await tx.add_deliveries(a["_id"], again) == 1  # 5 it has already
            assert await tx.add_deliveries("gone", [delivery("gone", 7, "S")]) == 0
        async with store.unit() as tx:
            listed = await tx.list_deliveries(a["_id"])
            assert [d["event"] for d in listed] == ["6", "5", "4", "3"]  # newest first
            ids = [int(d["_id"]) for d in reversed(listed)]
            assert ids == sorted(ids)  # in the order added
            assert listed[-1] == {"_id": listed[-1]["_id"], **record(first[0])}
            assert [d["event"] for d in await tx.list_deliveries(a["_id"], limit=2)] == ["6", "5"]
            assert await tx.list_deliveries(a["_id"], "failed") == []
            assert await tx.list_deliveries("gone") == []
            assert await tx.pending_deliveries() == {a["_id"]: 4}

    run(scenario())


def test_delivery_heads_are_the_oldest_pending_of_each_lane_soonest_first(store):
    a, other = webhook(), webhook()
    early, late = "2024-01-01T00:00:00.000Z", "2024-01-01T00:05:00.000Z"

    async def scenario():
        async with store.unit() as tx:
            await tx.create_webhook(a, "s", 0)
            await tx.create_webhook(other, "s", 0)
            await tx.add_deliveries(
                a["_id"],
                [
                    delivery(a["_id"], 1, "C", late),
                    delivery(a["_id"], 2, "A", early),
                    delivery(a["_id"], 3, "C", early),
                    delivery(a["_id"], 4, "A", early),
                    delivery(a["_id"], 5, "B", early),
                ],
            )
            await tx.add_deliveries(other["_id"], [delivery(other["_id"], 6, "A", early)])
        async with store.unit() as tx:
            heads = await tx.delivery_heads(a["_id"], 10)
            assert [(h["lane"], h["seq"]) for h in heads] == [("A", 2), ("B", 5), ("C", 1)]
            assert heads[0]["body"] == b'{"_id":"2"}' and heads[0]["event"] == "2"
            assert [h["seq"] for h in await tx.delivery_heads(a["_id"], 1)] == [2]
            # retried later, a head stays the head of its lane (FIFO) ...
            retry = {**record(heads[0]), "attempts": 1, "nextAttemptAt": late}
            assert await tx.save_delivery(retry) is True
        async with store.unit() as tx:
            heads = await tx.delivery_heads(a["_id"], 10)  # (equally soon: oldest first)
            assert [(h["lane"], h["seq"]) for h in heads] == [("B", 5), ("C", 1), ("A", 2)]
            assert heads[2]["attempts"] == 1
            # ... until it is delivered or given up
            done = {**record(heads[2]), "status": "delivered", "deliveredAt": late}
            assert await tx.save_delivery(done) is True
            given_up = {**record(heads[1]), "status": "failed", "lastError": "HTTP 500"}
            assert await tx.save_delivery(given_up) is True
        async with store.unit() as tx:
            heads = await tx.delivery_heads(a["_id"], 10)
            assert [(h["lane"], h["seq"]) for h in heads] == [("C", 3), ("A", 4), ("B", 5)]
            assert await tx.save_delivery(done) is False  # finished: not changed again
            assert {d["event"]: d["status"] for d in await tx.list_deliveries(a["_id"])} == {
                "5": "pending",
                "4": "pending",
                "3": "pending",
                "2": "delivered",
                "1": "failed",
            }
            assert await tx.pending_deliveries() == {a["_id"]: 3, other["_id"]: 1}

    run(scenario())


def test_the_oldest_pending_deliveries_fail_past_a_budget_and_finished_ones_are_pruned(store):
    a = webhook()
    now = "2024-06-01T00:00:00.000Z"

    async def scenario():
        async with store.unit() as tx:
            await tx.create_webhook(a, "s", 0)
            await tx.add_deliveries(a["_id"], [delivery(a["_id"], n, f"S{n}") for n in range(6)])
        async with store.unit() as tx:
            assert await tx.fail_oldest_deliveries(a["_id"], 4, "backlog over 4", now) == 2
            assert await tx.fail_oldest_deliveries(a["_id"], 4, "backlog over 4", now) == 0
        async with store.unit() as tx:
            failed = await tx.list_deliveries(a["_id"], "failed")
            assert [d["event"] for d in failed] == ["1", "0"]
            assert failed[0] == {
                **record(delivery(a["_id"], 1, "S1")),
                "_id": failed[0]["_id"],
                "status": "failed",
                "lastError": "backlog over 4",
                "nextAttemptAt": None,
                "updatedAt": now,
            }
            assert [h["seq"] for h in await tx.delivery_heads(a["_id"], 10)] == [2, 3, 4, 5]
            head = (await tx.delivery_heads(a["_id"], 1))[0]
            await tx.save_delivery({**record(head), "status": "delivered", "updatedAt": now})
        async with store.unit() as tx:  # by count: the newest finished one stays
            assert await tx.prune_deliveries(a["_id"], 1, "2000-01-01T00:00:00.000Z") == 2
            assert [d["event"] for d in await tx.list_deliveries(a["_id"])] == ["5", "4", "3", "2"]
        async with store.unit() as tx:  # by age: every finished one older than `before`
            assert await tx.prune_deliveries(a["_id"], 100, "2030-01-01T00:00:00.000Z") == 1
            assert [d["event"] for d in await tx.list_deliveries(a["_id"])] == ["5", "4", "3"]
            assert await tx.pending_deliveries() == {a["_id"]: 3}  # pending ones are never pruned

    run(scenario())


# --- id tokens (fleet/tokens.py) ---------------------------------------------------------------


def token(physical_id: str, **fields) -> dict:
    """A token shaped like fleet.tokens.new_token's; createdAt increases with each one."""
    n = next(_seq)
    at = (EPOCH + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    doc = {
        "_id": f"{n:024x}",
        "physicalId": physical_id,
        "type": "ISO14443",
        "active": True,
        "organization": None,
        "expiryDate": None,
        "parentIdTag": None,
        "meta_data": {},
        "createdAt": at,
        "updatedAt": at,
    }
    doc.update(fields)
    return doc


def test_tokens_unique_per_type_found_without_case_and_compare_and_set(store):
    a, b = token("CARD"), token("CARD", type="KeyCode")

    async def scenario():
        async with store.unit() as tx:
            await tx.create_token(a)
            await tx.create_token(b)
        with pytest.raises(Conflict):  # the same physicalId and type, in another case
            async with store.unit() as tx:
                await tx.create_token(token("card"))
        async with store.unit() as tx:
            assert await tx.get_token(a["_id"]) == a
            assert await tx.get_token("nope") is None
            assert await tx.find_tokens("card") == [a, b]  # oldest first
            assert await tx.find_tokens("Card", "KeyCode") == [b]
            assert await tx.find_tokens("card", "Local") == []
            assert await tx.find_tokens("CAR") == []
        # compare-and-set: a token changed since it was read is stale
        async with store.unit() as tx:
            mine = await tx.get_token(a["_id"])
        async with store.unit() as tx:
            theirs = await tx.get_token(a["_id"])
            await tx.save_token({**theirs, "active": False})
        with pytest.raises(StaleRecord):
            async with store.unit() as tx:
                await tx.save_token({**mine, "organization": "x"})
        with pytest.raises(StaleRecord):  # never read in this unit
            async with store.unit() as tx:
                await tx.save_token(a)
        with pytest.raises(Conflict):  # onto another token's physicalId and type
            async with store.unit() as tx:
                doc = await tx.get_token(b["_id"])
                await tx.save_token({**doc, "type": "ISO14443"})
        async with store.unit() as tx:
            assert (await tx.get_token(a["_id"]))["active"] is False
            assert await tx.delete_token(a["_id"]) is True
            assert await tx.delete_token(a["_id"]) is False
            assert await tx.find_tokens("CARD") == [b]

    run(scenario())


def test_tokens_list_filters_pages_and_usable_in(store):
    docs = [
        token("A", organization="acme"),
        token("B", organization="globex", active=False),
        token("C"),
        token("D", organization="acme", type="KeyCode"),
    ]

    async def scenario():
        async with store.unit() as tx:
            for d in docs:
                await tx.create_token(d)

        async def ids(**kw) -> tuple[list[str], int]:
            async with store.unit() as tx:
                found, total = await tx.list_tokens(TokenQuery(**kw))
            return [d["physicalId"] for d in found], total

        assert await ids() == (["D", "C", "B", "A"], 4)  # newest first
        assert await ids(newest_first=False, limit=2, offset=1) == (["B", "C"], 4)
        assert await ids(equals={"organization": "acme"}) == (["D", "A"], 2)
        assert await ids(equals={"active": False}) == (["B"], 1)
        assert await ids(equals={"type": "KeyCode"}) == (["D"], 1)
        assert await ids(equals={"physicalId": "c"}) == (["C"], 1)
        assert await ids(equals={"organization": None}) == (["C"], 1)
        # usable at a station of acme: its own and those of no organization
        assert await ids(usable_in="acme", newest_first=False) == (["A", "C", "D"], 3)
        with pytest.raises(UsageError):
            await ids(equals={"meta_data": 1})

    run(scenario())


def test_tokens_import_creates_or_updates_in_one_unit(store):
    kept = token("A", meta_data={"driver": "ann"}, parentIdTag="OLD")

    async def scenario():
        async with store.unit() as tx:
            await tx.create_token(kept)
        new = [
            token("a", active=False, parentIdTag="NEW", organization="acme"),
            token("B"),
            token("A", type="KeyCode"),
        ]
        async with store.unit() as tx:
            assert await tx.import_tokens(new) == 2  # created; one updated
        async with store.unit() as tx:
            got = await tx.find_tokens("A", "ISO14443")
            assert got == [
                {
                    **new[0],
                    "_id": kept["_id"],
                    "createdAt": kept["createdAt"],
                    "meta_data": {"driver": "ann"},
                }
            ]
            _, total = await tx.list_tokens(TokenQuery(equals={"organization": "acme"}))
            assert total == 1  # the indexed columns follow the document
            assert len(await tx.find_tokens("b")) == 1
        # a unit that fails imports nothing
        with pytest.raises(RuntimeError):
            async with store.unit() as tx:
                await tx.import_tokens([token("C"), token("D")])
                raise RuntimeError("later in the same unit")
        async with store.unit() as tx:
            assert await tx.find_tokens("C") == []

    run(scenario())


def test_active_transactions_of_an_id_tag(store):
    a, b = station(), station()

    def tx_doc(doc, tag, status="Active"):
        return {"station_id": doc["_id"], "tx_key": None, "idTag": tag, "status": status}

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            k1 = await tx.start_transaction(tx_doc(a, "TAG"))
            await tx.start_transaction(tx_doc(b, "tag"))
            await tx.start_transaction(tx_doc(b, "TAG", "Refused"))
            await tx.start_transaction(tx_doc(b, "OTHER"))
        async with store.unit() as tx:
            running = await tx.active_transactions("Tag")
            assert [(t["station_id"], t["idTag"]) for t in running] == [
                (a["_id"], "TAG"),
                (b["_id"], "tag"),
            ]
            await tx.update_transaction(a["_id"], k1, {"status": "Completed"})
        async with store.unit() as tx:
            assert [t["idTag"] for t in await tx.active_transactions("TAG")] == ["tag"]
            assert await tx.active_transactions("nobody") == []

    run(scenario())


def test_local_lists_kept_per_station_and_deleted_with_it(store):
    a, b = station(), station()

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            assert await tx.get_local_list(a["_id"]) is None
            await tx.set_local_list(a["_id"], {"version": 1, "entries": [["A", "ISO14443"]]})
            await tx.set_local_list(b["_id"], {"version": 7, "entries": []})
            await tx.set_local_list(a["_id"], {"version": 2, "entries": []})
        async with store.unit() as tx:
            assert await tx.get_local_list(a["_id"]) == {"version": 2, "entries": []}
            await tx.delete_station(a["_id"])
        async with store.unit() as tx:
            assert await tx.get_local_list(a["_id"]) is None
            assert (await tx.get_local_list(b["_id"]))["version"] == 7

    run(scenario())


# --- retention and health -----------------------------------------------------------------


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


PAST, FUTURE = "2000-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"


def test_prune_events_by_age_then_count_in_batches(store):
    cs = station()

    async def scenario():
        await create(store, cs)
        async with store.unit() as tx:
            for i in range(10):  # stored out of time order: the age decides, not the seq
                at = iso(EPOCH + timedelta(minutes=(i * 7) % 10))
                await tx.add_event(cs["_id"], at, "chargestation.booted", {"i": i}, "ep")
        cutoff = iso(EPOCH + timedelta(minutes=5))
        async with store.unit() as tx:
            assert await tx.prune_events(cutoff, 3) == 3  # a batch: at most `limit`
        async with store.unit() as tx:
            assert await tx.prune_events(cutoff, 100) == 2
            assert await tx.prune_events(cutoff, 100) == 0
        async with store.unit() as tx:
            left = await tx.list_events(EventQuery(limit=None))
        assert sorted(e["createdAt"] for e in left) == [
            iso(EPOCH + timedelta(minutes=m)) for m in range(5, 10)
        ]
        async with store.unit() as tx:  # and at most `keep`, the latest stored
            assert await tx.prune_events(PAST, 100, keep=2) == 3
        async with store.unit() as tx:
            kept = await tx.list_events(EventQuery(limit=None))
        assert [e["seq"] for e in kept] == [e["seq"] for e in left][-2:]

    run(scenario())


def test_prune_meter_values_keeps_a_session_together(store):
    a, b = station(), station()

    def tx_doc(doc, key, status):
        return {"station_id": doc["_id"], "tx_key": key, "connector": 1, "status": status}

    async def prune_all(before: str, stuck_before: str, limit: int = 2) -> int:
        """Batches until the pass is over; the rows deleted."""
        total, cursor = 0, None
        for _ in range(100):
            async with store.unit() as tx:
                n, cursor = await tx.prune_meter_values(before, stuck_before, cursor, limit)
            assert n <= limit
            total += n
            if cursor is None:
                return total
        raise AssertionError("the pass never ended")

    async def left() -> list[tuple]:
        async with store.unit() as tx:
            return [(m["station_id"], m["tx_key"]) for m in await tx.meter_values()]

    async def scenario():
        await create(store, a, b)
        async with store.unit() as tx:
            await tx.start_transaction(tx_doc(a, "running", "Active"))
            await tx.start_transaction(tx_doc(a, "ended", "Completed"))
            await tx.start_transaction(tx_doc(b, "ended", "Completed"))
            for _ in range(3):
                await tx.add_meter_values(a["_id"], "running", 1, [{"v": 1}])
                await tx.add_meter_values(a["_id"], "ended", 1, [{"v": 1}])
                await tx.add_meter_values(a["_id"], None, 1, [{"v": 1}])
        async with store.unit() as tx:
            stored = await tx.meter_values()
        assert len(stored) == 9
        # nothing is due before they were stored
        assert await prune_all(PAST, PAST) == 0
        # a session that goes on keeps its values, however old; the rest goes
        assert await prune_all(FUTURE, PAST) == 6
        assert await left() == [(a["_id"], "running")] * 3
        # ... unless they are older than the cap for a session that never ends
        assert await prune_all(FUTURE, FUTURE) == 3
        assert await left() == []

    run(scenario())


def test_prune_meter_values_keeps_an_ended_session_while_it_has_recent_values(store, backend):
    a = station()

    async def scenario():
        await create(store, a)
        async with store.unit() as tx:
            await tx.start_transaction({"station_id": a["_id"], "tx_key": "1", "status": "Done"})
            await tx.add_meter_values(a["_id"], "1", 1, [{"v": "old"}])
            await tx.add_meter_values(a["_id"], None, 1, [{"v": "old, alone"}])
        await asyncio.sleep(0.01)  # the store stamps each value with the time it came
        middle = iso(datetime.now(UTC))
        await asyncio.sleep(0.01)
        async with store.unit() as tx:
            await tx.add_meter_values(a["_id"], "1", 1, [{"v": "new"}])
        async with store.unit() as tx:
            n, cursor = await tx.prune_meter_values(middle, PAST, None, 10)
        assert (n, cursor) == (1, None)  # the old one alone; the session's stays with it
        async with store.unit() as tx:
            assert [m["values"][0]["v"] for m in await tx.meter_values()] == ["old", "new"]

    run(scenario())


def test_sqlite_prune_meter_values_looks_each_session_up_once_a_pass(monkeypatch):
    from edrvctl.store import sqlite

    store = open_store(":memory:")
    looked: list[tuple] = []
    real = sqlite.SqliteUnit._session_kept

    def counted(self, sid, key, before):
        looked.append((sid, key))
        return real(self, sid, key, before)

    monkeypatch.setattr(sqlite.SqliteUnit, "_session_kept", counted)
    monkeypatch.setattr(sqlite._MeterCursor, "LOOKUPS", 2)  # a batch looks up 2 at most

    async def scenario():
        async with store.unit() as tx:
            for _ in range(4):  # rows of 5 sessions, interleaved
                for n in range(5):
                    await tx.add_meter_values(f"s{n}", "1", 1, [{"v": 1}])
        deleted, cursor, calls = 0, None, 0
        while True:
            async with store.unit() as tx:
                n, cursor = await tx.prune_meter_values(FUTURE, PAST, cursor, 100)
            deleted, calls = deleted + n, calls + 1
            if cursor is None:
                break
        assert deleted == 20 and calls == 3  # 2 + 2 + 1 sessions looked up
        assert sorted(looked) == [(f"s{n}", "1") for n in range(5)]  # once each
        await store.close()

    run(scenario())


def test_prune_actions_only_finished_ones(store):
    cs = station()
    old = [
        action(cs["_id"], outcome=o, status="completed")
        for o in ("succeeded", "failed", "timed_out", "pending")
    ]

    async def scenario():
        await create(store, cs)
        async with store.unit() as tx:
            for d in old:
                await tx.create_action(d)
        recent = action(cs["_id"], createdAt=FUTURE, outcome="succeeded")
        async with store.unit() as tx:
            await tx.create_action(recent)
        async with store.unit() as tx:
            assert await tx.prune_actions("2500-01-01T00:00:00.000Z", 2) == 2
        async with store.unit() as tx:
            assert await tx.prune_actions("2500-01-01T00:00:00.000Z", 10) == 1
            assert await tx.prune_actions("2500-01-01T00:00:00.000Z", 10) == 0
        async with store.unit() as tx:
            got, total = await tx.list_actions(ActionQuery(limit=None))
        assert total == 2
        assert {g["_id"] for g in got} == {old[3]["_id"], recent["_id"]}

    run(scenario())


def test_probe_writes_nothing_and_fails_on_a_full_store(backend):
    if backend.kind == "postgresql":
        pytest.skip("a size cap is SQLite's (max_bytes); PostgreSQL's failures: test_pg_*")
    store = backend.fresh(max_bytes=256 * 1024)
    cs = station()

    async def scenario():
        await create(store, cs)
        async with store.unit() as tx:
            await tx.probe("t")
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery(limit=None)) == []
        n = 0
        with pytest.raises(StoreUnavailable):  # fill it up
            while True:
                async with store.unit() as tx:
                    await tx.add_event(cs["_id"], PAST, "k", {"pad": "x" * 500, "n": n})
                n += 1
        with pytest.raises(StoreUnavailable):
            async with store.unit() as tx:
                await tx.probe("t")
        async with store.unit() as tx:  # room again
            assert await tx.prune_events(FUTURE, 50) == 50
        for _ in range(3):  # and it stays: the probe leaves nothing behind
            async with store.unit() as tx:
                await tx.probe("t")

    run(scenario())


# --- SQLite only ------------------------------------------------------------------------------

# The schema exactly as edrvctl wrote it before schema versions were kept (user_version 0).
SCHEMA_BEFORE_VERSIONS = """
CREATE TABLE IF NOT EXISTS chargestations (
    id            TEXT PRIMARY KEY,
    endpoint      TEXT NOT NULL UNIQUE,
    protocol      TEXT NOT NULL,
    online        INTEGER NOT NULL,
    active        INTEGER NOT NULL,
    status        TEXT,
    location      TEXT,
    organization  TEXT,
    createdAt     TEXT NOT NULL,
    updatedAt     TEXT NOT NULL,
    lastMessageAt TEXT,
    lastConnectAt TEXT,
    doc           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cs_created ON chargestations(createdAt, id);
CREATE INDEX IF NOT EXISTS cs_updated ON chargestations(updatedAt, id);
CREATE INDEX IF NOT EXISTS cs_online ON chargestations(online);
CREATE TABLE IF NOT EXISTS transactions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    tx_key      TEXT,
    doc         TEXT NOT NULL,
    UNIQUE (station_id, tx_key)
);
CREATE TABLE IF NOT EXISTS meter_values (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    tx_key      TEXT,
    connector   INTEGER NOT NULL,
    doc         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    station_id  TEXT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    doc         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_station ON events(station_id, id);
CREATE TABLE IF NOT EXISTS credentials (
    station_id  TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
"""


def old_store(path: Path, doc: dict) -> None:
    """A store file as the previous edrvctl left it, holding one station and its data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_BEFORE_VERSIONS)
    db.execute(
        "INSERT INTO chargestations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            doc["_id"],
            doc["endpoint"],
            doc["protocol"],
            doc["online"],
            doc["active"],
            doc["status"],
            doc["location"],
            doc["organization"],
            doc["createdAt"],
            doc["updatedAt"],
            doc["lastMessageAt"],
            doc["lastConnectAt"],
            json.dumps(doc),
        ),
    )
    db.execute(
        "INSERT INTO events (station_id, at, kind, doc) VALUES (?,?,?,?)",
        (doc["_id"], "t", "Old", '{"kept": true}'),
    )
    db.execute("INSERT INTO credentials VALUES (?,?,?)", (doc["_id"], "old-hash", "t"))
    db.execute(
        "INSERT INTO transactions (station_id, tx_key, doc) VALUES (?,?,?)",
        (doc["_id"], "1", json.dumps({"station_id": doc["_id"], "tx_key": "1"})),
    )
    db.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_sqlite_migrates_a_store_written_before_schema_versions(tmp_path, caplog):
    path = tmp_path / "old.db"
    doc = station(online=True)
    old_store(path, doc)
    assert user_version(path) == 0

    async def scenario():
        store = open_store(path)
        try:
            async with store.unit() as tx:
                assert await tx.get_station(doc["endpoint"]) == doc
                assert [
                    e["data"] for e in await tx.list_events(EventQuery(station_id=doc["_id"]))
                ] == [{"kept": True}]
                assert await tx.password_hash(doc["_id"]) == "old-hash"
                assert await tx.get_transaction(doc["_id"], "1") is not None
                assert await tx.mark_all_offline("now") == 1
            async with store.unit() as tx:  # rows from before have a revision to compare
                mine = await tx.get_station(doc["_id"])
                mine["status"] = "Available"
                await tx.save_station(mine)
            async with store.unit() as tx:
                stale = await tx.get_station(doc["_id"])
                async with store.unit() as other:
                    await other.save_station(await other.get_station(doc["_id"]))
                with pytest.raises(StaleRecord):
                    await tx.save_station(stale)
        finally:
            await store.close()

    with caplog.at_level("INFO", logger="edrvctl.store"):
        run(scenario())
    assert f"store: migrating {path} from schema 1 to {SCHEMA_VERSION}" in caplog.messages
    assert user_version(path) == SCHEMA_VERSION
    caplog.clear()
    with caplog.at_level("INFO", logger="edrvctl.store"):
        run(open_store(path).close())  # already current: nothing to do
    assert not [m for m in caplog.messages if "migrating" in m]


def test_sqlite_gives_sessions_to_the_transactions_of_an_older_store(tmp_path):
    step = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN session_id" in m)
    path = tmp_path / "before-sessions.db"
    a = station()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("".join(MIGRATIONS[:step]) + f"PRAGMA user_version={step};")
    db.execute(
        "INSERT INTO chargestations (id, endpoint, protocol, online, active, createdAt, "
        "updatedAt, doc) VALUES (?,?,?,?,?,?,?,?)",
        (a["_id"], a["endpoint"], "ocpp1.6", 0, 1, a["createdAt"], a["updatedAt"], json.dumps(a)),
    )
    for key, started, stopped, status in (
        ("1", "2024-01-01T00:00:00.000Z", "2024-01-01T01:00:00.000Z", "Completed"),
        ("2", "2024-01-02T00:00:00.000Z", None, "Active"),
    ):
        doc = {"station_id": a["_id"], "tx_key": key, "connector": 1, "status": status}
        doc.update(startedAt=started, stoppedAt=stopped)
        db.execute(
            "INSERT INTO transactions (station_id, tx_key, doc) VALUES (?,?,?)",
            (a["_id"], key, json.dumps(doc)),
        )
    db.close()

    async def scenario():
        store = open_store(path)
        try:
            async with store.unit() as tx:
                docs, total = await tx.list_sessions(SessionQuery())
                assert total == 2 and [d["tx_key"] for d in docs] == ["2", "1"]
                assert all(len(d["_id"]) == 24 and d["endpoint"] == a["endpoint"] for d in docs)
                assert docs[0]["_id"] != docs[1]["_id"]
                assert await tx.get_session(docs[1]["_id"]) == docs[1]
                assert [
                    d["tx_key"] for d in (await tx.list_sessions(SessionQuery(active=True)))[0]
                ] == ["2"]
        finally:
            await store.close()

    run(scenario())
    assert user_version(path) == SCHEMA_VERSION


def test_sqlite_schema_versions(tmp_path):
    path = tmp_path / "new.db"
    run(open_store(path).close())
    assert user_version(path) == SCHEMA_VERSION  # a new store starts at the latest schema

    newer = tmp_path / "newer.db"
    run(open_store(newer).close())
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(UsageError, match="newer"):
        open_store(newer)

    old = tmp_path / "old.db"
    old_store(old, station())
    with pytest.raises(UsageError, match="schema"):  # read-only never migrates
        open_store(old, readonly=True)
    assert user_version(old) == 0


def test_sqlite_unopenable_store_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot open the store"):
        open_store(tmp_path / "missing.db", readonly=True)
    (tmp_path / "a-dir.db").mkdir()
    with pytest.raises(UsageError, match="cannot open the store"):
        open_store(tmp_path / "a-dir.db")
    assert not (tmp_path / "missing.db").exists()


def test_sqlite_files_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "made" / "by-us" / "edrvctl.db"
        store = open_store(path)

        async def write_and_look():
            await create(store, station())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
            await store.close()
            return modes

        modes = run(write_and_look())
    finally:
        os.umask(old)
    assert modes == {"edrvctl.db": 0o600, "edrvctl.db-wal": 0o600, "edrvctl.db-shm": 0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_sqlite_memory_stores_are_separate():
    async def scenario():
        one, two = open_store(":memory:"), open_store(":memory:")
        doc = station()
        await create(one, doc)
        assert await get(one, doc["_id"]) == doc
        assert await get(two, doc["_id"]) is None
        await one.close()
        await two.close()

    run(scenario())


def test_sqlite_close_commits_what_is_pending(tmp_path):
    path = tmp_path / "s.db"
    doc = station()

    async def scenario():
        store = open_store(path)
        # a unit that never awaited its commit (its task was cancelled while waiting)
        task = asyncio.ensure_future(create(store, doc))
        await asyncio.sleep(0)
        task.cancel()
        await store.close()
        await store.close()  # twice is harmless

    run(scenario())
    reader = open_store(path, readonly=True)
    assert run(get(reader, doc["_id"])) == doc
    run(reader.close())


def test_sqlite_checkpoints_off_the_loop_keep_the_wal_bounded(tmp_path, monkeypatch):
    """The connection makes no checkpoint in its COMMITs; a worker thread does, after a commit:
    what was committed reaches the database file itself (read here ignoring the WAL), and the
    WAL starts over instead of growing with every write."""
    from edrvctl.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 0.0)
    path = tmp_path / "s.db"
    docs = [station() for _ in range(40)]

    def in_the_file_itself() -> set[str]:
        uri = path.resolve().as_uri() + "?immutable=1"  # the database file, not the WAL
        with sqlite3.connect(uri, uri=True) as db:
            return {row[0] for row in db.execute("SELECT id FROM chargestations")}

    async def scenario() -> list[int]:
        store = open_store(path)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        sizes = []  # of the WAL file after each unit
        for doc in docs:  # a unit at a time, each with ~20 KB of events
            async with store.unit() as tx:
                await tx.create_station(doc)
                for _ in range(20):
                    await tx.add_event(doc["_id"], PAST, "k", {"pad": "x" * 1000})
            await until_async(lambda: store._checkpointing is None, what="the checkpoint")
            sizes.append((tmp_path / "s.db-wal").stat().st_size)
        await until_async(lambda: store._checkpointing is None, what="the checkpoint")
        async with store.unit() as tx:  # one more commit: its checkpoint has all the others
            await tx.add_event(docs[0]["_id"], PAST, "k", {})
        await until_async(lambda: store._checkpointing is None, what="the checkpoint")
        assert {d["_id"] for d in docs} <= in_the_file_itself()
        await store.close()
        return sizes

    sizes = run(scenario(), timeout=30)
    assert max(sizes) <= 3 * sizes[0]  # a unit or two's pages, never the 40 units'


def test_sqlite_a_unit_inside_one_that_has_written_fails_rather_than_hangs():
    store = open_store(":memory:")
    doc = station()

    async def scenario():
        async with store.unit() as outer:
            await outer.create_station(doc)
            with pytest.raises(RuntimeError, match="wait for itself"):
                async with store.unit() as inner:
                    await inner.get_station(doc["_id"])
            with pytest.raises(RuntimeError, match="wait for itself"):
                async with store.unit() as inner:
                    await inner.add_event(doc["_id"], "t", "k", {})
        assert await get(store, doc["_id"]) == doc
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery()) == []
        await store.close()

    run(scenario())


# --- every backend: the event feed ------------------------------------------------------------


def test_on_events_gets_every_committed_event_once_in_seq_order(store):
    got: list[dict] = []
    store.on_events = got.extend
    doc = station()

    class Boom(Exception):
        pass

    async def one(n: int) -> int:
        async with store.unit() as tx:
            return (await tx.add_event(doc["_id"], PAST, "k", {"n": n}))["seq"]

    async def scenario():
        await create(store, doc)
        seqs = list(await asyncio.gather(*(one(n) for n in range(20))))
        with pytest.raises(Boom):  # undone: never handed over
            async with store.unit() as tx:
                await tx.add_event(doc["_id"], PAST, "k", {"n": -1})
                raise Boom
        seqs.append(await one(20))
        await until_async(lambda: len(got) >= 21, timeout=15, what="the events")
        assert [e["seq"] for e in got] == sorted(seqs)
        assert sorted(e["data"]["n"] for e in got) == list(range(21))
        async with store.unit() as tx:
            assert await tx.list_events(EventQuery(limit=None)) == got

    # (PostgreSQL's tailer waits out transactions still running on the shared server: a
    # loaded machine may hold the events back for seconds, never lose or reorder them)
    run(scenario(), timeout=20)


# --- PostgreSQL only --------------------------------------------------------------------------


async def _sql(url: str, sql: str, *args):
    import asyncpg

    con = await asyncpg.connect(url)
    try:
        return await con.fetch(sql, *args)
    finally:
        await con.close()


def test_pg_schema_versions_and_a_newer_schema_refused(pg_url, caplog):
    from edrvctl.store import postgres

    store = open_store(pg_url)
    run(create(store, station()))
    run(store.close())
    rows = run(_sql(pg_url, "SELECT version FROM schema_migrations ORDER BY version"))
    assert [r[0] for r in rows] == list(range(1, postgres.SCHEMA_VERSION + 1))
    again = open_store(pg_url)  # opening again migrates nothing
    assert run(get(again, "ep-none")) is None
    run(again.close())
    run(_sql(pg_url, "INSERT INTO schema_migrations (version) VALUES ($1)", 99))
    newer = open_store(pg_url)
    with pytest.raises(UsageError, match="upgrade edrvctl"):
        run(get(newer, "x"))
    run(newer.close())


def test_pg_errors_never_show_the_password(pg_url):
    url = pg_url.replace("postgres@", "postgres:s3cret@").replace(":5432/", ":1/")
    store = open_store(url)
    with pytest.raises(StoreUnavailable) as e:
        run(get(store, "x"))
    assert "s3cret" not in str(e.value) and "***" in str(e.value)
    assert "s3cret" not in repr(store)
    run(store.close())


def test_pg_a_lost_connection_fails_the_unit_and_the_pool_recovers(pg_url):
    store = open_store(pg_url)
    doc, other = station(), station()

    async def scenario():
        await create(store, doc)
        with pytest.raises(StoreUnavailable):
            async with store.unit() as tx:
                await tx.add_event(doc["_id"], PAST, "k", {})
                # the database drops every connection (a restart, a failover)
                await _sql(
                    pg_url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                await tx.create_station(other)
        async with store.unit() as tx:  # nothing of it stored; new connections work
            assert await tx.list_events(EventQuery()) == []
            assert await tx.get_station(other["_id"]) is None
        await create(store, other)
        assert await get(store, other["_id"]) == other
        await store.close()

    run(scenario())


def test_pg_a_write_for_a_station_this_node_lost_is_fenced(pg_url):
    from edrvctl.errors import Fenced

    store = open_store(pg_url)
    store.node_id = "n1"
    doc, free = station(), station()

    async def owner(node: str, epoch: int) -> None:
        await _sql(
            pg_url,
            "INSERT INTO station_owner VALUES ($1, $2, $3, now()) ON CONFLICT (station_id) "
            "DO UPDATE SET node_id = excluded.node_id, epoch = excluded.epoch",
            doc["_id"],
            node,
            epoch,
        )

    async def write(n: int) -> None:
        async with store.unit() as tx:
            mine = await tx.get_station(doc["_id"])
            mine["status"] = f"s{n}"
            await tx.save_station(mine)
            await tx.add_event(doc["_id"], PAST, "k", {"n": n})
            await tx.add_meter_values(doc["_id"], None, 1, [{"n": n}])

    async def scenario():
        await create(store, doc, free)
        await owner("n1", 1)
        store.claims[doc["_id"]] = 1
        await write(1)  # ours at epoch 1: written
        await owner("n2", 2)  # another node claimed it
        with pytest.raises(Fenced, match=f"no longer owns chargestation {doc['_id']}"):
            await write(2)
        with pytest.raises(Fenced):  # a unit of one write (sent alone when not fenced)
            async with store.unit() as tx:
                await tx.add_meter_values(doc["_id"], None, 1, [{"n": 2}])
        await owner("n1", 3)  # back to this node, at a newer epoch than it holds
        with pytest.raises(Fenced):
            await write(3)
        assert (await get(store, doc["_id"]))["status"] == "s1"
        async with store.unit() as tx:
            assert [e["data"]["n"] for e in await tx.list_events(EventQuery())] == [1]
            assert [m["values"] for m in await tx.meter_values()] == [[{"n": 1}]]
            # writes for a station this node does not claim are not fenced (admin writes)
            mine = await tx.get_station(free["_id"])
            mine["status"] = "free"
            await tx.save_station(mine)
        assert (await get(store, free["_id"]))["status"] == "free"
        store.claims[doc["_id"]] = 3
        await write(4)
        assert (await get(store, doc["_id"]))["status"] == "s4"
        await store.close()

    run(scenario())


def test_pg_events_committed_out_of_order_are_never_skipped(pg_url):
    """A transaction that started writing first but adds its event last, and commits last:
    its event is handed over, before the later ones, once it is committed."""
    got: list[dict] = []
    store, other = open_store(pg_url), open_store(pg_url)  # two nodes on one database
    store.on_events = got.extend
    doc = station()

    async def scenario():
        await create(store, doc)
        first_wrote, second_done = asyncio.Event(), asyncio.Event()

        async def slow():
            async with other.unit() as tx:
                await tx.set_password_hash(doc["_id"], "h", "t")  # its transaction id: first
                first_wrote.set()
                await second_done.wait()
                await tx.add_event(doc["_id"], PAST, "k", {"n": "slow"})

        async def fast():
            await first_wrote.wait()
            async with store.unit() as tx:
                await tx.add_event(doc["_id"], PAST, "k", {"n": "fast"})
            async with store.unit() as tx:  # held back while the slow one may add a lower seq
                assert await tx.list_events(EventQuery()) == []
            assert got == []
            second_done.set()

        await asyncio.gather(slow(), fast())
        await until_async(lambda: len(got) == 2, timeout=5, what="both events")
        assert [e["data"]["n"] for e in got] == ["slow", "fast"]
        assert got[0]["seq"] < got[1]["seq"]
        await store.close()
        await other.close()

    run(scenario())
