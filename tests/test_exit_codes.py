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
from timing import scaled, until


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


def _prompt_in_a_terminal(cli_env: dict, args: list[str]):
    """Run edrvctl with a pseudo-terminal as stdin (so it asks) and stderr on a pipe; return
    the process once the question is on stderr, and the pty's controlling end."""
    import os
    import pty

    controller, terminal = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "edrvctl", *args],
        env=cli_env,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    asked = bytearray()
    os.set_blocking(p.stderr.fileno(), False)

    def question_asked() -> bool:
        assert p.poll() is None, (p.returncode, bytes(asked), p.stdout.read())
        asked.extend(p.stderr.read() or b"")
        return b"[y/N]" in asked

    until(question_asked, timeout=20, what="the confirmation question on stderr")
    os.set_blocking(p.stderr.fileno(), True)
    return p, controller, bytes(asked)


def test_ctrl_c_at_a_confirmation_prompt_is_exit_130(server, cli_env):
    """Issue 10: Ctrl-C at the prompt printed "Aborted!" and exited 1."""
    import os

    doc = server.create()
    p, controller, asked = _prompt_in_a_terminal(cli_env, ["cs", "delete", doc["endpoint"]])
    try:
        assert f"Delete chargestation {doc['endpoint']}?".encode() in asked
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=scaled(10))
        assert p.returncode == 130, (asked + err).decode()
        assert b"interrupted" in err and b"Aborted" not in err and b"Traceback" not in err
        assert out == b""
        assert server.get(doc["_id"])["_id"] == doc["_id"]  # nothing deleted
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(controller)


def test_answering_no_at_the_prompt_is_exit_1_and_yes_goes_on(server, cli_env):
    import os

    doc = server.create()
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        p, controller, _ = _prompt_in_a_terminal(cli_env, ["cs", "deactivate", doc["endpoint"]])
        try:
            os.write(controller, answer)
            _, err = p.communicate(timeout=scaled(10))
            assert p.returncode == code, err
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            os.close(controller)
        assert server.get(doc["_id"])["active"] is (code != 0)


def test_an_unexpected_failure_is_one_line_and_exit_1(cli_env, monkeypatch):
    """No traceback without --debug, whatever goes wrong."""
    from edrvctl import client

    def boom(*a, **kw):
        raise RuntimeError("something broke")

    monkeypatch.setattr(client, "pages", boom)
    r = CliRunner().invoke(app, ["cs", "list"], env=cli_env)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: internal error: RuntimeError: something broke")
    assert "Traceback" not in r.stderr and "--debug" in r.stderr
    r = CliRunner().invoke(app, ["cs", "list", "--debug"], env=cli_env)
    assert r.exit_code == 1 and "Traceback" in r.stderr
