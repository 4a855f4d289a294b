"""The frame log end to end, in both OCPP versions: a real `edrvctl serve` and simulated (or raw
websocket) stations; `edrvctl logs` shows their frames, `logs -f` each one as it happens,
`--errors` the CALLERRORs and invalid frames; the stream resumes from Last-Event-ID; a station
is pruned back to `--frames-per-station`. The admin API's app in process (uvicorn on a free
port, with a short read deadline) shows that a stream outlives the deadline meant for requests,
sends keep-alives, and that streams are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import TOKEN, hermetic_env, start_server
from edrvctl import model
from edrvctl.fleet import Fleet
from edrvctl.ocppj.rpc import CALL, IN, Trace
from edrvctl.server import api, api_events, api_frames
from edrvctl.simulator import SimStation
from edrvctl.store import open_store
from test_ocpp import (
    P16,
    PROTOS,
    aapi,
    cli,
    raw_boot,
    raw_call,
    raw_open,
    run,
    sim_running,
    uniq,
)
from timing import scaled, until_async

BASE = "/v1.1/chargestations"


async def messages(server, key: str, **params) -> dict:
    async with aapi(server) as c:
        r = await c.get(f"{BASE}/{key}/messages", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def wait_messages(server, key: str, pred, what: str, **params) -> list[dict]:
    """Poll the station's messages until pred(frames) holds (frames are written in batches)."""

    async def ready():
        found = (await messages(server, key, **params))["result"]
        return found if pred(found) else None

    return await until_async(ready, what=what)


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("proto", PROTOS)
def test_logs_shows_a_stations_frames_in_and_out_paired(server, cli_env, proto):
    ep = server.create(uniq("logs"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, connectors=1) as st:
            await st.send("Heartbeat", {})
            return await wait_messages(
                server,
                ep,
                lambda fs: any(f["action"] == "Heartbeat" for f in fs[1:]),
                "the Heartbeat",
            )

    frames = run(scenario())
    boot = [f for f in frames if f["action"] == "BootNotification"]
    assert [(f["direction"], f["type"]) for f in boot] == [("in", "CALL"), ("out", "CALLRESULT")]
    call, answer = boot
    assert answer["messageId"] == call["messageId"] and answer["latencyMs"] >= 0
    assert call["latencyMs"] is None and json.loads(call["text"])[2] == "BootNotification"
    assert call["size"] == len(call["text"].encode()) and answer["endpoint"] == ep
    assert [f["_id"] for f in frames] == sorted((f["_id"] for f in frames), key=int)

    r = cli(cli_env, "logs", ep)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == len(frames)
    first = next(x for x in lines if "BootNotification" in x and "CALLRESULT" in x)
    assert re.search(r"→ CALLRESULT +BootNotification ", first) and call["messageId"] in first
    assert " ms " in first and f"{answer['size']} B" in first
    assert any(x.startswith(f"{call['createdAt']} ← CALL ") for x in lines)

    r = cli(cli_env, "logs", ep, "--action", "Heartbeat", "-o", "jsonl")
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert {f["action"] for f in got} == {"Heartbeat"} and {f["type"] for f in got} == {
        "CALL",
        "CALLRESULT",
    }
    assert got == [f for f in frames if f["action"] == "Heartbeat"][-len(got) :]

    r = cli(cli_env, "logs", ep, "--action", "Heartbeat", "--action", "BootNotification")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == len(got) + 2
    assert run(messages(server, ep, action="Heartbeat,BootNotification"))["result"] == [
        f for f in frames if f["action"] in ("Heartbeat", "BootNotification")
    ]
    r = cli(cli_env, "logs", ep, "--limit", "2", "--since", "1h")
    assert r.exit_code == 0 and r.stdout.splitlines() == lines[-2:]
    assert cli(cli_env, "logs", "no-such-station").exit_code == 3


@pytest.mark.parametrize("proto", PROTOS)
def test_logs_errors_shows_callerrors_and_invalid_frames(server, cli_env, proto):
    ep = server.create(uniq("errs"), protocol=proto)["endpoint"]

    async def scenario():
        ws = await raw_open(server, ep, proto)
        try:
            await raw_boot(ws, proto)
            await ws.send("this is not \x1b[31mJSON")
            json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
            bad = await raw_call(ws, "BootNotification", {"nonsense": True})
            assert bad[0] == 4
        finally:
            await ws.close()
        return await wait_messages(server, ep, lambda fs: len(fs) >= 3, "the errors", errors="true")

    errors = run(scenario())
    # the invalid BootNotification was a CALL (not an error), answered with a CALLERROR
    assert [(f["direction"], f["type"]) for f in errors] == [
        ("in", "INVALID"),
        ("out", "CALLERROR"),
        ("out", "CALLERROR"),
    ]
    assert errors[0]["error"] == errors[1]["error"] and errors[1]["messageId"] == "-1"
    assert errors[-1]["action"] == "BootNotification" and errors[-1]["latencyMs"] is not None
    r = cli(cli_env, "logs", ep, "--errors")
    assert r.exit_code == 0, r.output
    assert re.search(r"← INVALID +- +-1 ", r.stdout)
    assert re.search(r"→ CALLERROR +BootNotification ", r.stdout)
    assert "\x1b" not in r.stdout and "\\x1b[31mJSON" in r.stdout  # shown as text, not obeyed


@pytest.mark.parametrize("proto", PROTOS)
def test_a_station_callerror_to_our_call_is_shown(server, cli_env, proto):
    ep = server.create(uniq("nots"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, connectors=1):
            # the simulator takes no reservations: it answers NotSupported
            r = await asyncio.to_thread(
                cli, cli_env, "cs", "call", ep, "CancelReservation", "-d", '{"reservationId": 1}'
            )
            assert r.exit_code == 5, r.output
            return await wait_messages(
                server, ep, lambda fs: len(fs) == 2, "the refusal", action="CancelReservation"
            )

    call, refusal = run(scenario())
    assert (call["direction"], call["type"], call["action"]) == (
        "out",
        "CALL",
        "CancelReservation",
    )
    assert (refusal["direction"], refusal["type"], refusal["error"]) == (
        "in",
        "CALLERROR",
        "NotSupported",
    )
    assert refusal["messageId"] == call["messageId"] and refusal["latencyMs"] is not None
    assert [f["_id"] for f in run(messages(server, ep, errors="true"))["result"]] == [
        refusal["_id"]
    ]


class Lines:
    """A subprocess's stdout lines, read by a thread, waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))

    def wait(self, pred, what: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line for {what}; got {self.seen}") from None
            self.seen.append(line)
            if pred(line):
                return line


@contextlib.contextmanager
def logs_follow(server, tmp_path, *args: str):
    env = hermetic_env(tmp_path)
    env.update(EDRV_API_URL=server.api_url, EDRV_TOKEN=server.token, COLUMNS="300")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edrvctl", "logs", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Lines(proc)
    finally:
        proc.terminate()
        proc.wait(scaled(10))


@pytest.mark.parametrize("proto", PROTOS)
def test_logs_follow_shows_each_frame_as_it_happens(server, tmp_path, proto):
    ep = server.create(uniq("follow"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, connectors=1) as st:
            await wait_messages(server, ep, lambda fs: len(fs) >= 2, "the boot")
            with logs_follow(server, tmp_path, ep, "-f", "--limit", "1") as out:
                await asyncio.to_thread(
                    out.wait, lambda x: "→" in x or "←" in x, "the newest frame"
                )
                for n in range(2):  # the second after the first was shown: live, not replayed
                    await st.send("Heartbeat", {})
                    await asyncio.to_thread(
                        out.wait,
                        lambda x: "→ CALLRESULT Heartbeat" in x,
                        f"Heartbeat answer {n + 1}",
                    )
                return out.seen

    seen = run(scenario())
    assert len([x for x in seen if re.search(r"← CALL +Heartbeat ", x)]) == 2


def test_the_stream_resumes_after_the_last_event_id(server):
    ep = server.create(uniq("resume"), protocol=P16)["endpoint"]

    async def read_events(c, n: int, action: str, **headers) -> list[tuple[str, dict]]:
        got = []
        stream = f"{BASE}/{ep}/messages/stream"
        async with c.stream("GET", stream, params={"action": action}, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream"
            )
            event_id = None
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    got.append((event_id, json.loads(line[6:])))
                    if len(got) == n:
                        return got
        return got

    async def scenario():
        async with sim_running(server, ep, P16, connectors=1) as st, aapi(server) as c:
            await wait_messages(server, ep, lambda fs: len(fs) >= 4, "the boot")
            first = (await messages(server, ep, limit=1))["result"][0]
            for _ in range(3):
                await st.send("Heartbeat", {})
            replayed = await asyncio.wait_for(
                read_events(c, 6, "Heartbeat", **{"Last-Event-ID": first["_id"]}), scaled(10)
            )
            assert [e[0] for e in replayed] == [f["_id"] for _, f in replayed]
            assert [int(i) for i, _ in replayed] == sorted(int(i) for i, _ in replayed)
            assert int(replayed[0][0]) > int(first["_id"])
            assert [f["action"] for _, f in replayed] == ["Heartbeat"] * 6
            last = replayed[-1][0]
            await st.send(
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
            )
            again = await asyncio.wait_for(
                read_events(c, 2, "StatusNotification", **{"Last-Event-ID": last}), scaled(10)
            )
            assert [f["action"] for _, f in again] == ["StatusNotification"] * 2
            assert int(again[0][0]) > int(last)
            r = await c.get(f"{BASE}/{ep}/messages/stream", headers={"Last-Event-ID": "x1"})
            assert r.status_code == 400

    run(scenario())


# --------------------------------------------------------------------------- retention


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("frames20"), "--frames-per-station", "20")
    yield srv
    srv.stop()


@pytest.mark.parametrize("proto", PROTOS)
def test_a_station_is_pruned_past_its_count(small_server, proto):
    server = small_server
    ep = server.create(uniq("prune"), protocol=proto)["endpoint"]

    async def scenario():
        ws = await raw_open(server, ep, proto)
        try:
            await raw_boot(ws, proto)
            for _ in range(40):
                answer = await raw_call(ws, "Heartbeat", {})
                assert answer[0] == 3
        finally:
            await ws.close()
        # 82 frames written; pruned back to 20 once past 22, within a second or two
        return await wait_messages(
            server,
            ep,
            lambda fs: fs and len(fs) <= 22 and fs[-1]["messageId"] == answer[1],
            "the prune, and the last answer kept",
            limit=1000,
        )

    kept = run(scenario(), timeout=60)
    assert 20 <= len(kept) <= 22
    assert [f["action"] for f in kept] == ["Heartbeat"] * len(kept)  # the newest: the boot went


# --------------------------------------------------------------------------- the app in process


@contextlib.asynccontextmanager
async def api_in_process(fleet: Fleet, read_timeout: float):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    server = Server(
        uvicorn.Config(
            api.create_app(fleet, TOKEN),
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan="off",
            http=api.protocol_class(read_timeout),
            ws="none",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until_async(lambda: server.started or task.done(), what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        fleet.frames.end_streams()
        server.should_exit = True
        await asyncio.wait_for(task, scaled(10))  # open streams end: the shutdown is not held
        sock.close()


def heartbeat(i: int, kind: int = CALL) -> Trace:
    text = json.dumps([kind, f"m{i}", "Heartbeat", {}] if kind == CALL else [kind, f"m{i}", {}])
    return Trace(time.time(), IN, kind, f"m{i}", "Heartbeat", len(text), None, None, text)


def test_a_stream_outlives_the_read_deadline_and_keeps_alive(monkeypatch):
    """The API closes a connection that has not sent its whole request within its read
    deadline (10 s in serve; here a short one): a stream, whose request was read long ago,
    stays open past it and sends a keep-alive comment while there is nothing to say."""
    deadline = scaled(0.3)
    monkeypatch.setattr(api_frames, "KEEPALIVE", scaled(0.2))

    async def scenario():
        fleet = Fleet(open_store(":memory:"))
        doc, _ = await fleet.create(model.StationCreate(endpoint="S1"))
        log = fleet.frames.tracer(doc["_id"])
        async with (
            api_in_process(fleet, deadline) as url,
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=scaled(10)
            ) as c,
        ):
            lines: list[str] = []
            async with c.stream("GET", f"{BASE}/S1/messages/stream") as r:
                assert r.status_code == 200
                t0 = time.monotonic()
                async for line in r.aiter_lines():
                    lines.append(line)
                    if time.monotonic() - t0 > 4 * deadline and log is not None:
                        log(*heartbeat(1))  # well past the deadline: still delivered
                        log = None
                    if line.startswith("data: "):
                        break
            assert time.monotonic() - t0 > 4 * deadline
            assert ": keep-alive" in lines
            assert lines[-3:] == [lines[-3], "event: frame", lines[-1]] and lines[-3].startswith(
                "id: "
            )
            assert json.loads(lines[-1][6:])["messageId"] == "m1"

    run(scenario(), timeout=30)


def test_streams_are_bounded_and_end_when_the_server_stops(monkeypatch):
    monkeypatch.setattr(api_events, "MAX_STREAMS", 2)  # (event and frame streams together)

    async def scenario():
        fleet = Fleet(open_store(":memory:"))
        await fleet.create(model.StationCreate(endpoint="S1"))
        async with (
            api_in_process(fleet, scaled(5)) as url,
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=scaled(10)
            ) as c,
        ):
            path = f"{BASE}/S1/messages/stream"
            async with c.stream("GET", path) as one, c.stream("GET", path) as two:
                assert one.status_code == two.status_code == 200
                r = await c.get(path)
                assert r.status_code == 429 and "streams are open" in r.json()["message"]
            # both closed by their reader: room again, once the server has seen them go

            async def room() -> httpx.Response | None:
                r = await c.send(c.build_request("GET", path), stream=True)
                if r.status_code == 200:
                    return r
                await r.aclose()
                return None

            three = await until_async(room, what="room for a stream again")
            try:
                reading = asyncio.ensure_future(three.aread())
                await asyncio.sleep(scaled(0.2))
                assert not reading.done()
                fleet.frames.end_streams()  # what serve does when it stops
                body = await asyncio.wait_for(reading, scaled(5))
                assert body.startswith(b": stream open")
            finally:
                await three.aclose()
            r = await c.get(path, params={"nope": 1})
            assert r.status_code == 400

    run(scenario(), timeout=30)


def test_logs_follow_reconnects_after_the_last_frame_it_showed(tmp_path):
    """The server goes away and comes back (same store, same ports): `logs -f` tries again
    by itself and goes on from the last frame it showed."""
    api_port, ocpp_port = free_ports(2)
    ports = ("--api-port", str(api_port), "--ocpp-port", str(ocpp_port))
    first = start_server(tmp_path / "one", *ports)
    ep = first.create(uniq("again"), protocol=P16)["endpoint"]

    async def scenario():
        st = SimStation(ep, first.ocpp_url, P16, reconnect=True, connectors=1)
        task = asyncio.create_task(st.start())
        second = None
        try:
            await until_async(lambda: st.booted.is_set(), what="the first boot")
            await wait_messages(first, ep, lambda fs: len(fs) >= 2, "the first boot")
            with logs_follow(first, tmp_path / "cli", ep, "-f", "--limit", "2") as out:
                boot = lambda x: re.search(r"→ CALLRESULT +BootNotification ", x)  # noqa: E731
                await asyncio.to_thread(out.wait, lambda x: True, "the newest frames")
                await asyncio.to_thread(first.stop)
                second = start_server(tmp_path / "one", *ports, store=first.store)
                # the station reconnects and boots again; logs -f shows it, once
                await asyncio.to_thread(out.wait, boot, "the second boot's answer", 30)
                await st.send("Heartbeat", {})
                await asyncio.to_thread(
                    out.wait, lambda x: re.search(r"→ CALLRESULT +Heartbeat ", x), "a Heartbeat"
                )
                seen = list(out.seen)
        finally:
            await st.stop()
            with contextlib.suppress(Exception):
                await task
            if second is not None:
                second.stop()
        return seen

    seen = run(scenario(), timeout=90)
    assert len(seen) == len(set(seen))  # none shown twice
    assert len([x for x in seen if re.search(r"← CALL +BootNotification ", x)]) == 1


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
