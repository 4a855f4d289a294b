"""End to end over OCPP: a real `edrvctl serve` (the `server` fixture), stations simulated with
`edrvctl.simulator.SimStation` or with raw websocket clients, checked through the REST API, the
CLI and the store (read-only, through its Unit readers).

Tests are sync and drive their own event loop with `run()`; they wait for state by polling the
API (or the store, read-only) with a deadline rather than sleeping, and every timeout is in the
scaled units of timing.py. Every test uses its own endpoints on the module's shared server; the
restart and keepalive tests start servers of their own. Malformed frames and the schema of
every answer are in test_ocpp_frames.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import start_server
from edrvctl.cli import app
from edrvctl.fleet.events import CONNECTION_REFUSED
from edrvctl.simulator import SimStation, utcnow
from stored import events_of
from timing import scaled, until, until_async

BASE = "/v1.1/chargestations"
PROTOS = ["ocpp1.6", "ocpp2.0.1"]
P16, P201 = PROTOS

_seq = itertools.count(1)
runner = CliRunner()


def uniq(prefix: str = "o") -> str:
    """An endpoint no other test (or an earlier run on a reused store) uses; <= 48 chars."""
    return f"{prefix}-{os.getpid()}-{next(_seq)}-{time.monotonic_ns() % 10**6}"


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


# --------------------------------------------------------------------------- API and state


def aapi(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.api_url,
        timeout=scaled(30),
        headers={"Authorization": f"Bearer {server.token}"},
    )


async def get_doc(server, key: str) -> dict:
    async with aapi(server) as c:
        r = await c.get(f"{BASE}/{key}")
    assert r.status_code == 200, r.text
    return r.json()["result"]


async def wait_doc(
    server, key: str, pred: Callable[[dict], bool], timeout: float = 10, what: str = ""
) -> dict:
    """Poll the API until pred(record) holds; fail with the last record seen. `timeout` is in
    scaled units."""
    seen: list[dict] = []
    async with aapi(server) as c:

        async def holds() -> bool:
            r = await c.get(f"{BASE}/{key}")
            assert r.status_code == 200, r.text
            seen.append(r.json()["result"])
            return pred(seen[-1])

        try:
            await until_async(holds, timeout, interval=0.05, what=what)
        except AssertionError as e:
            last = json.dumps(seen[-1])[:1500] if seen else "(none)"
            raise AssertionError(
                f"{key}: never {what or 'reached the expected state'}: {last}"
            ) from e
    return seen[-1]


def got_a_call(st: SimStation) -> Callable[[], bool]:
    """True once the simulated station has received a CALL of ours: every frame it received
    beyond the answers to its own CALLs (each of which the server answers) is one."""
    return lambda: st.stats.received > st.stats.sent


async def get_variables(server, key: str, body: dict | None = None) -> httpx.Response:
    async with aapi(server) as c:
        if body is None:  # the empty body: everything
            return await c.post(f"{BASE}/{key}/get_variables")
        return await c.post(f"{BASE}/{key}/get_variables", json=body)


async def patch(server, key: str, body: dict) -> dict:
    async with aapi(server) as c:
        r = await c.patch(f"{BASE}/{key}", json=body)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def events(store: Path, station_id: str, kind: str) -> list[dict]:
    """The station's events of one type, oldest first, as the server stored them."""
    rows = events_of(store, station_id, kind)
    assert all(e["chargestation"] == station_id and e["type"] == kind for e in rows), rows
    return rows


def wait_events(store: Path, station_id: str, kind: str, n: int, timeout: float = 10) -> list:
    """Events the server records of its own accord (no reply waits for their commit): poll
    until there are `n`; after `timeout` (scaled), return what there is."""

    def enough() -> list | None:
        rows = events(store, station_id, kind)
        return rows if len(rows) >= n else None

    try:
        return until(enough, timeout, what=f"{n} {kind} event(s)")
    except AssertionError:
        return events(store, station_id, kind)


def cli(env: dict, *args: str):
    return runner.invoke(app, list(args), env=env, prog_name="edrvctl")


# --------------------------------------------------------------------------- stations


@contextlib.asynccontextmanager
async def sim_running(server, endpoint: str, protocol: str, *, wait_boot: bool = True, **kw):
    """A SimStation running in this loop; booted unless wait_boot=False. Stopped on exit."""
    kw.setdefault("reconnect", False)
    kw.setdefault("connectors", 2)
    st = SimStation(endpoint, server.ocpp_url, protocol, **kw)
    task = asyncio.create_task(st.start())
    try:
        if wait_boot:
            await until_async(lambda: st.booted.is_set() or task.done(), what=f"{endpoint} to boot")
            assert st.booted.is_set(), f"{endpoint} did not boot: {st.last_error}"
        yield st
    finally:
        await st.stop()
        with contextlib.suppress(Exception):
            await task


def all_available(n: int) -> Callable[[dict], bool]:
    return lambda d: (
        d["online"]
        and len(d["connectors"]) == n
        and all(c["status"] == "Available" for c in d["connectors"])
    )


async def raw_open(
    server,
    endpoint: str,
    protocol: str | list[str] | None,
    prefix: str = "",
    url: str | None = None,
):
    subprotocols = [protocol] if isinstance(protocol, str) else protocol
    return await connect(
        f"{url or server.ocpp_url}{prefix}/{endpoint}",
        subprotocols=subprotocols,
        proxy=None,
        ping_interval=None,
        compression=None,
        open_timeout=scaled(5),
        close_timeout=scaled(2),
    )


BOOT = {
    P16: {"chargePointVendor": "RawCo", "chargePointModel": "Raw-1"},
    P201: {"reason": "PowerUp", "chargingStation": {"vendorName": "RawCo", "model": "Raw-1"}},
}


async def raw_call(ws, action: str, payload: dict, timeout: float = 5) -> list:
    """Send one CALL; return its CALLRESULT/CALLERROR frame (CALLs from the CSMS are skipped).
    `timeout` is in scaled units."""
    mid = str(uuid.uuid4())
    await ws.send(json.dumps([2, mid, action, payload]))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), scaled(timeout)))
        if frame[0] in (3, 4) and frame[1] == mid:
            return frame


async def raw_boot(ws, protocol: str) -> None:
    frame = await raw_call(ws, "BootNotification", BOOT[protocol])
    assert frame[0] == 3 and frame[2]["status"] == "Accepted", frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- 1. connect and boot


@pytest.mark.parametrize("proto", PROTOS)
def test_station_connects_boots_and_reports_status(server, cli_env, proto):
    loc = uniq("loc")
    created = server.create(uniq("boot"), protocol=proto, location=loc)
    ep = created["endpoint"]
    assert created["online"] is False and created["lastConnectAt"] is None

    async def scenario():
        async with sim_running(server, ep, proto, vendor="Acme", model="Volt-9", firmware="4.5.6"):
            doc = await wait_doc(server, ep, all_available(2), what="online with 2 connectors")
            assert doc["manufacturer"] == "Acme" and doc["model"] == "Volt-9"
            assert doc["bootInfo"]["chargePointVendor"] == "Acme"
            assert doc["bootInfo"]["chargePointModel"] == "Volt-9"
            assert doc["lastConnectAt"] and doc["lastMessageAt"]
            assert doc["lastMessageAt"] >= doc["lastConnectAt"]
            assert doc["lastDisconnectAt"] is None
            assert doc["status"] == "Available"
            assert doc["evses"] == [1, 2]
            # 1.6 connector n is EVSE n / connector n; the 2.0.1 sim has one connector per EVSE
            want = [(1, 1), (2, 2)] if proto == P16 else [(1, 1), (2, 1)]
            assert [(c["evseId"], c["connectorId"]) for c in doc["connectors"]] == want
            assert all(c["chargestation"] == doc["_id"] for c in doc["connectors"])

            async with aapi(server) as c:
                r = await c.get(BASE, params={"location": loc})
                conns = await c.get(f"{BASE}/{ep}/connectors")
            listed = r.json()["result"]
            assert [d["_id"] for d in listed] == [doc["_id"]]
            for k in (
                "online",
                "status",
                "connectors",
                "manufacturer",
                "model",
                "bootInfo",
                "lastConnectAt",
            ):
                assert listed[0][k] == doc[k], k
            assert conns.json()["result"] == doc["connectors"]

            res = cli(cli_env, "cs", "list", "--location", loc, "-o", "json")
            assert res.exit_code == 0, res.output
            rows = json.loads(res.stdout)
            assert [(d["endpoint"], d["online"], d["status"]) for d in rows] == [
                (ep, True, "Available")
            ]
            res = cli(cli_env, "cs", "list", "--location", loc, "--online", "-q")
            assert res.exit_code == 0 and res.stdout.split() == [doc["_id"]], res.output
            res = cli(cli_env, "cs", "inspect", ep, "-o", "json")
            assert res.exit_code == 0, res.output
            shown = json.loads(res.stdout)
            assert shown["_id"] == doc["_id"] and shown["online"] is True
            assert shown["connectors"] == doc["connectors"]
            res = cli(cli_env, "cs", "inspect", ep, "-o", "plain")
            assert res.exit_code == 0, res.output
            assert "Manufacturer\tAcme" in res.stdout
            assert "connector.1.1\tAvailable" in res.stdout
        doc = await wait_doc(server, ep, lambda d: not d["online"], what="offline")
        assert doc["lastDisconnectAt"] and doc["lastDisconnectAt"] >= doc["lastConnectAt"]
        res = cli(cli_env, "cs", "list", "--location", loc, "--offline", "-o", "json")
        assert res.exit_code == 0 and [d["endpoint"] for d in json.loads(res.stdout)] == [ep]

    run(scenario())


def _status16(connector: int, status: str, error: str = "NoError"):
    return "StatusNotification", {
        "connectorId": connector,
        "errorCode": error,
        "status": status,
        "timestamp": utcnow(),
    }


def _status201(evse: int, status: str):
    return "StatusNotification", {
        "timestamp": utcnow(),
        "connectorStatus": status,
        "evseId": evse,
        "connectorId": 1,
    }


# (what the station sends, the station status the rule gives); the state accumulates
STEPS16 = [
    ((1, "Charging"), "Charging"),  # in use beats what could be used
    ((2, "Faulted"), "Faulted"),  # a fault beats everything
    ((2, "Available"), "Charging"),
    ((1, "SuspendedEV"), "SuspendedEV"),
    ((2, "SuspendedEVSE"), "SuspendedEVSE"),  # SuspendedEVSE before SuspendedEV
    ((2, "Preparing"), "SuspendedEV"),
    ((1, "Finishing"), "Finishing"),  # Finishing before Preparing
    ((1, "Available"), "Preparing"),
    ((2, "Reserved"), "Reserved"),
    ((2, "Unavailable"), "Available"),  # what could be used beats what cannot
    ((1, "Unavailable"), "Unavailable"),
    ((1, "Charging"), "Charging"),
    ((0, "Unavailable"), "Unavailable"),  # connector 0 covers every connector
    ((0, "Faulted"), "Faulted"),
    ((0, "Available"), "Charging"),  # station itself fine: connectors decide
]
STEPS201 = [
    ((1, "Occupied"), "Occupied"),
    ((2, "Reserved"), "Occupied"),
    ((1, "Available"), "Reserved"),
    ((2, "Faulted"), "Faulted"),
    ((2, "Unavailable"), "Available"),
    ((1, "Unavailable"), "Unavailable"),
    ((1, "Occupied"), "Occupied"),
]


@pytest.mark.parametrize("proto", PROTOS)
def test_status_rule_follows_status_notifications(server, proto):
    ep = server.create(uniq("rule"), protocol=proto)["endpoint"]
    steps = STEPS16 if proto == P16 else STEPS201

    async def scenario():
        async with sim_running(server, ep, proto) as st:
            await wait_doc(server, ep, all_available(2))
            for (target, status), expected in steps:
                msg = _status16(target, status) if proto == P16 else _status201(target, status)
                await st.send(*msg)  # answered after the store write
                doc = await get_doc(server, ep)
                assert doc["status"] == expected, (target, status, doc["connectors"])
                if target == 0:
                    assert doc["stationStatus"] == status
                else:
                    conn = next(c for c in doc["connectors"] if c["evseId"] == target)
                    assert conn["status"] == status
            assert doc["evses"] == [1, 2]  # connector 0 is the station, not an EVSE
            async with aapi(server) as c:
                r = await c.get(BASE, params={"status": steps[-1][1], "endpoint": ep})
            assert [d["endpoint"] for d in r.json()["result"]] == [ep]
            before = doc["lastMessageAt"]
            await until_async(lambda: utcnow() > before, what="the clock to pass lastMessageAt")
            await st.send("Heartbeat", {})
            assert (await get_doc(server, ep))["lastMessageAt"] > before
            if proto == P16:
                await st.send(*_status16(2, "Faulted", "GroundFailure"))
                doc = await get_doc(server, ep)
                assert doc["connectors"][1]["errorCode"] == "GroundFailure"
                assert doc["status"] == "Faulted"

    run(scenario())


# --------------------------------------------------------------------------- 2. active switch


def _authorize(proto: str):
    return (
        ("Authorize", {"idTag": "TAG-1"})
        if proto == P16
        else ("Authorize", {"idToken": {"idToken": "TAG-1", "type": "ISO14443"}})
    )


def _auth_status(proto: str, res) -> str:
    return res["idTagInfo"]["status"] if proto == P16 else res["idTokenInfo"]["status"]


def _start(proto: str, connector: int = 1):
    if proto == P16:
        return "StartTransaction", {
            "connectorId": connector,
            "idTag": "TAG-1",
            "meterStart": 10,
            "timestamp": utcnow(),
        }
    return "TransactionEvent", {
        "eventType": "Started",
        "timestamp": utcnow(),
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": str(uuid.uuid4())},
        "evse": {"id": connector, "connectorId": 1},
        "idToken": {"idToken": "TAG-1", "type": "ISO14443"},
    }


@pytest.mark.parametrize("proto", PROTOS)
def test_deactivate_and_activate_reach_the_live_station(server, proto):
    ep = server.create(uniq("act"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto) as st:
            await wait_doc(server, ep, all_available(2))
            assert _auth_status(proto, await st.send(*_authorize(proto))) == "Accepted"

            await patch(server, ep, {"active": False})
            await until_async(
                lambda: st.availability.get(0) == "Inoperative",
                what="ChangeAvailability Inoperative",
            )
            assert set(st.availability.values()) == {"Inoperative"}, st.availability
            # the station reports its connectors Unavailable in turn
            await wait_doc(server, ep, lambda d: d["status"] == "Unavailable")
            assert _auth_status(proto, await st.send(*_authorize(proto))) == "Blocked"
            assert _auth_status(proto, await st.send(*_start(proto))) == "Blocked"

            await patch(server, ep, {"active": True})
            await until_async(
                lambda: st.availability.get(0) == "Operative", what="ChangeAvailability Operative"
            )
            assert set(st.availability.values()) == {"Operative"}, st.availability
            await wait_doc(server, ep, lambda d: d["status"] == "Available")
            assert _auth_status(proto, await st.send(*_authorize(proto))) == "Accepted"

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_inactive_station_is_told_inoperative_at_every_boot(server, proto):
    ep = server.create(uniq("inact"), protocol=proto, active=False)["endpoint"]

    async def scenario():
        for _ in range(2):  # first connection, then a reconnect
            async with sim_running(server, ep, proto) as st:
                await until_async(
                    lambda: st.availability.get(0) == "Inoperative", what="Inoperative after boot"
                )
                assert _auth_status(proto, await st.send(*_authorize(proto))) == "Blocked"
                assert _auth_status(proto, await st.send(*_start(proto, 2))) == "Blocked"
            await wait_doc(server, ep, lambda d: not d["online"])
        # deactivated while offline, then booting: told too
        ep2 = server.create(uniq("inact"), protocol=proto)["endpoint"]
        await patch(server, ep2, {"active": False})
        async with sim_running(server, ep2, proto) as st:
            await until_async(
                lambda: st.availability.get(0) == "Inoperative", what="Inoperative after boot"
            )

    run(scenario())


# --------------------------------------------------------------------------- 3. csconfig


@pytest.mark.parametrize("proto", PROTOS)
def test_get_variables_full_configuration(server, proto):
    ep = server.create(uniq("cfg"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto) as st:
            r = await get_variables(server, ep)  # no body at all
            assert r.status_code == 201, r.text
            res = r.json()["result"]
            entries = res["csconfig"]
            assert res["endpoint"] == ep and res["unknownKeys"] == []
            assert len(entries) == len(st.config), (len(entries), len(st.config))
            if proto == P16:
                assert {e["key"]: e["value"] for e in entries} == st.config
                ro = {e["key"]: e["readonly"] for e in entries}
                assert ro["GetConfigurationMaxKeys"] is True and ro["HeartbeatInterval"] is False
            else:
                # GetBaseReport: the report came in several NotifyReport parts
                assert len(st.config) > int(st.config["DeviceDataCtrlr.ItemsPerMessage[GetReport]"])
                plain = {k: v for k, v in st.config.items() if "@" not in k}
                got = {e["key"]: e["value"] for e in entries if "evse" not in e}
                assert got == plain
                assert sum("evse" in e for e in entries) == len(st.config) - len(plain)
                by_key = {e["key"]: e for e in entries}
                hb = by_key["OCPPCommCtrlr.HeartbeatInterval"]
                assert (hb["component"], hb["variable"], hb["readonly"]) == (
                    "OCPPCommCtrlr",
                    "HeartbeatInterval",
                    False,
                )
                assert by_key["ChargingStation.Model"]["readonly"] is True
                assert {e["evse"] for e in entries if "evse" in e} == {1, 2}
            doc = await get_doc(server, ep)
            assert doc["csconfig"] == entries
            assert doc["csconfigFetchedAt"] == res["fetchedAt"]

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_get_variables_selected_keys(server, proto):
    ep = server.create(uniq("keys"), protocol=proto)["endpoint"]
    if proto == P16:
        known = ["HeartbeatInterval", "MeterValueSampleInterval"]
        unknown = ["NoSuchKey"]
    else:
        known = ["OCPPCommCtrlr.HeartbeatInterval", "DeviceDataCtrlr.ItemsPerMessage[GetReport]"]
        unknown = ["OCPPCommCtrlr.NoSuchVariable", "NoSuchCtrlr.Enabled"]

    async def scenario():
        async with sim_running(server, ep, proto) as st:
            full = await get_variables(server, ep, {})
            assert full.status_code == 201, full.text
            total = len(full.json()["result"]["csconfig"])
            r = await get_variables(server, ep, {"keys": known + unknown, "timeout": scaled(5)})
            assert r.status_code == 201, r.text
            res = r.json()["result"]
            assert [(e["key"], e["value"]) for e in res["csconfig"]] == [
                (k, st.config[k]) for k in known
            ]
            assert len(res["unknownKeys"]) == len(unknown)
            for name, reported in zip(unknown, res["unknownKeys"], strict=False):
                assert reported.startswith(name), res["unknownKeys"]
            # a partial fetch refreshes those entries and keeps the rest
            doc = await get_doc(server, ep)
            assert len(doc["csconfig"]) == total
            assert doc["csconfigFetchedAt"] == res["fetchedAt"]
            if proto == P201:  # a 2.0.1 key must name its component
                r = await get_variables(server, ep, {"keys": ["HeartbeatInterval"]})
                assert r.status_code in (400, 422), r.text
                assert "Component.Variable" in r.json()["message"]

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_csconfig_is_kept_and_shown_after_disconnect(server, cli_env, proto):
    ep = server.create(uniq("kept"), protocol=proto)["endpoint"]
    hb = "HeartbeatInterval" if proto == P16 else "OCPPCommCtrlr.HeartbeatInterval"

    async def scenario():
        async with sim_running(server, ep, proto) as st:
            # the CLI waits for the station, which answers on this loop: run it in a thread
            res = await asyncio.to_thread(
                cli, cli_env, "cs", "config", ep, "-o", "json", "--timeout", str(scaled(10))
            )
            assert res.exit_code == 0, res.output
            entries = json.loads(res.stdout)
            assert len(entries) == len(st.config)
            assert {e["key"]: e["value"] for e in entries}[hb] == st.config[hb]
            res = await asyncio.to_thread(cli, cli_env, "cs", "config", ep, "-k", hb, "-o", "plain")
            assert res.exit_code == 0, res.output
            assert f"{hb}\t{st.config[hb]}" in res.stdout
        doc = await wait_doc(server, ep, lambda d: not d["online"])
        return doc, entries

    doc, entries = run(scenario())
    # the -k fetch refreshed one entry (it moves to the end; a 2.0.1 GetVariables answer does
    # not say whether it is read-only) and kept the rest
    kv = lambda es: sorted((e["key"], e.get("evse") or 0, e["value"]) for e in es)  # noqa: E731
    assert kv(doc["csconfig"]) == kv(entries) and doc["csconfigFetchedAt"]
    res = cli(cli_env, "cs", "inspect", ep, "-o", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["csconfig"] == doc["csconfig"]
    res = cli(cli_env, "cs", "inspect", ep)  # not a terminal: plain
    assert res.exit_code == 0, res.output
    value = next(e["value"] for e in entries if e["key"] == hb)
    assert f"csconfig.{hb}\t{value}" in res.stdout
    assert f"Config fetched\t{doc['csconfigFetchedAt']}" in res.stdout


def test_get_variables_offline_and_inactive_are_406(server, cli_env):
    ep = server.create(uniq("off"))["endpoint"]

    async def scenario():
        r = await get_variables(server, ep, {"timeout": scaled(2)})
        assert r.status_code == 406, r.text
        offline = r.json()["message"]
        assert "offline" in offline
        res = await asyncio.to_thread(cli, cli_env, "cs", "config", ep, "--timeout", str(scaled(2)))
        assert res.exit_code == 6, res.output
        assert "offline" in res.stderr
        async with sim_running(server, ep, P16) as st:
            await patch(server, ep, {"active": False})
            await until_async(lambda: st.availability.get(0) == "Inoperative")
            r = await get_variables(server, ep, {"timeout": scaled(2)})
            assert r.status_code == 406, r.text
            inactive = r.json()["message"]
            assert "inactive" in inactive and "offline" not in inactive
            res = await asyncio.to_thread(
                cli, cli_env, "cs", "config", ep, "--timeout", str(scaled(2))
            )
            assert res.exit_code == 6, res.output
            assert "inactive" in res.stderr

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_get_variables_silent_station_is_504(server, cli_env, proto):
    ep = server.create(uniq("silent"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, silent=True):
            # two at once: the second waits in the queue, and that wait counts in its deadline
            t0 = time.monotonic()
            first, queued = await asyncio.gather(
                get_variables(server, ep, {"timeout": scaled(1)}),
                get_variables(server, ep, {"timeout": scaled(1)}),
            )
            took = time.monotonic() - t0
            for r in (first, queued):
                assert r.status_code == 504, r.text
                assert f"did not answer within {scaled(1):g} s" in r.json()["message"]
            assert scaled(0.9) < took < scaled(1.9), took
            if proto == P16:
                res = await asyncio.to_thread(
                    cli, cli_env, "cs", "config", ep, "--timeout", str(scaled(1))
                )
                assert res.exit_code == 7, res.output
                assert "did not answer" in res.stderr
            doc = await get_doc(server, ep)
            assert doc["online"] is True and doc["csconfigFetchedAt"] is None

    run(scenario())


async def _answer_with_callerror(ws, seen: list) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        if frame[0] == 2:
            seen.append(frame[2])
            await ws.send(json.dumps([4, frame[1], "InternalError", "boom", {}]))


@pytest.mark.parametrize("proto", PROTOS)
def test_get_variables_callerror_is_502(server, cli_env, proto):
    ep = server.create(uniq("cerr"), protocol=proto)["endpoint"]

    async def scenario():
        async with await raw_open(server, ep, proto) as ws:
            await raw_boot(ws, proto)
            seen: list[str] = []
            task = asyncio.create_task(_answer_with_callerror(ws, seen))
            r = await get_variables(server, ep, {"timeout": scaled(5)})
            assert r.status_code == 502, r.text
            msg = r.json()["message"]
            assert "CALLERROR" in msg and "boom" in msg, msg
            assert seen == ["GetConfiguration" if proto == P16 else "GetBaseReport"]
            res = await asyncio.to_thread(
                cli, cli_env, "cs", "config", ep, "--timeout", str(scaled(5))
            )
            assert res.exit_code == 5, res.output
            assert "CALLERROR" in res.stderr
            # the station is still connected and usable after a CALLERROR
            assert (await get_doc(server, ep))["online"] is True
            task.cancel()

    run(scenario())


# --------------------------------------------------------------------------- 4. disconnect


@pytest.mark.parametrize("proto", PROTOS)
def test_disconnect_fails_a_pending_command_at_once(server, proto):
    ep = server.create(uniq("gone"), protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, silent=True) as st:
            pending = asyncio.create_task(get_variables(server, ep, {"timeout": scaled(30)}))
            await until_async(got_a_call(st), what="the command to reach the station")
            assert not pending.done()
            t0 = time.monotonic()
            await st.stop()
            r = await pending
            took = time.monotonic() - t0
        assert r.status_code == 406, r.text
        assert "offline" in r.json()["message"]
        assert took < scaled(2), f"the pending command took {took:.1f} s to fail"
        await wait_doc(server, ep, lambda d: not d["online"])

    run(scenario())


# --------------------------------------------------------------------------- 5. queueing


async def _slow_station(ws, received: list, overlaps: list, delay: float) -> None:
    """Answer GetConfiguration after `delay`; note how many calls were pending at each CALL."""
    pending: set[str] = set()

    async def answer(frame):
        await asyncio.sleep(delay)
        pending.discard(frame[1])
        keys = frame[3].get("key") or []
        await ws.send(
            json.dumps(
                [
                    3,
                    frame[1],
                    {
                        "configurationKey": [
                            {"key": k, "readonly": False, "value": f"v-{k}"} for k in keys
                        ]
                    },
                ]
            )
        )

    tasks = set()
    async for raw in ws:
        frame = json.loads(raw)
        if frame[0] == 2:
            overlaps.append(len(pending))
            pending.add(frame[1])
            received.append(frame[3].get("key"))
            t = asyncio.create_task(answer(frame))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


def test_commands_to_one_station_go_one_at_a_time_in_order(server):
    ep = server.create(uniq("order"))["endpoint"]

    async def scenario():
        async with await raw_open(server, ep, P16) as ws:
            await raw_boot(ws, P16)
            received, overlaps = [], []
            station = asyncio.create_task(_slow_station(ws, received, overlaps, scaled(0.3)))
            t0 = time.monotonic()
            requests = []
            for k in ("K1", "K2", "K3", "K4"):
                requests.append(
                    asyncio.create_task(
                        get_variables(server, ep, {"keys": [k], "timeout": scaled(10)})
                    )
                )
                # arrival order at the API = sending order. Nothing tells when a request
                # has reached the server's queue: a deliberate (scaled) pause.
                await asyncio.sleep(scaled(0.05))
            done = await asyncio.gather(*requests)
            took = time.monotonic() - t0
            station.cancel()
        for k, r in zip(("K1", "K2", "K3", "K4"), done, strict=False):
            assert r.status_code == 201, r.text
            assert r.json()["result"]["csconfig"] == [
                {"key": k, "readonly": False, "value": f"v-{k}"}
            ]
        assert received == [["K1"], ["K2"], ["K3"], ["K4"]]
        assert overlaps == [0, 0, 0, 0], "a CALL was sent while another was pending"
        assert took >= 4 * scaled(0.3)

    run(scenario())


def test_a_silent_station_does_not_delay_others(server):
    silent_ep = server.create(uniq("busy"), protocol=P201)["endpoint"]
    ok_ep = server.create(uniq("fine"))["endpoint"]

    async def scenario():
        async with (
            sim_running(server, silent_ep, P201, silent=True) as quiet,
            sim_running(server, ok_ep, P16),
        ):
            busy = asyncio.create_task(get_variables(server, silent_ep, {"timeout": scaled(5)}))
            queued = asyncio.create_task(get_variables(server, silent_ep, {"timeout": scaled(5)}))
            await until_async(got_a_call(quiet), what="the first command to reach it")
            assert not busy.done() and not queued.done()
            async with aapi(server) as c:
                for _ in range(3):
                    t0 = time.monotonic()
                    r = await c.post(
                        f"{BASE}/{ok_ep}/get_variables",
                        json={"keys": ["HeartbeatInterval"], "timeout": scaled(5)},
                    )
                    assert r.status_code == 201, r.text
                    assert time.monotonic() - t0 < scaled(1)
                    t0 = time.monotonic()
                    r = await c.get(BASE, params={"paginate_limit": 50})
                    assert r.status_code == 200
                    r = await c.get(f"{BASE}/{silent_ep}")
                    assert r.status_code == 200 and r.json()["result"]["online"] is True
                    assert time.monotonic() - t0 < scaled(1)
            await quiet.stop()  # both commands for it fail now, not after 5 s
            t0 = time.monotonic()
            results = await asyncio.gather(busy, queued)
            assert time.monotonic() - t0 < scaled(2)
            assert [r.status_code for r in results] == [406, 406], [r.text for r in results]

    run(scenario())


# --------------------------------------------------------------------------- 6. the upgrade


async def _refused(url: str, subprotocols: list[str] | None):
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, subprotocols=subprotocols, proxy=None, open_timeout=scaled(5)):
            pass
    resp = info.value.response
    return resp.status_code, (resp.body or b"").decode()


def test_upgrade_refusals_say_why_and_are_recorded(server):
    doc16 = server.create(uniq("ref"))
    doc201 = server.create(uniq("ref"), protocol=P201)
    url = server.ocpp_url

    async def scenario():
        status, body = await _refused(f"{url}/{uniq('nobody')}", [P16])
        assert status == 404 and "unknown chargestation" in body, body
        status, body = await _refused(f"{url}/", [P16])
        assert status == 404, body
        status, body = await _refused(f"{url}/{doc16['endpoint']}", None)
        assert status == 400 and "subprotocol" in body and P16 in body, body
        status, body = await _refused(f"{url}/{doc16['endpoint']}", [P201])
        assert status == 400 and f"registered for {P16}" in body and P201 in body, body
        status, body = await _refused(f"{url}/ocpp/{doc201['endpoint']}", [P16])
        assert status == 400 and f"registered for {P201}" in body, body
        # the simulator sees the same refusal
        sim = SimStation(doc16["endpoint"], url, P201, reconnect=False)
        await sim.start()
        assert sim.last_status_code == 400 and not sim.connected.is_set()

    run(scenario())
    # the simulator's refusal repeats the second one: stored once a minute at most
    refused16 = wait_events(server.store, doc16["_id"], CONNECTION_REFUSED, 3, timeout=1)
    assert [e["data"]["status"] for e in refused16] == [400, 400], refused16
    assert "subprotocol" in refused16[0]["data"]["reason"]
    assert "registered for" in refused16[1]["data"]["reason"]
    refused201 = wait_events(server.store, doc201["_id"], CONNECTION_REFUSED, 1)
    assert [e["data"]["status"] for e in refused201] == [400]
    assert server.get(doc16["_id"])["online"] is False


def test_a_refused_upgrade_is_not_a_message_from_the_station(server):
    doc = server.create(uniq("ref"))

    async def scenario():
        await _refused(f"{server.ocpp_url}/{doc['endpoint']}", [P201])

    run(scenario())
    assert wait_events(server.store, doc["_id"], CONNECTION_REFUSED, 1)
    after = server.get(doc["_id"])
    assert after["lastMessageAt"] is None and after["lastConnectAt"] is None


@pytest.mark.parametrize("proto", PROTOS)
def test_path_prefix_and_protocol_choice_are_accepted(server, proto):
    ep = server.create(uniq("pfx"), protocol=proto)["endpoint"]

    async def scenario():
        # offered in any order: the station gets the version it is registered for
        async with await raw_open(server, ep, [P201, P16], prefix="/ocpp") as ws:
            assert ws.subprotocol == proto
            await raw_boot(ws, proto)
            doc = await wait_doc(server, ep, lambda d: d["online"])
            assert doc["model"] == "Raw-1"
        await wait_doc(server, ep, lambda d: not d["online"])
        async with await raw_open(server, ep, proto, prefix="/some/deeper/path") as ws:
            assert ws.subprotocol == proto
            await raw_boot(ws, proto)

    run(scenario())


def test_a_late_answer_does_not_confuse_the_next_command(server):
    """The first command times out (504); its answer arrives later and must not be taken for
    the answer to the next command."""
    ep = server.create(uniq("late"))["endpoint"]

    late = scaled(1.3)  # after the first command's deadline (scaled(1)), before the next one's

    async def station(ws):
        n = 0
        replies: set[asyncio.Future] = set()
        async for raw in ws:
            frame = json.loads(raw)
            if frame[0] != 2:
                continue
            n += 1
            key = frame[3]["key"][0]

            async def reply(frame=frame, key=key, delay=late if n == 1 else 0.0):
                await asyncio.sleep(delay)
                await ws.send(
                    json.dumps(
                        [
                            3,
                            frame[1],
                            {
                                "configurationKey": [
                                    {"key": key, "readonly": False, "value": f"v-{key}"}
                                ]
                            },
                        ]
                    )
                )

            replies.add(asyncio.ensure_future(reply()))

    async def scenario():
        async with await raw_open(server, ep, P16) as ws:
            await raw_boot(ws, P16)
            task = asyncio.create_task(station(ws))
            r = await get_variables(server, ep, {"keys": ["Slow"], "timeout": scaled(1)})
            assert r.status_code == 504, r.text
            for key in ("Next", "After"):  # the late "Slow" answer lands meanwhile
                r = await get_variables(server, ep, {"keys": [key], "timeout": scaled(3)})
                assert r.status_code == 201, r.text
                assert r.json()["result"]["csconfig"] == [
                    {"key": key, "readonly": False, "value": f"v-{key}"}
                ]
            task.cancel()

    run(scenario())


def test_an_invalid_answer_is_502_not_500(server):
    ep = server.create(uniq("badans"))["endpoint"]

    async def station(ws):
        async for raw in ws:
            frame = json.loads(raw)
            if frame[0] == 2:  # configurationKey must be an array
                await ws.send(json.dumps([3, frame[1], {"configurationKey": "nope"}]))

    async def scenario():
        async with await raw_open(server, ep, P16) as ws:
            await raw_boot(ws, P16)
            task = asyncio.create_task(station(ws))
            r = await get_variables(server, ep, {"timeout": scaled(3)})
            assert r.status_code == 502, r.text
            assert (await get_doc(server, ep))["csconfigFetchedAt"] is None
            task.cancel()

    run(scenario())


# --------------------------------------------------------------------------- 7. reconnects


@pytest.mark.parametrize("proto", PROTOS)
def test_newest_connection_wins(server, proto):
    ep = server.create(uniq("twice"), protocol=proto)["endpoint"]
    key = "HeartbeatInterval" if proto == P16 else "OCPPCommCtrlr.HeartbeatInterval"

    async def scenario():
        first = await raw_open(server, ep, proto)
        await raw_boot(first, proto)
        doc1 = await wait_doc(server, ep, lambda d: d["online"])
        async with sim_running(server, ep, proto) as st:
            await asyncio.wait_for(first.wait_closed(), scaled(5))
            assert first.close_code == 1000, (first.close_code, first.close_reason)
            assert "replaced" in first.close_reason
            doc2 = await wait_doc(server, ep, all_available(2))
            assert doc2["lastConnectAt"] > doc1["lastConnectAt"]
            assert doc2["model"] == st.model
            # the old session's end must not mark it offline: nothing to poll for in a
            # negative check, so a deliberate (scaled) grace period
            await asyncio.sleep(scaled(0.2))
            assert (await get_doc(server, ep))["online"] is True
            r = await get_variables(server, ep, {"keys": [key], "timeout": scaled(5)})
            assert r.status_code == 201, r.text  # answered by the new connection
            assert r.json()["result"]["csconfig"][0]["value"] == st.config[key]
        doc = await wait_doc(server, ep, lambda d: not d["online"])
        assert doc["lastDisconnectAt"] >= doc2["lastConnectAt"]

    run(scenario())


def test_deleting_a_connected_station_closes_its_websocket(server):
    doc = server.create(uniq("del"))

    async def scenario():
        async with await raw_open(server, doc["endpoint"], P16) as ws:
            await raw_boot(ws, P16)
            await wait_doc(server, doc["endpoint"], lambda d: d["online"])
            async with aapi(server) as c:
                r = await c.delete(f"{BASE}/{doc['endpoint']}")
                assert r.status_code == 200, r.text
                await asyncio.wait_for(ws.wait_closed(), scaled(5))
                assert (await c.get(f"{BASE}/{doc['_id']}")).status_code == 404
        status, body = await _refused(f"{server.ocpp_url}/{doc['endpoint']}", [P16])
        assert status == 404, body

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_endpoints_with_reserved_characters_connect(server, proto):
    """Identities may hold ':' '~' '.' '_' '-'; the simulator percent-encodes them."""
    ep = server.create(f"CP:{os.getpid()}~{next(_seq)}.a_b-c", protocol=proto)["endpoint"]

    async def scenario():
        async with sim_running(server, ep, proto, connectors=1):
            await wait_doc(server, ep, all_available(1))
        async with await raw_open(server, f"{ep}?x=1&y=%2F", proto, prefix="/ocpp") as ws:
            await raw_boot(ws, proto)  # a query string is not part of the identity
            assert (await get_doc(server, ep))["online"] is True

    run(scenario())


def test_the_identity_is_the_endpoint_not_the_id(server):
    doc = server.create(uniq("byid"))

    async def scenario():
        try:
            ws = await raw_open(server, doc["_id"], P16)
        except InvalidStatus as e:
            assert e.response.status_code == 404
            return
        async with ws:  # if it is let in, it must be the station in every respect
            await raw_boot(ws, P16)
            async with sim_running(server, doc["endpoint"], P16) as st:
                assert st.booted.is_set()
                # the newest connection wins
                await asyncio.wait_for(ws.wait_closed(), scaled(1.5))
                r = await get_variables(server, doc["endpoint"], {"timeout": scaled(3)})
                assert r.status_code == 201, r.text

    run(scenario())


# --------------------------------------------------------------------------- 10. server restart


@pytest.fixture(scope="module")
def restart(tmp_path_factory):
    """Three stations online; the server is SIGKILLed and a new one started on the same store
    and the same (fixed) OCPP port. Returns what was seen, for the tests below.

    `gone` does not reconnect (and had connected once before, so it has an older
    lastDisconnectAt); `back16`/`back201` are SimStations with reconnect=True."""
    root = tmp_path_factory.mktemp("restart")
    port = free_port()
    srv = start_server(root / "one", "--ocpp-port", str(port))
    seen: dict = {"port": port, "first": srv}
    try:
        eps = {
            "gone": srv.create(uniq("rs-gone"))["endpoint"],
            "back16": srv.create(uniq("rs-16"))["endpoint"],
            "back201": srv.create(uniq("rs-201"), protocol=P201)["endpoint"],
        }
        seen["eps"] = eps

        async def scenario():
            gone, back16, back201 = eps.values()
            async with sim_running(srv, gone, P16):  # an earlier session of `gone`
                pass
            await wait_doc(srv, gone, lambda d: not d["online"])
            async with (
                sim_running(srv, gone, P16),
                sim_running(srv, back16, P16, reconnect=True, backoff_max=scaled(0.5)) as s16,
                sim_running(srv, back201, P201, reconnect=True, backoff_max=scaled(0.5)) as s201,
            ):
                seen["before"] = {
                    ep: await wait_doc(srv, ep, lambda d: d["online"]) for ep in eps.values()
                }
                # Blocking calls on purpose: this loop (the stations) is frozen until the new
                # server is up and has been asked, so nobody can reconnect in between.
                srv.stop(signal.SIGKILL)
                seen["second"] = srv2 = start_server(
                    root / "two", "--ocpp-port", str(port), store=srv.store
                )
                seen["at_start"] = {ep: srv2.get(ep) for ep in eps.values()}
                # now the stations run again and reconnect on their own
                seen["back"] = {
                    ep: await wait_doc(
                        srv2,
                        ep,
                        lambda d: (
                            d["online"] and d["lastConnectAt"] > seen["before"][ep]["lastConnectAt"]
                        ),
                        what="back online",
                    )
                    for ep in (back16, back201)
                }
                await until_async(
                    lambda: s16.booted.is_set() and s201.booted.is_set(),
                    what="both stations booted again",
                )
                seen["reconnects"] = (s16.stats.reconnects, s201.stats.reconnects)
                seen["gone_later"] = await get_doc(srv2, gone)
                seen["command"] = await get_variables(
                    srv2,
                    back201,
                    {"keys": ["OCPPCommCtrlr.HeartbeatInterval"], "timeout": scaled(5)},
                )
            seen["end"] = {
                ep: await wait_doc(srv2, ep, lambda d: not d["online"]) for ep in (back16, back201)
            }

        run(scenario(), timeout=40)
        yield seen
    finally:
        srv.stop(signal.SIGKILL)
        if "second" in seen:
            seen["second"].stop()


def test_restart_shows_every_station_offline_until_it_reconnects(restart):
    assert restart["first"].ocpp_url.endswith(f":{restart['port']}")
    for ep, doc in restart["at_start"].items():
        assert doc["online"] is False, ep
        assert doc["lastDisconnectAt"], ep
        assert doc["lastConnectAt"] == restart["before"][ep]["lastConnectAt"], ep
    assert restart["gone_later"]["online"] is False  # it never came back


def test_restart_stations_come_back_on_their_own(restart):
    eps = restart["eps"]
    for ep in (eps["back16"], eps["back201"]):
        assert restart["back"][ep]["online"] is True
        assert restart["end"][ep]["lastDisconnectAt"] >= restart["back"][ep]["lastConnectAt"]
    assert all(n >= 1 for n in restart["reconnects"]), restart["reconnects"]
    assert restart["command"].status_code == 201, restart["command"].text


def test_restart_stamps_the_disconnect_after_the_last_connect(restart):
    doc = restart["at_start"][restart["eps"]["gone"]]
    assert doc["lastDisconnectAt"] >= doc["lastConnectAt"], doc


# --------------------------------------------------------------------------- 11. keepalive


def test_keepalive_drops_a_station_that_stops_reading(tmp_path):
    srv = start_server(
        tmp_path, "--ping-interval", str(scaled(0.5)), "--ping-timeout", str(scaled(0.5))
    )
    try:
        dead = srv.create(uniq("ka-dead"))["endpoint"]
        alive = srv.create(uniq("ka-live"), protocol=P201)["endpoint"]

        async def scenario():
            async with (
                await raw_open(srv, alive, P201) as healthy,
                await raw_open(srv, dead, P16) as ws,
            ):
                await raw_boot(healthy, P201)
                await raw_boot(ws, P16)
                await wait_doc(srv, dead, lambda d: d["online"])
                t0 = time.monotonic()
                ws.transport.pause_reading()  # no more pongs from this one
                doc = await wait_doc(
                    srv, dead, lambda d: not d["online"], timeout=10, what="dropped by keepalive"
                )
                took = time.monotonic() - t0
                assert took < scaled(4), f"dropped after {took:.1f} s"
                assert doc["lastDisconnectAt"]
                # an idle station that answers pings stays
                assert (await get_doc(srv, alive))["online"] is True
                frame = await raw_call(healthy, "Heartbeat", {})
                assert frame[0] == 3
                ws.transport.abort()  # it cannot read a closing handshake any more

        run(scenario())
    finally:
        assert srv.stop() == 0, srv.logs()
