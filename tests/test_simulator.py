"""Tests for edrvctl.simulator against a tiny in-test CSMS (real websockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from edrvctl.simulator import SimStation, run_fleet, utcnow

NOW = "2024-01-01T00:00:00.000Z"


# --------------------------------------------------------------------------- in-test CSMS


class _Recorder:
    """Shared by the 1.6 and 2.0.1 CSMS ChargePoints: log every CALL, keep raw frames."""

    csms: "Csms"

    def rec(self, action: str, kw: dict) -> None:
        self.csms.msgs[self.id].append((action, kw))

    async def route_message(self, raw):
        self.csms.raw[self.id].append(raw)
        with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
            frame = json.loads(raw)
            if frame[0] == 2 and frame[2] in self.csms.ignore:
                return  # play dead for this action
        try:
            await super().route_message(raw)
        except ConnectionClosed:
            # Our reply failed because the station just closed; keep reading, since frames it sent
            # before closing (e.g. the result of a pending call) are still buffered. The stock
            # start() would die here and leave that call waiting out its timeout.
            pass


class Csms16(_Recorder, Cp16):
    @on("BootNotification")
    def t_boot(self, **kw):
        self.rec("BootNotification", kw)
        return r16.BootNotification(current_time=NOW, interval=self.csms.interval, status=self.csms.next_boot())

    @on("StatusNotification")
    def t_status(self, **kw):
        self.rec("StatusNotification", kw)
        return r16.StatusNotification()

    @on("Heartbeat")
    def t_heartbeat(self, **kw):
        self.rec("Heartbeat", kw)
        return r16.Heartbeat(current_time=utcnow())

    @on("Authorize")
    def t_authorize(self, id_tag, **kw):
        self.rec("Authorize", {"id_tag": id_tag, **kw})
        return r16.Authorize(id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("StartTransaction")
    def t_start(self, **kw):
        self.rec("StartTransaction", kw)
        self.csms.tx_counter += 1
        return r16.StartTransaction(transaction_id=self.csms.tx_counter,
                                    id_tag_info={"status": self.csms.tag_status(kw["id_tag"])})

    @on("MeterValues")
    def t_meter(self, **kw):
        self.rec("MeterValues", kw)
        return r16.MeterValues()

    @on("StopTransaction")
    def t_stop(self, **kw):
        self.rec("StopTransaction", kw)
        return r16.StopTransaction()

    @on("DiagnosticsStatusNotification")
    def t_diag(self, **kw):
        self.rec("DiagnosticsStatusNotification", kw)
        return r16.DiagnosticsStatusNotification()

    @on("FirmwareStatusNotification")
    def t_fw(self, **kw):
        self.rec("FirmwareStatusNotification", kw)
        return r16.FirmwareStatusNotification()


class Csms201(_Recorder, Cp201):
    @on("BootNotification")
    def t_boot(self, **kw):
        self.rec("BootNotification", kw)
        return r201.BootNotification(current_time=NOW, interval=self.csms.interval, status=self.csms.next_boot())

    @on("StatusNotification")
    def t_status(self, **kw):
        self.rec("StatusNotification", kw)
        return r201.StatusNotification()

    @on("Heartbeat")
    def t_heartbeat(self, **kw):
        self.rec("Heartbeat", kw)
        return r201.Heartbeat(current_time=utcnow())

    @on("Authorize")
    def t_authorize(self, id_token, **kw):
        self.rec("Authorize", {"id_token": id_token, **kw})
        return r201.Authorize(id_token_info={"status": self.csms.tag_status(id_token["id_token"])})

    @on("TransactionEvent")
    def t_tx_event(self, **kw):
        self.rec("TransactionEvent", kw)
        return r201.TransactionEvent()

    @on("MeterValues")
    def t_meter(self, **kw):
        self.rec("MeterValues", kw)
        return r201.MeterValues()

    @on("NotifyReport")
    def t_notify_report(self, **kw):
        self.rec("NotifyReport", kw)
        return r201.NotifyReport()

    @on("FirmwareStatusNotification")
    def t_fw(self, **kw):
        self.rec("FirmwareStatusNotification", kw)
        return r201.FirmwareStatusNotification()

    @on("LogStatusNotification")
    def t_log(self, **kw):
        self.rec("LogStatusNotification", kw)
        return r201.LogStatusNotification()


class Csms:
    def __init__(self, interval: int = 300, boot_plan: tuple[str, ...] = (), reject_tags: tuple[str, ...] = (),
                 refuse: dict[str, int] | None = None, response_timeout: float = 5):
        self.interval = interval
        self.boot_plan = list(boot_plan)
        self.reject_tags = set(reject_tags)
        self.refuse = refuse or {}
        self.response_timeout = response_timeout
        self.msgs: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        self.raw: dict[str, list[str]] = defaultdict(list)
        self.cps: dict[str, Any] = {}
        self.ws: dict[str, Any] = {}
        self.connections: dict[str, int] = defaultdict(int)
        self.headers: dict[str, Any] = {}
        self.close_codes: list[int | None] = []
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
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; received: "
                                     f"{ {sid: [a for a, _ in m] for sid, m in self.msgs.items()} }")
            await asyncio.sleep(0.02)

    async def _handler(self, ws):
        sid = unquote(ws.request.path.strip("/"))
        self.connections[sid] += 1
        self.headers[sid] = ws.request.headers
        cls = Csms16 if ws.subprotocol == "ocpp1.6" else Csms201
        cp = cls(sid, ws, response_timeout=self.response_timeout)
        cp.csms = self
        self.cps[sid], self.ws[sid] = cp, ws
        try:
            await cp.start()
        except ConnectionClosed:
            pass
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
async def csms_server(**kw):
    csms = Csms(**kw)
    async with serve(csms._handler, "127.0.0.1", 0, select_subprotocol=Csms._select,
                     process_request=csms._process_request, compression=None) as server:
        csms.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield csms


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


def run(coro, timeout: float = 15):
    asyncio.run(asyncio.wait_for(coro, timeout))


def is_utc_z(ts: str) -> bool:
    return ts.endswith("Z") and datetime.fromisoformat(ts.replace("Z", "+00:00")).tzinfo == timezone.utc


# --------------------------------------------------------------------------- boot, status, heartbeat


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
def test_boot_status_heartbeat(protocol):
    async def main():
        async with csms_server(interval=1) as csms:
            st = SimStation("CP 01/a", csms.url, protocol, connectors=2, password="s3cret")
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
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
                assert boot["charge_point_vendor"] == "edrvctl" and boot["charge_point_model"] == "SimCharger"
                assert [(s["connector_id"], s["status"]) for s in statuses] == [
                    (0, "Available"), (1, "Available"), (2, "Available")]
                assert all(s["error_code"] == "NoError" for s in statuses)
                assert st.config["HeartbeatInterval"] == "1"
            else:
                assert boot["charging_station"]["vendor_name"] == "edrvctl" and boot["reason"] == "PowerUp"
                assert [(s["evse_id"], s["connector_id"], s["connector_status"]) for s in statuses] == [
                    (1, 1, "Available"), (2, 1, "Available")]
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
                await asyncio.sleep(0.5)
                assert st.registration_status == "Pending" and not st.booted.is_set()
                assert csms.actions("CP2") == ["BootNotification"]  # nothing else while Pending
                t0 = time.monotonic()
                await asyncio.wait_for(st.booted.wait(), 3)
                assert time.monotonic() - t0 <= 1.5
                await csms.wait(lambda: "StatusNotification" in csms.actions("CP2"))
                assert csms.actions("CP2")[:3] == ["BootNotification", "BootNotification", "StatusNotification"]
                assert st.registration_status == "Accepted"

    run(main())


# --------------------------------------------------------------------------- configuration


def test_get_and_change_configuration_16():
    async def main():
        async with csms_server() as csms:
            st = SimStation("CFG", csms.url, "ocpp1.6", connectors=3)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["CFG"]
                r = await cp.call(c16.GetConfiguration(key=["HeartbeatInterval", "NumberOfConnectors", "Foo"]),
                                  suppress=False)
                got = {k["key"]: k for k in r.configuration_key}
                assert got["HeartbeatInterval"] == {"key": "HeartbeatInterval", "readonly": False, "value": "300"}
                assert got["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "3"}
                assert r.unknown_key == ["Foo"]

                everything = await cp.call(c16.GetConfiguration(), suppress=False)
                keys = {k["key"] for k in everything.configuration_key}
                assert {"MeterValueSampleInterval", "ConnectionTimeOut", "AuthorizeRemoteTxRequests",
                        "LocalAuthorizeOffline", "WebSocketPingInterval"} <= keys
                assert keys == set(st.config)

                async def change(key, value):
                    return (await cp.call(c16.ChangeConfiguration(key=key, value=value), suppress=False)).status

                assert await change("HeartbeatInterval", "120") == "Accepted"
                assert st.config["HeartbeatInterval"] == "120"
                assert await change("NumberOfConnectors", "5") == "Rejected"
                assert await change("Foo", "1") == "NotSupported"
                assert await change("LocalAuthorizeOffline", "maybe") == "Rejected"
                assert await change("ConnectionTimeOut", "-3") == "Rejected"
                assert await change("LocalAuthorizeOffline", "FALSE") == "Accepted"
                assert st.config["LocalAuthorizeOffline"] == "false"
                assert st.stats.answered == 8

    run(main())


def _gv(component, variable, evse=None, var_instance=None):
    from ocpp.v201 import datatypes as dt

    return dt.GetVariableDataType(component=dt.ComponentType(name=component, evse=evse),
                                  variable=dt.VariableType(name=variable, instance=var_instance))


def test_get_and_set_variables_201():
    from ocpp.v201 import datatypes as dt

    async def main():
        async with csms_server() as csms:
            st = SimStation("GV", csms.url, "ocpp2.0.1")
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["GV"]
                r = await cp.call(c201.GetVariables(get_variable_data=[
                    _gv("OCPPCommCtrlr", "HeartbeatInterval"),
                    _gv("SampledDataCtrlr", "TxUpdatedInterval"),
                    _gv("AuthCtrlr", "AuthorizeRemoteStart"),
                    _gv("DeviceDataCtrlr", "ItemsPerMessage", var_instance="GetReport"),
                    _gv("Connector", "ConnectorType", evse=dt.EVSEType(id=2, connector_id=1)),
                    _gv("NoSuchCtrlr", "HeartbeatInterval"),
                    _gv("OCPPCommCtrlr", "NoSuchVariable"),
                ]), suppress=False)
                res = [(x["attribute_status"], x.get("attribute_value")) for x in r.get_variable_result]
                assert res == [("Accepted", "300"), ("Accepted", "10"), ("Accepted", "true"), ("Accepted", "5"),
                               ("Accepted", "cType2"), ("UnknownComponent", None), ("UnknownVariable", None)]
                assert r.get_variable_result[4]["component"]["evse"] == {"id": 2, "connector_id": 1}

                def sv(component, variable, value):
                    return dt.SetVariableDataType(attribute_value=value, component=dt.ComponentType(name=component),
                                                  variable=dt.VariableType(name=variable))

                r = await cp.call(c201.SetVariables(set_variable_data=[
                    sv("OCPPCommCtrlr", "HeartbeatInterval", "60"),
                    sv("SampledDataCtrlr", "TxUpdatedInterval", "abc"),
                    sv("ChargingStation", "Model", "Other"),
                    sv("Nope", "X", "1"),
                ]), suppress=False)
                assert [x["attribute_status"] for x in r.set_variable_result] == [
                    "Accepted", "Rejected", "Rejected", "UnknownComponent"]
                assert st.config["OCPPCommCtrlr.HeartbeatInterval"] == "60"
                r = await cp.call(c201.GetVariables(get_variable_data=[_gv("OCPPCommCtrlr", "HeartbeatInterval")]),
                                  suppress=False)
                assert r.get_variable_result[0]["attribute_value"] == "60"

    run(main())


def test_get_base_report_sends_notify_report_parts():
    async def main():
        async with csms_server() as csms:
            st = SimStation("REP", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["REP"]
                r = await cp.call(c201.GetBaseReport(request_id=7, report_base="FullInventory"), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: any(not p["tbc"] for p in csms.of("REP", "NotifyReport")))
                parts = csms.of("REP", "NotifyReport")

                assert [p["seq_no"] for p in parts] == list(range(len(parts)))
                assert [p["tbc"] for p in parts] == [True] * (len(parts) - 1) + [False]
                assert all(p["request_id"] == 7 for p in parts) and len(parts) > 2
                assert all(len(p["report_data"]) <= 5 for p in parts)
                entries = [e for p in parts for e in p["report_data"]]
                assert len(entries) == len(st.config)
                hb = [e for e in entries if e["variable"]["name"] == "HeartbeatInterval"][0]
                assert hb["component"] == {"name": "OCPPCommCtrlr"}
                assert hb["variable_attribute"][0]["value"] == "300"
                assert hb["variable_attribute"][0]["mutability"] == "ReadWrite"
                assert hb["variable_characteristics"]["data_type"] == "integer"

                # The CALLRESULT went out before the first NotifyReport CALL.
                frames = [json.loads(f) for f in csms.raw["REP"]]
                result_at = next(i for i, f in enumerate(frames) if f[0] == 3 and "status" in f[2]
                                 and f[2]["status"] == "Accepted" and len(f[2]) == 1)
                first_report = next(i for i, f in enumerate(frames) if f[0] == 2 and f[2] == "NotifyReport")
                assert result_at < first_report

                r = await cp.call(c201.GetBaseReport(request_id=8, report_base="ConfigurationInventory"),
                                  suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: any(p["request_id"] == 8 and not p["tbc"]
                                            for p in csms.of("REP", "NotifyReport")))
                config_entries = [e for p in csms.of("REP", "NotifyReport") if p["request_id"] == 8
                                  for e in p["report_data"]]
                assert config_entries and all(e["variable_attribute"][0]["mutability"] == "ReadWrite"
                                              for e in config_entries)
                assert len(config_entries) < len(entries)

    run(main())


# --------------------------------------------------------------------------- availability, reset, trigger


def test_change_availability_16():
    async def main():
        async with csms_server() as csms:
            st = SimStation("AV", csms.url, "ocpp1.6", connectors=2)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 3)
                cp = csms.cps["AV"]
                r = await cp.call(c16.ChangeAvailability(connector_id=2, type="Inoperative"), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 4)
                last = csms.of("AV", "StatusNotification")[-1]
                assert (last["connector_id"], last["status"]) == (2, "Unavailable")
                assert st.availability == {0: "Operative", 1: "Operative", 2: "Inoperative"}

                r = await cp.call(c16.ChangeAvailability(connector_id=0, type="Operative"), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: len(csms.of("AV", "StatusNotification")) == 7)
                assert all(s["status"] == "Available" for s in csms.of("AV", "StatusNotification")[-3:])
                r = await cp.call(c16.ChangeAvailability(connector_id=9, type="Operative"), suppress=False)
                assert r.status == "Rejected"

    run(main())


def test_change_availability_201_station_wide():
    async def main():
        async with csms_server() as csms:
            st = SimStation("AV2", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                await csms.wait(lambda: len(csms.of("AV2", "StatusNotification")) == 2)
                cp = csms.cps["AV2"]
                r = await cp.call(c201.ChangeAvailability(operational_status="Inoperative"), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: len(csms.of("AV2", "StatusNotification")) == 4)
                assert [(s["evse_id"], s["connector_status"]) for s in csms.of("AV2", "StatusNotification")[2:]] \
                    == [(1, "Unavailable"), (2, "Unavailable")]
                assert set(st.availability.values()) == {"Inoperative"}

    run(main())


def test_reset_reboots_and_boots_again():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RST", csms.url, "ocpp2.0.1", reboot_delay=0.1)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                r = await csms.cps["RST"].call(c201.Reset(type="Immediate"), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: len(csms.of("RST", "BootNotification")) == 2)
                assert csms.of("RST", "BootNotification")[1]["reason"] == "RemoteReset"
                assert csms.connections["RST"] == 2 and st.stats.reboots == 1

    run(main())


def test_trigger_message_201():
    async def main():
        async with csms_server() as csms:
            st = SimStation("TRG", csms.url, "ocpp2.0.1")
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["TRG"]
                assert (await cp.call(c201.TriggerMessage(requested_message="Heartbeat"), suppress=False)).status \
                    == "Accepted"
                await csms.wait(lambda: "Heartbeat" in csms.actions("TRG"))
                r = await cp.call(c201.TriggerMessage(requested_message="MeterValues", evse={"id": 1}),
                                  suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: "MeterValues" in csms.actions("TRG"))
                mv = csms.of("TRG", "MeterValues")[0]
                assert mv["evse_id"] == 1
                assert mv["meter_value"][0]["sampled_value"][0]["measurand"] == "Energy.Active.Import.Register"
                r = await cp.call(c201.TriggerMessage(requested_message="TransactionEvent"), suppress=False)
                assert r.status == "Rejected"  # nothing is charging

    run(main())


def test_every_16_command_gets_a_schema_valid_answer():
    async def main():
        async with csms_server() as csms:
            st = SimStation("ALL16", csms.url, "ocpp1.6", connectors=2, reboot_delay=0.1)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["ALL16"]

                async def status(payload):  # suppress=False: a CALLERROR or invalid reply raises
                    return (await cp.call(payload, suppress=False)).status

                for msg in ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
                            "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
                    before = len(csms.of("ALL16", msg))
                    assert await status(c16.TriggerMessage(requested_message=msg, connector_id=1)) == "Accepted"
                    await csms.wait(lambda: len(csms.of("ALL16", msg)) > before)
                assert csms.of("ALL16", "StatusNotification")[-1]["connector_id"] == 1
                assert await status(c16.TriggerMessage(requested_message="Heartbeat", connector_id=7)) == "Rejected"
                assert csms.of("ALL16", "MeterValues")[0]["meter_value"][0]["sampled_value"][0]["context"] \
                    == "Trigger"
                assert await status(c16.UnlockConnector(connector_id=2)) == "Unlocked"
                assert await status(c16.UnlockConnector(connector_id=5)) == "NotSupported"
                assert await status(c16.ClearCache()) == "Accepted"
                assert await status(c16.DataTransfer(vendor_id="acme")) == "UnknownVendorId"
                assert await status(c16.RemoteStartTransaction(id_tag="T", connector_id=3)) == "Rejected"
                assert await status(c16.Reset(type="Hard")) == "Accepted"
                await csms.wait(lambda: csms.connections["ALL16"] == 2 and st.booted.is_set())
                assert st.stats.errors == 0 and st.stats.reboots == 1

    run(main())


def test_every_201_command_gets_a_schema_valid_answer():
    async def main():
        async with csms_server() as csms:
            st = SimStation("ALL201", csms.url, "ocpp2.0.1", connectors=2)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["ALL201"]

                async def status(payload):
                    return (await cp.call(payload, suppress=False)).status

                for msg in ("BootNotification", "StatusNotification", "FirmwareStatusNotification",
                            "LogStatusNotification"):
                    before = len(csms.of("ALL201", msg))
                    assert await status(c201.TriggerMessage(requested_message=msg, evse={"id": 2})) == "Accepted"
                    await csms.wait(lambda: len(csms.of("ALL201", msg)) > before)
                assert csms.of("ALL201", "BootNotification")[-1]["reason"] == "Triggered"
                assert await status(c201.TriggerMessage(requested_message="SignV2GCertificate")) == "NotImplemented"
                assert await status(c201.UnlockConnector(evse_id=1, connector_id=1)) == "Unlocked"
                assert await status(c201.UnlockConnector(evse_id=9, connector_id=1)) == "UnknownConnector"
                assert await status(c201.ClearCache()) == "Accepted"
                assert await status(c201.DataTransfer(vendor_id="acme")) == "UnknownVendorId"
                assert await status(c201.Reset(type="Immediate", evse_id=1)) == "Rejected"
                assert await status(c201.ChangeAvailability(operational_status="Inoperative",
                                                            evse={"id": 3})) == "Rejected"
                assert await status(c201.RequestStopTransaction(transaction_id="nope")) == "Rejected"
                assert await status(c201.GetBaseReport(request_id=1, report_base="SummaryInventory")) == "Accepted"
                assert st.stats.errors == 0

    run(main())


def test_remote_start_stop_201_and_scheduled_availability():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RS2", csms.url, "ocpp2.0.1", session_duration=60, meter_interval=60)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["RS2"]
                r = await cp.call(c201.RequestStartTransaction(
                    id_token={"id_token": "RFID1", "type": "ISO14443"}, remote_start_id=42, evse_id=1), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: st.transactions.get(1) is not None)
                started = csms.of("RS2", "TransactionEvent")[0]
                assert started["trigger_reason"] == "RemoteStart"
                assert started["transaction_info"]["remote_start_id"] == 42
                assert csms.of("RS2", "Authorize")[0]["id_token"]["id_token"] == "RFID1"

                # Going Inoperative while charging is only Scheduled; it happens when the session ends.
                r = await cp.call(c201.ChangeAvailability(operational_status="Inoperative", evse={"id": 1}),
                                  suppress=False)
                assert r.status == "Scheduled" and st.availability[1] == "Operative"
                tx_id = st.transactions[1]
                r = await cp.call(c201.RequestStopTransaction(transaction_id=tx_id), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: csms.of("RS2", "TransactionEvent")[-1]["event_type"] == "Ended")
                ended = csms.of("RS2", "TransactionEvent")[-1]
                assert ended["transaction_info"]["stopped_reason"] == "Remote"
                assert ended["trigger_reason"] == "RemoteStop"
                await csms.wait(lambda: csms.of("RS2", "StatusNotification")[-1]["connector_status"] == "Unavailable")
                assert st.availability[1] == "Inoperative" and st.transactions == {}
                # An inoperative EVSE refuses remote starts.
                r = await cp.call(c201.RequestStartTransaction(
                    id_token={"id_token": "RFID1", "type": "ISO14443"}, remote_start_id=43, evse_id=1), suppress=False)
                assert r.status == "Rejected"

    run(main())


# --------------------------------------------------------------------------- connection handling


def test_reconnects_after_server_closes_connection():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RC", csms.url, "ocpp1.6")
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                await csms.ws["RC"].close(1001, "going away")
                await csms.wait(lambda: len(csms.of("RC", "BootNotification")) == 2, 5)
                await asyncio.wait_for(st.booted.wait(), 5)
                assert csms.connections["RC"] == 2 and st.stats.reconnects == 1

    run(main())


def test_http_refusal_is_recorded():
    async def main():
        async with csms_server(refuse={"BAD": 401}) as csms:
            st = SimStation("BAD", csms.url, "ocpp1.6", reconnect=False)
            await asyncio.wait_for(st.start(), 5)  # gives up: reconnect=False
            assert st.last_status_code == 401 and st.last_error == "HTTP 401"
            assert st.stats.connect_failures == 1 and not st.connected.is_set()

    run(main())


def test_silent_station_never_answers():
    async def main():
        async with csms_server(response_timeout=0.5) as csms:
            st = SimStation("MUTE", csms.url, "ocpp1.6", silent=True)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)  # it still boots: results are routed
                with pytest.raises(asyncio.TimeoutError):
                    await csms.cps["MUTE"].call(c16.GetConfiguration(), suppress=False)
                assert st.stats.answered == 0 and st.stats.received >= 2

    run(main())


def test_malformed_frames_are_survived_and_send_raw():
    async def main():
        async with csms_server() as csms:
            st = SimStation("RAW", csms.url, "ocpp1.6")
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                await csms.ws["RAW"].send("this is not json")
                await csms.ws["RAW"].send('[2, "x"]')
                r = await csms.cps["RAW"].call(c16.UnlockConnector(connector_id=1), suppress=False)
                assert r.status == "Unlocked"
                assert st.stats.errors == 2 and st.connected.is_set()
                await st.send_raw("[2, broken")
                res = await st.send(c16.Heartbeat())
                assert is_utc_z(res.current_time)
                assert st.connected.is_set()

    run(main())


def test_send_fails_fast_when_socket_closes():
    async def main():
        async with csms_server() as csms:
            csms.ignore.add("DataTransfer")
            st = SimStation("FF", csms.url, "ocpp1.6", reconnect=False, response_timeout=10)
            async with running(st):
                await asyncio.wait_for(st.booted.wait(), 5)
                t0 = time.monotonic()
                pending = asyncio.create_task(st.send(c16.DataTransfer(vendor_id="x")))
                await csms.wait(lambda: any('"DataTransfer"' in f for f in csms.raw["FF"]))
                await csms.ws["FF"].close()
                with pytest.raises(ConnectionError):
                    await pending  # not after response_timeout (10 s)
                assert time.monotonic() - t0 < 3
                with pytest.raises(ConnectionError):
                    await st.send(c16.Heartbeat())  # offline now

    run(main())


# --------------------------------------------------------------------------- sessions


def test_session_16_runs_in_order():
    async def main():
        async with csms_server() as csms:
            st = SimStation("S16", csms.url, "ocpp1.6", sessions=True, session_interval=0.1,
                            session_duration=0.9, meter_interval=0.25)
            async with running(st):
                await csms.wait(lambda: "StopTransaction" in csms.actions("S16"), 5)
                await csms.wait(lambda: csms.of("S16", "StatusNotification")[-1]["status"] == "Available")
            msgs = [(a, kw) for a, kw in csms.msgs["S16"] if a not in ("BootNotification", "Heartbeat")]
            msgs = msgs[3:]  # the boot-time StatusNotifications
            acts = [a for a, _ in msgs]
            stop_at = acts.index("StopTransaction")
            session = acts[:stop_at + 2]
            assert session[:3] == ["Authorize", "StartTransaction", "StatusNotification"]
            assert msgs[2][1]["status"] == "Charging" and msgs[2][1]["connector_id"] == 1
            meters = [kw for a, kw in msgs[3:stop_at] if a == "MeterValues"]
            assert set(session[3:stop_at]) == {"MeterValues"} and len(meters) >= 2
            assert session[stop_at + 1] == "StatusNotification" and msgs[stop_at + 1][1]["status"] == "Available"
            start, stop = msgs[1][1], msgs[stop_at][1]
            assert start["id_tag"] == "SIMTAG0001" and start["connector_id"] == 1
            assert all(m["transaction_id"] == stop["transaction_id"] == 1 for m in meters)
            measurands = {sv["measurand"] for sv in meters[0]["meter_value"][0]["sampled_value"]}
            assert measurands == {"Energy.Active.Import.Register", "Power.Active.Import"}
            assert stop["meter_stop"] >= start["meter_start"] and stop["reason"] == "Local"
            assert is_utc_z(start["timestamp"]) and is_utc_z(meters[0]["meter_value"][0]["timestamp"])

    run(main())


def test_session_201_runs_in_order():
    async def main():
        async with csms_server() as csms:
            st = SimStation("S201", csms.url, "ocpp2.0.1", sessions=True, session_interval=0.1,
                            session_duration=0.9, meter_interval=0.25)
            async with running(st):
                await csms.wait(lambda: any(e["event_type"] == "Ended" for e in csms.of("S201", "TransactionEvent")))
                await csms.wait(lambda: csms.of("S201", "StatusNotification")[-1]["connector_status"] == "Available")
            acts = [a for a in csms.actions("S201") if a not in ("BootNotification", "Heartbeat")][2:]
            assert acts[:3] == ["Authorize", "TransactionEvent", "StatusNotification"]
            events = csms.of("S201", "TransactionEvent")
            kinds = [e["event_type"] for e in events]
            assert kinds[0] == "Started" and kinds[-1] == "Ended" and set(kinds[1:-1]) == {"Updated"}
            assert len(kinds) >= 4
            assert [e["seq_no"] for e in events] == list(range(len(events)))
            assert len({e["transaction_info"]["transaction_id"] for e in events}) == 1
            assert events[0]["evse"] == {"id": 1, "connector_id": 1}
            updated = events[1]["meter_value"][0]["sampled_value"]
            assert {sv["measurand"] for sv in updated} == {"Energy.Active.Import.Register", "Power.Active.Import"}
            statuses = [s["connector_status"] for s in csms.of("S201", "StatusNotification")[2:]]
            assert statuses[:2] == ["Occupied", "Available"]

    run(main())


def test_refused_tag_does_not_charge():
    async def main():
        async with csms_server(reject_tags=("BADTAG",)) as csms:
            st = SimStation("NOPE", csms.url, "ocpp1.6", sessions=True, session_interval=0.1, id_tag="BADTAG")
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
                await asyncio.wait_for(st.booted.wait(), 5)
                cp = csms.cps["RS"]
                r = await cp.call(c16.RemoteStartTransaction(id_tag="TAG1", connector_id=2), suppress=False)
                assert r.status == "Accepted"
                r = await cp.call(c16.RemoteStartTransaction(id_tag="TAG2", connector_id=2), suppress=False)
                assert r.status == "Rejected"  # connector already taken
                await csms.wait(lambda: st.transactions.get(2) is not None)
                tx_id = st.transactions[2]
                assert csms.of("RS", "StartTransaction")[0]["id_tag"] == "TAG1"
                assert (await cp.call(c16.RemoteStopTransaction(transaction_id=999), suppress=False)).status \
                    == "Rejected"
                r = await cp.call(c16.RemoteStopTransaction(transaction_id=tx_id), suppress=False)
                assert r.status == "Accepted"
                await csms.wait(lambda: "StopTransaction" in csms.actions("RS"))
                stop = csms.of("RS", "StopTransaction")[0]
                assert stop["transaction_id"] == tx_id and stop["reason"] == "Remote"
                await csms.wait(lambda: st.transactions == {})

    run(main())


# --------------------------------------------------------------------------- fleets


def test_run_fleet_mixed_and_summary():
    async def main():
        async with csms_server() as csms:
            fleet = await run_fleet(csms.url, 6, protocol="mixed", prefix="FLT", start_index=3,
                                    concurrency_of_connects=2)
            try:
                assert await fleet.wait_booted(timeout=8)
                names = [s.endpoint for s in fleet]
                assert names == [f"FLT{i:05d}" for i in range(3, 9)]
                assert [s.protocol for s in fleet] == ["ocpp1.6", "ocpp2.0.1"] * 3
                assert isinstance(csms.cps["FLT00003"], Csms16) and isinstance(csms.cps["FLT00004"], Csms201)
                summary = fleet.summary()
                assert (summary.total, summary.connected, summary.booted) == (6, 6, 6)
                assert summary.sent >= 6 and summary.errors == 0 and summary.msgs_per_s > 0
            finally:
                await fleet.stop()
            after = fleet.summary()
            assert after.connected == 0 and after.booted == 0

    run(main())
