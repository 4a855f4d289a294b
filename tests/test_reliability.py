"""Faults: the server killed mid-traffic loses nothing it acknowledged; a full store refuses
cleanly; connection churn leaks nothing. Every timeout is in the scaled units of timing.py; the
store is read through a read-only Store."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import hermetic_env, sqlite_only, start_server
from edrvctl.store import StationQuery
from stored import read, sqlite_intact
from timing import scaled, until_async

P16 = "ocpp1.6"
NOW = "2026-01-01T00:00:00Z"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def send_meter_values(url: str, endpoint: str, acked: list, stop: asyncio.Event) -> None:
    """Send MeterValues with a unique value each until the server dies; record what was
    acknowledged with a CALLRESULT."""
    try:
        async with connect(f"{url}/{endpoint}", subprotocols=[P16], open_timeout=scaled(10)) as ws:
            await ws.send(
                json.dumps(
                    [
                        2,
                        "boot",
                        "BootNotification",
                        {"chargePointVendor": "V", "chargePointModel": "M"},
                    ]
                )
            )
            await ws.recv()
            i = 0
            while not stop.is_set():
                i += 1
                value = f"{endpoint}/{i}"
                await ws.send(
                    json.dumps(
                        [
                            2,
                            str(i),
                            "MeterValues",
                            {
                                "connectorId": 1,
                                "meterValue": [
                                    {
                                        "timestamp": NOW,
                                        "sampledValue": [
                                            {"value": value, "context": "Sample.Periodic"}
                                        ],
                                    }
                                ],
                            },
                        ]
                    )
                )
                reply = json.loads(await ws.recv())
                if reply[0] == 3 and reply[1] == str(i):
                    acked.append(value)
    except (ConnectionClosed, OSError):
        pass  # the server was killed


def test_kill_9_loses_nothing_that_was_acknowledged(tmp_path):
    srv = start_server(tmp_path)
    ids = {d["endpoint"]: d["_id"] for d in (srv.create() for _ in range(20))}
    endpoints = list(ids)
    acked: list[str] = []

    def in_full_swing() -> bool:
        senders = {v.rsplit("/", 1)[0] for v in acked}
        return len(senders) == len(endpoints) and len(acked) > 500

    async def scenario():
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(send_meter_values(srv.ocpp_url, ep, acked, stop))
            for ep in endpoints
        ]
        await until_async(in_full_swing, timeout=30, what="every station sending")
        srv.proc.send_signal(signal.SIGKILL)  # mid-traffic, no chance to clean up
        await asyncio.wait_for(asyncio.gather(*tasks), scaled(10))

    asyncio.run(scenario())
    srv.proc.wait(scaled(10))
    assert len(acked) > 200, "the load did not get going"

    if not isinstance(srv.store, str):  # (PostgreSQL checks its own pages)
        assert sqlite_intact(srv.store)
    rows = read(srv.store, lambda tx: tx.meter_values())
    stored = {m["values"][0]["sampledValue"][0]["value"]: m for m in rows}
    missing = [v for v in acked if v not in stored]
    assert not missing, f"{len(missing)} acknowledged meter values lost, e.g. {missing[:3]}"
    misfiled = [
        v
        for v in acked
        if stored[v]["station_id"] != ids[v.rsplit("/", 1)[0]] or stored[v]["connector"] != 1
    ]
    assert not misfiled, f"stored under the wrong station or connector: {misfiled[:3]}"
    _, online = read(
        srv.store, lambda tx: tx.list_stations_json(StationQuery(equals={"online": True}, limit=1))
    )
    assert online > 0

    again = start_server(tmp_path, store=srv.store)  # same store, after the crash
    try:
        for ep in endpoints:
            doc = again.get(ep)
            assert doc["online"] is False and doc["lastDisconnectAt"]
    finally:
        again.stop()


@sqlite_only
def test_a_full_store_refuses_clearly_and_keeps_serving(tmp_path):
    srv = start_server(tmp_path, "--store-max-mb", "1")
    try:
        with srv.api() as api:
            statuses = []
            for i in range(3000):  # ~1.3 KB each: the cap is reached well before the end
                r = api.post(
                    "/v1.1/chargestations",
                    json={"endpoint": f"full-{i}", "meta_data": {"pad": "x" * 300}},
                )
                statuses.append(r.status_code)
                if r.status_code != 201:
                    break
            assert statuses[-1] == 507, statuses[-5:]
            body = r.json()
            assert body["ok"] is False and "cannot be written" in body["message"]
            assert "full" in body["message"]
            # what was acknowledged is there; the refused one is not; reads still work
            created = statuses.count(201)
            listed = api.get("/v1.1/chargestations", params={"paginate_limit": 1}).json()
            assert listed["total"] == created
            assert api.get(f"/v1.1/chargestations/full-{created}").status_code == 404
            # a full store still deletes; that frees pages, so that the connection below can
            # be recorded whatever slack the schema left in the last page (its meter values
            # then fill the store again)
            for i in range(created - 10, created):
                assert api.delete(f"/v1.1/chargestations/full-{i}").status_code == 200

        async def station():
            """Send meter values until one is refused; return that reply."""
            async with connect(
                f"{srv.ocpp_url}/full-0", subprotocols=[P16], open_timeout=scaled(10)
            ) as ws:
                for i in range(500):
                    await ws.send(
                        json.dumps(
                            [
                                2,
                                str(i),
                                "MeterValues",
                                {
                                    "connectorId": 1,
                                    "meterValue": [
                                        {"timestamp": NOW, "sampledValue": [{"value": "x" * 2000}]}
                                    ],
                                },
                            ]
                        )
                    )
                    frame = json.loads(await ws.recv())
                    if frame[0] != 3:
                        return frame
                    # a pace, not a wait: stay under the station rate limit (50/s)
                    await asyncio.sleep(0.025)

        frame = asyncio.run(station())
        assert frame is not None and frame[0] == 4 and frame[2] == "InternalError", frame
        assert "cannot be written" in frame[4]["cause"]
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edrvctl",
            "serve",
            "--store",
            str(blocker / "edrvctl.db"),
            "--api-port",
            "0",
            "--ocpp-port",
            "0",
        ],
        env=hermetic_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=scaled(30),
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "cannot open the store" in r.stderr and "Traceback" not in r.stderr


def test_connection_churn_and_silent_stations_leak_nothing(tmp_path):
    srv = start_server(
        tmp_path, "--ping-interval", str(scaled(0.3)), "--ping-timeout", str(scaled(0.3))
    )
    try:
        ep = srv.create()["endpoint"]
        mute = srv.create()["endpoint"]

        async def churn(n: int):
            for i in range(n):
                async with connect(
                    f"{srv.ocpp_url}/{ep}", subprotocols=[P16], open_timeout=scaled(10)
                ) as ws:
                    if i % 2:
                        await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
                        await ws.recv()

        async def mute_is(online: bool) -> bool:
            return (await asyncio.to_thread(srv.get, mute))["online"] is online

        async def never_pong():
            ws = await connect(
                f"{srv.ocpp_url}/{mute}", subprotocols=[P16], open_timeout=scaled(10)
            )
            await until_async(lambda: mute_is(True), what="the mute station online")
            ws.transport.pause_reading()  # no more pongs: the keepalive must drop it
            await until_async(lambda: mute_is(False), what="the mute station dropped")
            ws.transport.abort()

        asyncio.run(churn(300))  # warm up: allocator and caches settle
        before = rss_kb(srv.proc.pid)
        asyncio.run(churn(1500))
        for _ in range(3):
            asyncio.run(never_pong())
        after = rss_kb(srv.proc.pid)
        assert after - before < 8 * 1024, f"RSS grew {before} -> {after} KB"
        assert srv.get(ep)["online"] is False and srv.get(mute)["online"] is False
    finally:
        srv.stop()
