"""The exit codes not covered elsewhere: 1 (unexpected response) and 130 (interrupted)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading

from typer.testing import CliRunner
from websockets.asyncio.client import connect

from edrvctl.cli import app
from timing import scaled


def test_an_unexpected_response_is_exit_1(server, cli_env):
    # The OCPP port speaks HTTP, but not eDRV's API: a plain GET gets a text refusal.
    env = dict(cli_env, EDRV_API_URL=server.ocpp_url.replace("ws://", "http://"))
    r = CliRunner().invoke(app, ["cs", "list"], env=env)
    assert r.exit_code == 1, r.output
    assert "unexpected 404 response" in r.stderr and r.stdout == ""


def test_ctrl_c_while_waiting_for_a_station_is_exit_130(server, cli_env):
    ep = server.create()["endpoint"]
    booted, asked, stop = threading.Event(), threading.Event(), threading.Event()

    def silent_station():
        async def run():
            async with connect(
                f"{server.ocpp_url}/{ep}", subprotocols=["ocpp1.6"], open_timeout=scaled(10)
            ) as ws:
                await ws.send(
                    json.dumps(
                        [
                            2,
                            "b",
                            "BootNotification",
                            {"chargePointVendor": "V", "chargePointModel": "M"},
                        ]
                    )
                )
                await ws.recv()
                booted.set()
                while not stop.is_set():  # read what the server asks, never answer
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                    except TimeoutError:  # (only to look at `stop` again)
                        continue
                    if frame[0] == 2 and frame[2] == "GetConfiguration":
                        asked.set()

        asyncio.run(run())

    t = threading.Thread(target=silent_station, daemon=True)
    t.start()
    p = None
    try:
        assert booted.wait(scaled(10))
        p = subprocess.Popen(
            [sys.executable, "-m", "edrvctl", "cs", "config", ep, "--timeout", str(scaled(60))],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The station was asked: the CLI's request is out and it is waiting for the answer.
        assert asked.wait(scaled(20)), "the station was never asked for its configuration"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=scaled(10))
        assert p.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err and out == ""
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        stop.set()
        t.join(scaled(5))
