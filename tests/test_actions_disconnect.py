"""A station that goes away in the middle of a command: the command fails at once (not at its
deadline), the Action says why, the API answers 406 and the CLI exits 6."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from edrvctl.cli import app
from test_ocpp_frames import BOOT, P16, P201, call, recv, uniq
from timing import scaled

BASE = "/v1.1/chargestations"


async def booted(server, proto: str):
    doc = server.create(uniq("gone"), protocol=proto)
    ws = await connect(
        f"{server.ocpp_url}/{doc['endpoint']}", subprotocols=[proto], proxy=None, ping_interval=None
    )
    frame = await call(ws, "BootNotification", BOOT[proto])
    assert frame[2]["status"] == "Accepted", frame
    return ws, doc


async def close_at_the_next_call(ws) -> list:
    """Read until the server's CALL, then drop the connection without answering it."""
    while True:
        frame = await recv(ws, timeout=scaled(10))
        if frame[0] == 2:
            await ws.close()
            return frame


@pytest.mark.parametrize("proto", [P16, P201])
def test_a_station_that_disconnects_mid_command_fails_it_at_once(server, proto):
    async def scenario():
        ws, doc = await booted(server, proto)
        async with httpx.AsyncClient(
            base_url=server.api_url, headers={"Authorization": f"Bearer {server.token}"}
        ) as c:
            started = time.monotonic()
            pending = asyncio.ensure_future(
                c.post(f"{BASE}/{doc['_id']}/clear_cache", params={"wait": 30}, timeout=40)
            )
            frame = await close_at_the_next_call(ws)
            assert frame[2] == "ClearCache"
            r = await pending
            took = time.monotonic() - started
        return r, took

    r, took = asyncio.run(scenario())
    assert r.status_code == 406, r.text
    assert took < scaled(10), f"failed only after {took:.1f} s (the wait was 30 s)"
    action = r.json()["result"]
    assert (action["status"], action["outcome"]) == ("failed", "failed"), action
    assert action["error"]["code"] == "Offline", action


def test_the_cli_exits_6_when_the_station_goes_away_mid_command(server, cli_env):
    async def scenario():
        ws, doc = await booted(server, P16)
        result = asyncio.ensure_future(
            asyncio.to_thread(
                CliRunner().invoke, app, ["cs", "clear-cache", doc["endpoint"]], env=cli_env
            )
        )
        await close_at_the_next_call(ws)
        return await result

    r = asyncio.run(scenario())
    assert r.exit_code == 6, r.output
    assert "offline" in r.output and "Traceback" not in r.output, r.output
