"""OCPP 2.0.1: the central system's answers to a station, and the calls it sends.

Each handler translates the message into a `Fleet` call and its result back into OCPP 2.0.1.
Nested objects arrive as snake_case dicts (ocpp-notes.md §1.2). Handlers take **kwargs.
"""

from __future__ import annotations

import asyncio
import itertools

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result, datatypes
from ocpp.v201.enums import (
    Action,
    OperationalStatusEnumType,
    RegistrationStatusEnumType,
    ReportBaseEnumType,
)

from edrvctl.errors import StationRejected, UsageError
from edrvctl.model import utcnow
from edrvctl.server.ocpp_base import RobustChargePoint, checked_time, kept_as_event


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


class Station201(RobustChargePoint, ChargePoint):
    actions = Action
    _request_ids = itertools.count(1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # request id -> (entries so far, future set when the last part arrives)
        self._reports: dict[int, tuple[list, asyncio.Future]] = {}

    # --- what the station says ---

    @on(Action.boot_notification)
    def on_boot(self, charging_station, reason, **kw):
        modem = charging_station.get("modem") or {}
        info = {"chargePointVendor": charging_station.get("vendor_name"),
                "chargePointModel": charging_station.get("model"),
                "chargePointSerialNumber": charging_station.get("serial_number"),
                "firmwareVersion": charging_station.get("firmware_version"),
                "iccid": modem.get("iccid"), "imsi": modem.get("imsi"), "reason": reason}
        status, interval = self.fleet.boot(self.id, info)
        return call_result.BootNotification(current_time=utcnow(), interval=interval,
                                            status=RegistrationStatusEnumType(status))

    @on(Action.status_notification)
    def on_status(self, timestamp, connector_status, evse_id, connector_id, **kw):
        checked_time(timestamp, "timestamp")
        self.fleet.status_notification(self.id, evse_id, connector_id, connector_status)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_token, **kw):
        status = self.fleet.authorize(self.id, id_token["id_token"])
        return call_result.Authorize(id_token_info={"status": status})

    @on(Action.transaction_event)
    def on_transaction_event(self, event_type, timestamp, trigger_reason, seq_no,
                             transaction_info, evse=None, id_token=None, meter_value=None, **kw):
        when = checked_time(timestamp, "timestamp")
        tx_key = transaction_info["transaction_id"]
        connector = (evse or {}).get("id", 0)
        status = None
        if event_type == "Started":
            _, status = self.fleet.start_transaction(
                self.id, connector, (id_token or {}).get("id_token"), None, when, tx_key=tx_key)
        elif id_token is not None:  # a token presented mid-transaction is authorized too
            status = self.fleet.authorize(self.id, id_token["id_token"])
        if meter_value:
            self.fleet.meter_values(self.id, connector, tx_key, self.raw["meterValue"])
        if event_type == "Ended":
            self.fleet.stop_transaction(self.id, tx_key, None, when,
                                        transaction_info.get("stopped_reason"))
        return call_result.TransactionEvent(
            id_token_info={"status": status} if id_token is not None and status else None)

    @on(Action.meter_values)
    def on_meter_values(self, evse_id, meter_value, **kw):
        for mv in meter_value:
            checked_time(mv.get("timestamp"), "meterValue.timestamp")
        self.fleet.meter_values(self.id, evse_id, None, self.raw["meterValue"])
        return call_result.MeterValues()

    # Notifications that are only kept, as the station sent them (DataTransfer: no vendor
    # extension is implemented, and UnknownVendorId is the spec's answer for that).
    on_data_transfer = kept_as_event(
        Action.data_transfer, lambda: call_result.DataTransfer(status="UnknownVendorId"))
    on_firmware_status_notification = kept_as_event(
        Action.firmware_status_notification, call_result.FirmwareStatusNotification)
    on_log_status_notification = kept_as_event(
        Action.log_status_notification, call_result.LogStatusNotification)
    on_security_event_notification = kept_as_event(
        Action.security_event_notification, call_result.SecurityEventNotification, "timestamp")
    on_notify_event = kept_as_event(
        Action.notify_event, call_result.NotifyEvent, "generated_at")

    @on(Action.notify_report)
    def on_notify_report(self, request_id, generated_at, seq_no, report_data=None, tbc=False,
                         **kw):
        checked_time(generated_at, "generatedAt")
        pending = self._reports.get(request_id)
        if pending is None:  # a report nobody here asked for is kept as an event
            self.fleet.record_event(self.id, "NotifyReport", self.raw)
        else:
            entries, done = pending
            entries.extend(report_data or [])
            if not tbc and not done.done():
                done.set_result(entries)
        return call_result.NotifyReport()

    # --- what the central system asks (always through Session.command) ---

    async def fetch_config(self, keys: list[str]) -> tuple[list[dict], list[str]]:
        if keys:
            return await self._get_variables(keys)
        return await self._base_report(), []

    async def _get_variables(self, keys: list[str]) -> tuple[list[dict], list[str]]:
        wanted = []
        for key in keys:
            component, variable = parse_key(key)
            wanted.append(datatypes.GetVariableDataType(
                component=datatypes.ComponentType(**component),
                variable=datatypes.VariableType(**variable)))
        r = await self.call(call.GetVariables(get_variable_data=wanted), suppress=False)
        entries, unknown = [], []
        for res in r.get_variable_result:
            key = config_key(res["component"], res["variable"])
            if res["attribute_status"] == "Accepted":
                entries.append({"key": key, "value": res.get("attribute_value"),
                                "readonly": None, "component": res["component"]["name"],
                                "variable": res["variable"]["name"]})
            else:
                unknown.append(f"{key} ({res['attribute_status']})")
        return entries, unknown

    async def _base_report(self) -> list[dict]:
        request_id = next(self._request_ids)
        done = asyncio.get_running_loop().create_future()
        self._reports[request_id] = ([], done)
        try:
            r = await self.call(call.GetBaseReport(
                request_id=request_id, report_base=ReportBaseEnumType.full_inventory),
                suppress=False)
            if r.status != "Accepted":
                raise StationRejected(f"chargestation {self.id} refused GetBaseReport: "
                                      f"{r.status}")
            report = await done  # the caller's deadline bounds this wait
        finally:
            self._reports.pop(request_id, None)
        entries = []
        for item in report:
            for attr in item.get("variable_attribute") or []:
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

    async def change_availability(self, operative: bool) -> str:
        r = await self.call(call.ChangeAvailability(
            operational_status=OperationalStatusEnumType.operative if operative
            else OperationalStatusEnumType.inoperative), suppress=False)
        return r.status
