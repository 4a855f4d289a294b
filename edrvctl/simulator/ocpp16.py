"""OCPP 1.6 for a simulated station: what it sends, and its answers to the central system.

Handlers get the station and the CALL's payload exactly as sent (camelCase, already validated
against the official schema) and return the answer's payload; they never await a CALL to the
central system: follow-ups go through `st._later(...)` and start once the CALLRESULT is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from edrvctl.ocppj.rpc import Handler
from edrvctl.simulator.device import utcnow

if TYPE_CHECKING:
    from edrvctl.simulator.station import SimStation, Tx


def _meter(wh: float, w: float | None, context: str) -> list[dict]:
    sv = [
        {
            "value": f"{wh:.0f}",
            "context": context,
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unit": "Wh",
        }
    ]
    if w is not None:
        sv.append(
            {
                "value": f"{w:.0f}",
                "context": context,
                "measurand": "Power.Active.Import",
                "location": "Outlet",
                "unit": "W",
            }
        )
    return [{"timestamp": utcnow(), "sampledValue": sv}]


def _meter_values(st: SimStation, connector: int) -> dict:
    tx = st._txs.get(connector)
    wh, w = st._sample(connector)
    p: dict[str, Any] = {"connectorId": connector, "meterValue": _meter(wh, w, "Trigger")}
    if tx is not None and tx.started:
        p["transactionId"] = tx.tx_id
    return p


# --- CSMS calls ---------------------------------------------------------------------------------


def get_configuration(st: SimStation, p: dict) -> dict:
    cfg, meta = st.config, st._layout.meta
    keys = p.get("key") or list(cfg)
    answer: dict[str, Any] = {
        "configurationKey": [
            {"key": k, "readonly": meta[k].readonly, "value": cfg[k]} for k in keys if k in cfg
        ]
    }
    unknown = [k for k in keys if k not in cfg]
    if unknown:
        answer["unknownKey"] = unknown
    return answer


def change_configuration(st: SimStation, p: dict) -> dict:
    return {"status": st._set_config(p["key"], p["value"], not_found="NotSupported")}


def change_availability(st: SimStation, p: dict) -> dict:
    return {"status": st._change_availability(p["connectorId"], p["type"] == "Operative")}


def reset(st: SimStation, p: dict) -> dict:
    st._later(st._reboot, f"{p['type']}Reset")
    return {"status": "Accepted"}


def trigger_message(st: SimStation, p: dict) -> dict:
    connector = p.get("connectorId")
    if connector is not None and not 0 <= connector <= st.connectors:
        return {"status": "Rejected"}
    targets = [connector] if connector is not None else list(range(st.connectors + 1))
    requested = p["requestedMessage"]
    if requested == "BootNotification":
        st._later(st._triggered_boot)
    elif requested == "Heartbeat":
        st._later(st._call, "Heartbeat", {})
    elif requested == "StatusNotification":
        st._later(st._send_statuses, targets)
    elif requested == "MeterValues":
        st._later(st._send_each, "MeterValues", [_meter_values(st, c) for c in targets if c > 0])
    elif requested == "DiagnosticsStatusNotification":
        st._later(st._call, "DiagnosticsStatusNotification", {"status": "Idle"})
    elif requested == "FirmwareStatusNotification":
        st._later(st._call, "FirmwareStatusNotification", {"status": "Idle"})
    else:
        return {"status": "NotImplemented"}
    return {"status": "Accepted"}


def unlock_connector(st: SimStation, p: dict) -> dict:
    connector = p["connectorId"]
    if not 1 <= connector <= st.connectors:
        return {"status": "NotSupported"}
    tx = st._txs.get(connector)
    if tx is not None:
        st._request_stop(tx, "UnlockCommand")
    return {"status": "Unlocked"}


def remote_start_transaction(st: SimStation, p: dict) -> dict:
    tx = st._reserve(p.get("connectorId"), p["idTag"], "ISO14443", remote_start_id=None)
    if tx is None:
        return {"status": "Rejected"}
    st._later(st._begin_tx, tx, st.config[V16.AUTH_REMOTE_KEY] == "true")
    return {"status": "Accepted"}


def remote_stop_transaction(st: SimStation, p: dict) -> dict:
    tx = st._find_tx(p["transactionId"])
    if tx is None:
        return {"status": "Rejected"}
    st._request_stop(tx, "Remote")
    return {"status": "Accepted"}


def update_firmware(st: SimStation, p: dict) -> dict:
    st._later(st._update_firmware, p["location"], lambda s: {"status": s})
    return {}  # 1.6: the answer has no status


def get_diagnostics(st: SimStation, p: dict) -> dict:
    name = f"{st.endpoint}-diagnostics.txt"
    st._later(
        st._upload_log,
        p["location"],
        name,
        "DiagnosticsStatusNotification",
        lambda s: {"status": s},
        "UploadFailed",
    )
    return {"fileName": name}


def get_log(st: SimStation, p: dict) -> dict:
    """The security extension's GetLog."""
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
        ((e["idTag"], None), e.get("idTagInfo")) for e in p.get("localAuthorizationList") or []
    ]
    full = p["updateType"] == "Full"
    return {"status": st._update_local_list(full, p["listVersion"], entries)}


def get_local_list_version(st: SimStation, p: dict) -> dict:
    return {"listVersion": st.local_list_version}


def accepted(st: SimStation, p: dict) -> dict:
    return {"status": "Accepted"}


def unknown_vendor(st: SimStation, p: dict) -> dict:
    return {"status": "UnknownVendorId"}  # no vendor extension is implemented


class V16:
    """OCPP 1.6 as a SimStation speaks it (never instantiated: one per version, shared)."""

    PROTOCOL = "ocpp1.6"
    VERSION = "1.6"
    HEARTBEAT_KEY = "HeartbeatInterval"
    METER_KEY = "MeterValueSampleInterval"
    AUTH_REMOTE_KEY = "AuthorizeRemoteTxRequests"
    PING_KEY = "WebSocketPingInterval"

    HANDLERS: ClassVar[Mapping[str, Handler]] = {
        "GetConfiguration": get_configuration,
        "ChangeConfiguration": change_configuration,
        "ChangeAvailability": change_availability,
        "Reset": reset,
        "TriggerMessage": trigger_message,
        "UnlockConnector": unlock_connector,
        "RemoteStartTransaction": remote_start_transaction,
        "RemoteStopTransaction": remote_stop_transaction,
        "ClearCache": accepted,
        "DataTransfer": unknown_vendor,
        "UpdateFirmware": update_firmware,
        "GetDiagnostics": get_diagnostics,
        "GetLog": get_log,
        "SendLocalList": send_local_list,
        "GetLocalListVersion": get_local_list_version,
    }

    # --- what the station sends -----------------------------------------------------------------

    @staticmethod
    def init_config(st: SimStation) -> None:
        st.config["NumberOfConnectors"] = str(st.connectors)

    @staticmethod
    def boot(st: SimStation, reason: str) -> dict:
        return {
            "chargePointModel": st.model,
            "chargePointVendor": st.vendor,
            "chargePointSerialNumber": st.serial,
            "chargeBoxSerialNumber": st.serial,
            "firmwareVersion": st.firmware,
        }

    @staticmethod
    def status(connector: int, state: str) -> dict | None:
        return {
            "connectorId": connector,
            "errorCode": "NoError",
            "status": state,
            "timestamp": utcnow(),
        }

    @staticmethod
    async def authorize(st: SimStation, tx: Tx) -> bool:
        res = await st._call("Authorize", {"idTag": tx.id_tag})
        return res["idTagInfo"]["status"] == "Accepted"

    @staticmethod
    async def start_tx(st: SimStation, tx: Tx) -> bool:
        wh, _ = st._sample(tx.connector)
        res = await st._call(
            "StartTransaction",
            {
                "connectorId": tx.connector,
                "idTag": tx.id_tag,
                "meterStart": int(wh),
                "timestamp": utcnow(),
            },
        )
        tx.tx_id = res["transactionId"]
        if res["idTagInfo"]["status"] == "Accepted":
            return True
        # The CSMS assigned an id but refused the tag: end it at once (StopTransactionOnInvalidId).
        await st._call(
            "StopTransaction",
            {
                "meterStop": int(wh),
                "timestamp": utcnow(),
                "transactionId": tx.tx_id,
                "reason": "DeAuthorized",
                "idTag": tx.id_tag,
            },
        )
        return False

    @staticmethod
    async def meter_tx(st: SimStation, tx: Tx) -> None:
        wh, w = st._sample(tx.connector)
        await st._call(
            "MeterValues",
            {
                "connectorId": tx.connector,
                "transactionId": tx.tx_id,
                "meterValue": _meter(wh, w, "Sample.Periodic"),
            },
        )

    @staticmethod
    async def stop_tx(st: SimStation, tx: Tx) -> None:
        wh, _ = st._sample(tx.connector)
        reason = tx.stop_reason or "Local"
        p: dict[str, Any] = {
            "meterStop": int(wh),
            "timestamp": utcnow(),
            "transactionId": tx.tx_id,
            "reason": reason,
            "transactionData": _meter(wh, None, "Transaction.End"),
        }
        if reason == "Local":
            p["idTag"] = tx.id_tag
        await st._call("StopTransaction", p)
