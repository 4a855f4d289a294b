"""The simulated device: its configuration keys (1.6) or components and variables (2.0.1),
their metadata, and what the station reports about them.

A station's configuration is a flat dict {key: str}. 1.6 keys are the configuration key names;
2.0.1 keys are written "Component.Variable", with "[instance]" after the variable, "(instance)"
after the component and "@evse[/connector]" for EVSE-bound components, e.g.
"OCPPCommCtrlr.HeartbeatInterval", "DeviceDataCtrlr.ItemsPerMessage[GetReport]",
"Connector@1/1.ConnectorType". The metadata (`Var`) is built once per (protocol, connector
count) and shared by every station alike.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def utcnow() -> str:
    """Current time as ISO-8601 UTC with milliseconds and 'Z'."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def num(x: float) -> str:
    """10.0 -> '10', 0.5 -> '0.5' (config values are strings)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def valid(kind: str, value: str) -> bool:
    """Whether `value` is acceptable for a variable of data type `kind`."""
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


@dataclass(frozen=True, slots=True)
class Var:
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
        return component_key(self.component, None, self.evse, self.connector)

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
                d["evse"]["connectorId"] = self.connector
        return d

    def variable_dict(self) -> dict:
        if self.instance:
            return {"name": self.name, "instance": self.instance}
        return {"name": self.name}


def component_key(name: str, instance: str | None, evse: int | None, connector: int | None) -> str:
    key = name + (f"({instance})" if instance else "")
    if evse is not None:
        key += f"@{evse}" + (f"/{connector}" if connector is not None else "")
    return key


def request_key(component: dict, variable: dict) -> tuple[str, str]:
    """(component key, full key) of a component/variable pair from a 2.0.1 request."""
    evse = component.get("evse") or {}
    ckey = component_key(
        component["name"], component.get("instance"), evse.get("id"), evse.get("connectorId")
    )
    inst = variable.get("instance")
    return ckey, f"{ckey}.{variable['name']}" + (f"[{inst}]" if inst else "")


_MEASURANDS = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC"

VARS16 = (
    Var("AllowOfflineTxForUnknownId", "boolean", default="false"),
    Var("AuthorizationCacheEnabled", "boolean", default="true"),
    Var("AuthorizeRemoteTxRequests", "boolean", default="true"),
    Var("ClockAlignedDataInterval", "integer", default="0"),
    Var("ConnectionTimeOut", "integer", default="60"),
    Var("ConnectorPhaseRotation", default="NotApplicable"),
    Var("GetConfigurationMaxKeys", "integer", readonly=True, default="50"),
    Var("HeartbeatInterval", "integer", default="300"),
    Var("LocalAuthorizeOffline", "boolean", default="true"),
    Var("LocalPreAuthorize", "boolean", default="false"),
    Var("MeterValuesAlignedData", default="Energy.Active.Import.Register"),
    Var("MeterValuesSampledData", default="Energy.Active.Import.Register,Power.Active.Import"),
    Var("MeterValueSampleInterval", "integer", default="10"),
    Var("NumberOfConnectors", "integer", readonly=True, default="2"),
    Var("ResetRetries", "integer", default="3"),
    Var("StopTransactionOnEVSideDisconnect", "boolean", default="true"),
    Var("StopTransactionOnInvalidId", "boolean", default="true"),
    Var("StopTxnAlignedData", default=""),
    Var("StopTxnSampledData", default="Energy.Active.Import.Register"),
    Var("SupportedFeatureProfiles", readonly=True, default="Core,RemoteTrigger"),
    Var("TransactionMessageAttempts", "integer", default="3"),
    Var("TransactionMessageRetryInterval", "integer", default="60"),
    Var("UnlockConnectorOnEVSideDisconnect", "boolean", default="true"),
    Var("WebSocketPingInterval", "integer", default="60"),
)


def _dm(
    component: str,
    name: str,
    kind: str = "string",
    readonly: bool = False,
    default: str = "",
    **kw: Any,
) -> Var:
    return Var(name, kind, readonly, default, component, **kw)


VARS201 = (
    _dm(
        "ChargingStation",
        "AvailabilityState",
        "OptionList",
        True,
        "Available",
        values="Available,Occupied,Reserved,Unavailable,Faulted",
    ),
    _dm("ChargingStation", "Model", readonly=True),
    _dm("ChargingStation", "VendorName", readonly=True),
    _dm("ChargingStation", "SupplyPhases", "integer", True, "3"),
    _dm("OCPPCommCtrlr", "HeartbeatInterval", "integer", default="300", unit="s"),
    _dm("OCPPCommCtrlr", "MessageTimeout", "integer", True, "30", instance="Default", unit="s"),
    _dm("OCPPCommCtrlr", "MessageAttempts", "integer", default="3", instance="TransactionEvent"),
    _dm(
        "OCPPCommCtrlr",
        "MessageAttemptInterval",
        "integer",
        default="60",
        instance="TransactionEvent",
        unit="s",
    ),
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
    _dm(
        "TxCtrlr",
        "TxStartPoint",
        "MemberList",
        default="PowerPathClosed",
        values="ParkingBayOccupancy,EVConnected,Authorized,PowerPathClosed,EnergyTransfer",
    ),
    _dm(
        "TxCtrlr",
        "TxStopPoint",
        "MemberList",
        default="EVConnected",
        values="ParkingBayOccupancy,EVConnected,Authorized,PowerPathClosed,EnergyTransfer",
    ),
    _dm("SampledDataCtrlr", "Enabled", "boolean", default="true"),
    _dm("SampledDataCtrlr", "TxUpdatedInterval", "integer", default="10", unit="s"),
    _dm(
        "SampledDataCtrlr",
        "TxUpdatedMeasurands",
        "MemberList",
        default="Energy.Active.Import.Register,Power.Active.Import",
        values=_MEASURANDS,
    ),
    _dm(
        "SampledDataCtrlr",
        "TxEndedMeasurands",
        "MemberList",
        default="Energy.Active.Import.Register",
        values=_MEASURANDS,
    ),
    _dm("SampledDataCtrlr", "TxEndedInterval", "integer", default="0", unit="s"),
    _dm("AlignedDataCtrlr", "Interval", "integer", default="0", unit="s"),
    _dm(
        "AlignedDataCtrlr",
        "Measurands",
        "MemberList",
        default="Energy.Active.Import.Register",
        values=_MEASURANDS,
    ),
    _dm("SecurityCtrlr", "SecurityProfile", "integer", True, "0"),
)


def _evse_vars(n: int) -> Iterator[Var]:
    for i in range(1, n + 1):
        yield _dm("EVSE", "SupplyPhases", "integer", True, "3", evse=i)
        yield _dm("EVSE", "Power", "decimal", True, "22000", evse=i, unit="W")
        yield _dm(
            "Connector", "ConnectorType", readonly=True, default="cType2", evse=i, connector=1
        )


class Layout:
    """The metadata of every key a station has, and the set of its known 2.0.1 component keys;
    one per (protocol, connector count), shared by equal stations."""

    __slots__ = ("components", "defaults", "meta")

    def __init__(self, vars_: tuple[Var, ...]) -> None:
        self.meta: dict[str, Var] = {v.key: v for v in vars_}
        self.components = frozenset(v.component_key for v in vars_ if v.component)
        self.defaults: dict[str, str] = {k: v.default for k, v in self.meta.items()}


@functools.cache
def layout(protocol: str, connectors: int) -> Layout:
    return Layout(VARS16 if protocol == "ocpp1.6" else VARS201 + tuple(_evse_vars(connectors)))


def set_value(
    meta: dict[str, Var], config: dict[str, str], key: str, value: str, not_found: str
) -> str:
    """Set one key, as ChangeConfiguration/SetVariables do; return the answer's status."""
    var = meta.get(key)
    if var is None:
        return not_found
    if var.readonly or not valid(var.kind, value):
        return "Rejected"
    if var.kind == "boolean":
        value = value.lower()
    config[key] = value
    return "Accepted"


# GetBaseReport: which variables each report base covers
_SUMMARY_COMPONENTS = ("ChargingStation", "EVSE", "Connector")


def report(meta: dict[str, Var], config: dict[str, str], base: str) -> list[dict]:
    """NotifyReport reportData for a GetBaseReport, built now so the report is one snapshot."""
    entries = []
    for key, v in meta.items():
        if base == "ConfigurationInventory" and v.readonly:
            continue
        if base == "SummaryInventory" and v.component not in _SUMMARY_COMPONENTS:
            continue
        chars: dict[str, Any] = {"dataType": v.kind, "supportsMonitoring": False}
        if v.unit is not None:
            chars["unit"] = v.unit
        if v.values is not None:
            chars["valuesList"] = v.values
        entries.append(
            {
                "component": v.component_dict(),
                "variable": v.variable_dict(),
                "variableAttribute": [
                    {
                        "type": "Actual",
                        "value": config[key],
                        "mutability": "ReadOnly" if v.readonly else "ReadWrite",
                        "persistent": True,
                        "constant": v.readonly,
                    }
                ],
                "variableCharacteristics": chars,
            }
        )
    return entries
