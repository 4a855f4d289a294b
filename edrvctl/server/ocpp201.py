"""OCPP 2.0.1: the central system's answers to a station, and its commands in 2.0.1.

Handlers get the payload exactly as sent (camelCase, validated against the official schema,
date-times included) and return the answer's payload.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from edrvctl.errors import StationRejected, UsageError
from edrvctl.fleet.live import ChangeAvailability
from edrvctl.model import canonical_time, utcnow
from edrvctl.ocppj import RpcClosed
from edrvctl.server.ocpp16 import heartbeat, kept_as_event
from edrvctl.server.stations import StationSession


def config_key(component: dict, variable: dict) -> str:
    """'Component.Variable', with '[instance]' after either part when it has one."""
    def part(d: dict) -> str:
        return d["name"] + (f"[{d['instance']}]" if d.get("instance") else "")
    return f"{part(component)}.{part(variable)}"


def parse_key(key: str) -> tuple[dict, dict]:
    component, dot, variable = key.partition(".")
    if not dot or not component or not variable:
        raise UsageError(f"OCPP 2.0.1 keys are written Component.Variable, not {key!r} "
                         "(e.g. OCPPCommCtrlr.HeartbeatInterval)")

    def part(text: str) -> dict:
        name, _, instance = text.partition("[")
        return {"name": name, **({"instance": instance.rstrip("]")} if instance else {})}
    return part(component), part(variable)


async def boot(s: StationSession, p: dict) -> dict:
    cs = p["chargingStation"]
    modem = cs.get("modem") or {}
    info = {"chargePointVendor": cs.get("vendorName"), "chargePointModel": cs.get("model"),
            "chargePointSerialNumber": cs.get("serialNumber"),
            "firmwareVersion": cs.get("firmwareVersion"),
            "iccid": modem.get("iccid"), "imsi": modem.get("imsi"), "reason": p["reason"]}
    status, interval = await s.fleet.boot(s.endpoint, info)
    return {"currentTime": utcnow(), "interval": interval, "status": status}


async def status_notification(s: StationSession, p: dict) -> dict:
    await s.fleet.status_notification(s.endpoint, p["evseId"], p["connectorId"],
                                      p["connectorStatus"])
    return {}


async def authorize(s: StationSession, p: dict) -> dict:
    status = await s.fleet.authorize(s.endpoint, p["idToken"]["idToken"])
    return {"idTokenInfo": {"status": status}}


async def transaction_event(s: StationSession, p: dict) -> dict:
    when = canonical_time(p["timestamp"])
    info = p["transactionInfo"]
    tx_key = info["transactionId"]
    connector = (p.get("evse") or {}).get("id", 0)
    id_token = p.get("idToken")
    status = None
    if p["eventType"] == "Started":
        _, status = await s.fleet.start_transaction(
            s.endpoint, connector, (id_token or {}).get("idToken"), None, when, tx_key=tx_key)
    elif id_token is not None:  # a token presented mid-transaction is authorized too
        status = await s.fleet.authorize(s.endpoint, id_token["idToken"])
    if p.get("meterValue"):
        await s.fleet.meter_values(s.endpoint, connector, tx_key, p["meterValue"])
    if p["eventType"] == "Ended":
        await s.fleet.stop_transaction(s.endpoint, tx_key, None, when, info.get("stoppedReason"))
    return {"idTokenInfo": {"status": status}} if id_token is not None and status else {}


async def meter_values(s: StationSession, p: dict) -> dict:
    await s.fleet.meter_values(s.endpoint, p["evseId"], None, p["meterValue"])
    return {}


async def notify_report(s: "Station201", p: dict) -> dict:
    pending = s.reports.get(p["requestId"]) if s.reports else None
    if pending is None:  # a report nobody here asked for is kept as an event
        await s.fleet.record_event(s.endpoint, "NotifyReport", p)
    else:
        entries, done = pending
        entries.extend(p.get("reportData") or [])
        if not p.get("tbc", False) and not done.done():
            done.set_result(entries)
    return {}


class Station201(StationSession):
    __slots__ = ("reports",)
    _request_ids = itertools.count(1)
    HANDLERS = {
        "BootNotification": boot,
        "Heartbeat": heartbeat,
        "StatusNotification": status_notification,
        "Authorize": authorize,
        "TransactionEvent": transaction_event,
        "MeterValues": meter_values,
        "NotifyReport": notify_report,
        # no vendor extension is implemented, and UnknownVendorId is the spec's answer for that
        "DataTransfer": kept_as_event("DataTransfer", {"status": "UnknownVendorId"}),
        **{action: kept_as_event(action, {}) for action in (
            "FirmwareStatusNotification", "LogStatusNotification",
            "SecurityEventNotification", "NotifyEvent")},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # request id -> (report parts so far, future set by the last part); made on first use
        self.reports: dict[int, tuple[list, asyncio.Future]] | None = None

    def closed(self) -> None:
        super().closed()
        for _, done in (self.reports or {}).values():
            if not done.done():
                done.set_exception(RpcClosed("the station went offline"))

    async def fetch_config(self, keys: tuple[str, ...],
                           timeout: float) -> tuple[list[dict], list[str]]:
        if keys:
            return await self._get_variables(keys, timeout)
        return await self._base_report(timeout), []

    async def _get_variables(self, keys: tuple[str, ...],
                             timeout: float) -> tuple[list[dict], list[str]]:
        wanted = []
        for key in keys:
            component, variable = parse_key(key)
            wanted.append({"component": component, "variable": variable})
        r = await self.call("GetVariables", {"getVariableData": wanted}, timeout)
        entries, unknown = [], []
        for res in r["getVariableResult"]:
            key = config_key(res["component"], res["variable"])
            if res["attributeStatus"] == "Accepted":
                entries.append({"key": key, "value": res.get("attributeValue"),
                                "readonly": None, "component": res["component"]["name"],
                                "variable": res["variable"]["name"]})
            else:
                unknown.append(f"{key} ({res['attributeStatus']})")
        return entries, unknown

    async def _base_report(self, timeout: float) -> list[dict]:
        request_id = next(self._request_ids)
        done = asyncio.get_running_loop().create_future()
        if self.reports is None:
            self.reports = {}
        self.reports[request_id] = ([], done)
        try:
            r = await self.call("GetBaseReport", {"requestId": request_id,
                                                  "reportBase": "FullInventory"}, timeout)
            if r["status"] != "Accepted":
                raise StationRejected(f"chargestation {self.endpoint} refused GetBaseReport: "
                                      f"{r['status']}")
            report = await done  # the caller's deadline bounds this wait
        finally:
            self.reports.pop(request_id, None)
        entries = []
        for item in report:
            for attr in item.get("variableAttribute") or []:
                if attr.get("type", "Actual") != "Actual":
                    continue
                entry = {"key": config_key(item["component"], item["variable"]),
                         "value": attr.get("value"),
                         "readonly": attr.get("mutability") == "ReadOnly",
                         "component": item["component"]["name"],
                         "variable": item["variable"]["name"]}
                if (item["component"].get("evse") or {}).get("id") is not None:
                    entry["evse"] = item["component"]["evse"]["id"]
                entries.append(entry)
        return entries

    async def change_availability(self, command: ChangeAvailability, timeout: float) -> str:
        payload: dict = {"operationalStatus": "Operative" if command.operative
                         else "Inoperative"}
        if command.evse is not None:
            payload["evse"] = {"id": command.evse, **({"connectorId": command.connector}
                                                      if command.connector is not None else {})}
        r = await self.call("ChangeAvailability", payload, timeout)
        return r["status"]
