"""Hostile clients and stations against a real `edrvctl serve`: every resource they can grow
(memory, log, store, connections, time) stays within its budget. Floods here are small and
bounded (seconds); `bench/abuse.py` runs them at full size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from conftest import sqlite_only, start_server
from edrvctl.fleet.events import CONNECTION_REFUSED
from stored import events_of, write_lock_held
from test_security import basic, refused, try_connect
from timing import scaled, until, until_async

P16 = "ocpp1.6"


def events(srv, station_id: str, kind: str) -> list[dict]:
    return events_of(srv.store, station_id, kind)


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A server with short keepalive deadlines and small per-address limits."""
    srv = start_server(
        tmp_path_factory.mktemp("hostile"),
        "--ping-interval",
        "0.5",
        "--ping-timeout",
        "1",
        "--max-connections-per-address",
        "20",
        "--max-rate",
        "5",
    )
    yield srv
    srv.stop()


def test_refusals_of_unknown_endpoints_keep_no_state_and_are_summarised(tight):
    """Each unknown 2 KB endpoint is refused; the log gets one line, not one per refusal."""
    mark = len(tight.logs())

    async def flood():
        for i in range(150):
            result = await try_connect(tight.ocpp_url, f"u{i:04d}" + "x" * 2000)
            assert result[0] == "refused" and result[1] == 404

    asyncio.run(flood())
    log = tight.logs()[mark:]
    assert log.count("refused ") <= 2, log[-2000:]
    assert len(log) < 3000  # not 150 × 2 KB


def test_a_known_station_offering_ever_new_subprotocols_is_stored_once(tight):
    doc = tight.create()

    async def flood():
        for i in range(60):
            result = await try_connect(
                tight.ocpp_url, doc["endpoint"], protocol=f"bogus{i}-" + "p" * 500
            )
            assert result[0] == "refused" and result[1] == 400

    asyncio.run(flood())
    kept = events(tight, doc["_id"], CONNECTION_REFUSED)
    assert len(kept) == 1, kept
    assert len(json.dumps(kept[0]["data"])) < 600  # the reason is cut


def test_half_open_upgrades_count_against_the_per_address_limit(tight):
    ep = tight.create()["endpoint"]
    host, port = tight.ocpp_url.removeprefix("ws://").rsplit(":", 1)
    held = [socket.create_connection((host, int(port))) for _ in range(20)]  # never upgrade
    try:
        time.sleep(scaled(0.2))  # the server has accepted them (nothing to poll for)
        refused(asyncio.run(try_connect(tight.ocpp_url, ep)), 503, "too many connections")
    finally:
        for s in held:
            s.close()
    assert until(
        lambda: asyncio.run(try_connect(tight.ocpp_url, ep))[0] == "ok",
        timeout=5,
        what="a connection once the held ones are gone",
    )


def test_the_rate_limit_holds_across_reconnects(tight):
    ep = tight.create()["endpoint"]

    async def burst() -> list:
        async with connect(f"{tight.ocpp_url}/{ep}", subprotocols=[P16]) as ws:
            codes = []
            for i in range(12):
                await ws.send(json.dumps([2, str(i), "Heartbeat", {}]))
                frame = json.loads(await ws.recv())
                codes.append(frame[0] if frame[0] == 3 else frame[2])
            return codes

    async def scenario():
        first = await burst()
        assert first[:10] == [3] * 10 and "GenericError" in first
        second = await burst()  # reconnected at once: the budget is the station's
        assert second[0] == "GenericError", second

    asyncio.run(scenario())


def test_guessing_passwords_is_paused_per_address(tight):
    ep = tight.create(security={"type": "basic_auth"})["endpoint"]

    async def guesses():
        statuses = []
        for i in range(8):
            result = await try_connect(tight.ocpp_url, ep, basic(ep, f"guess{i}"))
            statuses.append(result[1])
        return statuses

    statuses = asyncio.run(guesses())
    assert statuses[:5] == [401] * 5
    assert 429 in statuses[5:], statuses


def raw_client(url: str, endpoint: str) -> tuple[socket.socket, ClientProtocol]:
    """A websocket client on a plain socket that reads nothing after the upgrade."""
    proto = ClientProtocol(parse_uri(f"{url}/{endpoint}"), subprotocols=[Subprotocol(P16)])
    proto.send_request(proto.connect())
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"".join(proto.data_to_send()))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # only the handshake: nothing after it is ever read
    assert response.startswith(b"HTTP/1.1 101"), response
    proto.receive_data(response)
    return sock, proto


def test_a_station_that_does_not_read_is_dropped(tmp_path):
    """It floods pings and reads nothing: the pongs owed to it pile up in the server (RSS grew
    by 226 MiB in 45 s), and websockets' keepalive, here 30 s away, would not help. It is
    dropped within the ping timeout."""
    srv = start_server(tmp_path, "--ping-interval", "30", "--ping-timeout", "3")
    doc = srv.create()
    sock, proto = raw_client(srv.ocpp_url, doc["endpoint"])
    sock.settimeout(scaled(0.2))
    started = time.monotonic()
    try:
        online = True
        while online and time.monotonic() - started < scaled(20):
            for _ in range(500):
                proto.send_ping(b"p" * 125)
            with contextlib.suppress(OSError):  # a timeout, or a reset once dropped
                sock.sendall(b"".join(proto.data_to_send()))
            online = srv.get(doc["_id"])["online"]
        assert not online, "a station that does not read was never dropped"
        assert time.monotonic() - started < scaled(10)
        waiting = re.search(r"it does not read what it is sent \((\d+) bytes", srv.logs())
        assert waiting, srv.logs()[-2000:]
        assert int(waiting.group(1)) < 4 << 20  # dropped as the buffer passed 1 MiB
        assert "socket.send() raised exception" not in srv.logs()  # a line per lost write
        assert srv.proc.poll() is None
    finally:
        sock.close()
        srv.stop()


def test_shutdown_is_bounded_whatever_the_stations_do(tmp_path):
    srv = start_server(tmp_path, "--ping-interval", "0")
    doc = srv.create()
    sock, proto = raw_client(srv.ocpp_url, doc["endpoint"])  # never answers the close
    sock.settimeout(scaled(0.2))
    try:
        until(lambda: srv.get(doc["_id"])["online"], timeout=5, what="online")
        for _ in range(2000):  # ~260 KB of pongs owed to it, under the unread budget
            proto.send_ping(b"p" * 125)
        with contextlib.suppress(TimeoutError):
            sock.sendall(b"".join(proto.data_to_send()))
        started = time.monotonic()
        assert srv.stop(timeout=scaled(30)) == 0
        assert time.monotonic() - started < scaled(15)
    finally:
        sock.close()


def test_budgets_answer_a_callerror_and_keep_nothing(tmp_path):
    srv = start_server(tmp_path, "--max-connectors", "2", "--max-payload-kb", "1")
    try:
        doc = srv.create()

        async def scenario():
            async with connect(f"{srv.ocpp_url}/{doc['endpoint']}", subprotocols=[P16]) as ws:

                async def call(i: int, action: str, payload: dict) -> list:
                    await ws.send(json.dumps([2, str(i), action, payload]))
                    return json.loads(await ws.recv())

                for c in (1, 2, 3):
                    frame = await call(
                        c,
                        "StatusNotification",
                        {"connectorId": c, "errorCode": "NoError", "status": "Available"},
                    )
                    assert frame[0] == (3 if c < 3 else 4), frame
                assert (
                    frame[2] == "PropertyConstraintViolation" and "at most 2" in frame[4]["cause"]
                )
                big = await call(9, "DataTransfer", {"vendorId": "v", "data": "x" * 2000})
                assert big[0] == 4 and big[2] == "PropertyConstraintViolation", big

        asyncio.run(scenario())
        assert len(srv.get(doc["_id"])["connectors"]) == 2
        assert events(srv, doc["_id"], "chargestation.data_transfer") == []
    finally:
        srv.stop()


@sqlite_only
def test_another_process_holding_the_write_lock_stalls_nothing(tmp_path):
    """Writes are refused quickly (and said why) while the lock is held elsewhere; messages
    that write nothing are answered at once; all is well once the lock is released."""
    srv = start_server(tmp_path)
    try:
        doc = srv.create()

        async def scenario():
            async with connect(f"{srv.ocpp_url}/{doc['endpoint']}", subprotocols=[P16]) as ws:

                async def call(i: str, action: str, payload: dict) -> tuple[list, float]:
                    t0 = time.monotonic()
                    await ws.send(json.dumps([2, i, action, payload]))
                    return json.loads(await ws.recv()), time.monotonic() - t0

                status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
                await until_async(lambda: srv.get(doc["_id"])["online"], what="online")
                with write_lock_held(srv.store):
                    frame, took = await call("s1", "StatusNotification", status)
                    assert frame[0] == 4 and frame[2] == "InternalError", frame
                    assert took < scaled(1.5), took
                    frame, took = await call("h1", "Heartbeat", {})
                    assert frame[0] == 3 and took < scaled(0.5), (frame, took)
                frame, _ = await call("s2", "StatusNotification", status)
                assert frame[0] == 3, frame

        asyncio.run(scenario())
        assert srv.get(doc["_id"])["status"] == "Available"
    finally:
        srv.stop()


def test_a_station_reconnecting_in_a_loop_does_not_grow_the_log(tight):
    ep = tight.create()["endpoint"]
    mark = len(tight.logs())

    async def loop():
        for _ in range(15):
            async with connect(f"{tight.ocpp_url}/{ep}", subprotocols=[P16]):
                pass

    asyncio.run(loop())
    until(lambda: not tight.get(ep)["online"], timeout=5, what="offline")
    log = tight.logs()[mark:]
    assert log.count(f"{ep}: connected") == 1, log
    assert log.count(f"{ep}: disconnected") <= 1, log


def test_upgrades_in_flight_per_address_are_capped(tmp_path):
    """Many handshakes at once from one address would each be served per loop turn, ahead
    of the stations already connected: past 32 in flight, the next is refused at once."""
    srv = start_server(tmp_path, "--max-connections-per-address", "100")
    try:
        ep = srv.create()["endpoint"]
        host, port = srv.ocpp_url.removeprefix("ws://").rsplit(":", 1)
        held = [socket.create_connection((host, int(port))) for _ in range(32)]
        try:
            time.sleep(scaled(0.2))  # the server has accepted them (nothing to poll for)
            refused(asyncio.run(try_connect(srv.ocpp_url, ep)), 503, "upgrades at once")
        finally:
            for s in held:
                s.close()
        assert until(
            lambda: asyncio.run(try_connect(srv.ocpp_url, ep))[0] == "ok",
            timeout=5,
            what="a connection once the held ones are gone",
        )
    finally:
        srv.stop()


@pytest.mark.parametrize("depth", [300, 1000])
def test_deeply_nested_payloads_get_a_callerror_not_a_crash(tight, depth):
    """2.0.1 DataTransfer `data` is free-form: nesting 1,000 deep hit a RecursionError once.
    Now: a FormatViolation (it cannot be stored as sent), nothing kept, and the station goes
    on."""
    doc = tight.create(protocol="ocpp2.0.1")
    nested = "[" * depth + '"x"' + "]" * depth  # (json.dumps itself cannot nest that deep)

    async def scenario():
        async with connect(f"{tight.ocpp_url}/{doc['endpoint']}", subprotocols=["ocpp2.0.1"]) as ws:
            await ws.send(f'[2, "deep", "DataTransfer", {{"vendorId": "v", "data": {nested}}}]')
            frame = json.loads(await ws.recv())
            assert frame[:3] == [4, "deep", "FormatViolation"], frame
            await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))
            assert json.loads(await ws.recv())[0] == 3

    asyncio.run(scenario())
    assert "Traceback" not in tight.logs()
    assert events(tight, doc["_id"], "chargestation.data_transfer") == []


def test_malformed_admin_requests_do_not_grow_the_log(tight):
    """uvicorn warns once per malformed HTTP request: anyone who reaches the admin port could
    grow the log without bound. One such line a minute is written."""
    host, port = tight.api_url.removeprefix("http://").rsplit(":", 1)
    mark = len(tight.logs())
    for _ in range(30):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            s.settimeout(scaled(2))
            with contextlib.suppress(OSError):
                s.recv(1024)  # uvicorn answers 400 and closes
    with httpx.Client(
        base_url=tight.api_url, headers={"Authorization": f"Bearer {tight.token}"}
    ) as c:
        assert c.get("/v1.1/chargestations").status_code == 200
    assert tight.logs()[mark:].count("Invalid HTTP request received") == 1
