"""Actions: every command sent to a station is a record, followed to its end.

The record is eDRV's Action (`_id, type, status, chargestation, connector, data,
response_data, createdAt, updatedAt`; `status` is requested, then completed when the station
accepted, or failed) plus what edrvctl adds:

- `stage`: queued (recorded, not answered yet), sent (sent, answered with a refusal, an error
  or not at all), accepted (accepted; its long tail is being followed), downloading,
  installing, uploading, rebooting, done.
- `progress`: [{status, at, ...}], every follow-up message from the station, in order (a
  status repeated back to back is kept once).
- `outcome`: pending (until the end is seen), succeeded, failed, timed_out.
- `error`: {code, description} when it failed or timed out; `note`: what else the admin
  should know of a success (RebootRequired, Scheduled, nothing to upload).
- `deadline`: for long commands, when a pending outcome becomes timed_out.

This module is pure: how a record starts, what a station message does to a followed command
(`follow`), and the HTTP status an Action is answered with. Fleet (fleet/__init__.py) owns the
records, the followed commands, and when they are written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edrvctl import model
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

TYPES: dict[type, str] = {
    Reset: "reset",
    UnlockConnector: "unlock_connector",
    ChangeAvailability: "change_availability",
    TriggerMessage: "trigger_message",
    Configure: "set_configuration",
    ClearCache: "clear_cache",
    DataTransfer: "data_transfer",
    RemoteStart: "remote_start",
    RemoteStop: "remote_stop",
    UpdateFirmware: "update_firmware",
    GetDiagnostics: "get_diagnostics",
    RawCall: "call",
    SendLocalList: "send_local_list",
    GetLocalListVersion: "get_local_list_version",
}

# seconds a long command may take to reach its end after it was sent
DEADLINES: dict[type, float] = {
    Reset: 300.0,
    RemoteStart: 120.0,
    RemoteStop: 120.0,
    TriggerMessage: 30.0,
    UpdateFirmware: 3600.0,
    GetDiagnostics: 900.0,
}

# answer statuses that mean the station took the command
ACCEPTED = frozenset(
    {"Accepted", "Scheduled", "Unlocked", "RebootRequired", "AcceptedCanceled", "NoFile"}
)

NOTES = {
    "RebootRequired": "accepted, but the new value takes effect only after a reset",
    "Scheduled": "accepted, to be applied once the running transaction ends",
    "NoFile": "the station has no diagnostics to upload",
}

# a triggered message is seen as these fleet events (see Fleet._observe)
TRIGGERED_BY: dict[str, tuple[str, ...]] = {
    "TransactionEvent": ("StartTransaction", "StopTransaction", "MeterValues"),
}

FIRMWARE_STAGES = {
    "DownloadScheduled": "accepted",
    "Downloading": "downloading",
    "DownloadPaused": "downloading",
    "Downloaded": "downloading",
    "SignatureVerified": "downloading",
    "InstallScheduled": "installing",
    "Installing": "installing",
    "InstallRebooting": "rebooting",
    "Installed": "rebooting",
}
FIRMWARE_FAILED = frozenset(
    {
        "DownloadFailed",
        "InstallationFailed",
        "InvalidSignature",
        "InstallVerificationFailed",
        "InvalidCertificate",
        "RevokedCertificate",
    }
)
LOG_FAILED = frozenset(
    {"UploadFailed", "UploadFailure", "BadMessage", "NotSupportedOperation", "PermissionDenied"}
)


def data_of(command: Command) -> dict:
    """What the admin asked, as the Action's `data` (fields not given are left out; a local
    list by its size, not its entries)."""
    if isinstance(command, SendLocalList):
        return {
            "listVersion": command.version,
            "updateType": "Full" if command.full else "Differential",
            "entries": len(command.entries),
        }
    return {
        k: v
        for k, v in dataclasses.asdict(command).items()
        if v is not None and k != "upload_token"
    }


def _connector_id(station: dict, command: Command) -> str | None:
    """eDRV's `connector` is the connector record's _id; 1.6 connector n is EVSE n."""
    evse = getattr(command, "evse", None)
    connector = getattr(command, "connector", None)
    if evse is None and connector is None:
        return None
    if station.get("protocol") == "ocpp1.6":
        evse = connector = connector if connector is not None else evse
    elif connector is None:
        connector = 1
    for c in station.get("connectors") or []:
        if c.get("evseId") == evse and c.get("connectorId") == connector:
            return str(c["_id"])
    return None


def new_action(station: dict, command: Command, now: str, deadline: str | None) -> dict:
    return {
        "_id": model.new_id(),
        "type": TYPES[type(command)],
        "status": "requested",
        "chargestation": station["_id"],
        "endpoint": station["endpoint"],
        "connector": _connector_id(station, command),
        "data": data_of(command),
        "response_data": None,
        "createdAt": now,
        "updatedAt": now,
        "stage": "queued",
        "progress": [],
        "outcome": "pending",
        "error": None,
        "deadline": deadline,
    }


def http_status(action: dict) -> int:
    """How the API answers with an Action: 201 accepted, 202 not answered yet (wait=0), 504 no
    answer in time, 406 gone offline, 429 too many queued, 400 not sendable, 502 refused or
    CALLERROR."""
    if action["status"] == "completed":
        return 201
    if action["status"] == "requested":
        return 202
    code = (action.get("error") or {}).get("code")
    return {"Timeout": 504, "Offline": 406, "Busy": 429, "Invalid": 400}.get(str(code), 502)


@dataclass
class Follow:
    """A long command being followed through its station's messages (in memory only: after
    a restart, fail_pending_actions ends what was followed)."""

    action_id: str
    command: Command
    deadline: float  # time.time() after which it times out
    protocol: str = "ocpp1.6"
    firmware: str | None = None  # firmwareVersion at the command (UpdateFirmware)
    installed: bool = False
    reported: bool = False  # Uploaded seen (GetDiagnostics to serve's own upload target)
    received: bool = False  # the file arrived there


@dataclass
class Step:
    """What one station message does to a followed action."""

    status: str  # appended to progress
    stage: str | None = None
    outcome: str | None = None
    error: dict | None = None
    extra: dict = field(default_factory=dict)


def follow(f: Follow, kind: str, info: dict) -> Step | None:
    """The step a fleet event (`kind`: BootNotification, Disconnected, StartTransaction,
    StopTransaction, Heartbeat, StatusNotification, MeterValues, or a notification's action)
    makes for followed command `f`; None if it is not about it."""
    fn = _FOLLOWERS.get(type(f.command))
    return fn(f, kind, info) if fn is not None else None


def _done(status: str, **extra: Any) -> Step:
    return Step(status, stage="done", outcome="succeeded", extra=extra)


def _failed(status: str, description: str) -> Step:
    return Step(status, outcome="failed", error={"code": status, "description": description})


def _reset(f: Follow, kind: str, info: dict) -> Step | None:
    if kind == "Disconnected":
        return Step("Disconnected", stage="rebooting")
    if kind == "BootNotification":
        return _done("BootNotification", reason=info.get("reason"))
    return None


def _remote_start(f: Follow, kind: str, info: dict) -> Step | None:
    if kind != "StartTransaction":
        return None
    c = f.command
    if not isinstance(c, RemoteStart):  # (followed only for its own command)
        return None
    rid = info.get("remoteStartId")
    if rid is not None and c.remote_start_id is not None:
        if rid != c.remote_start_id:
            return None
    else:
        if info.get("idTag") != c.id_tag:
            return None
        wanted = c.connector if c.connector is not None else c.evse
        if wanted is not None and info.get("connector") != wanted:
            return None
    return _done("Started", transactionId=info.get("transactionId"), session=info.get("session"))


def _remote_stop(f: Follow, kind: str, info: dict) -> Step | None:
    c = f.command
    if not isinstance(c, RemoteStop):  # (followed only for its own command)
        return None
    if kind != "StopTransaction" or str(info.get("transactionId")) != c.transaction_id:
        return None
    return _done("Ended", reason=info.get("reason"))


def _trigger(f: Follow, kind: str, info: dict) -> Step | None:
    c = f.command
    if not isinstance(c, TriggerMessage):  # (followed only for its own command)
        return None
    if kind == c.message or kind in TRIGGERED_BY.get(c.message, ()):
        return _done(kind)
    return None


def _request_id_differs(f: Follow, info: dict) -> bool:
    rid = info.get("requestId")
    return rid is not None and rid != getattr(f.command, "request_id", None)


def _firmware(f: Follow, kind: str, info: dict) -> Step | None:
    if kind in ("FirmwareStatusNotification", "SignedFirmwareStatusNotification"):
        if _request_id_differs(f, info):
            return None
        status = info.get("status", "")
        if status in FIRMWARE_FAILED:
            return _failed(status, f"the station reported {status}")
        if status == "Installed":
            f.installed = True
        return Step(status, stage=FIRMWARE_STAGES.get(status))
    if kind == "BootNotification":
        version = info.get("firmwareVersion")
        if version and version != f.firmware:
            return _done("BootNotification", firmwareVersion=version)
        if f.installed:
            return _failed(
                "FirmwareUnchanged",
                f"the station booted after Installed with the same firmware version {version!r}",
            )
        return Step("BootNotification", extra={"firmwareVersion": version})
    return None


def _diagnostics(f: Follow, kind: str, info: dict) -> Step | None:
    if kind not in ("DiagnosticsStatusNotification", "LogStatusNotification"):
        return None
    if _request_id_differs(f, info):
        return None
    status = info.get("status", "")
    if status == "Idle":
        return None
    if status == "Uploading":
        return Step(status, stage="uploading")
    if status == "Uploaded":
        if getattr(f.command, "upload_token", None) and not f.received:
            f.reported = True  # done once the file has arrived too (Fleet.file_uploaded)
            return Step(status, stage="uploading")
        return _done(status)
    if status in LOG_FAILED:
        return _failed(status, f"the station reported {status}")
    return Step(status)


_FOLLOWERS = {
    Reset: _reset,
    RemoteStart: _remote_start,
    RemoteStop: _remote_stop,
    TriggerMessage: _trigger,
    UpdateFirmware: _firmware,
    GetDiagnostics: _diagnostics,
}


def apply_step(action: dict, step: Step, now: str) -> None:
    """Record a follow-up in an Action (it is still pending)."""
    progress = action["progress"]
    entry = {"status": step.status, "at": now, **{k: v for k, v in step.extra.items() if v}}
    if not (progress and progress[-1]["status"] == step.status and step.outcome is None):
        progress.append(entry)  # a status repeated back to back is kept once
    if step.stage is not None:
        action["stage"] = step.stage
    if step.outcome is not None:
        action["outcome"] = step.outcome
        if step.error is not None:
            action["error"] = step.error
        elif step.outcome == "succeeded":
            action["stage"] = "done"
    action["updatedAt"] = now
