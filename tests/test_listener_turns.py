"""The listener's per-turn budget of station work (server/listener.Turns), in process with fake
connections and a fake clock: past the budget, stations' bytes wait for a later event-loop
turn, in the order they came, their sockets paused meanwhile; none is lost or reordered."""

from __future__ import annotations

import asyncio

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
        self.lost = self.parked = False
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
        assert [c.transport.paused for c in conns] == [False, False, True, True, True, True]
        while turns.waiting or turns.scheduled:
            turn[0] += 1
            await asyncio.sleep(0)  # one turn: next_turn runs once
        return seen, conns

    seen, conns = asyncio.run(scenario())
    assert [name for _, name, _ in seen] == ["c0", "c1", "c2", "c3", "c4"]
    per_turn = [sum(1 for t, _, _ in seen if t == n) for n in range(4)]
    assert per_turn == [2, 2, 1, 0]  # at most the budget's worth a turn
    assert not any(c.transport.paused for c in conns[:5])  # read on once handled
