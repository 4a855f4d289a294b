"""Every command through the real OCPP path, in one process: simulated stations (SimStation)
connect over real websockets to sessions of server/ocpp16.py and ocpp201.py held by a
server.stations.Registry, under a Fleet over an in-memory store; `fleet.command` is driven
directly (no REST route yet) and each Action is followed to its end.

The websocket server here is the minimum of server/listener.py's session handling (attach,
run, detach); `edrvctl serve` end to end comes with the API routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import unquote

import pytest
from websockets.asyncio.server import serve

from edrvctl import model
from edrvctl.fleet import Fleet
from edrvctl.fleet.live import (
    ClearCache,
    Configure,
    DataTransfer,
    GetDiagnostics,
    RawCall,
    RemoteStart,
    RemoteStop,
    Reset,
    TriggerMessage,
    UnlockConnector,
    UpdateFirmware,
)
from edrvctl.server.ocpp16 import Station16
from edrvctl.server.ocpp201 import Station201
from edrvctl.server.stations import Registry
from edrvctl.simulator import SimStation
from edrvctl.store import open_store
from test_simulator import file_server
from timing import scaled

SESSIONS = {"ocpp1.6": Station16, "ocpp2.0.1": Station201}


@contextlib.asynccontextmanager
async def central_system():
    fleet = Fleet(open_store(":memory:"))
    registry = Registry(fleet)
    fleet.live = registry

    async def handle(ws):
        endpoint = unquote(ws.request.path.strip("/"))
        session = SESSIONS[ws.subprotocol](endpoint, ws.subprotocol, ws, fleet)
        await registry.attach(session)
        try:
            await session.run()
        finally:
            await registry.detach(session)

    def select(conn, offered):
        return next((p for p in offered if p in SESSIONS), None)

    async with serve(handle, "127.0.0.1", 0, select_subprotocol=select, compression=None) as s:
        fleet.ocpp_url = f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}"
        yield fleet


async def until(fn, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while True:
        got = await fn()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        await asyncio.sleep(0.02)


async def ended(fleet: Fleet, action: dict, timeout: float = 5.0) -> dict:
    async def done():
        a = await fleet.get_action(action["_id"])
        return a if a["outcome"] != "pending" else None

    return await until(done, timeout)


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_every_command_end_to_end_over_ocpp(protocol):
    v16 = protocol == "ocpp1.6"
    key = "HeartbeatInterval" if v16 else "OCPPCommCtrlr.HeartbeatInterval"

    async def main():
        with file_server() as (base, files):
            async with central_system() as fleet:
                await fleet.create(model.StationCreate(endpoint="LIVE", protocol=protocol))
                st = SimStation(
                    "LIVE",
                    fleet.ocpp_url,
                    protocol,
                    firmware="2.1.0",
                    reboot_delay=0.05,
                    transfer_step=0.01,
                )
                task = asyncio.create_task(st.start())
                try:
                    await asyncio.wait_for(st.booted.wait(), scaled(5))

                    async def booted():
                        return (await fleet.get("LIVE")).get("bootInfo")

                    await until(booted)

                    async def command(c, timeout=5.0):
                        return await fleet.command("LIVE", c, timeout=scaled(5))

                    a = await command(ClearCache())
                    assert (a["status"], a["outcome"]) == ("completed", "succeeded"), a

                    a = await command(Configure(key, "123"))
                    assert (a["status"], a["outcome"]) == ("completed", "succeeded"), a
                    assert a["progress"][-1] == {
                        "status": "ReadBack",
                        "at": a["progress"][-1]["at"],
                        "value": "123",
                    }
                    csconfig = (await fleet.get("LIVE"))["csconfig"]
                    assert any(e["key"] == key and e["value"] == "123" for e in csconfig)
                    assert st.config[key] == "123"

                    a = await command(
                        UnlockConnector(connector=1) if v16 else UnlockConnector(evse=1)
                    )
                    assert (a["status"], a["response_data"]["status"]) == ("completed", "Unlocked")

                    a = await command(DataTransfer("acme"))  # the simulator has no extension
                    assert (a["status"], a["error"]["code"]) == ("failed", "Rejected")

                    a = await command(RawCall("ClearCache", {}))
                    assert (a["type"], a["outcome"]) == ("call", "succeeded")

                    a = await command(TriggerMessage("Heartbeat"))
                    a = await ended(fleet, a)
                    assert (a["outcome"], [p["status"] for p in a["progress"]]) == (
                        "succeeded",
                        ["Heartbeat"],
                    )

                    a = await command(
                        RemoteStart("TAG-1", connector=1) if v16 else RemoteStart("TAG-1", evse=1)
                    )
                    a = await ended(fleet, a)
                    assert a["outcome"] == "succeeded", a
                    tx = a["progress"][0]["transactionId"]

                    async def charging():  # the station marks it once its start is answered
                        return st.transactions.get(1)

                    assert str(await until(charging)) == tx

                    a = await command(RemoteStop(tx))
                    a = await ended(fleet, a)
                    assert (a["outcome"], a["progress"][-1]["reason"]) == ("succeeded", "Remote")

                    a = await command(Reset(hard=True))
                    a = await ended(fleet, a)
                    assert (a["outcome"], a["stage"]) == ("succeeded", "done"), a
                    assert [p["status"] for p in a["progress"]] == [
                        "Disconnected",
                        "BootNotification",
                    ]

                    a = await command(UpdateFirmware(f"{base}/fw.bin"))
                    a = await ended(fleet, a)
                    assert (a["outcome"], a["stage"]) == ("succeeded", "done"), a
                    assert [p["status"] for p in a["progress"]] == [
                        "Downloading",
                        "Downloaded",
                        "Installing",
                        "Installed",
                        "BootNotification",
                    ]
                    assert a["progress"][-1]["firmwareVersion"] == "2.1.1"
                    boot = (await fleet.get("LIVE"))["bootInfo"]
                    assert boot["firmwareVersion"] == "2.1.1"

                    a = await command(GetDiagnostics(f"{base}/up/"))
                    a = await ended(fleet, a)
                    assert (a["outcome"], [p["status"] for p in a["progress"]]) == (
                        "succeeded",
                        ["Uploading", "Uploaded"],
                    )
                    name = a["response_data"]["fileName" if v16 else "filename"]
                    assert b"LIVE" in files[name]

                    a = await command(GetDiagnostics(f"{base}/nowhere/"))
                    a = await ended(fleet, a)
                    assert a["outcome"] == "failed"
                    assert a["error"]["code"] == ("UploadFailed" if v16 else "UploadFailure")

                    assert fleet._following == {}
                finally:
                    await st.stop()
                    await task

    asyncio.run(asyncio.wait_for(main(), scaled(30)))
