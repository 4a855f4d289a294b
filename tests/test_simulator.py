"""Tests for edrvctl.simulator against a tiny in-test CSMS (real websockets on 127.0.0.1).

The CSMS runs on edrvctl.ocppj.Rpc too: one handler table per OCPP version that records every
CALL it gets (the payload exactly as sent) and answers it. Waiting is polling (tests/timing.py),
with every timeout scaled by EDRV_TEST_TIME_SCALE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from edrvctl.ocppj import Rpc
from edrvctl.ocppj.frames import CALL
from edrvctl.simulator import SimStation, run_fleet, utcnow
from timing import scaled, until_async

NOW = "2024-01-01T00:00:00.000Z"


# --------------------------------------------------------------------------- in-test CSMS


class _Wire:
    """The CSMS side of one websocket: keeps every frame received, plays dead for the actions
    in `csms.ignore`, and keeps reading when a reply can no longer be sent (frames the station
    sent before closing, e.g. the result of a pending call, are still buffered)."""

    def __init__(self, conn: CsmsConn):
        self.conn = conn

    def __aiter__(self):
        return self

    async def __anext__(self):
        conn = self.conn
        while True:
            try:
                raw = await conn.ws.recv()
            except ConnectionClosed:
                raise StopAsyncIteration from None
            conn.csms.raw[conn.id].append(raw)
            with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
                frame = json.loads(raw)
                if frame[0] == CALL and frame[2] in conn.csms.ignore:
                    continue  # play dead for this action
            return raw

    async def send(self, frame, text=None):
        if frame.startswith(b"[4,"):
            self.conn.csms.callerrors.append((self.conn.id, json.loads(frame)))
        with contextlib.suppress(ConnectionClosed):
            await self.conn.ws.send(frame, text=text)


def recorded(action: str, answer: Callable[[Any, dict], dict]):
    """A handler that records the CALL, then answers it."""

    def handler(conn: CsmsConn, p: dict) -> dict:
        conn.csms.msgs[conn.id].append((action, p))
        return answer(conn, p)

    return handler


def _boot(conn, p):
    return {"currentTime": NOW, "interval": conn.csms.interval, "status": conn.csms.next_boot()}


def _heartbeat(conn, p):
    return {"currentTime": utcnow()}


def _start16(conn, p):
    conn.csms.tx_counter += 1
    return {
        "transactionId": conn.csms.tx_counter,
        "idTagInfo": {"status": conn.csms.tag_status(p["idTag"])},
    }


def _empty(conn, p):
    return {}


class CsmsConn:
    """One station's connection to the in-test CSMS."""

    VERSION: ClassVar[str] = ""
    HANDLERS: ClassVar[dict] = {}

    def __init__(self, csms: Csms, sid: str, ws):
        self.csms, self.id, self.ws = csms, sid, ws
        self.rpc = Rpc(_Wire(self), self.VERSION, self.HANDLERS, self, name=sid)

    async def call(self, action: str, payload: dict) -> dict:
        """A CSMS CALL; the answer's payload (RemoteError for a CALLERROR or invalid answer)."""
        return await self.rpc.call(action, payload, self.csms.response_timeout)


class Csms16(CsmsConn):
    VERSION = "1.6"
    HANDLERS: ClassVar[dict] = {
        action: recorded(action, answer)
        for action, answer in {
            "BootNotification": _boot,
            "StatusNotification": _empty,
            "Heartbeat": _heartbeat,
            "Authorize": lambda conn, p: {
                "idTagInfo": {"status": conn.csms.tag_status(p["idTag"])}
            },
            "StartTransaction": _start16,
            "MeterValues": _empty,
            "StopTransaction": _empty,
            "DiagnosticsStatusNotification": _empty,
            "FirmwareStatusNotification": _empty,
            "LogStatusNotification": _empty,
        }.items()
    }


class Csms201(CsmsConn):
    VERSION = "2.0.1"
    HANDLERS: ClassVar[dict] = {
        action: recorded(action, answer)
        for action, answer in {
            "BootNotification": _boot,
            "StatusNotification": _empty,
            "Heartbeat": _heartbeat,
            "Authorize": lambda conn, p: {
                "idTokenInfo": {"status": conn.csms.tag_status(p["idToken"]["idToken"])}
            },
            "TransactionEvent": _empty,
            "MeterValues": _empty,
            "NotifyReport": _empty,
            "FirmwareStatusNotification": _empty,
            "LogStatusNotification": _empty,
        }.items()
    }


class Csms:
    def __init__(
        self,
        interval: int = 300,
        boot_plan: tuple[str, ...] = (),
        reject_tags: tuple[str, ...] = (),
        refuse: dict[str, int] | None = None,
        response_timeout: float = 5,
    ):
        self.interval = interval
        self.boot_plan = list(boot_plan)
        self.reject_tags = set(reject_tags)
        self.refuse = refuse or {}
        self.response_timeout = scaled(response_timeout)
        self.msgs: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        self.raw: dict[str, list[str]] = defaultdict(list)
        self.cps: dict[str, Any] = {}
        self.ws: dict[str, Any] = {}
        self.connections: dict[str, int] = defaultdict(int)
        self.headers: dict[str, Any] = {}
        self.close_codes: list[int | None] = []
        self.callerrors: list[tuple[str, list]] = []  # CALLERRORs the CSMS sent
        self.tx_counter = 0
        self.url = ""
        self.ignore: set[str] = set()

    def next_boot(self) -> str:
        return self.boot_plan.pop(0) if self.boot_plan else "Accepted"

    def tag_status(self, tag: str) -> str:
        return "Invalid" if tag in self.reject_tags else "Accepted"

    def actions(self, sid: str) -> list[str]:
        return [a for a, _ in self.msgs[sid]]

    def of(self, sid: str, action: str) -> list[dict]:
        return [kw for a, kw in self.msgs[sid] if a == action]

    async def wait(self, pred: Callable[[], Any], timeout: float = 5.0) -> None:
        """Poll `pred` for `timeout` (scaled) seconds; on failure, say what was received."""
        try:
            await until_async(pred, timeout)
        except AssertionError as e:
            received = {sid: [a for a, _ in m] for sid, m in self.msgs.items()}
            raise AssertionError(f"{e}; received: {received}") from None

    async def _handler(self, ws):
        sid = unquote(ws.request.path.strip("/"))
        self.connections[sid] += 1
        self.headers[sid] = ws.request.headers
        cls = Csms16 if ws.subprotocol == "ocpp1.6" else Csms201
        conn = cls(self, sid, ws)
        self.cps[sid], self.ws[sid] = conn, ws
        try:
            await conn.rpc.run()
        finally:
            self.close_codes.append(ws.close_code)

    def _process_request(self, conn, request):
        sid = unquote(request.path.strip("/"))
        if sid in self.refuse:
            return conn.respond(self.refuse[sid], "refused\n")
        return None

    @staticmethod
    def _select(conn, offered):
        for p in ("ocpp2.0.1", "ocpp1.6"):
            if p in offered:
                return p
        return None


@contextlib.asynccontextmanager
async def csms_server(callerrors_expected: bool = False, **kw):
    """An in-test CSMS; unless told otherwise, it must not have refused any station CALL (the
    simulator's payloads are all valid against the official schemas)."""
    csms = Csms(**kw)
    async with serve(
        csms._handler,
        "127.0.0.1",
        0,
        select_subprotocol=Csms._select,
        process_request=csms._process_request,
        compression=None,
    ) as server:
        csms.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield csms
    if not callerrors_expected:
        assert csms.callerrors == []


@contextlib.asynccontextmanager
async def running(*stations: SimStation):
    tasks = [asyncio.create_task(s.start()) for s in stations]
    try:
        yield stations
    finally:
        for s in stations:
            await s.stop()
        for t in tasks:
            await t  # start() returns normally after stop()
            assert t.exception() is None


async def booted(st: SimStation, timeout: float = 5) -> None:
    await asyncio.wait_for(st.booted.wait(), scaled(timeout))


def run(coro, timeout: float = 15):
    asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


def is_utc_z(ts: str) -> bool:
    return ts.endswith("Z") and datetime.fromisoformat(ts).tzinfo == UTC


# --------------------------------------------------------------------------- boot, status, heartbeat


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_boot_status_heartbeat(protocol):
    async def main():
        async with csms_server(interval=1) as csms:
            st = SimStation("CP 01/a", csms.url, protocol, connectors=2, password="s3cret")
            async with running(st):
                await booted(st)
                await csms.wait(lambda: "Heartbeat" in csms.actions("CP 01/a"), 3)
                assert st.connected.is_set() and st.registration_status == "Accepted"

            sid = "CP 01/a"  # percent-quoted on the wire, decoded by the server
            auth = csms.headers[sid]["Authorization"]
            assert base64.b64decode(auth.split()[1]).decode() == "CP 01/a:s3cret"
            acts = csms.actions(sid)
            assert acts[0] == "BootNotification"
            first_hb = acts.index("Heartbeat")
            statuses = csms.of(sid, "StatusNotification")
            assert acts[1:first_hb] == ["StatusNotification"] * len(statuses)
            boot = csms.of(sid, "BootNotification")[0]
            if protocol == "ocpp1.6":
                assert (
                    boot["chargePointVendor"] == "edrvctl"
                    and boot["chargePointModel"] == "SimCharger"
                )
                assert [(s["connectorId"], s["status"]) for s in statuses] == [
                    (0, "Available"),
                    (1, "Available"),
                    (2, "Available"),
                ]
                assert all(s["errorCode"] == "NoError" for s in statuses)
                assert st.config["HeartbeatInterval"] == "1"
            else:
                assert (
                    boot["chargingStation"]["vendorName"] == "edrvctl"
                    and boot["reason"] == "PowerUp"
                )
                assert [
                    (s["evseId"], s["connectorId"], s["connectorStatus"]) for s in statuses
                ] == [(1, 1, "Available"), (2, 1, "Available")]
                assert st.config["OCPPCommCtrlr.HeartbeatInterval"] == "1"
            assert all(is_utc_z(s["timestamp"]) for s in statuses)
            assert st.stats.sent >= 1 + len(statuses) + 1
            await csms.wait(lambda: csms.close_codes)  # the server handler ends a moment later
            assert not st.connected.is_set() and csms.close_codes == [1000]

    run(main())


def test_boot_pending_then_accepted():
    async def main():
        async with csms_server(interval=1, boot_plan=("Pending",)) as csms:
            st = SimStation("CP2", csms.url, "ocpp1.6")
            async with running(st):
                await csms.wait(lambda: len(csms.of("CP2", "BootNotification")) == 1)
                first = time.monotonic()
                await until_async(lambda: st.registration_status == "Pending", what="Pending")
                assert not st.booted.is_set()
                assert csms.actions("CP2") == ["BootNotification"]  # nothing else while Pending
                await booted(st, 3)
                # retried after the interval the CSMS gave (1 s), not before, not much later
                assert 0.9 <= time.monotonic() - first <= scaled(2)
                await csms.wait(lambda: "StatusNotification" in csms.actions("CP2"))
                assert csms.actions("CP2")[:3] == [
                    "BootNotification",
                    "BootNotification",
                    "StatusNotification",
                ]
                assert st.registration_status == "Accepted"

    run(main())


# --------------------------------------------------------------------------- configuration


def test_get_and_change_configuration_16():
    async def main():
        async with csms_server() as csms:
            st = SimStation("CFG", csms.url, "ocpp1.6", connectors=3)
            async with running(st):
                await booted(st)
                cp = csms.cps["CFG"]
                r = await cp.call(
                    "GetConfiguration", {"key": ["HeartbeatInterval", "NumberOfConnectors", "Foo"]}
                )
                got = {k["key"]: k for k in r["configurationKey"]}
                assert got["HeartbeatInterval"] == {
                    "key": "HeartbeatInterval",
                    "readonly": False,
                    "value": "300",
                }
                assert got["NumberOfConnectors"] == {
                    "key": "NumberOfConnectors",
                    "readonly": True,
                    "value": "3",
                }
                assert r["unknownKey"] == ["Foo"]

                everything = await cp.call("GetConfiguration", {})
                keys = {k["key"] for k in everything["configurationKey"]}
                assert {
                    "MeterValueSampleInterval",
                    "ConnectionTimeOut",
                    "AuthorizeRemoteTxRequests",
                    "LocalAuthorizeOffline",
                    "WebSocketPingInterval",
                } <= keys
                assert keys == set(st.config)
                assert "unknownKey" not in everything

                async def change(key, value):
                    return (await cp.call("ChangeConfiguration", {"key": key, "value": value}))[
                        "status"
                    ]

                assert await change("HeartbeatInterval", "120") == "Accepted"
                assert st.config["HeartbeatInterval"] == "120"
                assert await change("NumberOfConnectors", "5") == "Rejected"
                assert await change("Foo", "1") == "NotSupported"
                assert await change("LocalAuthorizeOffline", "maybe") == "Rejected"
                assert await change("ConnectionTimeOut", "-3") == "Rejected"
                assert await change("LocalAuthorizeOffline", "FALSE") == "Accepted"
                assert st.config["LocalAuthorizeOffline"] == "false"
                assert st.stats.answered == 8
                assert await change("MeterValueSampleInterval", "7") == "Accepted"
                assert st.meter_interval == 7.0

    run(main())


def _gv(component, variable, evse=None, var_instance=None):
    c = {"name": component, **({"evse": evse} if evse else {})}
    v = {"name": variable, **({"instance": var_instance} if var_instance else {})}
    return {"component": c, "variable": v}


def test_get_and_set_variables_201():
    async def main():
        async with csms_server() as csms:
            st = SimStation("GV", csms.url, "ocpp2.0.1")
            async with running(st):
                await booted(st)
                cp = csms.cps["GV"]
                r = await cp.call(
                    "GetVariables",
                    {
                        "getVariableData": [
                            _gv("OCPPCommCtrlr", "HeartbeatInterval"),
                            _gv("SampledDataCtrlr", "TxUpdatedInterval"),
                            _gv("AuthCtrlr", "AuthorizeRemoteStart"),
                            _gv("DeviceDataCtrlr", "ItemsPerMessage", var_instance="GetReport"),
                            _gv("Connector", "ConnectorType", evse={"id": 2, "connectorId": 1}),
                            _gv("NoSuchCtrlr", "HeartbeatInterval"),
                            _gv("OCPPCommCtrlr", "NoSuchVariable"),
                            {
                                **_gv("OCPPCommCtrlr", "HeartbeatInterval"),
                                "attributeType": "Target",
                            },
                        ]
                    },
                )
                res = [
                    (x["attributeStatus"], x.get("attributeValue")) for x in r["getVariableResult"]
                ]
                assert res == [
                    ("Accepted", "300"),
                    ("Accepted", "10"),
                    ("Accepted", "true"),
                    ("Accepted", "5"),
                    ("Accepted", "cType2"),
                    ("UnknownComponent", None),
                    ("UnknownVariable", None),
                    ("NotSupportedAttributeType", None),
                ]
                assert r["getVariableResult"][4]["component"]["evse"] == {"id": 2, "connectorId": 1}
                assert r["getVariableResult"][7]["attributeType"] == "Target"

                def sv(component, variable, value):
                    return {
                        "attributeValue": value,
                        "component": {"name": component},
                        "variable": {"name": variable},
                    }

                r = await cp.call(
                    "SetVariables",
                    {
                        "setVariableData": [
                            sv("OCPPCommCtrlr", "HeartbeatInterval", "60"),
                            sv("SampledDataCtrlr", "TxUpdatedInterval", "abc"),
                            sv("ChargingStation", "Model", "Other"),
                            sv("Nope", "X", "1"),
                        ]
                    },
                )
                assert [x["attributeStatus"] for x in r["setVariableResult"]] == [
                    "Accepted",
                    "Rejected",
                    "Rejected",
                    "UnknownComponent",
                ]
                assert st.config["OCPPCommCtrlr.HeartbeatInterval"] == "60"
                r = await cp.call(
                    "GetVariables", {"getVariableData": [_gv("OCPPCommCtrlr", "HeartbeatInterval")]}
                )
                assert r["getVariableResult"][0]["attributeValue"] == "60"

    run(main())


def test_get_base_report_sends_notify_report_parts():
    async def main():
        async with csms_server() as csms:
            st = SimStation("REP", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await booted(st)
                cp = csms.cps["REP"]
                r = await cp.call("GetBaseReport", {"requestId": 7, "reportBase": "FullInventory"})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: any(not p["tbc"] for p in csms.of("REP", "NotifyReport")))
                parts = csms.of("REP", "NotifyReport")

                assert [p["seqNo"] for p in parts] == list(range(len(parts)))
                assert [p["tbc"] for p in parts] == [True] * (len(parts) - 1) + [False]
                assert all(p["requestId"] == 7 for p in parts) and len(parts) > 2
                assert all(len(p["reportData"]) <= 5 for p in parts)
                assert all(is_utc_z(p["generatedAt"]) for p in parts)
                entries = [e for p in parts for e in p["reportData"]]
                assert len(entries) == len(st.config)
                hb = next(e for e in entries if e["variable"]["name"] == "HeartbeatInterval")
                assert hb["component"] == {"name": "OCPPCommCtrlr"}
                assert hb["variableAttribute"][0]["value"] == "300"
                assert hb["variableAttribute"][0]["mutability"] == "ReadWrite"
                assert hb["variableCharacteristics"]["dataType"] == "integer"
                ct = [e for e in entries if e["variable"]["name"] == "ConnectorType"]
                assert [e["component"] for e in ct] == [
                    {"name": "Connector", "evse": {"id": i, "connectorId": 1}} for i in (1, 2)
                ]

                # The CALLRESULT went out before the first NotifyReport CALL.
                frames = [json.loads(f) for f in csms.raw["REP"]]
                result_at = next(
                    i
                    for i, f in enumerate(frames)
                    if f[0] == 3
                    and "status" in f[2]
                    and f[2]["status"] == "Accepted"
                    and len(f[2]) == 1
                )
                first_report = next(
                    i for i, f in enumerate(frames) if f[0] == 2 and f[2] == "NotifyReport"
                )
                assert result_at < first_report

                r = await cp.call(
                    "GetBaseReport", {"requestId": 8, "reportBase": "ConfigurationInventory"}
                )
                assert r["status"] == "Accepted"
                await csms.wait(
                    lambda: any(
                        p["requestId"] == 8 and not p["tbc"] for p in csms.of("REP", "NotifyReport")
                    )
                )
                config_entries = [
                    e
                    for p in csms.of("REP", "NotifyReport")
                    if p["requestId"] == 8
                    for e in p["reportData"]
                ]
                assert config_entries and all(
                    e["variableAttribute"][0]["mutability"] == "ReadWrite" for e in config_entries
                )
                assert len(config_entries) < len(entries)

    run(main())


# --------------------------------------------------------------------------- availability, reset, trigger


def test_change_availability_16():
    async def main():
        async with csms_server() as csms:
            st = SimStation("AV", csms.url, "ocpp1.6", connectors=2)
            async with running(st):
                await booted(st)
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 3)
                cp = csms.cps["AV"]
                r = await cp.call("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 4)
                last = csms.of("AV", "StatusNotification")[-1]
                assert (last["connectorId"], last["status"]) == (2, "Unavailable")
                assert st.availability == {0: "Operative", 1: "Operative", 2: "Inoperative"}

                r = await cp.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 7)
                assert all(
                    s["status"] == "Available" for s in csms.of("AV", "StatusNotification")[-3:]
                )
                r = await cp.call("ChangeAvailability", {"connectorId": 9, "type": "Operative"})
                assert r["status"] == "Rejected"

    run(main())


def test_change_availability_201_station_wide():
    async def main():
        async with csms_server() as csms:
            st = SimStation("AV2", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await booted(st)
                await csms.wait(lambda: len(csms.of("AV2", "StatusNotification")) == 2)
                cp = csms.cps["AV2"]
                r = await cp.call("ChangeAvailability", {"operationalStatus": "Inoperative"})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: len(csms.of("AV2", "StatusNotification")) == 4)
                assert [
                    (s["evseId"], s["connectorStatus"])
                    for s in csms.of("AV2", "StatusNotification")[2:]
                ] == [(1, "Unavailable"), (2, "Unavailable")]
                assert set(st.availability.values()) == {"Inoperative"}

    run(main())


def test_reset_reboots_and_boots_again():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RST", csms.url, "ocpp2.0.1", reboot_delay=0.1)
            async with running(st):
                await booted(st)
                r = await csms.cps["RST"].call("Reset", {"type": "Immediate"})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: len(csms.of("RST", "BootNotification")) == 2)
                assert csms.of("RST", "BootNotification")[1]["reason"] == "RemoteReset"
                assert csms.connections["RST"] == 2 and st.stats.reboots == 1

    run(main())


# --------------------------------------------------------------------------- firmware, diagnostics


@contextlib.contextmanager
def file_server():
    """An HTTP server on 127.0.0.1: GET /fw.bin answers a file (anything else 404); PUT
    /up/<name> keeps the body in `files`; PUT elsewhere answers 500."""
    import http.server
    import threading

    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"firmware" if self.path == "/fw.bin" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.path.startswith("/up/")
            if ok:
                files[unquote(self.path[len("/up/") :])] = body
            self.send_response(201 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_update_firmware_steps_reboot_and_boot_with_a_new_version(protocol):
    async def main():
        with file_server() as (base, _):
            async with csms_server() as csms:
                st = SimStation(
                    "FW", csms.url, protocol, firmware="1.0.9", reboot_delay=0.1, transfer_step=0.01
                )
                async with running(st):
                    await booted(st)
                    fw = {"location": f"{base}/fw.bin", "retrieveDate": NOW}
                    if protocol == "ocpp1.6":
                        assert await csms.cps["FW"].call("UpdateFirmware", fw) == {}
                    else:
                        fw = {"location": fw["location"], "retrieveDateTime": NOW}
                        r = await csms.cps["FW"].call(
                            "UpdateFirmware", {"requestId": 7, "firmware": fw}
                        )
                        assert r["status"] == "Accepted"
                    await csms.wait(lambda: len(csms.of("FW", "BootNotification")) == 2)
                    notes = csms.of("FW", "FirmwareStatusNotification")
                    assert [n["status"] for n in notes] == [
                        "Downloading",
                        "Downloaded",
                        "Installing",
                        "Installed",
                    ]
                    boot = csms.of("FW", "BootNotification")[1]
                    if protocol == "ocpp1.6":
                        assert boot["firmwareVersion"] == "1.0.10"
                    else:
                        assert {n["requestId"] for n in notes} == {7}
                        assert boot["chargingStation"]["firmwareVersion"] == "1.0.10"
                        assert boot["reason"] == "FirmwareUpdate"
                    assert st.firmware == "1.0.10" and st.stats.reboots == 1

    run(main())


def test_update_firmware_that_cannot_be_downloaded_fails():
    async def main():
        with file_server() as (base, _):
            async with csms_server() as csms:
                st = SimStation("FWX", csms.url, "ocpp1.6", transfer_step=0.01)
                async with running(st):
                    await booted(st)
                    await csms.cps["FWX"].call(
                        "UpdateFirmware", {"location": f"{base}/missing.bin", "retrieveDate": NOW}
                    )
                    await csms.wait(lambda: len(csms.of("FWX", "FirmwareStatusNotification")) == 2)
                    notes = csms.of("FWX", "FirmwareStatusNotification")
                    assert [n["status"] for n in notes] == ["Downloading", "DownloadFailed"]
                    assert st.firmware == "1.0.0" and st.stats.reboots == 0

    run(main())


@pytest.mark.parametrize(
    ("protocol", "action", "security"),
    [
        ("ocpp1.6", "GetDiagnostics", False),
        ("ocpp1.6", "GetLog", True),
        ("ocpp2.0.1", "GetLog", False),
    ],
)
@pytest.mark.parametrize("works", [True, False])
def test_diagnostics_are_put_to_the_given_location(protocol, action, security, works):
    async def main():
        with file_server() as (base, files):
            async with csms_server() as csms:
                st = SimStation("DIAG", csms.url, protocol, transfer_step=0.01)
                async with running(st):
                    await booted(st)
                    where = f"{base}/up/" if works else f"{base}/fail/"
                    if action == "GetDiagnostics":
                        r = await csms.cps["DIAG"].call(action, {"location": where})
                        name, note, failed = (
                            r["fileName"],
                            "DiagnosticsStatusNotification",
                            "UploadFailed",
                        )
                    else:
                        r = await csms.cps["DIAG"].call(
                            action,
                            {
                                "logType": "SecurityLog" if security else "DiagnosticsLog",
                                "requestId": 3,
                                "log": {"remoteLocation": where},
                            },
                        )
                        assert r["status"] == "Accepted"
                        name, note, failed = r["filename"], "LogStatusNotification", "UploadFailure"
                    await csms.wait(lambda: len(csms.of("DIAG", note)) == 2)
                    statuses = [n["status"] for n in csms.of("DIAG", note)]
                    assert statuses == ["Uploading", "Uploaded" if works else failed]
                    if note == "LogStatusNotification":
                        assert {n["requestId"] for n in csms.of("DIAG", note)} == {3}
                    if works:
                        assert b"DIAG" in files[name]
                    else:
                        assert files == {}

    run(main())


def test_trigger_message_201():
    async def main():
        async with csms_server() as csms:
            st = SimStation("TRG", csms.url, "ocpp2.0.1")
            async with running(st):
                await booted(st)
                cp = csms.cps["TRG"]
                assert (await cp.call("TriggerMessage", {"requestedMessage": "Heartbeat"}))[
                    "status"
                ] == "Accepted"
                await csms.wait(lambda: "Heartbeat" in csms.actions("TRG"))
                r = await cp.call(
                    "TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 1}}
                )
                assert r["status"] == "Accepted"
                await csms.wait(lambda: "MeterValues" in csms.actions("TRG"))
                mv = csms.of("TRG", "MeterValues")[0]
                assert mv["evseId"] == 1
                assert (
                    mv["meterValue"][0]["sampledValue"][0]["measurand"]
                    == "Energy.Active.Import.Register"
                )
                r = await cp.call("TriggerMessage", {"requestedMessage": "TransactionEvent"})
                assert r["status"] == "Rejected"  # nothing is charging

    run(main())


def test_every_16_command_gets_a_schema_valid_answer():
    async def main():
        async with csms_server() as csms:
            st = SimStation("ALL16", csms.url, "ocpp1.6", connectors=2, reboot_delay=0.1)
            async with running(st):
                await booted(st)
                cp = csms.cps["ALL16"]

                async def status(action, payload):  # a CALLERROR or invalid reply raises
                    return (await cp.call(action, payload))["status"]

                for msg in (
                    "BootNotification",
                    "Heartbeat",
                    "StatusNotification",
                    "MeterValues",
                    "DiagnosticsStatusNotification",
                    "FirmwareStatusNotification",
                ):
                    before = len(csms.of("ALL16", msg))
                    assert (
                        await status("TriggerMessage", {"requestedMessage": msg, "connectorId": 1})
                        == "Accepted"
                    )
                    await csms.wait(
                        lambda msg=msg, before=before: len(csms.of("ALL16", msg)) > before
                    )
                assert csms.of("ALL16", "StatusNotification")[-1]["connectorId"] == 1
                assert (
                    await status(
                        "TriggerMessage", {"requestedMessage": "Heartbeat", "connectorId": 7}
                    )
                    == "Rejected"
                )
                assert (
                    csms.of("ALL16", "MeterValues")[0]["meterValue"][0]["sampledValue"][0][
                        "context"
                    ]
                    == "Trigger"
                )
                assert await status("UnlockConnector", {"connectorId": 2}) == "Unlocked"
                assert await status("UnlockConnector", {"connectorId": 5}) == "NotSupported"
                assert await status("ClearCache", {}) == "Accepted"
                assert await status("DataTransfer", {"vendorId": "acme"}) == "UnknownVendorId"
                assert (
                    await status("RemoteStartTransaction", {"idTag": "T", "connectorId": 3})
                    == "Rejected"
                )
                assert await status("Reset", {"type": "Hard"}) == "Accepted"
                await csms.wait(lambda: csms.connections["ALL16"] == 2 and st.booted.is_set())
                assert st.stats.errors == 0 and st.stats.reboots == 1

    run(main())


def test_every_201_command_gets_a_schema_valid_answer():
    async def main():
        async with csms_server() as csms:
            st = SimStation("ALL201", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await booted(st)
                cp = csms.cps["ALL201"]

                async def status(action, payload):
                    return (await cp.call(action, payload))["status"]

                for msg in (
                    "BootNotification",
                    "StatusNotification",
                    "FirmwareStatusNotification",
                    "LogStatusNotification",
                ):
                    before = len(csms.of("ALL201", msg))
                    assert (
                        await status("TriggerMessage", {"requestedMessage": msg, "evse": {"id": 2}})
                        == "Accepted"
                    )
                    await csms.wait(
                        lambda msg=msg, before=before: len(csms.of("ALL201", msg)) > before
                    )
                assert csms.of("ALL201", "BootNotification")[-1]["reason"] == "Triggered"
                assert (
                    await status("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
                    == "NotImplemented"
                )
                assert (
                    await status("UnlockConnector", {"evseId": 1, "connectorId": 1}) == "Unlocked"
                )
                assert (
                    await status("UnlockConnector", {"evseId": 9, "connectorId": 1})
                    == "UnknownConnector"
                )
                assert await status("ClearCache", {}) == "Accepted"
                assert await status("DataTransfer", {"vendorId": "acme"}) == "UnknownVendorId"
                assert await status("Reset", {"type": "Immediate", "evseId": 1}) == "Rejected"
                assert (
                    await status(
                        "ChangeAvailability",
                        {"operationalStatus": "Inoperative", "evse": {"id": 3}},
                    )
                    == "Rejected"
                )
                assert (
                    await status("RequestStopTransaction", {"transactionId": "nope"}) == "Rejected"
                )
                assert (
                    await status(
                        "GetBaseReport", {"requestId": 1, "reportBase": "SummaryInventory"}
                    )
                    == "Accepted"
                )
                assert st.stats.errors == 0

    run(main())


def test_remote_start_stop_201_and_scheduled_availability():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RS2", csms.url, "ocpp2.0.1", session_duration=60, meter_interval=60)
            async with running(st):
                await booted(st)
                cp = csms.cps["RS2"]
                r = await cp.call(
                    "RequestStartTransaction",
                    {
                        "idToken": {"idToken": "RFID1", "type": "ISO14443"},
                        "remoteStartId": 42,
                        "evseId": 1,
                    },
                )
                assert r["status"] == "Accepted"
                await csms.wait(lambda: st.transactions.get(1) is not None)
                started = csms.of("RS2", "TransactionEvent")[0]
                assert started["triggerReason"] == "RemoteStart"
                assert started["transactionInfo"]["remoteStartId"] == 42
                assert csms.of("RS2", "Authorize")[0]["idToken"]["idToken"] == "RFID1"

                # Going Inoperative while charging is only Scheduled; it happens when the session ends.
                r = await cp.call(
                    "ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}
                )
                assert r["status"] == "Scheduled" and st.availability[1] == "Operative"
                tx_id = st.transactions[1]
                r = await cp.call("RequestStopTransaction", {"transactionId": tx_id})
                assert r["status"] == "Accepted"
                await csms.wait(
                    lambda: csms.of("RS2", "TransactionEvent")[-1]["eventType"] == "Ended"
                )
                ended = csms.of("RS2", "TransactionEvent")[-1]
                assert ended["transactionInfo"]["stoppedReason"] == "Remote"
                assert ended["triggerReason"] == "RemoteStop"
                await csms.wait(
                    lambda: (
                        csms.of("RS2", "StatusNotification")[-1]["connectorStatus"] == "Unavailable"
                    )
                )
                assert st.availability[1] == "Inoperative" and st.transactions == {}
                # An inoperative EVSE refuses remote starts.
                r = await cp.call(
                    "RequestStartTransaction",
                    {
                        "idToken": {"idToken": "RFID1", "type": "ISO14443"},
                        "remoteStartId": 43,
                        "evseId": 1,
                    },
                )
                assert r["status"] == "Rejected"

    run(main())


# --------------------------------------------------------------------------- connection handling


def test_reconnects_after_server_closes_connection():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RC", csms.url, "ocpp1.6")
            async with running(st):
                await booted(st)
                await csms.ws["RC"].close(1001, "going away")
                await csms.wait(lambda: len(csms.of("RC", "BootNotification")) == 2, 5)
                await booted(st)
                assert csms.connections["RC"] == 2 and st.stats.reconnects == 1

    run(main())


def test_http_refusal_is_recorded():
    async def main():
        async with csms_server(refuse={"BAD": 401}) as csms:
            st = SimStation("BAD", csms.url, "ocpp1.6", reconnect=False)
            await asyncio.wait_for(st.start(), scaled(5))  # gives up: reconnect=False
            assert st.last_status_code == 401 and st.last_error == "HTTP 401"
            assert st.stats.connect_failures == 1 and not st.connected.is_set()

    run(main())


def test_silent_station_never_answers():
    async def main():
        async with csms_server(response_timeout=0.5) as csms:
            st = SimStation("MUTE", csms.url, "ocpp1.6", silent=True)
            async with running(st):
                await booted(st)  # it still boots: results are routed
                with pytest.raises(TimeoutError):
                    await csms.cps["MUTE"].call("GetConfiguration", {})
                assert st.stats.answered == 0 and st.stats.received >= 2
                assert not any(json.loads(f)[0] == 3 for f in csms.raw["MUTE"])

    run(main())


def test_malformed_frames_are_survived_and_send_raw():
    async def main():
        async with csms_server(callerrors_expected=True) as csms:
            st = SimStation("RAW", csms.url, "ocpp1.6")
            async with running(st):
                await booted(st)
                await csms.ws["RAW"].send("this is not json")
                await csms.ws["RAW"].send('[2, "x"]')
                r = await csms.cps["RAW"].call("UnlockConnector", {"connectorId": 1})
                assert r["status"] == "Unlocked"
                assert st.stats.errors == 2 and st.connected.is_set()
                # each malformed frame got its CALLERROR, with the id it could be read with
                errors = [json.loads(f) for f in csms.raw["RAW"] if json.loads(f)[0] == 4]
                assert [(e[1], e[2]) for e in errors] == [
                    ("-1", "FormationViolation"),
                    ("x", "FormationViolation"),
                ]
                await st.send_raw("[2, broken")
                res = await st.send("Heartbeat", {})
                assert is_utc_z(res["currentTime"])
                assert st.connected.is_set()
                assert [(sid, e[1]) for sid, e in csms.callerrors] == [("RAW", "-1")]

    run(main())


def test_send_fails_fast_when_socket_closes():
    async def main():
        async with csms_server() as csms:
            csms.ignore.add("DataTransfer")
            st = SimStation("FF", csms.url, "ocpp1.6", reconnect=False, response_timeout=scaled(10))
            async with running(st):
                await booted(st)
                t0 = time.monotonic()
                pending = asyncio.create_task(st.send("DataTransfer", {"vendorId": "x"}))
                await csms.wait(lambda: any('"DataTransfer"' in f for f in csms.raw["FF"]))
                await csms.ws["FF"].close()
                with pytest.raises(ConnectionError):
                    await pending  # not after response_timeout (10 s)
                assert time.monotonic() - t0 < scaled(3)
                with pytest.raises(ConnectionError):
                    await st.send("Heartbeat", {})  # offline now

    run(main())


def test_send_returns_answers_and_raises_remote_errors():
    from edrvctl.ocppj import InvalidCall, RemoteError

    async def main():
        async with csms_server(callerrors_expected=True) as csms:
            st = SimStation("SND", csms.url, "ocpp2.0.1")
            async with running(st):
                await booted(st)
                res = await st.send("Authorize", {"idToken": {"idToken": "T1", "type": "ISO14443"}})
                assert res == {"idTokenInfo": {"status": "Accepted"}}
                with pytest.raises(RemoteError) as info:  # the CSMS has no handler for it
                    await st.send("DataTransfer", {"vendorId": "acme"})
                assert info.value.code == "NotSupported"
                sent = len(csms.raw["SND"])
                with pytest.raises(InvalidCall):  # never sent: it breaks the schema
                    await st.send("Heartbeat", {"bogus": 1})
                with pytest.raises(TimeoutError):
                    csms.ignore.add("Heartbeat")
                    await st.send("Heartbeat", {}, timeout=scaled(0.2))
                assert len(csms.raw["SND"]) == sent + 1  # only the Heartbeat went out
                assert st.stats.errors == 3 and st.connected.is_set()

    run(main())


# --------------------------------------------------------------------------- sessions


def test_session_16_runs_in_order():
    async def main():
        async with csms_server() as csms:
            st = SimStation(
                "S16",
                csms.url,
                "ocpp1.6",
                sessions=True,
                session_interval=0.1,
                session_duration=0.9,
                meter_interval=0.25,
            )
            async with running(st):
                await csms.wait(lambda: "StopTransaction" in csms.actions("S16"), 5)
                await csms.wait(
                    lambda: csms.of("S16", "StatusNotification")[-1]["status"] == "Available"
                )
            msgs = [
                (a, kw) for a, kw in csms.msgs["S16"] if a not in ("BootNotification", "Heartbeat")
            ]
            msgs = msgs[3:]  # the boot-time StatusNotifications
            acts = [a for a, _ in msgs]
            stop_at = acts.index("StopTransaction")
            session = acts[: stop_at + 2]
            assert session[:3] == ["Authorize", "StartTransaction", "StatusNotification"]
            assert msgs[2][1]["status"] == "Charging" and msgs[2][1]["connectorId"] == 1
            meters = [kw for a, kw in msgs[3:stop_at] if a == "MeterValues"]
            assert set(session[3:stop_at]) == {"MeterValues"} and len(meters) >= 2
            assert (
                session[stop_at + 1] == "StatusNotification"
                and msgs[stop_at + 1][1]["status"] == "Available"
            )
            start, stop = msgs[1][1], msgs[stop_at][1]
            assert start["idTag"] == "SIMTAG0001" and start["connectorId"] == 1
            assert all(m["transactionId"] == stop["transactionId"] == 1 for m in meters)
            measurands = {sv["measurand"] for sv in meters[0]["meterValue"][0]["sampledValue"]}
            assert measurands == {"Energy.Active.Import.Register", "Power.Active.Import"}
            assert stop["meterStop"] >= start["meterStart"] and stop["reason"] == "Local"
            assert stop["idTag"] == "SIMTAG0001"
            assert stop["transactionData"][0]["sampledValue"][0]["context"] == "Transaction.End"
            assert is_utc_z(start["timestamp"]) and is_utc_z(
                meters[0]["meterValue"][0]["timestamp"]
            )

    run(main())


def test_session_201_runs_in_order():
    async def main():
        async with csms_server() as csms:
            st = SimStation(
                "S201",
                csms.url,
                "ocpp2.0.1",
                sessions=True,
                session_interval=0.1,
                session_duration=0.9,
                meter_interval=0.25,
            )
            async with running(st):
                await csms.wait(
                    lambda: any(
                        e["eventType"] == "Ended" for e in csms.of("S201", "TransactionEvent")
                    )
                )
                await csms.wait(
                    lambda: (
                        csms.of("S201", "StatusNotification")[-1]["connectorStatus"] == "Available"
                    )
                )
            acts = [a for a in csms.actions("S201") if a not in ("BootNotification", "Heartbeat")][
                2:
            ]
            assert acts[:3] == ["Authorize", "TransactionEvent", "StatusNotification"]
            events = csms.of("S201", "TransactionEvent")
            kinds = [e["eventType"] for e in events]
            assert (
                kinds[0] == "Started" and kinds[-1] == "Ended" and set(kinds[1:-1]) == {"Updated"}
            )
            assert len(kinds) >= 4
            assert [e["seqNo"] for e in events] == list(range(len(events)))
            assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
            assert events[0]["evse"] == {"id": 1, "connectorId": 1}
            assert events[0]["idToken"] == {"idToken": "SIMTAG0001", "type": "ISO14443"}
            assert "remoteStartId" not in events[0]["transactionInfo"]
            assert all("evse" not in e and "idToken" not in e for e in events[1:-1])
            assert events[-1]["transactionInfo"]["stoppedReason"] == "Local"
            updated = events[1]["meterValue"][0]["sampledValue"]
            assert {sv["measurand"] for sv in updated} == {
                "Energy.Active.Import.Register",
                "Power.Active.Import",
            }
            statuses = [s["connectorStatus"] for s in csms.of("S201", "StatusNotification")[2:]]
            assert statuses[:2] == ["Occupied", "Available"]

    run(main())


def test_refused_tag_does_not_charge():
    async def main():
        async with csms_server(reject_tags=("BADTAG",)) as csms:
            st = SimStation(
                "NOPE", csms.url, "ocpp1.6", sessions=True, session_interval=0.1, id_tag="BADTAG"
            )
            async with running(st):
                await csms.wait(lambda: len(csms.of("NOPE", "Authorize")) >= 2)
                assert "StartTransaction" not in csms.actions("NOPE")
                assert st.transactions == {}

    run(main())


def test_remote_start_and_stop_16():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RS", csms.url, "ocpp1.6", session_duration=60, meter_interval=60)
            async with running(st):
                await booted(st)
                cp = csms.cps["RS"]
                r = await cp.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 2})
                assert r["status"] == "Accepted"
                r = await cp.call("RemoteStartTransaction", {"idTag": "TAG2", "connectorId": 2})
                assert r["status"] == "Rejected"  # connector already taken
                await csms.wait(lambda: st.transactions.get(2) is not None)
                tx_id = st.transactions[2]
                assert csms.of("RS", "StartTransaction")[0]["idTag"] == "TAG1"
                assert (await cp.call("RemoteStopTransaction", {"transactionId": 999}))[
                    "status"
                ] == "Rejected"
                r = await cp.call("RemoteStopTransaction", {"transactionId": tx_id})
                assert r["status"] == "Accepted"
                await csms.wait(lambda: "StopTransaction" in csms.actions("RS"))
                stop = csms.of("RS", "StopTransaction")[0]
                assert stop["transactionId"] == tx_id and stop["reason"] == "Remote"
                assert "idTag" not in stop  # only a local stop names the tag
                await csms.wait(lambda: st.transactions == {})

    run(main())


# --------------------------------------------------------------------------- fleets


def test_run_fleet_mixed_and_summary():
    async def main():
        async with csms_server() as csms:
            fleet = await run_fleet(
                csms.url,
                6,
                protocol="mixed",
                prefix="FLT",
                start_index=3,
                concurrency_of_connects=2,
            )
            try:
                assert await fleet.wait_booted(timeout=scaled(8))
                names = [s.endpoint for s in fleet]
                assert names == [f"FLT{i:05d}" for i in range(3, 9)]
                assert [s.protocol for s in fleet] == ["ocpp1.6", "ocpp2.0.1"] * 3
                assert isinstance(csms.cps["FLT00003"], Csms16) and isinstance(
                    csms.cps["FLT00004"], Csms201
                )
                summary = fleet.summary()
                assert (summary.total, summary.connected, summary.booted) == (6, 6, 6)
                assert summary.sent >= 6 and summary.errors == 0 and summary.msgs_per_s > 0
            finally:
                await fleet.stop()
            after = fleet.summary()
            assert after.connected == 0 and after.booted == 0

    run(main())
