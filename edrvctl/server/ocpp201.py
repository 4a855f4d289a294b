"""OCPP 2.0.1: the central system's answers to a station, and its commands in 2.0.1.

Handlers get the payload exactly as sent (camelCase, validated against the official schema,
date-times included) and return the answer's payload.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from edrvctl.errors import OverBudget, StationRejected, UsageError
from edrvctl.fleet.live import (
    ChangeAvailability,
    ClearCache,
    Command,
    Configure,
    DataTransfer,
    GetDiagnostics,
    GetLocalListVersion,
    RawCall,
    RemoteStart,
    RemoteStop,
    Reset,
    SendLocalList,
    TransactionStatus,
    TriggerMessage,
    UnlockConnector,
    UpdateFirmware,
)
from edrvctl.fleet.tokens import id_token_info
from edrvctl.model import STATUSES, canonical_time, utcnow
from edrvctl.ocppj import RpcClosed
from edrvctl.ocppj.rpc import Handler
from edrvctl.server.ocpp16 import _data_transfer, heartbeat, kept_as_event, raw_call
from edrvctl.server.stations import StationSession, translated


def config_key(component: dict, variable: dict) -> str:
    """One spelling for a 2.0.1 variable, unique per EVSE and connector, that `cs config`
    prints and `-k` takes back: `Component[instance][evse,connector].Variable[instance]`,
    e.g. `OCPPCommCtrlr.HeartbeatInterval`, `EVSE[2].Power`, `Connector[1,2].ConnectorType`.
    An EVSE alone is one bracket of digits; an instance of only digits without an EVSE is
    followed by `[]`, so that it is not read as one."""
    instance = component.get("instance")
    evse = component.get("evse") or {}
    text = component["name"]
    if instance:
        text += f"[{instance}]"
    if "id" in evse:
        text += f"[{evse['id']}" + (f",{evse['connectorId']}]" if "connectorId" in evse else "]")
    elif instance and instance.isdigit():
        text += "[]"
    var = variable["name"] + (f"[{variable['instance']}]" if variable.get("instance") else "")
    return f"{text}.{var}"


_KEY_RE = re.compile(r"^([^.\[\]]+)((?:\[[^\[\]]*\]){0,2})\.([^.\[\]]+)(?:\[([^\[\]]+)\])?$")


def parse_key(key: str) -> tuple[dict, dict]:
    """`config_key`'s spelling back into (component, variable); UsageError if it is not."""
    m = _KEY_RE.match(key)
    if m is None:
        raise UsageError(
            f"OCPP 2.0.1 keys are written Component.Variable, not {key!r} "
            "(e.g. OCPPCommCtrlr.HeartbeatInterval, EVSE[1].Power, "
            "Connector[1,2].ConnectorType)"
        )
    name, groups, var_name, var_instance = m.groups()
    parts = re.findall(r"\[([^\[\]]*)\]", groups)
    component: dict = {"name": name}
    evse_text = None
    if len(parts) == 2:
        component["instance"], evse_text = parts
    elif len(parts) == 1:
        if re.fullmatch(r"\d+(,\d+)?", parts[0]):
            evse_text = parts[0]
        else:
            component["instance"] = parts[0]
    if evse_text:
        if not re.fullmatch(r"\d+(,\d+)?", evse_text):
            raise UsageError(f"{key!r}: the EVSE is written [evse] or [evse,connector]")
        ids = [int(x) for x in evse_text.split(",")]
        component["evse"] = {"id": ids[0], **({"connectorId": ids[1]} if len(ids) > 1 else {})}
    variable: dict = {"name": var_name, **({"instance": var_instance} if var_instance else {})}
    return component, variable


TRIGGERS = (
    "BootNotification",
    "LogStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "SignChargingStationCertificate",
    "SignV2GCertificate",
    "StatusNotification",
    "TransactionEvent",
    "SignCombinedCertificate",
    "PublishFirmwareStatusNotification",
)


def _evse(evse: int | None, connector: int | None, what: str) -> dict | None:
    if evse is None:
        if connector is not None:
            raise UsageError(f"OCPP 2.0.1 {what} names an EVSE (--evse N), not a connector alone")
        return None
    return {"id": evse, **({"connectorId": connector} if connector is not None else {})}


def _reset(c: Reset) -> tuple[str, dict]:
    return "Reset", {
        "type": "Immediate" if c.hard else "OnIdle",
        **({"evseId": c.evse} if c.evse is not None else {}),
    }


def _unlock(c: UnlockConnector) -> tuple[str, dict]:
    if c.evse is None:
        raise UsageError("OCPP 2.0.1 unlocks a connector of an EVSE: give the EVSE (--evse N)")
    return "UnlockConnector", {
        "evseId": c.evse,
        "connectorId": c.connector if c.connector is not None else 1,
    }


def _trigger(c: TriggerMessage) -> tuple[str, dict]:
    if c.message not in TRIGGERS:
        raise UsageError(
            f"OCPP 2.0.1 cannot trigger {c.message!r}; it triggers {', '.join(TRIGGERS)}"
        )
    evse = _evse(c.evse, c.connector, "a trigger")
    return "TriggerMessage", {"requestedMessage": c.message, **({"evse": evse} if evse else {})}


def _configure(c: Configure) -> tuple[str, dict]:
    component, variable = parse_key(c.key)
    return "SetVariables", {
        "setVariableData": [
            {"component": component, "variable": variable, "attributeValue": c.value}
        ]
    }


def _remote_start(c: RemoteStart) -> tuple[str, dict]:
    if c.evse is None and c.connector is not None:
        raise UsageError("OCPP 2.0.1 starts a transaction on an EVSE (--evse N), not a connector")
    return "RequestStartTransaction", {
        "idToken": {"idToken": c.id_tag, "type": "Central"},
        "remoteStartId": c.remote_start_id or 0,
        **({"evseId": c.evse} if c.evse is not None else {}),
    }


def _remote_stop(c: RemoteStop) -> tuple[str, dict]:
    return "RequestStopTransaction", {"transactionId": c.transaction_id}


def _update_firmware(c: UpdateFirmware) -> tuple[str, dict]:
    return "UpdateFirmware", {
        "requestId": c.request_id or 0,
        "firmware": {"location": c.url, "retrieveDateTime": c.retrieve_at or utcnow()},
    }


def _diagnostics(c: GetDiagnostics) -> tuple[str, dict]:
    log: dict = {"remoteLocation": c.url}
    if c.since:
        log["oldestTimestamp"] = c.since
    if c.until:
        log["latestTimestamp"] = c.until
    return "GetLog", {
        "logType": "SecurityLog" if c.security else "DiagnosticsLog",
        "requestId": c.request_id or 0,
        "log": log,
    }


def _send_local_list(c: SendLocalList) -> tuple[str, dict]:
    p: dict = {"versionNumber": c.version, "updateType": "Full" if c.full else "Differential"}
    if c.entries:  # (2.0.1: a list given has at least one entry)
        p["localAuthorizationList"] = [
            {
                "idToken": {"idToken": e.id_tag, "type": e.type},
                **({"idTokenInfo": id_token_info(e.status, e.expiry, e.group)} if e.status else {}),
            }
            for e in c.entries
        ]
    return "SendLocalList", p


TRANSLATIONS: dict[type, Any] = {
    Reset: _reset,
    UnlockConnector: _unlock,
    TriggerMessage: _trigger,
    Configure: _configure,
    ClearCache: lambda c: ("ClearCache", {}),
    DataTransfer: _data_transfer,
    RemoteStart: _remote_start,
    RemoteStop: _remote_stop,
    UpdateFirmware: _update_firmware,
    GetDiagnostics: _diagnostics,
    RawCall: raw_call("2.0.1"),
    TransactionStatus: lambda c: ("GetTransactionStatus", {"transactionId": c.transaction_id}),
    SendLocalList: _send_local_list,
    GetLocalListVersion: lambda c: ("GetLocalListVersion", {}),
}


def translate(command: Command) -> tuple[str, dict]:
    """A command in OCPP 2.0.1: (action, payload); UsageError if 2.0.1 cannot take it."""
    return translated(TRANSLATIONS, "2.0.1", command)


async def boot(s: StationSession, p: dict) -> dict:
    cs = p["chargingStation"]
    modem = cs.get("modem") or {}
    info = {
        "chargePointVendor": cs.get("vendorName"),
        "chargePointModel": cs.get("model"),
        "chargePointSerialNumber": cs.get("serialNumber"),
        "firmwareVersion": cs.get("firmwareVersion"),
        "iccid": modem.get("iccid"),
        "imsi": modem.get("imsi"),
        "reason": p["reason"],
    }
    status, interval = await s.fleet.boot(s.endpoint, info)
    return {"currentTime": utcnow(), "interval": interval, "status": status}


def status_notification(s: StationSession, p: dict) -> Any:
    evse, c, status = p["evseId"], p["connectorId"], p["connectorStatus"]
    fleet = s.fleet
    if not fleet.is_followed(s.endpoint) and fleet.status_repeated(s.endpoint, evse, c, status):
        return {}  # answered at once: nothing to write
    return _status_notification(s, evse, c, status)


async def _status_notification(s: StationSession, evse: int, c: int, status: str) -> dict:
    await s.fleet.status_notification(s.endpoint, evse, c, status)
    return {}


async def authorize(s: StationSession, p: dict) -> dict:
    token = p["idToken"]
    decision = await s.fleet.authorize(s.endpoint, token["idToken"], token["type"])
    return {"idTokenInfo": decision.id_token_info()}


async def transaction_event(s: StationSession, p: dict) -> dict:
    when = canonical_time(p["timestamp"])
    info = p["transactionInfo"]
    tx_key = info["transactionId"]
    evse = p.get("evse")
    id_token = p.get("idToken")
    token = (id_token or {}).get("idToken")
    meter = p.get("meterValue")
    state = info.get("chargingState")
    if p["eventType"] == "Started":
        _, decision = await s.fleet.start_transaction(
            s.endpoint,
            (evse or {}).get("id", 0),
            token,
            None,  # 2.0.1 has no meterStart: the fleet reads it from the meter values
            when,
            tx_key=tx_key,
            remote_start_id=info.get("remoteStartId"),
            connector_id=(evse or {}).get("connectorId"),
            meter_values=meter,
            charging_state=state,
            token_type=(id_token or {}).get("type"),
        )
        return {"idTokenInfo": decision.id_token_info()} if token is not None else {}
    # later events name the EVSE only if it changed: the stored one holds
    connector = evse["id"] if evse else await s.fleet.transaction_connector(s.endpoint, tx_key) or 0
    decision = None
    if id_token is not None:  # a token presented mid-transaction is authorized too
        decision = await s.fleet.authorize(
            s.endpoint,
            id_token["idToken"],
            id_token["type"],
            purpose="stop" if p["eventType"] == "Ended" else "start",
            evse=connector,
            tx_key=tx_key,
        )
    if p["eventType"] == "Ended":
        await s.fleet.stop_transaction(
            s.endpoint,
            tx_key,
            None,  # the energy register in its meter values, else the latest reading
            when,
            info.get("stoppedReason"),
            meter_values=meter,
            evse=connector,
            id_tag=token,
            charging_state=state,
            learn=True,
        )
    else:
        await s.fleet.meter_values(
            s.endpoint,
            connector,
            tx_key,
            meter or [],
            charging_state=state,
            id_tag=token,
            accepted=decision is None or decision.accepted,
            learn=True,
        )
    return {"idTokenInfo": decision.id_token_info()} if decision else {}


async def meter_values(s: StationSession, p: dict) -> dict:
    await s.fleet.meter_values(s.endpoint, p["evseId"], None, p["meterValue"])
    return {}


async def notify_event(s: StationSession, p: dict) -> dict:
    """Kept as sent; a Problem or an AvailabilityState of the station, an EVSE or a
    connector also reaches its status (some stations report faults only this way)."""
    await s.fleet.record_event(s.endpoint, "NotifyEvent", p)
    for e in p["eventData"]:
        component, variable = e["component"], e["variable"]["name"]
        if component["name"] not in ("ChargingStation", "EVSE", "Connector"):
            continue
        evse = component.get("evse") or {}
        if variable == "Problem":
            await s.fleet.problem(
                s.endpoint,
                evse.get("id"),
                evse.get("connectorId"),
                e["actualValue"].strip().lower() == "true",
                e.get("techInfo"),
            )
        elif (
            variable == "AvailabilityState"
            and e["actualValue"] in STATUSES
            and "id" in evse
            and "connectorId" in evse
        ):
            await s.fleet.status_notification(
                s.endpoint, evse["id"], evse["connectorId"], e["actualValue"]
            )
    return {}


async def notify_report(s: Station201, p: dict) -> dict:
    pending = s.reports.get(p["requestId"]) if s.reports else None
    if pending is None:  # a report nobody here asked for is kept as an event
        await s.fleet.record_event(s.endpoint, "NotifyReport", p)
    elif not pending[1].done():
        entries, done, size = pending
        part = p.get("reportData") or []
        entries.extend(part)
        pending[2] = size = size + len(orjson.dumps(part))
        if size > s.fleet.budgets.report:
            done.set_exception(
                OverBudget(
                    f"chargestation {s.endpoint}: its report is over the "
                    f"{s.fleet.budgets.report} bytes a report may have"
                )
            )
        elif not p.get("tbc", False):
            done.set_result(entries)
    return {}


class Station201(StationSession):
    __slots__ = ("reports",)
    _request_ids = itertools.count(1)
    HANDLERS: ClassVar[Mapping[str, Handler]] = {
        "BootNotification": boot,
        "Heartbeat": heartbeat,
        "StatusNotification": status_notification,
        "Authorize": authorize,
        "TransactionEvent": transaction_event,
        "MeterValues": meter_values,
        "NotifyReport": notify_report,
        "NotifyEvent": notify_event,
        # no vendor extension is implemented, and UnknownVendorId is the spec's answer for that
        "DataTransfer": kept_as_event("DataTransfer", {"status": "UnknownVendorId"}),
        **{
            action: kept_as_event(action, {})
            for action in (
                "FirmwareStatusNotification",
                "LogStatusNotification",
                "SecurityEventNotification",
            )
        },
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # request id -> [report parts so far, future set by the last part, bytes so far];
        # made on first use
        self.reports: dict[int, list] | None = None

    def closed(self) -> None:
        super().closed()
        for _, done, _ in (self.reports or {}).values():
            if not done.done():
                done.set_exception(RpcClosed("the station went offline"))

    async def fetch_config(
        self, keys: tuple[str, ...], timeout: float
    ) -> tuple[list[dict], list[str]]:
        if keys:
            return await self._get_variables(keys, timeout)
        return await self._base_report(timeout), []

    async def _get_variables(
        self, keys: tuple[str, ...], timeout: float
    ) -> tuple[list[dict], list[str]]:
        wanted = []
        for key in keys:
            component, variable = parse_key(key)
            wanted.append({"component": component, "variable": variable})
        r = await self.call("GetVariables", {"getVariableData": wanted}, timeout)
        entries, unknown = [], []
        for res in r["getVariableResult"]:
            key = config_key(res["component"], res["variable"])
            if res["attributeStatus"] == "Accepted":
                entries.append(
                    {
                        "key": key,
                        "value": res.get("attributeValue"),
                        "readonly": None,
                        "component": res["component"]["name"],
                        "variable": res["variable"]["name"],
                    }
                )
            else:
                unknown.append(f"{key} ({res['attributeStatus']})")
        return entries, unknown

    async def _base_report(self, timeout: float) -> list[dict]:
        request_id = next(self._request_ids)
        done = asyncio.get_running_loop().create_future()
        if self.reports is None:
            self.reports = {}
        self.reports[request_id] = [[], done, 0]
        try:
            r = await self.call(
                "GetBaseReport", {"requestId": request_id, "reportBase": "FullInventory"}, timeout
            )
            if r["status"] != "Accepted":
                raise StationRejected(
                    f"chargestation {self.endpoint} refused GetBaseReport: {r['status']}"
                )
            report = await done  # the caller's deadline bounds this wait
        except OverBudget as e:
            raise StationRejected(e.message) from None
        finally:
            self.reports.pop(request_id, None)
        entries = []
        for item in report:
            for attr in item.get("variableAttribute") or []:
                if attr.get("type", "Actual") != "Actual":
                    continue
                entry = {
                    "key": config_key(item["component"], item["variable"]),
                    "value": attr.get("value"),
                    "readonly": attr.get("mutability") == "ReadOnly",
                    "component": item["component"]["name"],
                    "variable": item["variable"]["name"],
                }
                evse = item["component"].get("evse") or {}
                if "id" in evse:
                    entry["evse"] = evse["id"]
                    if "connectorId" in evse:
                        entry["connector"] = evse["connectorId"]
                entries.append(entry)
        return entries

    def translate(self, command: Command) -> tuple[str, dict]:
        return translate(command)

    def answer_status(self, command: Command, action: str, answer: dict) -> str:
        if action == "SetVariables":
            results = answer.get("setVariableResult") or [{}]
            return str(results[0].get("attributeStatus", "Rejected"))
        return super().answer_status(command, action, answer)

    async def change_availability(self, command: ChangeAvailability, timeout: float) -> str:
        payload: dict = {"operationalStatus": "Operative" if command.operative else "Inoperative"}
        if command.evse is not None:
            payload["evse"] = {
                "id": command.evse,
                **({"connectorId": command.connector} if command.connector is not None else {}),
            }
        r = await self.call("ChangeAvailability", payload, timeout)
        return r["status"]
