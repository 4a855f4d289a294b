"""The CLI through typer's CliRunner, against a real `edrvctl serve` (the `server` fixture).

stdout and stderr are asserted separately: data goes to stdout, errors and hints to stderr.
CliRunner's stdin is not a terminal, so disruptive commands without --yes must refuse.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import hermetic_env, start_server
from edrvctl import __version__
from edrvctl.cli import app
from timing import scaled, until, until_past

HEX24 = re.compile(r"^[0-9a-f]{24}$")
PLAIN_HEADER = "ENDPOINT\tID\tPROTOCOL\tONLINE\tACTIVE\tSTATUS\tMODEL\tLAST SEEN"
COMMANDS = [
    "list",
    "create",
    "inspect",
    "update",
    "activate",
    "deactivate",
    "delete",
    "rotate-password",
    "config",
]

runner = CliRunner()
_seq = itertools.count(1)

# Variables that, if set in the developer's shell, must not leak into a test's invocation
# (CliRunner's env= only adds to os.environ; None removes).
_CLEAR = {
    "EDRV_API_URL": None,
    "EDRV_TOKEN": None,
    "EDRVCTL_CONTEXT": None,
    "EDRV_STATION_PASSWORD": None,
    "_EDRVCTL_COMPLETE": None,
    "COLUMNS": None,  # a table's width is set by the tests that look at it
}


def uniq(prefix: str = "cli") -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}-{time.monotonic_ns() % 10**6}"


def cli(env: dict, *args: str, input: str | None = None):
    result = runner.invoke(app, list(args), env={**_CLEAR, **env}, prog_name="edrvctl", input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"edrvctl {' '.join(args)} crashed: {result.exception!r}\nstderr: {result.stderr}"
        ) from result.exception
    return result


def ok(env: dict, *args: str, **kw):
    r = cli(env, *args, **kw)
    assert r.exit_code == 0, f"edrvctl {' '.join(args)} -> {r.exit_code}\n{r.stderr}"
    return r


def fails(code: int, env: dict, *args: str, **kw):
    """Exit `code`, nothing on stdout, a message on stderr."""
    r = cli(env, *args, **kw)
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    assert r.stderr.strip(), "a failure must say why on stderr"
    return r


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def plain_rows(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def create(env: dict, *extra: str, endpoint: str | None = None) -> dict:
    ep = endpoint or uniq("cs")
    return json.loads(ok(env, "cs", "create", ep, "-o", "json", *extra).stdout)


# --------------------------------------------------------------------------- a live station


class LiveStation:
    """A simulated OCPP station (edrvctl.simulator) on its own event loop in a thread."""

    def __init__(
        self,
        ocpp_url: str,
        endpoint: str,
        protocol: str = "ocpp1.6",
        connectors: int = 1,
        password: str | None = None,
    ):
        from edrvctl.simulator import SimStation

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make():
            return SimStation(
                endpoint,
                ocpp_url,
                protocol,
                connectors=connectors,
                reconnect=False,
                password=password,
            )

        self.sim = asyncio.run_coroutine_threadsafe(make(), self.loop).result(scaled(10))
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(scaled(10))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(scaled(5))


@pytest.fixture(scope="module")
def live(server):
    loc = uniq("live-loc")
    doc = server.create(uniq("live"), location=loc)
    st = LiveStation(server.ocpp_url, doc["endpoint"])

    def available():
        d = server.get(doc["_id"])
        return d if d["online"] and d["status"] == "Available" else None

    try:
        d = until(available, timeout=15, interval=0.05, what=f"{doc['endpoint']} to be Available")
        yield {"doc": d, "location": loc}
    finally:
        st.stop()


# --------------------------------------------------------------------------- help and version


def test_version(tmp_path):
    r = ok(hermetic_env(tmp_path), "--version")
    assert r.stdout == f"edrvctl {__version__}\n"
    assert r.stderr == ""


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flags(tmp_path, flag):
    r = ok(hermetic_env(tmp_path), flag)
    assert r.stdout.startswith("Usage: edrvctl")
    assert "chargestations" in r.stdout and "serve" in r.stdout
    assert "--install-completion" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example_and_needs_no_network(tmp_path, cmd):
    env = {
        **hermetic_env(tmp_path),
        "EDRV_API_URL": closed_port_url(),
        "EDRVCTL_CONTEXT": "no-such-context",
    }
    r = ok(env, "cs", cmd, "-h")
    assert r.stdout.startswith(f"Usage: edrvctl cs {cmd}")
    assert "Example" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("args", [(), ("cs",), ("chargestations",)], ids=repr)
def test_no_arguments_shows_help_and_exits_0(tmp_path, args):
    """kubectl and gh alone print their help and exit 0 (issue 10: `edrvctl` alone exited 2)."""
    r = cli(hermetic_env(tmp_path), *args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("Usage: edrvctl") and "Commands:" in r.stdout
    assert r.stderr == ""


def test_alias_cs_is_chargestations(cli_env):
    loc = uniq("alias")
    create(cli_env, "--location", loc)
    long = ok(cli_env, "chargestations", "list", "--location", loc)
    short = ok(cli_env, "cs", "list", "--location", loc)
    assert long.stdout == short.stdout and len(plain_rows(short.stdout)) == 2
    assert ok(cli_env, "cs", "-h").stdout.startswith("Usage: edrvctl cs ")


# --------------------------------------------------------------------------- create


def test_create_prints_one_line(server, cli_env):
    ep = uniq()
    r = ok(cli_env, "cs", "create", ep)
    assert r.stdout == f"chargestation/{ep} created\n"
    assert r.stderr == ""  # the connection hint is for terminals only
    assert server.get(ep)["endpoint"] == ep


def test_create_quiet_prints_the_new_id(server, cli_env):
    ep = uniq()
    r = ok(cli_env, "cs", "create", ep, "-q")
    sid = r.stdout.strip()
    assert r.stdout == sid + "\n" and HEX24.match(sid)
    assert server.get(sid)["endpoint"] == ep


def test_create_json_and_yaml_print_the_object(server, cli_env):
    doc = create(cli_env)
    assert doc == server.get(doc["_id"])
    ep = uniq()
    y = yaml.safe_load(ok(cli_env, "cs", "create", ep, "-o", "yaml").stdout)
    assert y == server.get(ep)


def test_create_with_every_option(server, cli_env):
    loc, org, ep = uniq("loc"), uniq("org"), uniq()
    ok(
        cli_env,
        "cs",
        "create",
        ep,
        "--protocol",
        "ocpp2.0.1",
        "--location",
        loc,
        "--organization",
        org,
        "--public",
        "--simulator",
        "--inactive",
    )
    doc = server.get(ep)
    assert doc["protocol"] == "ocpp2.0.1"
    assert (doc["location"], doc["organization"]) == (loc, org)
    assert doc["public"] is True and doc["is_simulator"] is True and doc["active"] is False


def test_create_defaults(server, cli_env):
    doc = create(cli_env)
    assert doc["protocol"] == "ocpp1.6" and doc["active"] is True and doc["public"] is False


# --------------------------------------------------------------------------- list: output modes


@pytest.fixture
def pair(cli_env):
    """Two stations in a location of their own; newest first."""
    loc, org = uniq("loc"), uniq("org")
    a = create(cli_env, "--location", loc, "--organization", org)
    until_past(a["createdAt"])  # b is newer
    b = create(cli_env, "--location", loc, "--organization", org)
    return loc, [b, a]


def test_list_default_is_plain_off_a_terminal(cli_env, pair):
    loc, docs = pair
    r = ok(cli_env, "cs", "list", "--location", loc)
    assert r.stderr == ""
    rows = plain_rows(r.stdout)
    assert "\t".join(rows[0]) == PLAIN_HEADER
    assert [row[:5] for row in rows[1:]] == [
        [d["endpoint"], d["_id"], "ocpp1.6", "false", "true"] for d in docs
    ]
    assert all(len(row) == len(rows[0]) for row in rows)
    assert ok(cli_env, "cs", "list", "--location", loc, "-o", "plain").stdout == r.stdout


def test_list_plain_no_headers(cli_env, pair):
    loc, docs = pair
    r = ok(cli_env, "cs", "list", "--location", loc, "--no-headers")
    assert [row[0] for row in plain_rows(r.stdout)] == [d["endpoint"] for d in docs]
    assert "ENDPOINT" not in r.stdout


def test_list_table(cli_env, pair):
    loc, docs = pair
    r = ok(cli_env, "cs", "list", "--location", loc, "-o", "table")
    assert "\t" not in r.stdout
    head = r.stdout.strip().splitlines()[0].split()
    assert head[:3] == ["ENDPOINT", "ID", "PROTOCOL"]
    for d in docs:  # full ids and endpoints, never cut
        assert re.search(rf"{re.escape(d['endpoint'])}\s+{d['_id']}", r.stdout)
    nh = ok(cli_env, "cs", "list", "--location", loc, "-o", "table", "--no-headers")
    assert "ENDPOINT" not in nh.stdout and docs[0]["_id"] in nh.stdout


def test_list_wide_has_more_columns(cli_env, pair):
    loc, docs = pair
    r = ok(cli_env, "cs", "list", "--location", loc, "-o", "wide")
    for col in ("LOCATION", "ORGANIZATION", "CONNECTORS", "FIRMWARE", "CREATED"):
        assert col in r.stdout
    assert loc in r.stdout and docs[0]["organization"] in r.stdout
    assert "LOCATION" not in ok(cli_env, "cs", "list", "--location", loc, "-o", "table").stdout


def test_list_json(cli_env, pair):
    loc, docs = pair
    out = json.loads(ok(cli_env, "cs", "list", "--location", loc, "-o", "json").stdout)
    assert [d["_id"] for d in out] == [d["_id"] for d in docs]
    assert out[0]["createdAt"].endswith("Z")


def test_list_yaml(cli_env, pair):
    loc, docs = pair
    out = yaml.safe_load(ok(cli_env, "cs", "list", "--location", loc, "-o", "yaml").stdout)
    assert [d["endpoint"] for d in out] == [d["endpoint"] for d in docs]


def test_list_quiet_prints_ids_only(cli_env, pair):
    loc, docs = pair
    for flag in ("-q", "--quiet"):
        r = ok(cli_env, "cs", "list", "--location", loc, flag)
        assert r.stdout == "".join(d["_id"] + "\n" for d in docs)


@pytest.mark.parametrize(
    "fmt,expected", [("plain", PLAIN_HEADER + "\n"), ("json", "[]\n"), ("yaml", "[]\n")]
)
def test_empty_list_is_success(cli_env, fmt, expected):
    r = ok(cli_env, "cs", "list", "--location", uniq("none"), "-o", fmt)
    assert r.stdout == expected
    assert ok(cli_env, "cs", "list", "--location", uniq("none"), "-q").stdout == ""


# --------------------------------------------------------------------------- list: limit, filters


def test_list_limit_and_all(cli_env):
    loc = uniq("limit")
    ids = []
    for _ in range(3):
        doc = create(cli_env, "--location", loc)
        ids.append(doc["_id"])
        until_past(doc["createdAt"])  # the next one is newer
    newest = ids[::-1]
    assert (
        ok(cli_env, "cs", "list", "--location", loc, "--limit", "2", "-q").stdout.split()
        == newest[:2]
    )
    assert (
        ok(cli_env, "cs", "list", "--location", loc, "--limit", "1", "-q").stdout.split()
        == newest[:1]
    )
    assert (
        ok(cli_env, "cs", "list", "--location", loc, "--limit", "2", "--all", "-q").stdout.split()
        == newest
    )
    assert ok(cli_env, "cs", "list", "--location", loc, "--all", "-q").stdout.split() == newest


def test_list_default_limit_is_100(cli_env, server):
    loc = uniq("limit")
    # one client, a fresh connection per request (server.create() builds a client per call)
    with httpx.Client(
        base_url=server.api_url,
        headers={"Authorization": f"Bearer {server.token}"},
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=scaled(30),
    ) as c:
        for _ in range(101):
            assert (
                c.post(
                    "/v1.1/chargestations", json={"endpoint": uniq("many"), "location": loc}
                ).status_code
                == 201
            )
    assert len(ok(cli_env, "cs", "list", "--location", loc, "-q").stdout.split()) == 100
    assert len(ok(cli_env, "cs", "list", "--location", loc, "--all", "-q").stdout.split()) == 101


def test_filter_active_inactive(cli_env):
    loc = uniq("act")
    on = create(cli_env, "--location", loc)
    off = create(cli_env, "--location", loc, "--inactive")
    assert ok(cli_env, "cs", "list", "--location", loc, "--active", "-q").stdout.split() == [
        on["_id"]
    ]
    assert ok(cli_env, "cs", "list", "--location", loc, "--inactive", "-q").stdout.split() == [
        off["_id"]
    ]


def test_filter_protocol(cli_env):
    loc = uniq("proto")
    v16 = create(cli_env, "--location", loc)
    v201 = create(cli_env, "--location", loc, "--protocol", "ocpp2.0.1")
    q = ("cs", "list", "--location", loc, "-q", "--protocol")
    assert ok(cli_env, *q, "ocpp1.6").stdout.split() == [v16["_id"]]
    assert ok(cli_env, *q, "ocpp2.0.1").stdout.split() == [v201["_id"]]


def test_filter_location_and_organization(cli_env):
    loc, org, org2 = uniq("loc"), uniq("org"), uniq("org")
    a = create(cli_env, "--location", loc, "--organization", org)
    b = create(cli_env, "--location", loc, "--organization", org2)
    assert ok(cli_env, "cs", "list", "--organization", org, "-q").stdout.split() == [a["_id"]]
    assert ok(cli_env, "cs", "list", "--organization", org2, "-q").stdout.split() == [b["_id"]]
    assert sorted(ok(cli_env, "cs", "list", "--location", loc, "-q").stdout.split()) == sorted(
        [a["_id"], b["_id"]]
    )


def test_filter_online_offline_and_status(cli_env, live):
    loc, sid = live["location"], live["doc"]["_id"]
    off = create(cli_env, "--location", loc)
    q = ("cs", "list", "--location", loc, "-q")
    assert ok(cli_env, *q, "--online").stdout.split() == [sid]
    assert ok(cli_env, *q, "--offline").stdout.split() == [off["_id"]]
    assert ok(cli_env, *q, "--status", "Available").stdout.split() == [sid]
    assert ok(cli_env, *q, "--status", "Faulted").stdout.split() == []
    assert ok(cli_env, *q, "--online", "--status", "Available", "--active").stdout.split() == [sid]
    rows = plain_rows(ok(cli_env, "cs", "list", "--location", loc, "--online").stdout)
    assert rows[1][3:6] == ["true", "true", "Available"]


# --------------------------------------------------------------------------- inspect


def test_inspect_by_endpoint_and_by_id(server, cli_env):
    doc = create(cli_env, "--location", uniq("loc"))
    for key in (doc["endpoint"], doc["_id"]):
        assert json.loads(ok(cli_env, "cs", "inspect", key, "-o", "json").stdout) == server.get(
            doc["_id"]
        )
    assert (
        yaml.safe_load(ok(cli_env, "cs", "inspect", doc["_id"], "-o", "yaml").stdout)["endpoint"]
        == doc["endpoint"]
    )


def test_inspect_plain_and_table(cli_env):
    doc = create(cli_env, "--location", uniq("loc"))
    r = ok(cli_env, "cs", "inspect", doc["endpoint"])
    fields = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert fields["ID"] == doc["_id"] and fields["Endpoint"] == doc["endpoint"]
    assert fields["Location"] == doc["location"] and fields["Online"] == "false"
    assert fields["Created"] == doc["createdAt"]
    t = ok(cli_env, "cs", "inspect", doc["endpoint"], "-o", "table").stdout
    assert re.search(rf"^ID:\s+{doc['_id']}$", t, re.M)
    assert re.search(rf"^Endpoint:\s+{re.escape(doc['endpoint'])}$", t, re.M)


def test_inspect_unknown_is_exit_3(cli_env):
    r = fails(3, cli_env, "cs", "inspect", "no-such-station")
    assert r.stderr.startswith("error: ") and "not found" in r.stderr


# --------------------------------------------------------------------------- mutations


def test_deactivate_and_activate(server, cli_env):
    doc = create(cli_env)
    ep = doc["endpoint"]
    r = ok(cli_env, "cs", "deactivate", ep, "--yes")
    assert r.stdout == f"chargestation/{ep} deactivated\n" and r.stderr == ""
    assert server.get(ep)["active"] is False
    r = ok(cli_env, "cs", "activate", doc["_id"])
    assert r.stdout == f"chargestation/{ep} activated\n"
    assert server.get(ep)["active"] is True
    assert ok(cli_env, "cs", "deactivate", ep, "-y", "-q").stdout == doc["_id"] + "\n"
    out = json.loads(ok(cli_env, "cs", "activate", ep, "-o", "json").stdout)
    assert out["_id"] == doc["_id"] and out["active"] is True


@pytest.mark.parametrize("verb", ["deactivate", "delete"])
@pytest.mark.parametrize("given", [None, "y\n"])
def test_disruptive_commands_refuse_without_yes_off_a_terminal(server, cli_env, verb, given):
    doc = create(cli_env)
    r = fails(2, cli_env, "cs", verb, doc["endpoint"], input=given)
    assert "--yes" in r.stderr
    assert server.get(doc["_id"]) == doc  # nothing changed


def test_delete(server, cli_env):
    doc = create(cli_env)
    r = ok(cli_env, "cs", "delete", doc["endpoint"], "--yes")
    assert r.stdout == f"chargestation/{doc['endpoint']} deleted\n" and r.stderr == ""
    fails(3, cli_env, "cs", "inspect", doc["_id"])
    fails(3, cli_env, "cs", "delete", doc["_id"], "--yes")
    other = create(cli_env)
    out = json.loads(ok(cli_env, "cs", "delete", other["_id"], "-y", "-o", "json").stdout)
    assert out["endpoint"] == other["endpoint"]


@pytest.mark.parametrize("cmd", ["activate", "deactivate"])
def test_activate_unknown_is_exit_3(cli_env, cmd):
    fails(3, cli_env, "cs", cmd, "no-such-station", "--yes" if cmd == "deactivate" else "-q")


# --------------------------------------------------------------------------- config


def test_config_offline_is_exit_6(cli_env):
    doc = create(cli_env)
    r = fails(6, cli_env, "cs", "config", doc["endpoint"])
    assert "offline" in r.stderr


def test_config_inactive_is_exit_6_and_says_so(cli_env):
    doc = create(cli_env, "--inactive")
    r = fails(6, cli_env, "cs", "config", doc["endpoint"])
    assert "inactive" in r.stderr and "activate" in r.stderr


def test_config_unknown_is_exit_3(cli_env):
    fails(3, cli_env, "cs", "config", "no-such-station")


def test_config_on_a_live_station(server, cli_env, live):
    ep = live["doc"]["endpoint"]
    r = ok(cli_env, "cs", "config", ep, "--timeout", str(scaled(10)))
    rows = plain_rows(r.stdout)
    assert rows[0] == ["KEY", "VALUE", "READONLY"]
    keys = {row[0]: row for row in rows[1:]}
    assert "HeartbeatInterval" in keys
    assert "KEY" not in ok(cli_env, "cs", "config", ep, "--no-headers").stdout
    one = json.loads(
        ok(cli_env, "cs", "config", ep, "-k", "HeartbeatInterval", "-o", "json").stdout
    )
    assert [e["key"] for e in one] == ["HeartbeatInterval"]
    assert server.get(ep)["csconfig"]  # stored, readable while offline
    # some keys unknown: what is known is printed, the rest named on stderr
    r = ok(cli_env, "cs", "config", ep, "-k", "NoSuchKey", "-k", "HeartbeatInterval")
    assert [row[0] for row in plain_rows(r.stdout)[1:]] == ["HeartbeatInterval"]
    assert "NoSuchKey" in r.stderr
    # every key unknown: that is a failure (issue 10: it exited 0)
    r = fails(3, cli_env, "cs", "config", ep, "-k", "NoSuchKey", "-o", "json")
    assert "NoSuchKey" in r.stderr
    # what was fetched stays readable with inspect
    fields = dict(
        line.split("\t", 1) for line in ok(cli_env, "cs", "inspect", ep).stdout.splitlines()
    )
    assert "csconfig.HeartbeatInterval" in fields
    assert fields["connector.1.1"] == "Available"
    assert fields["Config fetched"].endswith("Z")
    table = ok(cli_env, "cs", "inspect", ep, "-o", "table").stdout
    assert "Connectors" in table and "csconfig" in table and "HeartbeatInterval" in table


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "args",
    [
        ("cs", "list", "-o", "bogus"),
        ("cs", "list", "--status", "Bogus"),
        ("cs", "list", "--protocol", "ocpp3"),
        ("cs", "list", "--limit", "0"),
        ("cs", "list", "--limit", "many"),
        ("cs", "list", "--no-such-flag"),
        ("cs", "inspect"),
        ("cs", "create"),
        ("cs", "config", "x", "--timeout", "0"),
        ("cs", "nosuchverb"),
        ("nosuchnoun",),
        ("--color", "purple", "cs", "list"),
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(cli_env, args):
    r = fails(2, cli_env, *args)
    assert "Usage:" in r.stderr or "error:" in r.stderr
    assert "Value error" not in r.stderr  # issue 10: pydantic's prefix reached the user


def test_a_wrong_choice_names_the_choices_as_spelled(cli_env):
    r = fails(2, cli_env, "cs", "list", "--status", "Bogus")
    assert "'Bogus' is not one of Available, Preparing," in r.stderr and "Faulted" in r.stderr
    assert "Value error" not in r.stderr and "'faulted'" not in r.stderr


@pytest.mark.parametrize("ep", ["has space", "slash/x", "x" * 49, "é"])
def test_invalid_endpoint_is_exit_2(server, cli_env, ep):
    r = fails(2, cli_env, "cs", "create", ep)
    assert r.stderr.startswith("error: ") and "endpoint" in r.stderr


def test_endpoint_shaped_like_an_id_is_exit_2(server, cli_env):
    """`cs delete KEY` takes an _id or an endpoint: an endpoint that is another station's _id
    would make it delete that station. Refused at create."""
    other = create(cli_env)
    r = fails(2, cli_env, "cs", "create", other["_id"])
    assert r.stderr.startswith("error: ") and "_id" in r.stderr
    assert server.get(other["_id"]) == other


def test_duplicate_create_is_exit_5(cli_env):
    doc = create(cli_env)
    r = fails(5, cli_env, "cs", "create", doc["endpoint"])
    assert doc["endpoint"] in r.stderr


def test_wrong_token_is_exit_4(cli_env):
    r = fails(4, {**cli_env, "EDRV_TOKEN": "wrong"}, "cs", "list")
    assert "token" in r.stderr


def test_no_token_is_exit_4(cli_env):
    env = dict(cli_env)
    del env["EDRV_TOKEN"]
    fails(4, env, "cs", "list")


def test_unreachable_api_is_exit_6_with_a_hint(cli_env):
    url = closed_port_url()
    r = fails(6, {**cli_env, "EDRV_API_URL": url}, "cs", "list")
    assert url in r.stderr
    assert "hint:" in r.stderr and "edrvctl serve" in r.stderr


@pytest.mark.parametrize("url", ["http://[::1", "http://256.1.1.1:1"])
def test_malformed_api_url_is_a_usage_error(cli_env, url):
    r = fails(2, cli_env, "--api-url", url, "cs", "list")
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_empty_station_name_is_refused_cleanly(cli_env):
    r = cli(cli_env, "cs", "inspect", "")
    assert r.exit_code in (2, 3), (r.exit_code, r.stderr)  # usage, or not found
    assert r.stdout == "" and r.stderr.startswith("error: ")
    assert "unexpected" not in r.stderr


@pytest.mark.parametrize(
    "args,code",
    [
        (("cs", "inspect", "no-such-station"), 3),
        (("cs", "delete", "no-such-station"), 2),  # no --yes off a terminal
        (("--api-url", "http://127.0.0.1:9", "cs", "list"), 6),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, tuple) else str(a),
)
def test_debug_shows_the_traceback_and_keeps_the_exit_code(cli_env, args, code):
    """Issue 10: --debug turned every documented exit code into 1."""
    r = cli(cli_env, "--debug", *args)
    assert r.exit_code == code, r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert "\nerror: " in r.stderr
    r = cli(cli_env, *args)
    assert r.exit_code == code and "Traceback" not in r.stderr


def test_color_never_and_no_color_give_no_escape_codes(cli_env, pair):
    loc, _ = pair
    env = {k: v for k, v in cli_env.items() if k != "NO_COLOR"}
    for args in (("--color", "never"), ()):
        e = env if args else {**env, "NO_COLOR": "1"}
        r = ok(e, *args, "cs", "list", "--location", loc, "-o", "table")
        assert "\x1b[" not in r.stdout


# --------------------------------------------------------------------------- settings


def write_config(env: dict, text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "edrvctl" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def ctx_env(server, tmp_path):
    """No EDRV_* variables; a config file whose current context is the test server, and a
    second context 'down' that points at a closed port."""
    env = hermetic_env(tmp_path)
    token_file = tmp_path / "good.token"
    token_file.write_text(server.token + "\n")
    token_file.chmod(0o600)
    write_config(
        env,
        f"""
current-context: good
contexts:
  good: {{api_url: "{server.api_url}", token_file: "{token_file}"}}
  down: {{api_url: "{closed_port_url()}", token_file: "{token_file}"}}
""",
    )
    return env


def test_api_url_flag_beats_environment(server, cli_env):
    doc = create(cli_env)
    env = {**cli_env, "EDRV_API_URL": closed_port_url()}
    fails(6, env, "cs", "inspect", doc["_id"])
    r = ok(env, "--api-url", server.api_url, "cs", "inspect", doc["_id"], "-o", "json")
    assert json.loads(r.stdout)["_id"] == doc["_id"]


def test_config_file_current_context(server, ctx_env):
    doc = server.create()
    r = ok(ctx_env, "cs", "inspect", doc["endpoint"], "-o", "json")
    assert json.loads(r.stdout)["_id"] == doc["_id"]


def test_context_flag_and_env_choose_another_context(ctx_env):
    r = fails(6, ctx_env, "--context", "down", "cs", "list")
    assert "cannot reach" in r.stderr
    fails(6, {**ctx_env, "EDRVCTL_CONTEXT": "down"}, "cs", "list")
    ok({**ctx_env, "EDRVCTL_CONTEXT": "down"}, "--context", "good", "cs", "list")
    ok(ctx_env, "--context", "good", "cs", "list")


def test_environment_beats_config_file(server, ctx_env):
    fails(6, {**ctx_env, "EDRV_API_URL": closed_port_url()}, "cs", "list")
    fails(4, {**ctx_env, "EDRV_TOKEN": "wrong"}, "cs", "list")
    ok({**ctx_env, "EDRV_API_URL": server.api_url}, "--context", "down", "cs", "list")


def test_flag_beats_config_file(server, ctx_env):
    ok(ctx_env, "--context", "down", "--api-url", server.api_url, "cs", "list")


def test_unknown_context_is_exit_2(ctx_env):
    r = fails(2, ctx_env, "--context", "nope", "cs", "list")
    assert "nope" in r.stderr and "good" in r.stderr  # says which contexts exist
    fails(2, {**ctx_env, "EDRVCTL_CONTEXT": "nope"}, "cs", "list")


def test_unknown_context_without_a_config_file_is_exit_2(tmp_path):
    r = fails(2, hermetic_env(tmp_path), "--context", "prod", "cs", "list")
    assert "prod" in r.stderr


def test_current_context_that_is_not_defined_is_exit_2(tmp_path):
    env = hermetic_env(tmp_path)
    write_config(env, "current-context: ghost\ncontexts: {}\n")
    assert "ghost" in fails(2, env, "cs", "list").stderr


@pytest.mark.parametrize("text", ["contexts: [unclosed\n", "- a list\n"])
def test_broken_config_file_is_exit_2(tmp_path, text):
    env = hermetic_env(tmp_path)
    path = write_config(env, text)
    assert str(path) in fails(2, env, "cs", "list").stderr


def test_missing_token_file_is_exit_2(server, tmp_path):
    env = hermetic_env(tmp_path)
    missing = tmp_path / "missing.token"
    write_config(
        env,
        f"current-context: a\ncontexts:\n  a: {{api_url: '{server.api_url}', "
        f"token_file: '{missing}'}}\n",
    )
    assert str(missing) in fails(2, env, "cs", "list").stderr


def test_help_works_with_a_broken_config_file(tmp_path):
    env = hermetic_env(tmp_path)
    write_config(env, "contexts: [unclosed\n")
    ok(env, "cs", "list", "-h")
    ok(env, "--version")


def test_local_server_is_found_without_any_setting(tmp_path):
    """`edrvctl serve` with its default store; the CLI, with no EDRV_* variable and no config
    file, finds its URL and its token by itself."""
    env = hermetic_env(tmp_path)
    store = Path(env["XDG_DATA_HOME"]) / "edrvctl" / "edrvctl.db"
    srv = start_server(tmp_path / "srv", token=None, store=store, env=env)
    try:
        token_file = store.parent / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((store.parent / "server.json").stat().st_mode) == 0o600
        assert srv.token and srv.token == token_file.read_text().strip()
        # (EDRVCTL_LOOP may pass: which event loop the server runs on, no CLI setting)
        assert not any(k.startswith("EDRV") and k != "EDRVCTL_LOOP" for k in env)
        ep = uniq("local")
        sid = ok(env, "cs", "create", ep, "-q").stdout.strip()
        assert ok(env, "cs", "list", "-q").stdout.split() == [sid]
        assert (
            json.loads(ok(env, "cs", "inspect", ep, "-o", "json").stdout)["connection_url"]
            == srv.ocpp_url
        )
        # a flag still wins over the local server
        fails(6, env, "--api-url", closed_port_url(), "cs", "list")
    finally:
        assert srv.stop() == 0
    assert not (store.parent / "server.json").exists()


# --------------------------------------------------------------------------- tables fit the width


def cells(line: str) -> int:
    from rich.cells import cell_len

    return cell_len(line)


def table_rows(stdout: str) -> list[list[str]]:
    """A kubectl-style table split into cells (columns are 2+ spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def live_and_offline(live):
    """The live 1.6 station's location: a model, a LAST SEEN (tests that add stations there
    would change what other tests of the module see)."""
    return live["location"]


TIME = re.compile(r"^(\d+[smhd] ago|-)$")


def test_list_at_80_columns_drops_the_id_and_cuts_nothing(cli_env, live_and_offline):
    """Issue 10: at 80 columns LAST SEEN went and MODEL was cut to 2 characters."""
    env = {**cli_env, "COLUMNS": "80"}
    r = ok(env, "cs", "list", "--location", live_and_offline, "-o", "table")
    lines = r.stdout.splitlines()
    assert all(cells(line) <= 80 for line in lines), r.stdout
    rows = table_rows(r.stdout)
    assert "ID" not in rows[0] and "LAST SEEN" in rows[0] and "MODEL" in rows[0]
    assert "…" not in r.stdout
    by_header = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert {d["MODEL"] for d in by_header} <= {"edrvctl SimCharger", "-"}
    assert "edrvctl SimCharger" in r.stdout
    assert all(TIME.match(d["LAST SEEN"]) for d in by_header)
    assert any(d["LAST SEEN"].endswith("ago") for d in by_header)


def test_list_at_160_columns_shows_everything_uncut(cli_env, live_and_offline):
    env = {**cli_env, "COLUMNS": "160"}
    r = ok(env, "cs", "list", "--location", live_and_offline, "-o", "table")
    rows = table_rows(r.stdout)
    assert rows[0] == [
        "ENDPOINT",
        "ID",
        "PROTOCOL",
        "ONLINE",
        "ACTIVE",
        "STATUS",
        "MODEL",
        "LAST SEEN",
    ]
    assert "…" not in r.stdout and all(HEX24.match(row[1]) for row in rows[1:])


@pytest.mark.parametrize("columns", ["80", "120", "160"])
def test_list_wide_never_cuts_a_time(cli_env, live_and_offline, columns):
    """Issue 10: -o wide cut relative times to their first digit."""
    env = {**cli_env, "COLUMNS": columns}
    r = ok(env, "cs", "list", "--location", live_and_offline, "-o", "wide")
    assert all(cells(line) <= int(columns) for line in r.stdout.splitlines()), r.stdout
    rows = table_rows(r.stdout)
    assert "ENDPOINT" in rows[0] and "LAST SEEN" in rows[0] and "STATUS" in rows[0]
    for row in rows[1:]:
        d = dict(zip(rows[0], row, strict=True))
        for col in ("LAST SEEN", "CREATED"):
            if col in d:
                assert TIME.match(d[col]), (col, d[col], r.stdout)
    if columns == "160":  # room enough: only the id goes, and nothing is cut
        assert "ID" not in rows[0] and "…" not in r.stdout
        assert {"LOCATION", "ORGANIZATION", "FIRMWARE", "CREATED"} <= set(rows[0])


def test_table_layout_drops_whole_columns_before_cutting():
    from edrvctl.cli.output import layout

    headers = ["ENDPOINT", "ID", "MODEL", "LAST SEEN"]
    rows = [["cp-1", "0" * 24, "Vendor Model-With-A-Long-Name", "12m ago"]]
    cut = [False, False, True, False]
    # everything fits: nothing dropped, nothing cut
    kept, widths = layout(headers, rows, cut, 200, ["ID"])
    assert kept == [0, 1, 2, 3] and widths[2] == len(rows[0][2])
    # a little too narrow: the id goes, the model stays whole
    kept, widths = layout(headers, rows, cut, 60, ["ID"])
    assert kept == [0, 2, 3] and widths[2] == len(rows[0][2])
    # narrower still: the model is cut, the time never is
    kept, widths = layout(headers, rows, cut, 30, ["ID"])
    assert kept == [0, 2, 3] and widths[3] == len("LAST SEEN") and widths[2] < len(rows[0][2])
    assert sum(widths[i] for i in kept) + 2 * (len(kept) - 1) <= 30


# --------------------------------------------------------------------------- update


def test_update_changes_only_what_is_given(server, cli_env):
    doc = create(cli_env, "--location", uniq("loc"), "--organization", uniq("org"))
    ep = doc["endpoint"]
    r = ok(cli_env, "cs", "update", ep, "--location", "depot-south", "--public")
    assert r.stdout == f"chargestation/{ep} updated\n" and r.stderr == ""
    now = server.get(ep)
    assert (now["location"], now["public"], now["organization"]) == (
        "depot-south",
        True,
        doc["organization"],
    )
    out = json.loads(
        ok(
            cli_env,
            "cs",
            "update",
            doc["_id"],
            "--meta-data",
            '{"owner": "ops", "n": [1, 2]}',
            "--no-public",
            "-o",
            "json",
        ).stdout
    )
    assert out["meta_data"] == {"owner": "ops", "n": [1, 2]} and out["public"] is False
    assert "password" not in out
    assert ok(cli_env, "cs", "update", ep, "--organization", "", "-q").stdout == doc["_id"] + "\n"
    assert server.get(ep)["organization"] is None  # '' removes it
    assert server.get(ep)["location"] == "depot-south"


@pytest.mark.parametrize(
    "args,says",
    [
        ((), "nothing to change"),
        (("--meta-data", "{nope"), "not valid JSON"),
        (("--meta-data", "[1]"), "JSON object"),
        (("--security", "bogus"), "--security"),
        (("--security", "basic_auth"), "--yes"),  # a security change asks first
    ],
    ids=repr,
)
def test_update_usage_errors_exit_2_and_change_nothing(server, cli_env, args, says):
    doc = create(cli_env)
    r = fails(2, cli_env, "cs", "update", doc["endpoint"], *args)
    assert says in r.stderr
    assert server.get(doc["_id"]) == doc


def test_update_unknown_station_is_exit_3(cli_env):
    fails(3, cli_env, "cs", "update", "no-such-station", "--location", "x")


def test_update_security_end_to_end(server, cli_env):
    """PATCH of `security` (issue 10): moving to basic_auth issues a password shown once; a
    connected station is disconnected, and only the new password lets it back in."""
    doc = create(cli_env)
    ep = doc["endpoint"]
    old = LiveStation(server.ocpp_url, ep)
    try:
        until(lambda: server.get(ep)["online"], timeout=15, what=f"{ep} online")
        r = ok(cli_env, "cs", "update", ep, "--security", "basic_auth", "--yes")
        assert r.stdout == f"chargestation/{ep} updated\n"
        m = re.search(r"password for (\S+) \(shown once; username = endpoint\): (\S+)$", r.stderr)
        assert m and m.group(1) == ep, r.stderr
        password = m.group(2)
        assert server.get(ep)["security"] == {"type": "basic_auth", "profile": 1}
        until(lambda: not server.get(ep)["online"], timeout=15, what=f"{ep} disconnected")
    finally:
        old.stop()
    # without the password: refused before the upgrade
    with pytest.raises(Exception, match="401"):
        from websockets.sync.client import connect

        connect(f"{server.ocpp_url}/{ep}", subprotocols=["ocpp1.6"], open_timeout=scaled(10))
    new = LiveStation(server.ocpp_url, ep, password=password)
    try:
        until(lambda: server.get(ep)["online"], timeout=15, what=f"{ep} back with the password")
    finally:
        new.stop()
    # a TLS profile on a server without a TLS listener is refused: the station could never
    # connect (keeping the password between password profiles: tests/test_fleet.py)
    r = fails(5, cli_env, "cs", "update", ep, "--security", "TLS_BASIC_AUTH", "-y", "-o", "json")
    assert "no TLS listener" in r.stderr, r.stderr
    assert server.get(ep)["security"] == {"type": "basic_auth", "profile": 1}
    out = json.loads(
        ok(cli_env, "cs", "update", ep, "--security", "none", "-y", "-o", "json").stdout
    )
    assert out["security"] == {"type": "none", "profile": 0} and "password" not in out
    # back to a password profile: a new one, in the JSON this time (not on stderr)
    r = ok(cli_env, "cs", "update", ep, "--security", "basic_auth", "-y", "-o", "json")
    out = json.loads(r.stdout)
    assert len(out["password"]) >= 20 and out["password"] != password
    assert out["password"] not in r.stderr


# --------------------------------------------------------------------------- global options


def test_global_options_may_follow_the_command(server, cli_env, ctx_env):
    """Issue 10: --color, --debug, --api-url and --context were refused after the command."""
    doc = create(cli_env)
    down = {**cli_env, "EDRV_API_URL": closed_port_url()}
    r = ok(down, "cs", "inspect", doc["_id"], "--api-url", server.api_url, "-o", "json")
    assert json.loads(r.stdout)["_id"] == doc["_id"]
    ok(down, "cs", "inspect", doc["_id"], f"--api-url={server.api_url}")
    ok(ctx_env, "cs", "list", "--context", "good", "-q")
    fails(6, ctx_env, "cs", "list", "-q", "--context", "down")
    r = ok(
        cli_env,
        "cs",
        "list",
        "-o",
        "table",
        "--color",
        "always",
        "--location",
        doc["location"] or uniq(),
    )
    assert "\x1b[1m" in r.stdout  # bold headers: --color always was taken
    r = cli(cli_env, "cs", "inspect", "no-such-station", "--debug")
    assert r.exit_code == 3 and "Traceback" in r.stderr
    fails(2, cli_env, "cs", "list", "--color", "purple")


def test_hoisting_leaves_option_values_and_positionals_alone():
    import typer as _typer

    from edrvctl.cli.base import hoist_global_options

    root = _typer.main.get_command(app)
    h = hoist_global_options
    assert h(root, ["cs", "list", "--debug"]) == ["--debug", "cs", "list"]
    assert h(root, ["cs", "list", "--context", "x", "-q"]) == ["--context", "x", "cs", "list", "-q"]
    assert h(root, ["--debug", "cs", "list"]) == ["--debug", "cs", "list"]
    # the value of the command's own option, even one that looks like a global option
    assert h(root, ["cs", "list", "--location", "--debug"]) == [
        "cs",
        "list",
        "--location",
        "--debug",
    ]
    assert h(root, ["cs", "config", "x", "-k", "--color"]) == ["cs", "config", "x", "-k", "--color"]
    assert h(root, ["cs", "inspect", "--", "--debug"]) == ["cs", "inspect", "--", "--debug"]


# --------------------------------------------------------------------------- choices, several stations


def test_status_and_protocol_are_taken_in_any_case(cli_env, live):
    """Issue 10: `--status faulted` was refused."""
    loc, sid = live["location"], live["doc"]["_id"]
    q = ("cs", "list", "--location", loc, "-q")
    assert ok(cli_env, *q, "--status", "available").stdout.split() == [sid]
    assert ok(cli_env, *q, "--status", "AVAILABLE").stdout.split() == [sid]
    assert ok(cli_env, *q, "--status", "faulted").stdout.split() == []
    assert ok(cli_env, *q, "--protocol", "OCPP1.6", "--online").stdout.split() == [sid]
    fails(2, cli_env, *q, "--status", "broken")


def test_inspect_several_stations(server, cli_env):
    a, b = create(cli_env), create(cli_env)
    out = json.loads(ok(cli_env, "cs", "inspect", a["endpoint"], b["_id"], "-o", "json").stdout)
    assert [d["_id"] for d in out] == [a["_id"], b["_id"]]
    one = json.loads(ok(cli_env, "cs", "inspect", a["endpoint"], "-o", "json").stdout)
    assert one["_id"] == a["_id"]  # one station: the object, as before
    r = ok(cli_env, "cs", "inspect", a["endpoint"], b["endpoint"])
    assert r.stdout.count("ID\t") == 2 and "\n\n" in r.stdout
    # one missing: the others are shown, the missing one reported, exit 3
    r = cli(cli_env, "cs", "inspect", a["endpoint"], "no-such-station", b["endpoint"], "-o", "json")
    assert r.exit_code == 3
    assert [d["_id"] for d in json.loads(r.stdout)] == [a["_id"], b["_id"]]
    assert "no-such-station" in r.stderr and r.stderr.startswith("error: ")


def test_delete_several_stations(server, cli_env):
    a, b, c = create(cli_env), create(cli_env), create(cli_env)
    r = ok(cli_env, "cs", "delete", a["endpoint"], b["_id"], "--yes")
    assert (
        r.stdout
        == f"chargestation/{a['endpoint']} deleted\nchargestation/{b['endpoint']} deleted\n"
    )
    for d in (a, b):
        fails(3, cli_env, "cs", "inspect", d["_id"])
    r = fails(2, cli_env, "cs", "delete", c["endpoint"], "x")  # asks once for all; no terminal
    assert "2 chargestations" in r.stderr
    d = create(cli_env)
    r = cli(cli_env, "cs", "delete", c["endpoint"], "no-such-station", d["endpoint"], "-y", "-q")
    assert r.exit_code == 3 and r.stdout.split() == [c["_id"], d["_id"]]
    assert "no-such-station" in r.stderr
    fails(3, cli_env, "cs", "inspect", d["_id"])


# --------------------------------------------------------------------------- help reads well


def all_commands():
    import typer as _typer

    root = _typer.main.get_command(app)
    out = [((), root)]
    for name, cmd in root.commands.items():
        if name == "cs":
            continue
        out.append(((name,), cmd))
        for sub, subcmd in getattr(cmd, "commands", {}).items():
            out.append(((name, sub), subcmd))
    return out


@pytest.mark.parametrize("path", [p for p, _ in all_commands()], ids=" ".join)
@pytest.mark.parametrize("columns", ["50", "100"])
def test_help_has_no_python_types_and_one_placeholder_style(tmp_path, path, columns):
    """Issue 10: metavars showed `<list[str]>` and `<int range>`; usage lines mixed `{STATION}`
    and `{endpoint}`; examples broke across lines; summaries ended in '...'."""
    env = {**hermetic_env(tmp_path), "COLUMNS": columns}
    r = ok(env, *path, "-h")
    text = r.stdout
    assert not re.search(r"<[a-z][^>]*>", text.split("Options:")[-1]), text  # no <type>
    assert "range>" not in text and "list[" not in text
    usage = text.splitlines()[0]
    assert "{" not in usage and "}" not in usage and "<" not in usage, usage
    rest = usage.split(" ".join(("edrvctl", *path)), 1)[1]
    rest = rest.replace("[OPTIONS]", "").replace("COMMAND [ARGS]...", "")
    for placeholder in rest.split():  # arguments: UPPERCASE words, like option values
        assert re.fullmatch(r"\[?[A-Z][A-Z_]*(\.\.\.)?\]?", placeholder), usage
    for line in text.partition("Commands:")[2].splitlines():
        assert not line.rstrip().endswith("..."), line  # no summary cut short
    # each example of the command's help is one whole line
    _, cmd = dict((" ".join(p), (p, c)) for p, c in all_commands())[" ".join(path)]
    examples = [
        line.strip()
        for line in (cmd.help or "").splitlines()
        if line.strip().startswith("edrvctl ")
    ]
    shown = [line.strip() for line in text.splitlines()]
    for example in examples:
        assert example in shown, (example, text)


@pytest.mark.parametrize(
    "ep,says",
    [
        ("has space", "' '"),
        ("....", "only dots"),
        ("x" * 49, "48"),
        ("0123456789abcdef01234567", "24 hex digits"),
    ],
)
def test_validation_messages_read_as_sentences(server, cli_env, ep, says):
    """Issue 10: pydantic's "Value error," prefix and raw regexes reached the user."""
    r = fails(2, cli_env, "cs", "create", ep)
    assert says in r.stderr
    assert "Value error" not in r.stderr and "pattern" not in r.stderr
    assert "^[" not in r.stderr and "$'" not in r.stderr


# --------------------------------------------------------------------------- 2.0.1 config keys


@pytest.fixture(scope="module")
def live201(server):
    doc = server.create(uniq("live201"), protocol="ocpp2.0.1")
    st = LiveStation(server.ocpp_url, doc["endpoint"], protocol="ocpp2.0.1", connectors=2)
    try:
        until(
            lambda: server.get(doc["_id"])["status"] == "Available",
            timeout=15,
            what=f"{doc['endpoint']} to be Available",
        )
        yield doc
    finally:
        st.stop()


def test_201_config_keys_are_unique_and_taken_back_as_printed(cli_env, live201):
    """Issue 10: per-EVSE variables were printed twice as `EVSE.Power`, and `-k EVSE.Power`
    answered UnknownComponent with exit 0."""
    ep = live201["endpoint"]
    r = ok(cli_env, "cs", "config", ep, "--timeout", str(scaled(15)))
    keys = [row[0] for row in plain_rows(r.stdout)[1:]]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
    per_evse = [k for k in keys if k.startswith(("EVSE[", "Connector["))]
    assert "EVSE[1].Power" in per_evse and "EVSE[2].Power" in per_evse
    assert any(k.startswith("Connector[1,") for k in per_evse)
    table = ok(cli_env, "cs", "config", ep, "-o", "table").stdout
    assert "EVSE[1].Power" in table and "EVSE[2].Power" in table  # not read as markup
    for key in (per_evse[0], per_evse[-1], "OCPPCommCtrlr.HeartbeatInterval"):
        out = json.loads(ok(cli_env, "cs", "config", ep, "-k", key, "-o", "json").stdout)
        assert [e["key"] for e in out] == [key]
    r = fails(3, cli_env, "cs", "config", ep, "-k", "EVSE.Power")
    assert "EVSE.Power" in r.stderr and "EVSE[1].Power" in r.stderr  # says how to write it


# --------------------------------------------------------------------------- the token file


def token_context(env: dict, api_url: str, token_file: Path) -> None:
    write_config(
        env,
        f"current-context: a\ncontexts:\n  a: {{api_url: '{api_url}', token_file: '{token_file}'}}\n",
    )


def test_a_token_file_others_can_read_is_refused(server, tmp_path):
    env = hermetic_env(tmp_path)
    token = tmp_path / "t.token"
    token.write_text(server.token)
    token_context(env, server.api_url, token)
    for mode in (0o644, 0o640, 0o604, 0o620):
        token.chmod(mode)
        r = fails(2, env, "cs", "list")
        assert str(token) in r.stderr and "chmod 600" in r.stderr
    token.chmod(0o600)
    ok(env, "cs", "list")
    token.chmod(0o400)
    ok(env, "cs", "list")


def test_an_empty_token_file_is_refused(server, tmp_path):
    env = hermetic_env(tmp_path)
    token = tmp_path / "t.token"
    token.write_text(" \n")
    token.chmod(0o600)
    token_context(env, server.api_url, token)
    r = fails(2, env, "cs", "list")
    assert str(token) in r.stderr and "empty" in r.stderr


def test_a_token_file_of_another_user_is_refused(server, tmp_path, monkeypatch):
    env = hermetic_env(tmp_path)
    token = tmp_path / "t.token"
    token.write_text(server.token)
    token.chmod(0o600)
    token_context(env, server.api_url, token)
    ok(env, "cs", "list")
    monkeypatch.setattr(os, "geteuid", lambda: token.stat().st_uid + 1)
    r = fails(2, env, "cs", "list")
    assert str(token) in r.stderr and "another user" in r.stderr


def test_the_local_servers_token_file_is_checked_too(tmp_path):
    env = hermetic_env(tmp_path)
    store = Path(env["XDG_DATA_HOME"]) / "edrvctl" / "edrvctl.db"
    srv = start_server(tmp_path / "srv", token=None, store=store, env=env)
    try:
        ok(env, "cs", "list")
        token_file = store.parent / "token"
        token_file.chmod(0o644)
        r = fails(2, env, "cs", "list")
        assert str(token_file) in r.stderr
    finally:
        srv.stop()
