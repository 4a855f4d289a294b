"""OCPP 2.0.1 for a simulated station: what it sends, and its answers to the central system.

Handlers get the station and the CALL's payload exactly as sent (camelCase, already validated
against the official schema) and return the answer's payload; follow-ups (NotifyReport parts,
triggered messages, a remote start's transaction) go through `st._later(...)` and start once the
CALLRESULT is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from edrvctl.ocppj.rpc import Handler
from edrvctl.simulator import device
from edrvctl.simulator.device import utcnow

if TYPE_CHECKING:
    from edrvctl.simulator.station import SimStation, Tx

REPORT_ITEMS_KEY = "DeviceDataCtrlr.ItemsPerMessage[GetReport]"

# 2.0.1 stop reason and trigger for each (1.6-style) reason the station uses internally.
STOP_REASONS = {
    "Local": ("Local", "StopAuthorized"),
    "Remote": ("Remote", "RemoteStop"),
    "DeAuthorized": ("DeAuthorized", "Deauthorized"),
    "HardReset": ("ImmediateReset", "ResetCommand"),
    "SoftReset": ("ImmediateReset", "ResetCommand"),
    "UnlockCommand": ("Other", "UnlockCommand"),
    "EVDisconnected": ("EVDisconnected", "EVDeparted"),
}


def _meter(wh: float, w: float | None, context: str) -> list[dict]:
    sv: list[dict[str, Any]] = [
        {
            "value": round(wh, 1),
            "context": context,
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unitOfMeasure": {"unit": "Wh"},
        }
    ]
    if w is not None:
        sv.append(
            {
                "value": round(w, 1),
                "context": context,
                "measurand": "Power.Active.Import",
                "location": "Outlet",
                "unitOfMeasure": {"unit": "W"},
            }
        )
    return [{"timestamp": utcnow(), "sampledValue": sv}]


def _meter_values(st: SimStation, evse: int) -> dict:
    wh, w = st._sample(evse)
    return {"evseId": evse, "meterValue": _meter(wh, w, "Trigger")}


def _event(tx: Tx, event: str, trigger: str, meter: list[dict], **info: Any) -> dict:
    p: dict[str, Any] = {
        "eventType": event,
        "timestamp": utcnow(),
        "triggerReason": trigger,
        "seqNo": tx.next_seq(),
        "transactionInfo": {
            "transactionId": tx.tx_id,
            **{k: v for k, v in info.items() if v is not None},
        },
        "meterValue": meter,
    }
    if event == "Started":
        p["evse"] = {"id": tx.connector, "connectorId": 1}
    if event != "Updated":
        p["idToken"] = {"idToken": tx.id_tag, "type": tx.id_type}
    return p


def _updated(st: SimStation, tx: Tx, trigger: str, context: str) -> dict:
    wh, w = st._sample(tx.connector)
    return _event(tx, "Updated", trigger, _meter(wh, w, context), chargingState="Charging")


async def send_report(st: SimStation, request_id: int, entries: list[dict]) -> None:
    """The NotifyReport parts of a GetBaseReport, ItemsPerMessage[GetReport] entries each."""
    size = max(int(st.config.get(REPORT_ITEMS_KEY, "5")), 1)
    parts = [entries[i : i + size] for i in range(0, len(entries), size)]
    generated_at = utcnow()
    for seq_no, part in enumerate(parts):
        await st._call(
            "NotifyReport",
            {
                "requestId": request_id,
                "generatedAt": generated_at,
                "seqNo": seq_no,
                "reportData": part,
                "tbc": seq_no < len(parts) - 1,
            },
        )


# --- CSMS calls ---------------------------------------------------------------------------------


def get_variables(st: SimStation, p: dict) -> dict:
    results = []
    for item in p["getVariableData"]:
        ckey, key = device.request_key(item["component"], item["variable"])
        result = {"component": item["component"], "variable": item["variable"]}
        if "attributeType" in item:
            result["attributeType"] = item["attributeType"]
        if item.get("attributeType", "Actual") != "Actual":
            result["attributeStatus"] = "NotSupportedAttributeType"
        elif key in st.config:
            result.update(attributeStatus="Accepted", attributeValue=st.config[key])
        else:
            result["attributeStatus"] = (
                "UnknownVariable" if ckey in st._layout.components else "UnknownComponent"
            )
        results.append(result)
    return {"getVariableResult": results}


def set_variables(st: SimStation, p: dict) -> dict:
    results = []
    for item in p["setVariableData"]:
        ckey, key = device.request_key(item["component"], item["variable"])
        if item.get("attributeType", "Actual") != "Actual":
            status = "NotSupportedAttributeType"
        else:
            missing = "UnknownVariable" if ckey in st._layout.components else "UnknownComponent"
            status = st._set_config(key, item["attributeValue"], not_found=missing)
        result = {
            "attributeStatus": status,
            "component": item["component"],
            "variable": item["variable"],
        }
        if "attributeType" in item:
            result["attributeType"] = item["attributeType"]
        results.append(result)
    return {"setVariableResult": results}


def get_base_report(st: SimStation, p: dict) -> dict:
    entries = device.report(st._layout.meta, st.config, p["reportBase"])
    if not entries:
        return {"status": "EmptyResultSet"}
    st._later(send_report, st, p["requestId"], entries)
    return {"status": "Accepted"}


def change_availability(st: SimStation, p: dict) -> dict:
    evse = p.get("evse")
    target = evse["id"] if evse else 0
    return {"status": st._change_availability(target, p["operationalStatus"] == "Operative")}


def reset(st: SimStation, p: dict) -> dict:
    if p.get("evseId") is not None:
        return {"status": "Rejected"}  # resetting a single EVSE is not supported
    if p["type"] == "OnIdle" and st._txs:
        st._reset_when_idle = True
        return {"status": "Scheduled"}
    st._later(st._reboot, "HardReset")
    return {"status": "Accepted"}


def trigger_message(st: SimStation, p: dict) -> dict:
    evse = p.get("evse")
    evse_id = evse["id"] if evse else None
    if evse_id is not None and not 1 <= evse_id <= st.connectors:
        return {"status": "Rejected"}
    targets = [evse_id] if evse_id is not None else list(range(1, st.connectors + 1))
    requested = p["requestedMessage"]
    if requested == "BootNotification":
        st._later(st._triggered_boot)
    elif requested == "Heartbeat":
        st._later(st._call, "Heartbeat", {})
    elif requested == "StatusNotification":
        st._later(st._send_statuses, targets)
    elif requested == "MeterValues":
        st._later(st._send_each, "MeterValues", [_meter_values(st, c) for c in targets])
    elif requested == "TransactionEvent":
        txs = [st._txs[c] for c in targets if c in st._txs and st._txs[c].started]
        if not txs:
            return {"status": "Rejected"}
        st._later(
            st._send_each,
            "TransactionEvent",
            [_updated(st, tx, "Trigger", "Trigger") for tx in txs],
        )
    elif requested == "FirmwareStatusNotification":
        st._later(st._call, "FirmwareStatusNotification", {"status": "Idle"})
    elif requested == "LogStatusNotification":
        st._later(st._call, "LogStatusNotification", {"status": "Idle"})
    else:
        return {"status": "NotImplemented"}
    return {"status": "Accepted"}


def unlock_connector(st: SimStation, p: dict) -> dict:
    evse_id = p["evseId"]
    if not 1 <= evse_id <= st.connectors or p["connectorId"] != 1:
        return {"status": "UnknownConnector"}
    if evse_id in st._txs:
        return {"status": "OngoingAuthorizedTransaction"}
    return {"status": "Unlocked"}


def request_start_transaction(st: SimStation, p: dict) -> dict:
    token = p["idToken"]
    tx = st._reserve(
        p.get("evseId"), token["idToken"], token["type"], remote_start_id=p["remoteStartId"]
    )
    if tx is None:
        return {"status": "Rejected"}
    st._later(st._begin_tx, tx, st.config[V201.AUTH_REMOTE_KEY] == "true")
    return {"status": "Accepted"}


def request_stop_transaction(st: SimStation, p: dict) -> dict:
    tx = st._find_tx(p["transactionId"])
    if tx is None:
        return {"status": "Rejected"}
    st._request_stop(tx, "Remote")
    return {"status": "Accepted"}


def get_transaction_status(st: SimStation, p: dict) -> dict:
    """Every message is sent at once here: none is ever queued."""
    tx_id = p.get("transactionId")
    if tx_id is None:
        return {"messagesInQueue": False}
    return {"messagesInQueue": False, "ongoingIndicator": st._find_tx(tx_id) is not None}


def update_firmware(st: SimStation, p: dict) -> dict:
    rid = p["requestId"]
    st._later(
        st._update_firmware, p["firmware"]["location"], lambda s: {"status": s, "requestId": rid}
    )
    return {"status": "Accepted"}


def get_log(st: SimStation, p: dict) -> dict:
    rid = p["requestId"]
    name = f"{st.endpoint}-{p['logType']}-{rid}.txt"
    st._later(
        st._upload_log,
        p["log"]["remoteLocation"],
        name,
        "LogStatusNotification",
        lambda s: {"status": s, "requestId": rid},
        "UploadFailure",
    )
    return {"status": "Accepted", "filename": name}


def send_local_list(st: SimStation, p: dict) -> dict:
    entries = [
        ((e["idToken"]["idToken"], e["idToken"]["type"]), e.get("idTokenInfo"))
        for e in p.get("localAuthorizationList") or []
    ]
    full = p["updateType"] == "Full"
    return {"status": st._update_local_list(full, p["versionNumber"], entries)}


def get_local_list_version(st: SimStation, p: dict) -> dict:
    return {"versionNumber": st.local_list_version}


def accepted(st: SimStation, p: dict) -> dict:
    return {"status": "Accepted"}


def unknown_vendor(st: SimStation, p: dict) -> dict:
    return {"status": "UnknownVendorId"}  # no vendor extension is implemented


class V201:
    """OCPP 2.0.1 as a SimStation speaks it (never instantiated: one per version, shared)."""

    PROTOCOL = "ocpp2.0.1"
    VERSION = "2.0.1"
    HEARTBEAT_KEY = "OCPPCommCtrlr.HeartbeatInterval"
    METER_KEY = "SampledDataCtrlr.TxUpdatedInterval"
    AUTH_REMOTE_KEY = "AuthCtrlr.AuthorizeRemoteStart"
    PING_KEY = "OCPPCommCtrlr.WebSocketPingInterval"

    HANDLERS: ClassVar[Mapping[str, Handler]] = {
        "GetVariables": get_variables,
        "SetVariables": set_variables,
        "GetBaseReport": get_base_report,
        "ChangeAvailability": change_availability,
        "Reset": reset,
        "TriggerMessage": trigger_message,
        "UnlockConnector": unlock_connector,
        "RequestStartTransaction": request_start_transaction,
        "RequestStopTransaction": request_stop_transaction,
        "GetTransactionStatus": get_transaction_status,
        "ClearCache": accepted,
        "DataTransfer": unknown_vendor,
        "UpdateFirmware": update_firmware,
        "GetLog": get_log,
        "SendLocalList": send_local_list,
        "GetLocalListVersion": get_local_list_version,
    }

    # --- what the station sends -----------------------------------------------------------------

    @staticmethod
    def init_config(st: SimStation) -> None:
        c = st.config
        c["ChargingStation.Model"] = st.model
        c["ChargingStation.VendorName"] = st.vendor
        c["OCPPCommCtrlr.MessageTimeout[Default]"] = device.num(st.response_timeout)
        c["SecurityCtrlr.SecurityProfile"] = "1" if st.password else "0"

    @staticmethod
    def boot(st: SimStation, reason: str) -> dict:
        return {
            "chargingStation": {
                "model": st.model,
                "vendorName": st.vendor,
                "serialNumber": st.serial,
                "firmwareVersion": st.firmware,
            },
            "reason": reason,
        }

    @staticmethod
    def status(connector: int, state: str) -> dict | None:
        if connector == 0:
            return None  # 2.0.1 reports connector status per EVSE only
        return {
            "timestamp": utcnow(),
            "connectorStatus": "Occupied" if state == "Charging" else state,
            "evseId": connector,
            "connectorId": 1,
        }

    @staticmethod
    async def authorize(st: SimStation, tx: Tx) -> bool:
        res = await st._call("Authorize", {"idToken": {"idToken": tx.id_tag, "type": tx.id_type}})
        return res["idTokenInfo"]["status"] == "Accepted"

    @staticmethod
    async def start_tx(st: SimStation, tx: Tx) -> bool:
        tx.tx_id = str(uuid.uuid4())
        wh, _ = st._sample(tx.connector)
        trigger = "RemoteStart" if tx.remote_start_id is not None else "Authorized"
        res = await st._call(
            "TransactionEvent",
            _event(
                tx,
                "Started",
                trigger,
                _meter(wh, None, "Transaction.Begin"),
                chargingState="Charging",
                remoteStartId=tx.remote_start_id,
            ),
        )
        if (res.get("idTokenInfo") or {}).get("status", "Accepted") == "Accepted":
            return True
        await st._call(
            "TransactionEvent",
            _event(
                tx,
                "Ended",
                "Deauthorized",
                _meter(wh, None, "Transaction.End"),
                chargingState="EVConnected",
                stoppedReason="DeAuthorized",
            ),
        )
        return False

    @staticmethod
    async def meter_tx(st: SimStation, tx: Tx) -> None:
        await st._call(
            "TransactionEvent", _updated(st, tx, "MeterValuePeriodic", "Sample.Periodic")
        )

    @staticmethod
    async def stop_tx(st: SimStation, tx: Tx) -> None:
        wh, _ = st._sample(tx.connector)
        reason, trigger = STOP_REASONS.get(
            tx.stop_reason or "Local", ("Other", "AbnormalCondition")
        )
        await st._call(
            "TransactionEvent",
            _event(
                tx,
                "Ended",
                trigger,
                _meter(wh, None, "Transaction.End"),
                chargingState="EVConnected",
                stoppedReason=reason,
            ),
        )
