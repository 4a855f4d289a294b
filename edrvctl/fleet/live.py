"""The live-stations port: what `fleet` asks of the stations that are connected right now.

Commands are plain data, so a command can be queued, stored, or routed to the process that
holds the station's socket. The server implements the port (server/stations.py); the in-process
tests use a fake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class FetchConfig:
    """Read the station's configuration: the given keys, or all of it. Answers
    (entries, unknown keys); an entry is {key, value, readonly[, component, variable, evse]}."""

    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeAvailability:
    """Operative or not, for the whole station (no evse) or one EVSE/connector. Answers the
    station's status (Accepted, Rejected, Scheduled)."""

    operative: bool
    evse: int | None = None
    connector: int | None = None


@dataclass(frozen=True)
class Reset:
    """Reboot the station (1.6 Soft/Hard; 2.0.1 OnIdle/Immediate, optionally one EVSE)."""

    hard: bool = False
    evse: int | None = None


@dataclass(frozen=True)
class UnlockConnector:
    """1.6 names a connector (or `evse`, the same number there); 2.0.1 needs the EVSE, and
    connector 1 of it unless told."""

    connector: int | None = None
    evse: int | None = None


@dataclass(frozen=True)
class TriggerMessage:
    """Ask the station to send `message` now (one of its version's requestedMessage values)."""

    message: str
    evse: int | None = None
    connector: int | None = None


@dataclass(frozen=True)
class Configure:
    """One key: 1.6 ChangeConfiguration; 2.0.1 SetVariables, the key spelled as
    server.ocpp201.config_key prints it (`Component[instance][evse,connector].Variable`)."""

    key: str
    value: str


@dataclass(frozen=True)
class ClearCache:
    pass


@dataclass(frozen=True)
class DataTransfer:
    vendor: str
    message_id: str | None = None
    data: str | None = None


@dataclass(frozen=True)
class RemoteStart:
    """1.6 RemoteStartTransaction (connector, or evse as the same number); 2.0.1
    RequestStartTransaction (evse only). `remote_start_id` is set by the fleet, which follows
    the transaction it starts."""

    id_tag: str
    evse: int | None = None
    connector: int | None = None
    remote_start_id: int | None = None


@dataclass(frozen=True)
class RemoteStop:
    transaction_id: str


@dataclass(frozen=True)
class UpdateFirmware:
    """`retrieve_at`: ISO-8601, now if not given. `request_id` is set by the fleet."""

    url: str
    retrieve_at: str | None = None
    request_id: int | None = None


@dataclass(frozen=True)
class GetDiagnostics:
    """1.6 GetDiagnostics (GetLog SecurityLog when `security`); 2.0.1 GetLog. `url` is where
    the station uploads (a directory: the station names the file). `request_id`: the fleet's."""

    url: str
    since: str | None = None
    until: str | None = None
    security: bool = False
    request_id: int | None = None
    # set when `url` is serve's own upload target (server/files.py): the one-time token in it;
    # the Action then ends when the station reports Uploaded and the file has arrived
    upload_token: str | None = None


@dataclass(frozen=True)
class RawCall:
    """Any CSMS-to-station action, its payload validated against the version's schema."""

    action: str
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TransactionStatus:
    """2.0.1 GetTransactionStatus: is the transaction still going on at the station, and has
    it messages about it queued? Answers (status, {ongoingIndicator?, messagesInQueue}). A
    question, not an operation: no Action is recorded. 1.6 has no such message."""

    transaction_id: str


@dataclass(frozen=True)
class LocalListEntry:
    """One id token of a local authorization list, in neither version's words; `status`
    None: take it off the list (a differential update)."""

    id_tag: str
    type: str
    status: str | None
    expiry: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class SendLocalList:
    """1.6 SendLocalList (listVersion), 2.0.1 SendLocalList (versionNumber): the whole list
    (`full`) or what changed since the last one sent (fleet/tokens.py builds it)."""

    version: int
    full: bool
    entries: tuple[LocalListEntry, ...] = ()


@dataclass(frozen=True)
class GetLocalListVersion:
    """Answers the version of the station's local list (0: none; 1.6 listVersion, 2.0.1
    versionNumber)."""


@dataclass(frozen=True)
class Disconnect:
    """Close the station's connection (it may come back)."""

    reason: str


Command = (
    FetchConfig
    | ChangeAvailability
    | Disconnect
    | Reset
    | UnlockConnector
    | TriggerMessage
    | Configure
    | ClearCache
    | DataTransfer
    | RemoteStart
    | RemoteStop
    | UpdateFirmware
    | GetDiagnostics
    | RawCall
    | TransactionStatus
    | SendLocalList
    | GetLocalListVersion
)

# Commands that answer (status, the station's answer payload) through the live port: status
# is the answer's own status word, "Accepted" where the version's answer has none (1.6
# UpdateFirmware), the one item's attributeStatus of a SetVariables, and "NoFile" for a 1.6
# GetDiagnostics answered without a file name (nothing to upload).
ANSWERED = (
    Reset,
    UnlockConnector,
    TriggerMessage,
    Configure,
    ClearCache,
    DataTransfer,
    RemoteStart,
    RemoteStop,
    UpdateFirmware,
    GetDiagnostics,
    RawCall,
    TransactionStatus,
    SendLocalList,
    GetLocalListVersion,
)


class LiveStations(Protocol):
    def is_online(self, endpoint: str) -> bool: ...

    async def send(self, endpoint: str, command: Command, timeout: float) -> Any:
        """Carry out `command` on the connected station within `timeout` seconds (queue wait
        included). Raises errors.Unavailable (not connected, or gone meanwhile), Busy (too
        many commands queued), StationTimeout, StationRejected (CALLERROR, refusal or invalid
        answer) or UsageError (the request breaks the OCPP schema, or the station's version
        cannot take it: nothing was sent)."""
        ...

    def check(self, endpoint: str, command: Command) -> None:
        """UsageError if the connected station's version cannot take `command` (nothing is
        sent); Unavailable if it is not connected."""
        ...


class Router(Protocol):
    """Several nodes (server/cluster.py): Actions for stations another node holds."""

    node_id: str

    def healthy(self) -> str | None:
        """Why this node should take no new stations now (/health), or None."""
        ...

    def is_local(self, endpoint: str) -> bool:
        """The station is connected to this process."""
        ...

    async def carry_out(self, action: dict, command: Command, timeout: float) -> dict:
        """Have the node holding the station send the recorded Action and record its
        answer; returns the Action then. Raises as LiveStations.send does."""
        ...


# --- commands and their answers as JSON, to route them to the node holding the socket ---------

_KINDS: dict[str, type] = {
    kind.__name__: kind for kind in (FetchConfig, ChangeAvailability, Disconnect, *ANSWERED)
}


def encode_command(command: Command) -> dict:
    """The command as JSON-ready data: {kind, fields} (decode_command reads it back)."""
    return {"kind": type(command).__name__, "fields": asdict(command)}


def decode_command(data: dict) -> Command:
    """The command encode_command wrote; ValueError if it is none we know."""
    kind = _KINDS.get(data.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(f"unknown command kind {data.get('kind')!r}")
    fields = dict(data.get("fields") or {})
    if kind is FetchConfig:
        fields["keys"] = tuple(fields.get("keys", ()))
    elif kind is SendLocalList:
        fields["entries"] = tuple(LocalListEntry(**e) for e in fields.get("entries", ()))
    return kind(**fields)


def encode_answer(answer: Any) -> Any:
    """A send's answer as JSON-ready data: tuples (FetchConfig's, ANSWERED's) stay tuples."""
    return {"tuple": list(answer)} if isinstance(answer, tuple) else {"value": answer}


def decode_answer(data: dict) -> Any:
    return tuple(data["tuple"]) if "tuple" in data else data.get("value")
