"""OCPP 1.6-J: the central system's answers to a station, and its commands in 1.6.

Each handler gets the payload exactly as the station sent it (validated against the official
schema, date-times included) and translates it into a `Fleet` call; what it returns is the
answer's payload (validated too before it is sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from edrvctl.errors import UsageError
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
    TriggerMessage,
    UnlockConnector,
    UpdateFirmware,
)
from edrvctl.fleet.tokens import id_tag_info
from edrvctl.model import canonical_time, utcnow
from edrvctl.ocppj import RpcError, schemas
from edrvctl.ocppj.rpc import Handler
from edrvctl.server.stations import StationSession, translated


async def boot(s: StationSession, p: dict) -> dict:
    status, interval = await s.fleet.boot(s.endpoint, p)
    return {"currentTime": utcnow(), "interval": interval, "status": status}


def heartbeat(s: StationSession, p: dict) -> dict:
    s.fleet.heartbeat(s.endpoint)
    return {"currentTime": utcnow()}


def status_notification(s: StationSession, p: dict) -> Any:
    # 1.6 has no EVSEs: connector n is recorded as EVSE n, connector n; 0 is the station
    c, status, error, info = p["connectorId"], p["status"], p["errorCode"], p.get("info")
    fleet = s.fleet
    if not fleet.is_followed(s.endpoint) and fleet.status_repeated(
        s.endpoint, c, c, status, error, info
    ):
        return {}  # answered at once: nothing to write
    return _status_notification(s, c, status, error, info)


async def _status_notification(
    s: StationSession, c: int, status: str, error: str, info: str | None
) -> dict:
    await s.fleet.status_notification(s.endpoint, c, c, status, error_code=error, info=info)
    return {}


async def authorize(s: StationSession, p: dict) -> dict:
    return {"idTagInfo": (await s.fleet.authorize(s.endpoint, p["idTag"])).id_tag_info()}


async def start_transaction(s: StationSession, p: dict) -> dict:
    tx_key, decision = await s.fleet.start_transaction(
        s.endpoint, p["connectorId"], p["idTag"], p["meterStart"], canonical_time(p["timestamp"])
    )
    return {"transactionId": int(tx_key), "idTagInfo": decision.id_tag_info()}


async def stop_transaction(s: StationSession, p: dict) -> dict:
    await s.fleet.stop_transaction(
        s.endpoint,
        str(p["transactionId"]),
        p["meterStop"],
        canonical_time(p["timestamp"]),
        p.get("reason"),
        meter_values=p.get("transactionData"),
    )
    if not p.get("idTag"):
        return {}
    decision = await s.fleet.authorize(s.endpoint, p["idTag"], purpose="stop")
    return {"idTagInfo": decision.id_tag_info()}


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


TRIGGERS = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)


def _connector(evse: int | None, connector: int | None, required: bool) -> int | None:
    """1.6 has no EVSEs: connector n is EVSE n, so either names it (not two different ones)."""
    if evse is not None and connector is not None and evse != connector:
        raise UsageError(
            "OCPP 1.6 has no EVSEs: give the connector only (connector n is EVSE n there)"
        )
    n = connector if connector is not None else evse
    if required and n is None:
        raise UsageError("OCPP 1.6 needs the connector (--connector N)")
    return n


def _reset(c: Reset) -> tuple[str, dict]:
    if c.evse is not None:
        raise UsageError("OCPP 1.6 resets the whole station: it takes no EVSE")
    return "Reset", {"type": "Hard" if c.hard else "Soft"}


def _unlock(c: UnlockConnector) -> tuple[str, dict]:
    n = _connector(c.evse, c.connector, required=True)
    return "UnlockConnector", {"connectorId": n}


def _trigger(c: TriggerMessage) -> tuple[str, dict]:
    if c.message not in TRIGGERS:
        raise UsageError(
            f"OCPP 1.6 cannot trigger {c.message!r}; it triggers {', '.join(TRIGGERS)}"
        )
    n = _connector(c.evse, c.connector, required=False)
    return "TriggerMessage", {
        "requestedMessage": c.message,
        **({"connectorId": n} if n is not None else {}),
    }


def _configure(c: Configure) -> tuple[str, dict]:
    return "ChangeConfiguration", {"key": c.key, "value": c.value}


def _data_transfer(c: DataTransfer) -> tuple[str, dict]:
    p: dict = {"vendorId": c.vendor}
    if c.message_id is not None:
        p["messageId"] = c.message_id
    if c.data is not None:
        p["data"] = c.data
    return "DataTransfer", p


def _remote_start(c: RemoteStart) -> tuple[str, dict]:
    n = _connector(c.evse, c.connector, required=False)
    return "RemoteStartTransaction", {
        "idTag": c.id_tag,
        **({"connectorId": n} if n is not None else {}),
    }


def _remote_stop(c: RemoteStop) -> tuple[str, dict]:
    try:
        tx = int(c.transaction_id)
    except ValueError:
        raise UsageError(
            f"OCPP 1.6 transaction ids are integers, not {c.transaction_id!r}"
        ) from None
    return "RemoteStopTransaction", {"transactionId": tx}


def _update_firmware(c: UpdateFirmware) -> tuple[str, dict]:
    return "UpdateFirmware", {"location": c.url, "retrieveDate": c.retrieve_at or utcnow()}


def _diagnostics(c: GetDiagnostics) -> tuple[str, dict]:
    if c.security:  # the security extension's GetLog
        log: dict = {"remoteLocation": c.url}
        if c.since:
            log["oldestTimestamp"] = c.since
        if c.until:
            log["latestTimestamp"] = c.until
        return "GetLog", {"logType": "SecurityLog", "requestId": c.request_id or 0, "log": log}
    p: dict = {"location": c.url}
    if c.since:
        p["startTime"] = c.since
    if c.until:
        p["stopTime"] = c.until
    return "GetDiagnostics", p


def _send_local_list(c: SendLocalList) -> tuple[str, dict]:
    p: dict = {"listVersion": c.version, "updateType": "Full" if c.full else "Differential"}
    if c.entries:
        p["localAuthorizationList"] = [
            {
                "idTag": e.id_tag,
                **({"idTagInfo": id_tag_info(e.status, e.expiry, e.group)} if e.status else {}),
            }
            for e in c.entries
        ]
    return "SendLocalList", p


def raw_call(version: str) -> Any:
    """RawCall's translation: the payload as given, checked against the version's schema."""

    def translate(c: RawCall) -> tuple[str, dict]:
        try:
            schemas.validate(version, c.action, schemas.REQUEST, c.payload)
        except RpcError as e:
            raise UsageError(
                f"not an OCPP {version} {c.action}: {e.cause or e.description}"
            ) from None
        return c.action, c.payload

    return translate


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
    RawCall: raw_call("1.6"),
    SendLocalList: _send_local_list,
    GetLocalListVersion: lambda c: ("GetLocalListVersion", {}),
}


def translate(command: Command) -> tuple[str, dict]:
    """A command in OCPP 1.6: (action, payload); UsageError if 1.6 cannot take it."""
    return translated(TRANSLATIONS, "1.6", command)


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

    def translate(self, command: Command) -> tuple[str, dict]:
        return translate(command)

    def answer_status(self, command: Command, action: str, answer: dict) -> str:
        if action == "GetDiagnostics":
            return "Accepted" if answer.get("fileName") else "NoFile"
        return super().answer_status(command, action, answer)

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
