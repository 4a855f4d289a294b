"""Simulated EV chargestations: the OCPP *client* side, for tests, demos and load tests.

Public API
----------
``SimStation(endpoint, url, protocol="ocpp1.6" | "ocpp2.0.1", *, connectors=2, vendor, model,
serial, firmware, password, ssl, sessions, meter_interval, session_interval, session_duration,
id_tag, reconnect, backoff_max, silent, heartbeat_interval_override, response_timeout,
open_timeout, reboot_delay, validate, connect_limiter)``

* ``await st.start()`` runs until ``await st.stop()``: connect, BootNotification (retried while
  Pending/Rejected), StatusNotification per connector, heartbeats, optional charging sessions;
  reconnects with jittered exponential backoff.
* ``await st.send(call_payload)`` sends any ``ocpp.v16.call`` / ``ocpp.v201.call`` dataclass and
  returns the ``call_result`` (raises ``OCPPError`` for a CALLERROR, ``TimeoutError``,
  ``ConnectionError``); ``await st.send_raw(text)`` sends one raw websocket frame.
* State: ``connected`` / ``booted`` (``asyncio.Event``), ``registration_status``,
  ``availability`` ({connector or EVSE id: "Operative" | "Inoperative"}, 0 = whole station),
  ``config`` ({key: str}; 2.0.1 keys look like ``"OCPPCommCtrlr.HeartbeatInterval"``,
  ``"DeviceDataCtrlr.ItemsPerMessage[GetReport]"``, ``"Connector@1/1.ConnectorType"``),
  ``transactions`` ({connector: transaction id}), ``stats`` (``Stats``), ``last_error``,
  ``last_status_code`` (HTTP status of the last refused upgrade).

``await run_fleet(url, count, protocol="ocpp1.6" | "ocpp2.0.1" | "mixed", prefix="SIM",
start_index=1, concurrency_of_connects=200, **station_kwargs) -> Fleet`` starts ``count``
stations named ``f"{prefix}{i:05d}"`` (at most ``concurrency_of_connects`` handshakes at once)
and returns at once. ``Fleet``: ``stations``, ``summary() -> FleetSummary``,
``await wait_booted(n=None, timeout=None)``, ``await stop()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote

from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as _ChargePoint201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

__all__ = ["SimStation", "Stats", "Fleet", "FleetSummary", "run_fleet", "PROTOCOLS", "utcnow"]

PROTOCOLS = ("ocpp1.6", "ocpp2.0.1")

log = logging.getLogger("edrvctl.simulator")
# One shared logger for all simulated ChargePoints: the ocpp library logs every frame at INFO,
# and a logger per station would cost memory for thousands of stations.
_OCPP_LOG = logging.getLogger("edrvctl.simulator.ocpp")
_OCPP_LOG.setLevel(logging.WARNING)

BACKOFF_START = 0.5
RESET_GRACE = 0.25  # a resetting station takes a moment to shut down; lets the CSMS read our reply
_CALL_FAILED = (OCPPError, asyncio.TimeoutError)


def utcnow() -> str:
    """Current time as ISO-8601 UTC with milliseconds and 'Z'."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(x: float) -> str:
    """10.0 -> '10', 0.5 -> '0.5' (config values are strings)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def _valid(kind: str, value: str) -> bool:
    if kind == "integer":
        return value.strip().isdigit()
    if kind == "decimal":
        try:
            return float(value) >= 0
        except ValueError:
            return False
    if kind == "boolean":
        return value.lower() in ("true", "false")
    return True


# --------------------------------------------------------------------------- configuration model


@dataclass(frozen=True, slots=True)
class _Var:
    """One configuration key (1.6) or device-model variable (2.0.1)."""

    name: str
    kind: str = "string"  # 2.0.1 DataEnumType: integer, boolean, decimal, string, MemberList, ...
    readonly: bool = False
    default: str = ""
    component: str = ""  # 2.0.1 only
    instance: str | None = None
    evse: int | None = None
    connector: int | None = None
    unit: str | None = None
    values: str | None = None  # valuesList for OptionList/MemberList

    @property
    def component_key(self) -> str:
        return _component_key(self.component, None, self.evse, self.connector)

    @property
    def key(self) -> str:
        if not self.component:
            return self.name
        return f"{self.component_key}.{self.name}" + (f"[{self.instance}]" if self.instance else "")

    def component_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.component}
        if self.evse is not None:
            d["evse"] = {"id": self.evse}
            if self.connector is not None:
                d["evse"]["connector_id"] = self.connector
        return d

    def variable_dict(self) -> dict:
        return {"name": self.name, "instance": self.instance} if self.instance else {"name": self.name}


def _component_key(name: str, instance: str | None, evse: int | None, connector: int | None) -> str:
    key = name + (f"({instance})" if instance else "")
    if evse is not None:
        key += f"@{evse}" + (f"/{connector}" if connector is not None else "")
    return key


def _request_key(component: dict, variable: dict) -> tuple[str, str]:
    """(component key, full key) of a component/variable pair from a 2.0.1 request."""
    evse = component.get("evse") or {}
    ckey = _component_key(component["name"], component.get("instance"), evse.get("id"), evse.get("connector_id"))
    inst = variable.get("instance")
    return ckey, f"{ckey}.{variable['name']}" + (f"[{inst}]" if inst else "")


_MEASURANDS = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC"

_VARS16 = (
    _Var("AllowOfflineTxForUnknownId", "boolean", default="false"),
    _Var("AuthorizationCacheEnabled", "boolean", default="true"),
    _Var("AuthorizeRemoteTxRequests", "boolean", default="true"),
    _Var("ClockAlignedDataInterval", "integer", default="0"),
    _Var("ConnectionTimeOut", "integer", default="60"),
    _Var("ConnectorPhaseRotation", default="NotApplicable"),
    _Var("GetConfigurationMaxKeys", "integer", readonly=True, default="50"),
    _Var("HeartbeatInterval", "integer", default="300"),
    _Var("LocalAuthorizeOffline", "boolean", default="true"),
    _Var("LocalPreAuthorize", "boolean", default="false"),
    _Var("MeterValuesAlignedData", default="Energy.Active.Import.Register"),
    _Var("MeterValuesSampledData", default="Energy.Active.Import.Register,Power.Active.Import"),
    _Var("MeterValueSampleInterval", "integer", default="10"),
    _Var("NumberOfConnectors", "integer", readonly=True, default="2"),
    _Var("ResetRetries", "integer", default="3"),
    _Var("StopTransactionOnEVSideDisconnect", "boolean", default="true"),
    _Var("StopTransactionOnInvalidId", "boolean", default="true"),
    _Var("StopTxnAlignedData", default=""),
    _Var("StopTxnSampledData", default="Energy.Active.Import.Register"),
    _Var("SupportedFeatureProfiles", readonly=True, default="Core,RemoteTrigger"),
    _Var("TransactionMessageAttempts", "integer", default="3"),
    _Var("TransactionMessageRetryInterval", "integer", default="60"),
    _Var("UnlockConnectorOnEVSideDisconnect", "boolean", default="true"),
    _Var("WebSocketPingInterval", "integer", default="60"),
)


def _dm(component: str, name: str, kind: str = "string", readonly: bool = False, default: str = "", **kw) -> _Var:
    return _Var(name, kind, readonly, default, component, **kw)


_VARS201 = (
    _dm("ChargingStation", "AvailabilityState", "OptionList", True, "Available",
        values="Available,Occupied,Reserved,Unavailable,Faulted"),
    _dm("ChargingStation", "Model", readonly=True),
    _dm("ChargingStation", "VendorName", readonly=True),
    _dm("ChargingStation", "SupplyPhases", "integer", True, "3"),
    _dm("OCPPCommCtrlr", "HeartbeatInterval", "integer", default="300", unit="s"),
    _dm("OCPPCommCtrlr", "MessageTimeout", "integer", True, "30", instance="Default", unit="s"),
    _dm("OCPPCommCtrlr", "MessageAttempts", "integer", default="3", instance="TransactionEvent"),
    _dm("OCPPCommCtrlr", "MessageAttemptInterval", "integer", default="60", instance="TransactionEvent", unit="s"),
    _dm("OCPPCommCtrlr", "OfflineThreshold", "integer", default="60", unit="s"),
    _dm("OCPPCommCtrlr", "ResetRetries", "integer", default="3"),
    _dm("OCPPCommCtrlr", "WebSocketPingInterval", "integer", default="60", unit="s"),
    _dm("DeviceDataCtrlr", "ItemsPerMessage", "integer", True, "5", instance="GetReport"),
    _dm("DeviceDataCtrlr", "ItemsPerMessage", "integer", True, "50", instance="GetVariables"),
    _dm("DeviceDataCtrlr", "ItemsPerMessage", "integer", True, "50", instance="SetVariables"),
    _dm("DeviceDataCtrlr", "BytesPerMessage", "integer", True, "65000", instance="GetReport"),
    _dm("DeviceDataCtrlr", "BytesPerMessage", "integer", True, "65000", instance="GetVariables"),
    _dm("AuthCtrlr", "Enabled", "boolean", default="true"),
    _dm("AuthCtrlr", "AuthorizeRemoteStart", "boolean", default="true"),
    _dm("AuthCtrlr", "LocalAuthorizeOffline", "boolean", default="true"),
    _dm("AuthCtrlr", "LocalPreAuthorize", "boolean", default="false"),
    _dm("TxCtrlr", "EVConnectionTimeOut", "integer", default="60", unit="s"),
    _dm("TxCtrlr", "StopTxOnInvalidId", "boolean", default="true"),
    _dm("TxCtrlr", "TxStartPoint", "MemberList", default="PowerPathClosed",
        values="ParkingBayOccupancy,EVConnected,Authorized,PowerPathClosed,EnergyTransfer"),
    _dm("TxCtrlr", "TxStopPoint", "MemberList", default="EVConnected",
        values="ParkingBayOccupancy,EVConnected,Authorized,PowerPathClosed,EnergyTransfer"),
    _dm("SampledDataCtrlr", "Enabled", "boolean", default="true"),
    _dm("SampledDataCtrlr", "TxUpdatedInterval", "integer", default="10", unit="s"),
    _dm("SampledDataCtrlr", "TxUpdatedMeasurands", "MemberList",
        default="Energy.Active.Import.Register,Power.Active.Import", values=_MEASURANDS),
    _dm("SampledDataCtrlr", "TxEndedMeasurands", "MemberList",
        default="Energy.Active.Import.Register", values=_MEASURANDS),
    _dm("SampledDataCtrlr", "TxEndedInterval", "integer", default="0", unit="s"),
    _dm("AlignedDataCtrlr", "Interval", "integer", default="0", unit="s"),
    _dm("AlignedDataCtrlr", "Measurands", "MemberList", default="Energy.Active.Import.Register", values=_MEASURANDS),
    _dm("SecurityCtrlr", "SecurityProfile", "integer", True, "0"),
)


def _evse_vars(n: int) -> Iterator[_Var]:
    for i in range(1, n + 1):
        yield _dm("EVSE", "SupplyPhases", "integer", True, "3", evse=i)
        yield _dm("EVSE", "Power", "decimal", True, "22000", evse=i, unit="W")
        yield _dm("Connector", "ConnectorType", readonly=True, default="cType2", evse=i, connector=1)


@functools.lru_cache(maxsize=None)
def _layout(protocol: str, connectors: int) -> tuple[dict[str, _Var], frozenset[str]]:
    """Metadata per key and the set of known 2.0.1 component keys, shared by equal stations."""
    vars_ = _VARS16 if protocol == "ocpp1.6" else _VARS201 + tuple(_evse_vars(connectors))
    return {v.key: v for v in vars_}, frozenset(v.component_key for v in vars_ if v.component)


# --------------------------------------------------------------------------- runtime state


class Stats:
    """Per-station counters (plain ints, cheap to sum over a fleet)."""

    __slots__ = ("sent", "received", "answered", "errors", "reconnects", "connect_failures", "reboots")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"Stats({self.as_dict()})"


class _Tx:
    """One charging transaction on one connector (1.6) / EVSE (2.0.1)."""

    __slots__ = ("connector", "id_tag", "id_type", "remote_start_id", "tx_id", "started", "power_w",
                 "deadline", "last_t", "seq", "stop_reason", "stop_evt", "done")

    def __init__(self, connector: int, id_tag: str, id_type: str, remote_start_id: int | None, duration: float):
        self.connector = connector
        self.id_tag = id_tag
        self.id_type = id_type
        self.remote_start_id = remote_start_id
        self.tx_id: int | str | None = None
        self.started = False
        self.power_w = random.uniform(7000, 11000)
        self.deadline = time.monotonic() + duration
        self.last_t = time.monotonic()
        self.seq = 0
        self.stop_reason: str | None = None
        self.stop_evt = asyncio.Event()
        self.done = asyncio.Event()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1


# --------------------------------------------------------------------------- protocol adapters


class _ProtoMixin:
    """What both ChargePoint subclasses share: the owning station and deferred follow-ups."""

    sim: "SimStation"

    def _setup(self, sim: "SimStation") -> None:
        self.sim = sim
        # Follow-up coroutines a handler asks for; the reader starts them once the CALLRESULT
        # is on the wire (a call() from inside a handler would deadlock the reader loop).
        self.after_reply: list[tuple[Callable, tuple]] = []

    def later(self, fn: Callable, *args: Any) -> None:
        self.after_reply.append((fn, args))


class _Cp16(_ProtoMixin, _ChargePoint16):
    HEARTBEAT_KEY = "HeartbeatInterval"
    METER_KEY = "MeterValueSampleInterval"
    AUTH_REMOTE_KEY = "AuthorizeRemoteTxRequests"
    PING_KEY = "WebSocketPingInterval"

    def __init__(self, sim: "SimStation", ws: ClientConnection):
        super().__init__(sim.endpoint, ws, response_timeout=sim.response_timeout, logger=_OCPP_LOG)
        self._setup(sim)

    # ---- messages the station sends
    def boot(self, reason: str) -> Any:
        s = self.sim
        return c16.BootNotification(charge_point_model=s.model, charge_point_vendor=s.vendor,
                                    charge_point_serial_number=s.serial, charge_box_serial_number=s.serial,
                                    firmware_version=s.firmware)

    def heartbeat(self) -> Any:
        return c16.Heartbeat()

    def status(self, connector: int, state: str) -> Any:
        return c16.StatusNotification(connector_id=connector, error_code="NoError", status=state,
                                      timestamp=utcnow())

    @staticmethod
    def _meter(wh: float, w: float | None, context: str) -> list[dict]:
        sv = [{"value": f"{wh:.0f}", "context": context, "measurand": "Energy.Active.Import.Register",
               "location": "Outlet", "unit": "Wh"}]
        if w is not None:
            sv.append({"value": f"{w:.0f}", "context": context, "measurand": "Power.Active.Import",
                       "location": "Outlet", "unit": "W"})
        return [{"timestamp": utcnow(), "sampled_value": sv}]

    def meter_values(self, connector: int) -> Any:
        tx = self.sim._txs.get(connector)
        wh, w = self.sim._sample(connector)
        return c16.MeterValues(connector_id=connector, meter_value=self._meter(wh, w, "Trigger"),
                               transaction_id=tx.tx_id if tx and tx.started else None)

    async def authorize(self, tx: _Tx) -> bool:
        res = await self.sim._call(c16.Authorize(id_tag=tx.id_tag))
        return res.id_tag_info.get("status") == "Accepted"

    async def start_tx(self, tx: _Tx) -> bool:
        wh, _ = self.sim._sample(tx.connector)
        res = await self.sim._call(c16.StartTransaction(
            connector_id=tx.connector, id_tag=tx.id_tag, meter_start=int(wh), timestamp=utcnow()))
        tx.tx_id = res.transaction_id
        if res.id_tag_info.get("status") == "Accepted":
            return True
        # The CSMS assigned an id but refused the tag: end it at once (StopTransactionOnInvalidId).
        await self.sim._call(c16.StopTransaction(meter_stop=int(wh), timestamp=utcnow(), transaction_id=tx.tx_id,
                                                 reason="DeAuthorized", id_tag=tx.id_tag))
        return False

    async def meter_tx(self, tx: _Tx) -> None:
        wh, w = self.sim._sample(tx.connector)
        await self.sim._call(c16.MeterValues(connector_id=tx.connector, transaction_id=tx.tx_id,
                                             meter_value=self._meter(wh, w, "Sample.Periodic")))

    async def stop_tx(self, tx: _Tx) -> None:
        wh, _ = self.sim._sample(tx.connector)
        reason = tx.stop_reason or "Local"
        await self.sim._call(c16.StopTransaction(
            meter_stop=int(wh), timestamp=utcnow(), transaction_id=tx.tx_id, reason=reason,
            id_tag=tx.id_tag if reason == "Local" else None,
            transaction_data=self._meter(wh, None, "Transaction.End")))

    # ---- CSMS calls
    @on(A16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **_: Any):
        cfg, meta = self.sim.config, self.sim._meta
        keys = key or list(cfg)
        known = [{"key": k, "readonly": meta[k].readonly, "value": cfg[k]} for k in keys if k in cfg]
        unknown = [k for k in keys if k not in cfg]
        return r16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(A16.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any):
        return r16.ChangeConfiguration(status=self.sim._set_config(key, value, not_found="NotSupported"))

    @on(A16.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **_: Any):
        return r16.ChangeAvailability(status=self.sim._change_availability(connector_id, type == "Operative"))

    @on(A16.reset)
    def on_reset(self, type: str, **_: Any):
        self.later(self.sim._reboot, f"{type}Reset")
        return r16.Reset(status="Accepted")

    @on(A16.trigger_message)
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **_: Any):
        sim = self.sim
        if connector_id is not None and not 0 <= connector_id <= sim.connectors:
            return r16.TriggerMessage(status="Rejected")
        targets = [connector_id] if connector_id is not None else list(range(0, sim.connectors + 1))
        if requested_message == "BootNotification":
            self.later(sim._triggered_boot)
        elif requested_message == "Heartbeat":
            self.later(sim._call, self.heartbeat())
        elif requested_message == "StatusNotification":
            self.later(sim._send_statuses, targets)
        elif requested_message == "MeterValues":
            self.later(sim._send_each, [self.meter_values(c) for c in targets if c > 0])
        elif requested_message == "DiagnosticsStatusNotification":
            self.later(sim._call, c16.DiagnosticsStatusNotification(status="Idle"))
        elif requested_message == "FirmwareStatusNotification":
            self.later(sim._call, c16.FirmwareStatusNotification(status="Idle"))
        else:
            return r16.TriggerMessage(status="NotImplemented")
        return r16.TriggerMessage(status="Accepted")

    @on(A16.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **_: Any):
        if not 1 <= connector_id <= self.sim.connectors:
            return r16.UnlockConnector(status="NotSupported")
        tx = self.sim._txs.get(connector_id)
        if tx is not None:
            self.sim._request_stop(tx, "UnlockCommand")
        return r16.UnlockConnector(status="Unlocked")

    @on(A16.remote_start_transaction)
    def on_remote_start_transaction(self, id_tag: str, connector_id: int | None = None, **_: Any):
        tx = self.sim._reserve(connector_id, id_tag, "ISO14443", remote_start_id=None)
        if tx is None:
            return r16.RemoteStartTransaction(status="Rejected")
        self.later(self.sim._begin_tx, tx, self.sim.config[self.AUTH_REMOTE_KEY] == "true")
        return r16.RemoteStartTransaction(status="Accepted")

    @on(A16.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int, **_: Any):
        tx = self.sim._find_tx(transaction_id)
        if tx is None:
            return r16.RemoteStopTransaction(status="Rejected")
        self.sim._request_stop(tx, "Remote")
        return r16.RemoteStopTransaction(status="Accepted")

    @on(A16.clear_cache)
    def on_clear_cache(self, **_: Any):
        return r16.ClearCache(status="Accepted")

    @on(A16.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any):
        return r16.DataTransfer(status="UnknownVendorId")


# 2.0.1 stop reason and trigger for each (1.6-style) reason the station uses internally.
_STOP201 = {
    "Local": ("Local", "StopAuthorized"),
    "Remote": ("Remote", "RemoteStop"),
    "DeAuthorized": ("DeAuthorized", "Deauthorized"),
    "HardReset": ("ImmediateReset", "ResetCommand"),
    "SoftReset": ("ImmediateReset", "ResetCommand"),
    "UnlockCommand": ("Other", "UnlockCommand"),
    "EVDisconnected": ("EVDisconnected", "EVDeparted"),
}


class _Cp201(_ProtoMixin, _ChargePoint201):
    HEARTBEAT_KEY = "OCPPCommCtrlr.HeartbeatInterval"
    METER_KEY = "SampledDataCtrlr.TxUpdatedInterval"
    AUTH_REMOTE_KEY = "AuthCtrlr.AuthorizeRemoteStart"
    PING_KEY = "OCPPCommCtrlr.WebSocketPingInterval"
    REPORT_ITEMS_KEY = "DeviceDataCtrlr.ItemsPerMessage[GetReport]"

    def __init__(self, sim: "SimStation", ws: ClientConnection):
        super().__init__(sim.endpoint, ws, response_timeout=sim.response_timeout, logger=_OCPP_LOG)
        self._setup(sim)

    # ---- messages the station sends
    def boot(self, reason: str) -> Any:
        s = self.sim
        station = {"model": s.model, "vendor_name": s.vendor, "serial_number": s.serial,
                   "firmware_version": s.firmware}
        return c201.BootNotification(charging_station=station, reason=reason)

    def heartbeat(self) -> Any:
        return c201.Heartbeat()

    def status(self, connector: int, state: str) -> Any:
        if connector == 0:
            return None  # 2.0.1 reports connector status per EVSE only
        state = "Occupied" if state == "Charging" else state
        return c201.StatusNotification(timestamp=utcnow(), connector_status=state, evse_id=connector, connector_id=1)

    @staticmethod
    def _meter(wh: float, w: float | None, context: str) -> list[dict]:
        sv = [{"value": round(wh, 1), "context": context, "measurand": "Energy.Active.Import.Register",
               "location": "Outlet", "unit_of_measure": {"unit": "Wh"}}]
        if w is not None:
            sv.append({"value": round(w, 1), "context": context, "measurand": "Power.Active.Import",
                       "location": "Outlet", "unit_of_measure": {"unit": "W"}})
        return [{"timestamp": utcnow(), "sampled_value": sv}]

    def meter_values(self, connector: int) -> Any:
        wh, w = self.sim._sample(connector)
        return c201.MeterValues(evse_id=connector, meter_value=self._meter(wh, w, "Trigger"))

    def _event(self, tx: _Tx, event: str, trigger: str, meter: list[dict], **info: Any) -> Any:
        return c201.TransactionEvent(
            event_type=event, timestamp=utcnow(), trigger_reason=trigger, seq_no=tx.next_seq(),
            transaction_info={"transaction_id": tx.tx_id, **info}, meter_value=meter,
            evse={"id": tx.connector, "connector_id": 1} if event == "Started" else None,
            id_token={"id_token": tx.id_tag, "type": tx.id_type} if event != "Updated" else None)

    async def authorize(self, tx: _Tx) -> bool:
        res = await self.sim._call(c201.Authorize(id_token={"id_token": tx.id_tag, "type": tx.id_type}))
        return res.id_token_info.get("status") == "Accepted"

    async def start_tx(self, tx: _Tx) -> bool:
        tx.tx_id = str(uuid.uuid4())
        wh, _ = self.sim._sample(tx.connector)
        trigger = "RemoteStart" if tx.remote_start_id is not None else "Authorized"
        res = await self.sim._call(self._event(tx, "Started", trigger, self._meter(wh, None, "Transaction.Begin"),
                                               charging_state="Charging", remote_start_id=tx.remote_start_id))
        if (res.id_token_info or {}).get("status", "Accepted") == "Accepted":
            return True
        await self.sim._call(self._event(tx, "Ended", "Deauthorized", self._meter(wh, None, "Transaction.End"),
                                         charging_state="EVConnected", stopped_reason="DeAuthorized"))
        return False

    def _updated(self, tx: _Tx, trigger: str, context: str) -> Any:
        wh, w = self.sim._sample(tx.connector)
        return self._event(tx, "Updated", trigger, self._meter(wh, w, context), charging_state="Charging")

    async def meter_tx(self, tx: _Tx) -> None:
        await self.sim._call(self._updated(tx, "MeterValuePeriodic", "Sample.Periodic"))

    async def stop_tx(self, tx: _Tx) -> None:
        wh, _ = self.sim._sample(tx.connector)
        reason, trigger = _STOP201.get(tx.stop_reason or "Local", ("Other", "AbnormalCondition"))
        await self.sim._call(self._event(tx, "Ended", trigger, self._meter(wh, None, "Transaction.End"),
                                         charging_state="EVConnected", stopped_reason=reason))

    # ---- CSMS calls
    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict], **_: Any):
        sim, results = self.sim, []
        for item in get_variable_data:
            ckey, key = _request_key(item["component"], item["variable"])
            result = {"component": item["component"], "variable": item["variable"],
                      "attribute_type": item.get("attribute_type")}
            if item.get("attribute_type", "Actual") != "Actual":
                result["attribute_status"] = "NotSupportedAttributeType"
            elif key in sim.config:
                result.update(attribute_status="Accepted", attribute_value=sim.config[key])
            else:
                result["attribute_status"] = "UnknownVariable" if ckey in sim._components else "UnknownComponent"
            results.append(result)
        return r201.GetVariables(get_variable_result=results)

    @on(A201.set_variables)
    def on_set_variables(self, set_variable_data: list[dict], **_: Any):
        sim, results = self.sim, []
        for item in set_variable_data:
            ckey, key = _request_key(item["component"], item["variable"])
            if item.get("attribute_type", "Actual") != "Actual":
                status = "NotSupportedAttributeType"
            else:
                missing = "UnknownVariable" if ckey in sim._components else "UnknownComponent"
                status = sim._set_config(key, item["attribute_value"], not_found=missing)
            results.append({"attribute_status": status, "component": item["component"],
                            "variable": item["variable"], "attribute_type": item.get("attribute_type")})
        return r201.SetVariables(set_variable_result=results)

    @on(A201.get_base_report)
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any):
        entries = self.sim._report(report_base)
        if not entries:
            return r201.GetBaseReport(status="EmptyResultSet")
        self.later(self.sim._send_report, request_id, entries)
        return r201.GetBaseReport(status="Accepted")

    @on(A201.change_availability)
    def on_change_availability(self, operational_status: str, evse: dict | None = None, **_: Any):
        target = evse["id"] if evse else 0
        return r201.ChangeAvailability(status=self.sim._change_availability(target, operational_status == "Operative"))

    @on(A201.reset)
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any):
        sim = self.sim
        if evse_id is not None:
            return r201.Reset(status="Rejected")  # resetting a single EVSE is not supported
        if type == "OnIdle" and sim._txs:
            sim._reset_when_idle = True
            return r201.Reset(status="Scheduled")
        self.later(sim._reboot, "HardReset")
        return r201.Reset(status="Accepted")

    @on(A201.trigger_message)
    def on_trigger_message(self, requested_message: str, evse: dict | None = None, **_: Any):
        sim = self.sim
        evse_id = evse["id"] if evse else None
        if evse_id is not None and not 1 <= evse_id <= sim.connectors:
            return r201.TriggerMessage(status="Rejected")
        targets = [evse_id] if evse_id is not None else list(range(1, sim.connectors + 1))
        if requested_message == "BootNotification":
            self.later(sim._triggered_boot)
        elif requested_message == "Heartbeat":
            self.later(sim._call, self.heartbeat())
        elif requested_message == "StatusNotification":
            self.later(sim._send_statuses, targets)
        elif requested_message == "MeterValues":
            self.later(sim._send_each, [self.meter_values(c) for c in targets])
        elif requested_message == "TransactionEvent":
            txs = [sim._txs[c] for c in targets if c in sim._txs and sim._txs[c].started]
            if not txs:
                return r201.TriggerMessage(status="Rejected")
            self.later(sim._send_each, [self._updated(tx, "Trigger", "Trigger") for tx in txs])
        elif requested_message == "FirmwareStatusNotification":
            self.later(sim._call, c201.FirmwareStatusNotification(status="Idle"))
        elif requested_message == "LogStatusNotification":
            self.later(sim._call, c201.LogStatusNotification(status="Idle"))
        else:
            return r201.TriggerMessage(status="NotImplemented")
        return r201.TriggerMessage(status="Accepted")

    @on(A201.unlock_connector)
    def on_unlock_connector(self, evse_id: int, connector_id: int, **_: Any):
        if not 1 <= evse_id <= self.sim.connectors or connector_id != 1:
            return r201.UnlockConnector(status="UnknownConnector")
        if evse_id in self.sim._txs:
            return r201.UnlockConnector(status="OngoingAuthorizedTransaction")
        return r201.UnlockConnector(status="Unlocked")

    @on(A201.request_start_transaction)
    def on_request_start_transaction(self, id_token: dict, remote_start_id: int, evse_id: int | None = None, **_: Any):
        tx = self.sim._reserve(evse_id, id_token["id_token"], id_token["type"], remote_start_id=remote_start_id)
        if tx is None:
            return r201.RequestStartTransaction(status="Rejected")
        self.later(self.sim._begin_tx, tx, self.sim.config[self.AUTH_REMOTE_KEY] == "true")
        return r201.RequestStartTransaction(status="Accepted")

    @on(A201.request_stop_transaction)
    def on_request_stop_transaction(self, transaction_id: str, **_: Any):
        tx = self.sim._find_tx(transaction_id)
        if tx is None:
            return r201.RequestStopTransaction(status="Rejected")
        self.sim._request_stop(tx, "Remote")
        return r201.RequestStopTransaction(status="Accepted")

    @on(A201.clear_cache)
    def on_clear_cache(self, **_: Any):
        return r201.ClearCache(status="Accepted")

    @on(A201.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any):
        return r201.DataTransfer(status="UnknownVendorId")


# --------------------------------------------------------------------------- the station


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that Python 3.11's asyncio.wait_for swallowed.

    ocpp's call() waits with wait_for(queue.get()); on 3.11, if the task is cancelled in the
    same loop iteration as the reply arrives, wait_for returns the reply and the cancel is lost.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _cancel_and_wait(tasks: set[asyncio.Task]) -> None:
    """Cancel tasks and wait until they are really gone (re-cancelling any that shrug it off)."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


class SimStation:
    """One simulated chargestation. See the module docstring for the API."""

    def __init__(
        self,
        endpoint: str,
        url: str,
        protocol: str = "ocpp1.6",
        *,
        connectors: int = 2,
        vendor: str = "edrvctl",
        model: str = "SimCharger",
        serial: str | None = None,
        firmware: str = "1.0.0",
        password: str | None = None,
        ssl: Any = None,
        sessions: bool = False,
        meter_interval: float = 10,
        session_interval: float = 60,
        session_duration: float = 120,
        id_tag: str = "SIMTAG0001",
        reconnect: bool = True,
        backoff_max: float = 30,
        silent: bool = False,
        heartbeat_interval_override: float | None = None,
        response_timeout: float = 30,
        open_timeout: float = 10,
        reboot_delay: float = 1.0,
        validate: bool = True,
        connect_limiter: asyncio.Semaphore | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if connectors < 1:
            raise ValueError("connectors must be >= 1")
        self.endpoint = endpoint
        self.url = f"{url.rstrip('/')}/{quote(endpoint, safe='')}"
        self.protocol = protocol
        self.connectors = connectors
        self.vendor, self.model, self.firmware = vendor, model, firmware
        self.serial = serial or f"SN-{endpoint}"[:25]  # 1.6 serial numbers are CiString25
        self.password = password
        self.ssl = ssl
        self.sessions = sessions
        self.meter_interval = float(meter_interval)
        self.session_interval = session_interval
        self.session_duration = session_duration
        self.id_tag = id_tag
        self.reconnect = reconnect
        self.backoff_max = backoff_max
        self.silent = silent
        self.heartbeat_interval_override = heartbeat_interval_override
        self.response_timeout = response_timeout
        self.open_timeout = open_timeout
        self.reboot_delay = reboot_delay
        self.validate = validate
        self.connect_limiter = connect_limiter

        # Observable state.
        self.connected = asyncio.Event()
        self.booted = asyncio.Event()
        self.registration_status: str | None = None
        self.availability: dict[int, str] = {c: "Operative" for c in range(connectors + 1)}
        self.stats = Stats()
        self.last_error: str | None = None
        self.last_status_code: int | None = None

        self._proto = _Cp16 if protocol == "ocpp1.6" else _Cp201
        self._meta, self._components = _layout(protocol, connectors)
        self.config: dict[str, str] = {k: v.default for k, v in self._meta.items()}
        self._init_config()

        self._cp: _Cp16 | _Cp201 | None = None
        self._ws: ClientConnection | None = None
        self._tasks: set[asyncio.Task] = set()  # tasks of the current connection
        self._runner: asyncio.Task | None = None
        self._stopping = False
        self._rebooting = False
        self._boot_reason = "PowerUp"
        self._had_connection = False
        self._txs: dict[int, _Tx] = {}
        self._pending_availability: dict[int, str] = {}
        self._reset_when_idle = False
        self._meter_wh = [float(random.randint(1_000, 500_000)) for _ in range(connectors + 1)]

    def _init_config(self) -> None:
        c = self.config
        c[self._proto.METER_KEY] = _num(self.meter_interval)
        if self._proto is _Cp16:
            c["NumberOfConnectors"] = str(self.connectors)
        else:
            c["ChargingStation.Model"] = self.model
            c["ChargingStation.VendorName"] = self.vendor
            c["OCPPCommCtrlr.MessageTimeout[Default]"] = _num(self.response_timeout)
            c["SecurityCtrlr.SecurityProfile"] = "1" if self.password else "0"

    def __repr__(self) -> str:
        state = "booted" if self.booted.is_set() else "connected" if self.connected.is_set() else "offline"
        return f"<SimStation {self.endpoint} {self.protocol} {state}>"

    @property
    def transactions(self) -> dict[int, int | str]:
        """Running transactions: connector/EVSE id -> transaction id."""
        return {c: tx.tx_id for c, tx in self._txs.items() if tx.started}

    # ---- lifecycle

    async def start(self) -> None:
        """Connect and behave like a chargestation until stop() is called."""
        if self._runner is not None:
            raise RuntimeError(f"{self.endpoint} is already running")
        self._runner = asyncio.current_task()
        self._stopping = False
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            self._runner.uncancel()  # stop() cancelled us: a normal end
        finally:
            self._runner = None

    async def stop(self) -> None:
        """Close the connection cleanly and cancel everything the station runs."""
        self._stopping = True
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()  # the connection's finally-block closes the socket with a close frame
            await asyncio.wait({runner})

    async def _run(self) -> None:
        delay = BACKOFF_START
        while not self._stopping:
            ws = await self._open()
            if ws is not None:
                await self._serve(ws)
                if self.registration_status == "Accepted":
                    delay = BACKOFF_START  # a healthy connection resets the backoff
            if self._stopping:
                break
            if self._rebooting:  # Reset: come back after a short "boot time", even without reconnect
                self._rebooting = False
                self.stats.reboots += 1
                await asyncio.sleep(self.reboot_delay)
                continue
            if not self.reconnect:
                break
            await asyncio.sleep(min(delay, self.backoff_max) * random.uniform(0.5, 1.0))  # jitter
            delay = min(delay * 2, self.backoff_max)

    async def _open(self) -> ClientConnection | None:
        headers = None
        if self.password is not None:
            token = base64.b64encode(f"{self.endpoint}:{self.password}".encode()).decode()
            headers = {"Authorization": f"Basic {token}"}
        ping = float(self.config.get(self._proto.PING_KEY) or 0) or None
        kwargs: dict[str, Any] = {} if self.ssl is None else {"ssl": self.ssl}
        async with self.connect_limiter or contextlib.nullcontext():
            try:
                ws = await connect(
                    self.url, subprotocols=[self.protocol], additional_headers=headers,
                    compression=None,  # ~14 KiB instead of ~64 KiB per connection
                    proxy=None,  # a simulator talks to its target directly, whatever HTTP_PROXY says
                    open_timeout=self.open_timeout, ping_interval=ping, ping_timeout=ping,
                    user_agent_header="edrvctl-simulator", **kwargs)
            except InvalidStatus as e:
                self.last_status_code = e.response.status_code
                self.last_error = f"HTTP {e.response.status_code}"
            except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ValueError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            else:
                self.last_error = None
                return ws
        self.stats.connect_failures += 1
        return None

    async def _serve(self, ws: ClientConnection) -> None:
        """Run one connection: reader plus the station's own flow, until the socket closes."""
        cp = self._proto(self, ws)
        self._cp, self._ws = cp, ws
        if self._had_connection:
            self.stats.reconnects += 1
        self._had_connection = True
        self.connected.set()
        self._spawn(self._lifecycle(cp))
        try:
            await self._read(cp, ws)
        finally:
            self.connected.clear()
            self.booted.clear()
            self._cp = None
            try:
                await _cancel_and_wait(self._tasks)
            finally:  # even if stop() cancels us right here
                self._ws = None
                await ws.close()

    async def _read(self, cp: _Cp16 | _Cp201, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.stats.received += 1
                try:
                    msg = unpack(raw)
                except OCPPError as e:
                    self.stats.errors += 1
                    log.warning("%s: ignoring malformed frame (%s): %.200s", self.endpoint, e, raw)
                    continue
                if msg.message_type_id != MessageType.Call:
                    cp._response_queue.put_nowait(msg)  # for the call() waiting on it
                elif not self.silent:
                    await self._answer(cp, raw)
        except ConnectionClosed:
            pass
        if not self._stopping and not self._rebooting:
            self.last_error = f"connection closed (code {ws.close_code})"

    async def _answer(self, cp: _Cp16 | _Cp201, raw: str | bytes) -> None:
        cp.after_reply.clear()
        try:
            await cp.route_message(raw)  # validates, runs the @on handler, sends CALLRESULT/CALLERROR
        except ConnectionClosed:
            raise
        except Exception:  # a handler bug must not kill the connection
            self.stats.errors += 1
            log.exception("%s: failed to answer %.200s", self.endpoint, raw)
            return
        self.stats.answered += 1
        for fn, args in cp.after_reply:
            self._spawn(fn(*args))
        cp.after_reply.clear()

    def _spawn(self, coro: Any) -> asyncio.Task:
        """Start a task that belongs to the current connection (cancelled when it closes)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionClosed, ConnectionError) + _CALL_FAILED):
            self.stats.errors += 1
            log.error("%s: task failed", self.endpoint, exc_info=exc)

    # ---- sending

    async def _call(self, payload: Any) -> Any:
        """Send a CALL on the current connection and return its call_result."""
        cp = self._cp
        if cp is None:
            raise ConnectionError(f"{self.endpoint} is not connected")
        self.stats.sent += 1
        try:
            result = await cp.call(payload, suppress=False, skip_schema_validation=not self.validate)
        except _CALL_FAILED as e:
            self.stats.errors += 1
            log.warning("%s: %s failed: %r", self.endpoint, type(payload).__name__, e)
            raise
        _raise_if_cancelling()
        return result

    async def send(self, payload: Any) -> Any:
        """Send any ocpp call dataclass; return the call_result. Fails fast if the socket closes."""
        ws = self._ws
        if ws is None or self._cp is None:
            raise ConnectionError(f"{self.endpoint} is not connected")
        call = asyncio.ensure_future(self._call(payload))
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            done, _ = await asyncio.wait({call, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not call.done():
                call.cancel()  # the socket closed first; don't wait out response_timeout
        if call not in done:
            raise ConnectionError(f"{self.endpoint} went offline")
        return call.result()

    async def send_raw(self, text: str) -> None:
        """Send one raw websocket frame (for malformed-frame tests)."""
        if self._ws is None:
            raise ConnectionError(f"{self.endpoint} is not connected")
        self.stats.sent += 1
        await self._ws.send(text)

    async def _send_each(self, payloads: list) -> None:
        for p in payloads:
            await self._call(p)

    # ---- station behaviour

    def _heartbeat_interval(self) -> float:
        if self.heartbeat_interval_override:
            return self.heartbeat_interval_override
        try:
            return max(float(self.config[self._proto.HEARTBEAT_KEY]), 1.0)
        except ValueError:
            return 300.0

    async def _boot(self, cp: _Cp16 | _Cp201, reason: str) -> Any:
        res = await self._call(cp.boot(reason))
        self.registration_status = str(res.status)
        if res.status == "Accepted" and res.interval > 0:
            self.config[self._proto.HEARTBEAT_KEY] = str(res.interval)
        return res

    async def _lifecycle(self, cp: _Cp16 | _Cp201) -> None:
        while True:  # BootNotification until Accepted
            try:
                res = await self._boot(cp, self._boot_reason)
            except _CALL_FAILED:
                await asyncio.sleep(random.uniform(1, 5))
                continue
            if res.status == "Accepted":
                break
            await asyncio.sleep(max(res.interval, 1))  # Pending/Rejected: retry after `interval`
        self._boot_reason = "PowerUp"
        self.booted.set()
        await self._send_statuses(range(0, self.connectors + 1))
        for tx in list(self._txs.values()):  # charging went on while offline
            if tx.started:
                self._spawn(self._charge(tx))
        if self.sessions:
            self._spawn(self._session_loop())
        while True:
            await asyncio.sleep(self._heartbeat_interval())
            with contextlib.suppress(*_CALL_FAILED):
                await self._call(cp.heartbeat())

    async def _triggered_boot(self) -> None:
        if self._cp is not None:
            await self._boot(self._cp, "Triggered")

    def _status_of(self, c: int) -> str:
        if c in self._txs and self._txs[c].started:
            return "Charging"
        if self.availability.get(c) == "Inoperative" or self.availability[0] == "Inoperative":
            return "Unavailable"
        return "Available"

    async def _send_statuses(self, connectors: Any) -> None:
        cp = self._cp
        for c in connectors:
            payload = cp.status(c, self._status_of(c)) if cp else None
            if payload is not None:
                await self._call(payload)

    def _change_availability(self, target: int, operative: bool) -> str:
        if not 0 <= target <= self.connectors:
            return "Rejected"
        value = "Operative" if operative else "Inoperative"
        affected = list(range(0, self.connectors + 1)) if target == 0 else [target]
        busy = {c for c in affected if c in self._txs}
        if target == 0 and busy:
            busy.add(0)
        changed = []
        for c in affected:
            if c in busy and not operative:
                self._pending_availability[c] = value  # applied when the transaction ends
            else:
                self._pending_availability.pop(c, None)
                if self.availability[c] != value:
                    self.availability[c] = value
                    changed.append(c)
        if self._cp is not None and changed:
            # station-wide changes also change every connector's effective status
            self._cp.later(self._send_statuses, affected if target == 0 else changed)
        return "Scheduled" if busy and not operative else "Accepted"

    def _operative(self, c: int) -> bool:
        return self.availability[0] == "Operative" and self.availability[c] == "Operative"

    def _sample(self, c: int) -> tuple[float, float | None]:
        """Advance connector c's energy register; return (Wh, W or None when idle)."""
        tx = self._txs.get(c)
        if tx is None or not tx.started:
            return self._meter_wh[c], None
        now = time.monotonic()
        self._meter_wh[c] += tx.power_w * (now - tx.last_t) / 3600
        tx.last_t = now
        return self._meter_wh[c], tx.power_w * random.uniform(0.95, 1.05)

    def _reserve(self, connector: int | None, id_tag: str, id_type: str, remote_start_id: int | None) -> _Tx | None:
        """Claim a free, operative connector for a new transaction (synchronously, so two
        RemoteStarts can't both get it)."""
        if connector is None:
            connector = next((c for c in range(1, self.connectors + 1)
                              if c not in self._txs and self._operative(c)), None)
        if connector is None or not 1 <= connector <= self.connectors:
            return None
        if connector in self._txs or not self._operative(connector):
            return None
        tx = _Tx(connector, id_tag, id_type, remote_start_id, self.session_duration)
        self._txs[connector] = tx
        return tx

    def _find_tx(self, tx_id: int | str) -> _Tx | None:
        return next((tx for tx in self._txs.values() if tx.started and tx.tx_id == tx_id), None)

    def _request_stop(self, tx: _Tx, reason: str) -> None:
        tx.stop_reason = tx.stop_reason or reason
        tx.stop_evt.set()

    async def _begin_tx(self, tx: _Tx, authorize: bool = True) -> bool:
        """Authorize (optionally) and start a reserved transaction; on success meter it in a task."""
        cp = self._cp
        try:
            if authorize and not await cp.authorize(tx):
                return False
            if not await cp.start_tx(tx):
                return False
            tx.started = True
            tx.last_t = time.monotonic()
        except _CALL_FAILED:
            return False
        finally:
            if not tx.started:  # refused, failed or cancelled: free the connector
                self._txs.pop(tx.connector, None)
                tx.done.set()
        await self._send_statuses([tx.connector])
        self._spawn(self._charge(tx))
        return True

    async def _charge(self, tx: _Tx) -> None:
        """Meter a running transaction until its deadline or a stop request, then end it."""
        cp = self._cp
        while not tx.stop_evt.is_set():
            remaining = tx.deadline - time.monotonic()
            if remaining <= 0:
                break
            step = min(self.meter_interval, remaining) if self.meter_interval > 0 else remaining
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(tx.stop_evt.wait(), step)
            if tx.stop_evt.is_set() or self.meter_interval <= 0 or time.monotonic() >= tx.deadline:
                continue
            with contextlib.suppress(*_CALL_FAILED):
                await cp.meter_tx(tx)
        await self._end_tx(tx)

    async def _end_tx(self, tx: _Tx) -> None:
        with contextlib.suppress(*_CALL_FAILED):  # a real charger would queue and retry; we give up
            await self._cp.stop_tx(tx)
        self._txs.pop(tx.connector, None)
        tx.done.set()
        changed = [tx.connector]
        for c in (tx.connector, 0):  # scheduled ChangeAvailability takes effect now
            if c in self._pending_availability and (c != 0 or not self._txs):
                self.availability[c] = self._pending_availability.pop(c)
                changed = list(range(0, self.connectors + 1)) if c == 0 else changed
        await self._send_statuses(changed)
        if self._reset_when_idle and not self._txs:
            self._reset_when_idle = False
            self._spawn(self._reboot("HardReset"))

    async def _session_loop(self) -> None:
        """sessions=True: a driver comes by connector 1 now and then and charges."""
        while True:
            await asyncio.sleep(self.session_interval * random.uniform(0.5, 1.5))
            tx = self._reserve(1, self.id_tag, "ISO14443", remote_start_id=None)
            if tx is None:
                continue
            if await self._begin_tx(tx, authorize=True):
                await tx.done.wait()

    async def _reboot(self, reason: str) -> None:
        """Reset: end transactions, close the socket; _run() reconnects after reboot_delay."""
        running = [tx for tx in self._txs.values() if tx.started]
        for tx in running:
            self._request_stop(tx, reason)  # its _charge() task sends the stop
        if running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(tx.done.wait() for tx in running)), self.response_timeout)
        self._rebooting = True
        self._boot_reason = "RemoteReset"
        await asyncio.sleep(RESET_GRACE)
        if self._ws is not None:
            await self._ws.close(1000, "reset")

    def _set_config(self, key: str, value: str, not_found: str) -> str:
        meta = self._meta.get(key)
        if meta is None:
            return not_found
        if meta.readonly or not _valid(meta.kind, value):
            return "Rejected"
        if meta.kind == "boolean":
            value = value.lower()
        self.config[key] = value
        if key == self._proto.METER_KEY:
            self.meter_interval = float(value)
        return "Accepted"

    def _report(self, base: str) -> list[dict]:
        """NotifyReport entries for a GetBaseReport, built now so the report is one snapshot."""
        entries = []
        for key, v in self._meta.items():
            if base == "ConfigurationInventory" and v.readonly:
                continue
            if base == "SummaryInventory" and v.component not in ("ChargingStation", "EVSE", "Connector"):
                continue
            chars = {"data_type": v.kind, "supports_monitoring": False, "unit": v.unit, "values_list": v.values}
            entries.append({
                "component": v.component_dict(), "variable": v.variable_dict(),
                "variable_attribute": [{"type": "Actual", "value": self.config[key],
                                        "mutability": "ReadOnly" if v.readonly else "ReadWrite",
                                        "persistent": True, "constant": v.readonly}],
                "variable_characteristics": chars})
        return entries

    async def _send_report(self, request_id: int, entries: list[dict]) -> None:
        size = max(int(self.config.get(_Cp201.REPORT_ITEMS_KEY, "5")), 1)
        parts = [entries[i:i + size] for i in range(0, len(entries), size)]
        generated_at = utcnow()
        for seq_no, part in enumerate(parts):
            await self._call(c201.NotifyReport(request_id=request_id, generated_at=generated_at, seq_no=seq_no,
                                               report_data=part, tbc=seq_no < len(parts) - 1))


# --------------------------------------------------------------------------- fleets


@dataclass
class FleetSummary:
    """A snapshot of a fleet for a live CLI display."""

    total: int
    connected: int
    booted: int
    sent: int
    received: int
    answered: int
    errors: int
    reconnects: int
    msgs_per_s: float  # frames sent (CALLs + answers) per second since the previous summary()
    elapsed: float
    last_errors: dict[str, int] = field(default_factory=dict)  # offline stations by last error


class Fleet:
    """Many SimStations in one event loop. Create with run_fleet()."""

    def __init__(self, stations: list[SimStation]):
        self.stations = stations
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.monotonic()
        self._last = (self.started_at, 0)

    def __len__(self) -> int:
        return len(self.stations)

    def __iter__(self) -> Iterator[SimStation]:
        return iter(self.stations)

    def __getitem__(self, i: int) -> SimStation:
        return self.stations[i]

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._last = (self.started_at, 0)
        self._tasks = [asyncio.create_task(s.start(), name=f"sim-{s.endpoint}") for s in self.stations]

    def summary(self) -> FleetSummary:
        connected = booted = sent = received = answered = errors = reconnects = 0
        last_errors: Counter[str] = Counter()
        for s in self.stations:
            st = s.stats
            connected += s.connected.is_set()
            booted += s.booted.is_set()
            sent += st.sent
            received += st.received
            answered += st.answered
            errors += st.errors
            reconnects += st.reconnects
            if s.last_error and not s.connected.is_set():
                last_errors[s.last_error] += 1
        now = time.monotonic()
        then, frames_then = self._last
        frames = sent + answered
        rate = (frames - frames_then) / (now - then) if now > then else 0.0
        self._last = (now, frames)
        return FleetSummary(len(self.stations), connected, booted, sent, received, answered, errors,
                            reconnects, rate, now - self.started_at, dict(last_errors.most_common(5)))

    async def wait_booted(self, n: int | None = None, timeout: float | None = None) -> bool:
        """Wait until n (default: all) stations are booted; False on timeout."""
        n = len(self.stations) if n is None else n
        deadline = None if timeout is None else time.monotonic() + timeout
        while sum(s.booted.is_set() for s in self.stations) < n:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stations), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _raise_nofile_limit(wanted: int) -> None:
    """Each station is one socket; the default soft limit (often 1024) is too low for big fleets."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass


async def run_fleet(
    url: str,
    count: int,
    protocol: str = "ocpp1.6",
    prefix: str = "SIM",
    start_index: int = 1,
    concurrency_of_connects: int = 200,
    **station_kwargs: Any,
) -> Fleet:
    """Start `count` stations named f"{prefix}{i:05d}" and return the running Fleet at once.

    protocol "mixed" alternates 1.6 and 2.0.1. At most `concurrency_of_connects` websocket
    handshakes run at the same time (also when the fleet reconnects after a server restart).
    """
    if protocol not in PROTOCOLS + ("mixed",):
        raise ValueError(f"protocol must be one of {PROTOCOLS + ('mixed',)}, not {protocol!r}")
    _raise_nofile_limit(count + 256)
    limiter = asyncio.Semaphore(max(1, concurrency_of_connects))
    stations = []
    for n in range(count):
        proto = PROTOCOLS[n % 2] if protocol == "mixed" else protocol
        stations.append(SimStation(f"{prefix}{start_index + n:05d}", url, proto,
                                   connect_limiter=limiter, **station_kwargs))
    fleet = Fleet(stations)
    fleet.start()
    return fleet
