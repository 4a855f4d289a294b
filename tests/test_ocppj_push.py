"""edrvctl.ocppj.Rpc over a socket that pushes frames and writes synchronously (the server's
asyncio.Protocol): answers at once without a coroutine, in order behind an awaiting handler,
reading paused while too many frames wait, our CALLs written straight out. In process, no
sockets; the same over a real server in test_ocpp.py and tests/test_listener_frames.py."""

from __future__ import annotations

import asyncio
import json

from edrvctl.ocppj import Rpc, RpcClosed
from edrvctl.ocppj.rpc import MAX_INBOX
from test_ocppj import HANDLERS, NOW
from timing import scaled

P16 = "1.6"


class PushSocket:
    """What the server's connection gives an Rpc: write() (a text frame, now), and reading
    paused / resumed."""

    def __init__(self) -> None:
        self.sent: list[list] = []
        self.paused = False
        self.pauses = 0

    def write(self, frame: bytes) -> None:
        assert isinstance(frame, bytes)
        self.sent.append(json.loads(frame))

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False


def call(mid: str, action: str = "Heartbeat", payload: dict | None = None) -> str:
    return json.dumps([2, mid, action, payload or {}])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, scaled(10)))


def test_a_handler_that_answers_at_once_is_written_before_received_returns():
    async def scenario():
        sock = PushSocket()
        tasks = asyncio.all_tasks()
        rpc = Rpc(sock, P16, HANDLERS[P16])
        rpc.received(call("a"))
        rpc.received("not json")
        rpc.received(call("b", "NoSuchAction"))
        assert [f[:3] for f in sock.sent] == [
            [3, "a", {"currentTime": NOW}],
            [4, "-1", "FormationViolation"],
            [4, "b", "NotImplemented"],
        ]
        assert asyncio.all_tasks() == tasks  # no coroutine was started

    run(scenario())


def test_frames_behind_an_awaiting_handler_wait_their_turn_and_pause_reading():
    async def scenario():
        sock = PushSocket()
        gate = asyncio.Event()

        async def slow_boot(peer, payload):
            await gate.wait()
            return {"currentTime": NOW, "interval": 300, "status": "Accepted"}

        rpc = Rpc(sock, P16, {**HANDLERS[P16], "BootNotification": slow_boot})
        boot = {"chargePointVendor": "V", "chargePointModel": "M"}
        rpc.received(call("boot", "BootNotification", boot))
        for i in range(MAX_INBOX):
            rpc.received(call(f"hb{i}"))
        await asyncio.sleep(0)
        assert sock.sent == []  # nothing overtakes the BootNotification
        assert sock.paused and sock.pauses == 1  # MAX_INBOX waiting: the socket stops reading
        gate.set()
        while sock.paused:
            await asyncio.sleep(0)
        assert [f[1] for f in sock.sent] == ["boot", *(f"hb{i}" for i in range(MAX_INBOX))]
        assert sock.sent[0][2]["status"] == "Accepted"

    run(scenario())


def test_an_awaiting_handler_that_fails_is_answered_with_an_error_and_the_next_go_on():
    async def scenario():
        sock = PushSocket()

        async def broken(peer, payload):
            await asyncio.sleep(0)
            raise ValueError("boom")

        rpc = Rpc(sock, P16, {**HANDLERS[P16], "StatusNotification": broken})
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        rpc.received(call("s", "StatusNotification", status))
        rpc.received(call("h"))
        while len(sock.sent) < 2:
            await asyncio.sleep(0)
        assert sock.sent[0][:3] == [4, "s", "InternalError"]
        assert sock.sent[1] == [3, "h", {"currentTime": NOW}]

    run(scenario())


def test_our_call_is_written_at_once_and_its_answer_resolves_it():
    async def scenario():
        sock = PushSocket()
        rpc = Rpc(sock, P16, HANDLERS[P16])
        pending = asyncio.ensure_future(rpc.call("ClearCache", {}, scaled(5)))
        while not sock.sent:
            await asyncio.sleep(0)
        ours = sock.sent[0]
        assert ours[0] == 2 and ours[2:] == ["ClearCache", {}]
        rpc.received(json.dumps([3, ours[1], {"status": "Accepted"}]))
        assert await pending == {"status": "Accepted"}

    run(scenario())


def test_close_fails_our_pending_call_and_drops_waiting_frames():
    async def scenario():
        sock = PushSocket()
        gate = asyncio.Event()

        async def slow(peer, payload):
            await gate.wait()
            return {"currentTime": NOW}

        rpc = Rpc(sock, P16, {"Heartbeat": slow})
        rpc.received(call("a"))
        rpc.received(call("b"))
        pending = asyncio.ensure_future(rpc.call("ClearCache", {}, scaled(5)))
        while not sock.sent:
            await asyncio.sleep(0)
        rpc.close()
        try:
            await pending
            raise AssertionError("the call did not fail")
        except RpcClosed:
            pass
        gate.set()
        await asyncio.sleep(0.01)
        # "a" was being answered; "b" waited and is dropped with the connection
        assert [f[1] for f in sock.sent if f[0] == 3] == ["a"]

    run(scenario())
