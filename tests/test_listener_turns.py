"""The listener's per-turn budget of station work (server/listener.Turns), in process with fake
connections and a fake clock: past the budget, stations' bytes wait for a later event-loop
turn, in the order they came, their sockets paused meanwhile; none is lost or reordered."""

from __future__ import annotations

import asyncio
import json

from edrvctl.server import listener
from edrvctl.server.listener import TURN_BUDGET, Turns


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeConn:
    """Handling its bytes costs half the budget on the fake clock."""

    def __init__(self, name: str, clock: Clock, turn: list[int], seen: list) -> None:
        self.name, self.clock, self.turn, self.seen = name, clock, turn, seen
        self.lost = False
        self.parked = 0
        self.transport = FakeTransport()

    def handle(self, data: bytes) -> None:
        self.clock.now += TURN_BUDGET / 2
        self.seen.append((self.turn[0], self.name, data))

    def resume_after_turn(self) -> None:
        self.transport.resume_reading()


def test_station_work_past_the_budget_waits_for_later_turns_in_order(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(listener, "perf_counter", clock)

    async def scenario():
        turns, turn, seen = Turns(), [0], []
        conns = [FakeConn(f"c{i}", clock, turn, seen) for i in range(6)]
        # one loop turn: the first two fit in the budget, the others are deferred
        for conn in conns:
            if turns.spent >= TURN_BUDGET or turns.waiting:
                turns.defer(conn, b"x")
            else:
                t0 = clock()
                conn.handle(b"x")
                turns.charge(clock() - t0)
        conns[-1].lost = True  # gone while it waited: skipped
        assert [c.parked for c in conns] == [0, 0, 1, 1, 1, 1]
        turns.defer(conns[2], b"y")  # read again while it waits: now it is paused
        assert conns[2].transport.paused and conns[2].parked == 2
        while turns.waiting or turns.scheduled:
            turn[0] += 1
            await asyncio.sleep(0)  # one turn: next_turn runs once
        return seen, conns

    seen, conns = asyncio.run(scenario())
    assert [(name, data) for _, name, data in seen] == [
        ("c0", b"x"), ("c1", b"x"), ("c2", b"x"), ("c3", b"x"), ("c4", b"x"), ("c2", b"y")
    ]  # fmt: skip
    per_turn = [sum(1 for t, _, _ in seen if t == n) for n in range(4)]
    assert per_turn == [2, 2, 2, 0]  # at most the budget's worth a turn
    assert not any(c.transport.paused or c.parked for c in conns[:5])  # read on once handled


def test_a_connection_gives_its_endpoint_takes_a_call_and_closes_with_a_code():
    """What cluster hooks use of a StationConnection: its endpoint, a CALL to the station, and
    a close with a code and reason the station sees. In process: a Listener on port 0 over an
    in-memory store, a raw websockets client as the station."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from edrvctl import model
    from edrvctl.fleet import Fleet
    from edrvctl.server.listener import Listener, ListenerSettings
    from edrvctl.store import open_store
    from timing import scaled

    async def scenario():
        fleet = Fleet(open_store(":memory:"))
        doc, _ = await fleet.create(model.StationCreate(endpoint="HOOK-1"))
        listener = Listener(fleet, ListenerSettings(host="127.0.0.1", port=0))
        url, _ = await listener.start()
        try:
            async with connect(f"{url}/HOOK-1", subprotocols=["ocpp1.6"], proxy=None) as ws:
                while listener.stations.get("HOOK-1") is None:
                    await asyncio.sleep(0.01)
                (conn,) = listener.open
                assert conn.endpoint == "HOOK-1"
                pending = asyncio.ensure_future(conn.call("ClearCache", {}, scaled(5)))
                frame = json.loads(await ws.recv())
                assert frame[0] == 2 and frame[2:] == ["ClearCache", {}]
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                assert await pending == {"status": "Accepted"}
                await asyncio.wait_for(conn.close(4001, "claimed elsewhere"), scaled(5))
                try:
                    await ws.recv()
                    raise AssertionError("still open")
                except ConnectionClosed as e:
                    assert e.rcvd is not None
                    assert (e.rcvd.code, e.rcvd.reason) == (4001, "claimed elsewhere")
            while listener.stations.get("HOOK-1") is not None:  # detached: offline
                await asyncio.sleep(0.01)
            assert not (await fleet.get(doc["_id"]))["online"]
        finally:
            await listener.stop()
            await fleet.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_message_still_being_handled_is_recorded_before_the_offline():
    """A station sends a StatusNotification and closes its socket while the server still
    records it: the connector's event comes before `offline`, as the station said them. In
    process: a Listener over an in-memory store, the status handler held at a gate."""
    from websockets.asyncio.client import connect

    from edrvctl import model
    from edrvctl.fleet import Fleet, events
    from edrvctl.server.listener import Listener, ListenerSettings
    from edrvctl.store import EventQuery, open_store
    from timing import scaled, until_async

    async def scenario():
        fleet = Fleet(open_store(":memory:"))
        doc, _ = await fleet.create(model.StationCreate(endpoint="ORDER-1"))
        entered, gate, recorded = asyncio.Event(), asyncio.Event(), fleet.status_notification

        async def held(*args, **kwargs):
            entered.set()
            await gate.wait()
            return await recorded(*args, **kwargs)

        fleet.status_notification = held  # type: ignore[method-assign]
        listener = Listener(fleet, ListenerSettings(host="127.0.0.1", port=0))
        url, _ = await listener.start()
        try:
            async with connect(f"{url}/ORDER-1", subprotocols=["ocpp1.6"], proxy=None) as ws:
                status = {"connectorId": 1, "errorCode": "NoError", "status": "Faulted"}
                await ws.send(json.dumps([2, "1", "StatusNotification", status]))
                await asyncio.wait_for(entered.wait(), scaled(5))  # the handler is at the gate
            await asyncio.sleep(scaled(0.05))  # the close is seen; its offline would be written
            gate.set()
            await until_async(lambda: listener.stations.get("ORDER-1") is None, what="detach")
            await until_async(lambda: not listener.tasks, what="the detach's writes")
            async with fleet.store.unit() as tx:
                got = await tx.list_events(EventQuery(station_id=doc["_id"], limit=None))
            kinds = [e["type"] for e in got]
            assert kinds[-2:] == [events.CONNECTOR_STATUS, events.OFFLINE], kinds
        finally:
            await listener.stop()
            await fleet.store.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
