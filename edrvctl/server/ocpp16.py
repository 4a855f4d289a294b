"""OCPP 1.6-J: the central system's answers to a station, and its commands in 1.6.

Each handler gets the payload exactly as the station sent it (validated against the official
schema, date-times included) and translates it into a `Fleet` call; what it returns is the
answer's payload (validated too before it is sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from edrvctl.fleet.live import ChangeAvailability
from edrvctl.model import canonical_time, utcnow
from edrvctl.ocppj.rpc import Handler
from edrvctl.server.stations import StationSession


async def boot(s: StationSession, p: dict) -> dict:
    status, interval = await s.fleet.boot(s.endpoint, p)
    return {"currentTime": utcnow(), "interval": interval, "status": status}


def heartbeat(s: StationSession, p: dict) -> dict:
    s.fleet.heartbeat(s.endpoint)
    return {"currentTime": utcnow()}


async def status_notification(s: StationSession, p: dict) -> dict:
    # 1.6 has no EVSEs: connector n is recorded as EVSE n, connector n; 0 is the station
    c = p["connectorId"]
    await s.fleet.status_notification(
        s.endpoint, c, c, p["status"], error_code=p["errorCode"], info=p.get("info")
    )
    return {}


async def authorize(s: StationSession, p: dict) -> dict:
    return {"idTagInfo": {"status": await s.fleet.authorize(s.endpoint, p["idTag"])}}


async def start_transaction(s: StationSession, p: dict) -> dict:
    tx_key, status = await s.fleet.start_transaction(
        s.endpoint, p["connectorId"], p["idTag"], p["meterStart"], canonical_time(p["timestamp"])
    )
    return {"transactionId": int(tx_key), "idTagInfo": {"status": status}}


async def stop_transaction(s: StationSession, p: dict) -> dict:
    await s.fleet.stop_transaction(
        s.endpoint,
        str(p["transactionId"]),
        p["meterStop"],
        canonical_time(p["timestamp"]),
        p.get("reason"),
        meter_values=p.get("transactionData"),
    )
    return {"idTagInfo": {"status": "Accepted"}} if p.get("idTag") else {}


async def meter_values(s: StationSession, p: dict) -> dict:
    tx = p.get("transactionId")
    await s.fleet.meter_values(
        s.endpoint, p["connectorId"], None if tx is None else str(tx), p["meterValue"]
    )
    return {}


def kept_as_event(action: str, answer: dict) -> Any:
    """A notification that is only kept, as the station sent it, as an event named after its
    action."""

    async def handler(s: StationSession, p: dict) -> dict:
        await s.fleet.record_event(s.endpoint, action, p)
        return answer

    return handler


class Station16(StationSession):
    __slots__ = ()
    HANDLERS: ClassVar[Mapping[str, Handler]] = {
        "BootNotification": boot,
        "Heartbeat": heartbeat,
        "StatusNotification": status_notification,
        "Authorize": authorize,
        "StartTransaction": start_transaction,
        "StopTransaction": stop_transaction,
        "MeterValues": meter_values,
        # no vendor extension is implemented, and UnknownVendorId is the spec's answer for that
        "DataTransfer": kept_as_event("DataTransfer", {"status": "UnknownVendorId"}),
        **{
            action: kept_as_event(action, {})
            for action in (
                "FirmwareStatusNotification",
                "DiagnosticsStatusNotification",
                "SecurityEventNotification",
                "LogStatusNotification",
                "SignedFirmwareStatusNotification",
            )
        },
    }

    async def fetch_config(
        self, keys: tuple[str, ...], timeout: float
    ) -> tuple[list[dict], list[str]]:
        r = await self.call("GetConfiguration", {"key": list(keys)} if keys else {}, timeout)
        entries = [
            {"key": e["key"], "value": e.get("value"), "readonly": e["readonly"]}
            for e in r.get("configurationKey") or []
        ]
        return entries, list(r.get("unknownKey") or [])

    async def change_availability(self, command: ChangeAvailability, timeout: float) -> str:
        r = await self.call(
            "ChangeAvailability",
            {
                "connectorId": command.connector or 0,
                "type": "Operative" if command.operative else "Inoperative",
            },
            timeout,
        )
        return r["status"]
