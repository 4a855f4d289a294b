"""Issue 9, "Station text reaches the terminal raw": every string that came from a station or a
user is shown by the CLI as text. Control characters are made visible (escape sequences that
retitle the window, clear the screen or write the clipboard; bidi overrides; zero-width
marks), nothing is read as Rich markup (a vendor of `[/bold]` crashed `cs list` and
`cs inspect`; a `[link=...]` became a clickable link), and long values are cut in tables but
kept whole in -o json, whose escaping is completed for what JSON leaves raw.

A hostile station (a raw OCPP 1.6 client) boots with such a vendor, model, firmware and serial
number, answers GetConfiguration with such keys and values, and answers a second
GetConfiguration with a CALLERROR whose description carries them (it reaches the CLI through
the API's error message).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import threading

import pytest
from typer.testing import CliRunner

from edrvctl.cli import app
from timing import scaled, until

OSC52 = "\x1b]52;c;SGVsbG8=\x07"  # write "Hello" to the clipboard
TITLE = "\x1b]0;pwned\x07"  # retitle the window
CLEAR = "\x1b[2J"
RLO = "\u202e"  # right-to-left override
ZWSP = "\u200b"
CSI_C1 = "\x9b2J"  # clear screen with the 8-bit CSI

VENDOR = "[/bold]"
MODEL = "[link=http://x]m"
FIRMWARE = f"{OSC52}{CLEAR}{RLO}evil"
SERIAL = f"{TITLE}x"
LONG = "L" * 400
CONFIG = [
    {"key": "Evil\x1b[31mKey", "readonly": False, "value": f"{OSC52}[link=http://x]click[/link]"},
    {"key": "[/bold]", "readonly": True, "value": f"[/bold]{RLO}{ZWSP}{CSI_C1}\x7f"},
    {"key": "LongValue", "readonly": False, "value": LONG},
]
CALLERROR_TEXT = f"{TITLE}[/bold] denied {RLO}{CSI_C1}"

# What must never reach a terminal raw (C0 but tab and newline, which are the structure of the
# output; DEL; C1; bidi and zero-width controls).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")

runner = CliRunner()
_seq = itertools.count(1)


def cli(env: dict, *args: str):
    clear = dict.fromkeys(("EDRV_API_URL", "EDRV_TOKEN", "EDRVCTL_CONTEXT", "COLUMNS"))
    r = runner.invoke(app, list(args), env={**clear, **env}, prog_name="edrvctl")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"edrvctl {' '.join(args)} crashed: {r.exception!r}") from (
            r.exception
        )
    return r


def assert_shown_as_text(*texts: str) -> None:
    for text in texts:
        m = RAW.search(text)
        assert m is None, (
            f"raw {m.group()!r} at {m.start()}: {text[max(0, m.start() - 40) :][:80]!r}"
        )


class HostileStation:
    """A raw OCPP 1.6 station on its own event loop in a thread."""

    def __init__(self, url: str):
        self.url = url
        self.booted = threading.Event()
        self.stop = threading.Event()
        self.asked = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self.thread.start()

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, subprotocols=["ocpp1.6"], open_timeout=scaled(10)) as ws:
            boot = {
                "chargePointVendor": VENDOR,
                "chargePointModel": MODEL,
                "firmwareVersion": FIRMWARE,
                "chargePointSerialNumber": SERIAL,
            }
            await ws.send(json.dumps([2, "b1", "BootNotification", boot]))
            while json.loads(await ws.recv())[1] != "b1":
                pass
            status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
            await ws.send(json.dumps([2, "s1", "StatusNotification", status]))
            self.booted.set()
            while not self.stop.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                except TimeoutError:  # (only to look at `stop` again)
                    continue
                if frame[0] != 2:
                    continue
                _, msg_id, action, payload = frame
                if action == "GetConfiguration" and not payload.get("key"):
                    reply = [3, msg_id, {"configurationKey": CONFIG}]
                elif action == "GetConfiguration":
                    reply = [4, msg_id, "InternalError", CALLERROR_TEXT, {}]
                elif action == "ChangeAvailability":
                    reply = [3, msg_id, {"status": "Accepted"}]
                else:
                    reply = [4, msg_id, "NotImplemented", "", {}]
                await ws.send(json.dumps(reply))


@pytest.fixture(scope="module")
def hostile(server):
    loc = f"hostile-{os.getpid()}"
    doc = server.create(f"hostile-{os.getpid()}", location=loc)
    station = HostileStation(f"{server.ocpp_url}/{doc['endpoint']}")
    try:
        assert station.booted.wait(scaled(15)), "the hostile station did not boot"
        until(
            lambda: server.get(doc["_id"])["status"] == "Available",
            timeout=15,
            what="the hostile station's status",
        )
        yield {"doc": doc, "location": loc}
    finally:
        station.stop.set()
        station.thread.join(scaled(5))


@pytest.fixture
def env(cli_env):
    return cli_env


@pytest.mark.parametrize("fmt", ["table", "wide", "plain"])
@pytest.mark.parametrize("columns", ["80", "200"])
def test_list_shows_station_text_as_text(env, hostile, fmt, columns):
    r = cli({**env, "COLUMNS": columns}, "cs", "list", "--location", hostile["location"], "-o", fmt)
    assert r.exit_code == 0, r.stderr  # a vendor of [/bold] crashed it
    assert_shown_as_text(r.stdout, r.stderr)
    assert VENDOR in r.stdout  # shown, not read as markup
    if fmt == "plain" or columns == "200":
        assert f"{VENDOR} {MODEL}" in r.stdout
    if fmt == "wide" and columns == "200":
        assert "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\u202eevil" in r.stdout


@pytest.mark.parametrize("fmt", ["table", "plain"])
def test_inspect_shows_station_text_as_text(env, hostile, fmt):
    ep = hostile["doc"]["endpoint"]
    cli(env, "cs", "config", ep)  # stored csconfig, shown by inspect
    r = cli({**env, "COLUMNS": "100"}, "cs", "inspect", ep, "-o", fmt)
    assert r.exit_code == 0, r.stderr
    assert_shown_as_text(r.stdout, r.stderr)
    for shown in (
        VENDOR,
        MODEL,
        "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\u202eevil",
        "\\x1b]0;pwned\\x07x",
        "Evil\\x1b[31mKey",
        "[link=http://x]click[/link]",
    ):
        assert shown in r.stdout, (shown, r.stdout)


def test_inspect_with_colour_emits_only_its_own_bold(env, hostile):
    r = cli(env, "--color", "always", "cs", "inspect", hostile["doc"]["endpoint"], "-o", "table")
    assert r.exit_code == 0, r.stderr
    assert "\x1b[1m" in r.stdout
    assert_shown_as_text(re.sub(r"\x1b\[[01]m", "", r.stdout))


@pytest.mark.parametrize("fmt", ["table", "plain"])
def test_config_shows_keys_and_values_as_text_and_cuts_long_ones_in_tables(env, hostile, fmt):
    r = cli({**env, "COLUMNS": "100"}, "cs", "config", hostile["doc"]["endpoint"], "-o", fmt)
    assert r.exit_code == 0, r.stderr
    assert_shown_as_text(r.stdout, r.stderr)
    assert "Evil\\x1b[31mKey" in r.stdout and "[/bold]\\u202e\\u200b\\x9b2J\\x7f" in r.stdout
    if fmt == "table":
        assert LONG not in r.stdout and "L…" in r.stdout
        assert all(len(line) <= 100 for line in r.stdout.splitlines())
    else:
        assert LONG in r.stdout  # plain: full values


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_and_yaml_keep_full_values_and_escape_them(env, hostile, fmt):
    import yaml

    r = cli(env, "cs", "config", hostile["doc"]["endpoint"], "-o", fmt)
    assert r.exit_code == 0, r.stderr
    assert_shown_as_text(r.stdout)  # JSON leaves C1, DEL and bidi raw: completed here
    data = json.loads(r.stdout) if fmt == "json" else yaml.safe_load(r.stdout)
    assert [{k: e[k] for k in ("key", "value", "readonly")} for e in data] == CONFIG
    r = cli(env, "cs", "inspect", hostile["doc"]["endpoint"], "-o", fmt)
    assert_shown_as_text(r.stdout)
    doc = json.loads(r.stdout) if fmt == "json" else yaml.safe_load(r.stdout)
    assert (doc["manufacturer"], doc["model"]) == (VENDOR, MODEL)
    assert doc["bootInfo"]["firmwareVersion"] == FIRMWARE


def test_a_callerror_description_is_shown_as_text(env, hostile):
    r = cli(env, "cs", "config", hostile["doc"]["endpoint"], "-k", "HeartbeatInterval")
    assert r.exit_code == 5, r.stderr
    assert r.stdout == ""
    assert_shown_as_text(r.stderr)
    assert "InternalError" in r.stderr and "\\x1b]0;pwned\\x07[/bold] denied \\u202e\\x9b2J" in (
        r.stderr
    )


def test_user_text_is_shown_as_text(server, env):
    """What an admin typed (or pasted) comes back as text too: in records and in errors."""
    loc = f"{CLEAR}[/bold]{RLO}loc-{os.getpid()}-{next(_seq)}"
    ep = f"user-{os.getpid()}-{next(_seq)}"
    r = cli(env, "cs", "create", ep, "--location", loc, "--organization", "[link=http://x]o")
    assert r.exit_code == 0, r.stderr
    for fmt in ("table", "wide", "plain"):
        r = cli(env, "cs", "list", "--location", loc, "-o", fmt)
        assert r.exit_code == 0 and ep in r.stdout, r.stderr
        assert_shown_as_text(r.stdout)
    r = cli(env, "cs", "inspect", ep, "-o", "table")
    assert "\\x1b[2J[/bold]\\u202eloc" in r.stdout and "[link=http://x]o" in r.stdout
    assert_shown_as_text(r.stdout)
    for args in (
        ("cs", "inspect", f"{TITLE}nope"),
        ("cs", "create", f"{OSC52}x"),
        ("cs", "update", ep, "--location", "x" * 201 + CLEAR),
    ):
        r = cli(env, *args)
        assert r.exit_code in (2, 3) and r.stderr.startswith("error: "), r.stderr
        assert_shown_as_text(r.stderr)


def test_json_escaping_agrees_with_textsafe():
    """output._JSON_UNSAFE is textsafe's set less C0 (which JSON escapes itself)."""
    from edrvctl.cli.output import _JSON_UNSAFE
    from edrvctl.textsafe import printable

    for code in range(0x10000):
        c = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        assert (printable(c) != c) == (code < 0x20 or bool(_JSON_UNSAFE.match(c))), hex(code)


def test_messages_of_another_api_read_as_sentences_too():
    """An eDRV-compatible API other than ours may answer with pydantic's own words: the CLI
    drops the "Value error, " prefix and does not quote a regex at the user."""
    from edrvctl.cli.base import humane

    assert humane("endpoint: Value error, an endpoint cannot be only dots") == (
        "endpoint: an endpoint cannot be only dots"
    )
    said = humane(
        "invalid request: endpoint: String should match pattern '^[A-Za-z0-9._~:-]{1,48}$'"
    )
    assert "^[" not in said and said.endswith("has a character that is not allowed")
    assert humane(f"x {TITLE}") == "x \\x1b]0;pwned\\x07"
