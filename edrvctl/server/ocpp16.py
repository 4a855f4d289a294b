"""OCPP 1.6-J: the central system's answers to a station, and the calls it sends.

Each handler translates the message into a `Fleet` call and its result back into OCPP 1.6.
Handlers take **kwargs: optional fields the station may add must never fail a message.
"""

from __future__ import annotations

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, AvailabilityType, RegistrationStatus

from edrvctl.model import utcnow
from edrvctl.server.ocpp_base import RobustChargePoint, checked_time, kept_as_event


class Station16(RobustChargePoint, ChargePoint):
    actions = Action

    # --- what the station says ---

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor, charge_point_model, **kw):
        info = {"chargePointVendor": charge_point_vendor, "chargePointModel": charge_point_model,
                **snake_to_camel_case(kw)}
        status, interval = self.fleet.boot(self.id, info)
        return call_result.BootNotification(current_time=utcnow(), interval=interval,
                                            status=RegistrationStatus(status))

    @on(Action.status_notification)
    def on_status(self, connector_id, error_code, status, info=None, timestamp=None, **kw):
        checked_time(timestamp, "timestamp")
        # 1.6 has no EVSEs: connector n is recorded as EVSE n, connector n; 0 is the station
        self.fleet.status_notification(self.id, connector_id, connector_id, status,
                                       error_code=error_code, info=info)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag, **kw):
        return call_result.Authorize(id_tag_info={"status": self.fleet.authorize(self.id, id_tag)})

    @on(Action.start_transaction)
    def on_start(self, connector_id, id_tag, meter_start, timestamp, **kw):
        when = checked_time(timestamp, "timestamp")
        tx_key, status = self.fleet.start_transaction(self.id, connector_id, id_tag,
                                                      meter_start, when)
        return call_result.StartTransaction(transaction_id=int(tx_key),
                                            id_tag_info={"status": status})

    @on(Action.stop_transaction)
    def on_stop(self, meter_stop, timestamp, transaction_id, reason=None, transaction_data=None,
                **kw):
        when = checked_time(timestamp, "timestamp")
        if transaction_data:
            self.fleet.meter_values(self.id, 0, str(transaction_id),
                                    self.raw["transactionData"])
        self.fleet.stop_transaction(self.id, str(transaction_id), meter_stop, when, reason)
        return call_result.StopTransaction(id_tag_info={"status": "Accepted"}
                                           if kw.get("id_tag") else None)

    @on(Action.meter_values)
    def on_meter_values(self, connector_id, meter_value, transaction_id=None, **kw):
        for mv in meter_value:
            checked_time(mv.get("timestamp"), "meterValue.timestamp")
        self.fleet.meter_values(self.id, connector_id,
                                None if transaction_id is None else str(transaction_id),
                                self.raw["meterValue"])
        return call_result.MeterValues()

    # Notifications that are only kept, as the station sent them (DataTransfer: no vendor
    # extension is implemented, and UnknownVendorId is the spec's answer for that).
    on_data_transfer = kept_as_event(
        Action.data_transfer, lambda: call_result.DataTransfer(status="UnknownVendorId"))
    on_firmware_status_notification = kept_as_event(
        Action.firmware_status_notification, call_result.FirmwareStatusNotification)
    on_diagnostics_status_notification = kept_as_event(
        Action.diagnostics_status_notification, call_result.DiagnosticsStatusNotification)
    on_security_event_notification = kept_as_event(
        Action.security_event_notification, call_result.SecurityEventNotification, "timestamp")
    on_log_status_notification = kept_as_event(
        Action.log_status_notification, call_result.LogStatusNotification)
    on_signed_firmware_status_notification = kept_as_event(
        Action.signed_firmware_status_notification,
        call_result.SignedFirmwareStatusNotification)

    # --- what the central system asks (always through Session.command) ---

    async def fetch_config(self, keys: list[str]) -> tuple[list[dict], list[str]]:
        r = await self.call(call.GetConfiguration(key=keys or None), suppress=False)
        entries = [{"key": e["key"], "value": e.get("value"), "readonly": e["readonly"]}
                   for e in r.configuration_key or []]
        return entries, list(r.unknown_key or [])

    async def change_availability(self, operative: bool) -> str:
        r = await self.call(call.ChangeAvailability(
            connector_id=0,
            type=AvailabilityType.operative if operative else AvailabilityType.inoperative),
            suppress=False)
        return r.status
