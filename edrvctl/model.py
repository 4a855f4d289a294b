"""The Chargestation record in eDRV's JSON shape, its request bodies, and the status rule.

A record is a plain dict with eDRV's field names (`_id`, `endpoint`, `lastConnectAt`, ...); the
store persists it, the API returns it as is. The server imports this module, the CLI does not.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edrvctl.constants import PROTOCOLS, STATUSES  # noqa: F401  (re-exported)

Protocol = Literal["ocpp1.6", "ocpp2.0.1"]

# OCPP-J identities are URL path segments: RFC 3986 unreserved characters plus ':' (common in
# 1.6 deployments), at most 48 characters (OCPP 2.0.1 Part 4, 3.1.1); '.' and '..' alone would
# be path navigation, not a segment.
ENDPOINT_RE = re.compile(r"^[A-Za-z0-9._~:-]{1,48}$")
OBJECT_ID_RE = re.compile(r"^[0-9a-f]{24}$")
# What an endpoint may not be, so that it can never be taken for an _id (either case: a person
# reading or typing one does not see the difference).
LOOKS_LIKE_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")

# OCPP security profiles (OCPP security whitepaper / 2.0.1 Part 2 A00): what a station must show
# to connect. The record's `security` is {"type": ..., "profile": n}.
SECURITY_PROFILES = {"none": 0, "basic_auth": 1, "tls_basic_auth": 2, "tls_client_cert": 3}
SecurityType = Literal["none", "basic_auth", "tls_basic_auth", "tls_client_cert"]


def needs_password(security: dict) -> bool:
    return security["type"] in ("basic_auth", "tls_basic_auth")


def needs_tls(security: dict) -> bool:
    return security["type"] in ("tls_basic_auth", "tls_client_cert")


def check_json_value(value: Any, depth: int = 0) -> Any:
    """Free-form data (meta_data) must be plain JSON that can be stored and given back as it
    came: finite numbers, 64-bit integers, nesting of at most 32 levels."""
    if depth > 32:
        raise ValueError("nested more than 32 levels")
    if isinstance(value, dict):
        for v in value.values():
            check_json_value(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_json_value(v, depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        pass
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise ValueError("an integer outside 64 bits")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a number that is not finite (NaN or Infinity)")
    return value


def _json_value(value: Any) -> Any:
    try:
        return check_json_value(value)
    except ValueError as e:  # said as it is, without pydantic's "Value error, " prefix
        raise PydanticCustomError("json_value", "{reason}", {"reason": str(e)}) from None


MetaData = Annotated[dict[str, Any], AfterValidator(_json_value)]
Coordinates = Annotated[
    list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=2, max_length=2)
]


class Security(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: SecurityType = "none"


def _invalid_endpoint(reason: str) -> PydanticCustomError:
    # PydanticCustomError: the reason is shown as it is (a ValueError would be prefixed with
    # pydantic's "Value error, ", and the pattern constraint would show its regex).
    return PydanticCustomError("endpoint", "{reason}", {"reason": reason})


def check_endpoint_text(value: Any) -> Any:
    """The endpoint's length and characters, said in words (before the pattern, which would
    only quote its regex). Anything but a string is left to the type check."""
    if not isinstance(value, str):
        return value
    if not value:
        raise _invalid_endpoint("an endpoint cannot be empty")
    if len(value) > 48:
        raise _invalid_endpoint(
            f"an endpoint has at most 48 characters (OCPP caps identities at 48), not {len(value)}"
        )
    bad = sorted({c for c in value if not ENDPOINT_RE.match(c)})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise _invalid_endpoint(
            f"an endpoint is a URL path segment of letters, digits and . _ ~ : - only; not {shown}"
        )
    return value


def check_endpoint(value: str) -> str:
    if not value.strip("."):
        raise _invalid_endpoint("an endpoint cannot be only dots")
    if LOOKS_LIKE_ID_RE.match(value):
        # A station is named by its _id or its endpoint (API paths, `cs delete KEY`) and an _id
        # wins: such an endpoint could name another station, or this one could not be named.
        raise _invalid_endpoint(
            "an endpoint cannot be 24 hex digits: that is the shape of a station "
            "_id, and a station is named by either"
        )
    return value


def could_be_endpoint(value: str) -> bool:
    """Whether a station could be created with this endpoint."""
    try:
        check_endpoint(check_endpoint_text(value))
    except PydanticCustomError:
        return False
    return True


# The pattern is in the OpenAPI document too; a value that breaks it is explained in words
# before the pattern is checked; "not only dots" and "not an _id" are checked after it.
Endpoint = Annotated[
    str,
    StringConstraints(min_length=1, max_length=48, pattern=ENDPOINT_RE.pattern),
    BeforeValidator(check_endpoint_text),  # (runs before the constraints above)
    AfterValidator(check_endpoint),
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


_second: tuple[int, str] = (-1, "")


def utcnow() -> str:
    """ISO-8601 UTC with milliseconds and 'Z', as eDRV writes timestamps. (Called for every
    message: the formatted second is reused, ~5x cheaper than datetime.isoformat.)"""
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical_time(text: str) -> str:
    """A station's date-time (already checked by the schema) in the stored form; most
    stations send that form already, and it is kept as it is."""
    if len(text) == 24 and text[10] == "T" and text[19] == "." and text[-1] == "Z":
        return text
    return format_time(parse_time(text))


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 date-time; naive times are taken as UTC. Raises ValueError."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


_counter = int.from_bytes(os.urandom(3), "big")


def new_id() -> str:
    """A 24-hex-digit id shaped like eDRV's (MongoDB ObjectId): seconds, random, counter."""
    global _counter
    _counter = (_counter + 1) & 0xFFFFFF
    return f"{int(time.time()):08x}{os.urandom(5).hex()}{_counter:06x}"


# --- request bodies (also the OpenAPI schema) ---------------------------------------------------
# Strict, like the schema they publish: a boolean is true or false (not 0, "yes" or "off"), a
# number is a JSON number (not "1.5"). Lax coercion accepted what /openapi.json says is invalid.


AuthorizePolicy = Literal["open", "known"]
AUTHORIZE_HELP = (
    "who may charge here (fleet/tokens.py): open (every id tag), known (stored tokens, by "
    "their status); null: the server's `serve --authorize`"
)


class StationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    endpoint: Endpoint = Field(
        description="OCPP identity; the station connects to <connection_url>/<endpoint>. "
        "Not only dots, and not 24 hex digits (the shape of an _id)."
    )
    protocol: Protocol = "ocpp1.6"
    location: ShortText | None = None
    organization: ShortText | None = None
    active: bool = True
    public: bool = False
    is_simulator: bool = False
    static_endpoint: bool = False
    coordinates: Coordinates | None = None
    meta_data: MetaData = Field(default_factory=dict)
    security: Security = Field(
        default_factory=Security,
        description="none; basic_auth (profile 1); tls_basic_auth (2); tls_client_cert (3). "
        "With a password, the response carries it once as `password`.",
    )
    authorize: AuthorizePolicy | None = Field(None, description=AUTHORIZE_HELP)


class StationUpdate(BaseModel):
    """PATCH body: only the fields given are changed. The endpoint is the station's identity and
    does not change; delete and create instead."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Fields that cannot be null default to None only as "not given" (pydantic does not
    # validate defaults), so an explicit null is refused with a 422.
    protocol: Protocol = None  # type: ignore[assignment]
    location: ShortText | None = None
    organization: ShortText | None = None
    active: bool = None  # type: ignore[assignment]
    public: bool = None  # type: ignore[assignment]
    is_simulator: bool = None  # type: ignore[assignment]
    coordinates: Coordinates | None = None
    meta_data: MetaData = None  # type: ignore[assignment]
    security: Security = Field(  # type: ignore[assignment]
        None,
        description="A new security profile; it takes effect at once (a connected station is "
        "disconnected). Moving to basic_auth or tls_basic_auth from a profile without a "
        "password issues one: the response carries it once as `password`.",
    )
    authorize: AuthorizePolicy | None = Field(None, description=AUTHORIZE_HELP)


class GetVariablesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    keys: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description="1.6 keys, or 2.0.1 'Component.Variable' names; empty means everything",
    )
    timeout: Annotated[float, Field(gt=0, le=300)] = 30.0


# --- command bodies (POST /v1.1/chargestations/{id}/<command>, /v1.1/sessions) -------------

Number = Annotated[int, Field(ge=0, le=10_000)]  # an EVSE or connector number
Word = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def _time_text(value: str) -> str:
    try:
        return format_time(parse_time(value))
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "date_time", "an ISO-8601 date-time within years 1-9999, e.g. 2030-01-31T12:00:00Z"
        ) from None


TimeText = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_time_text)
]
Url = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
]

RESET_TYPES = {"ocpp1.6": ("Soft", "Hard"), "ocpp2.0.1": ("OnIdle", "Immediate")}


class ResetRequest(BaseModel):
    """`type` is the station's version's own word (1.6 Soft|Hard, 2.0.1 OnIdle|Immediate);
    `hard` says the same for either version (Hard / Immediate)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["Soft", "Hard", "OnIdle", "Immediate"] | None = None
    hard: bool | None = None
    evseId: Number | None = None


class UnlockConnectorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    connectorId: Number | None = None
    evseId: Number | None = None


class ChangeAvailabilityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["Operative", "Inoperative"]
    connectorId: Number | None = None
    evseId: Number | None = None


class TriggerMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requestedMessage: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    connectorId: Number | None = None
    evseId: Number | None = None


class DataTransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    vendorId: Word
    messageId: Annotated[str, StringConstraints(min_length=1, max_length=50)] | None = None
    # at most 32 Ki characters: even escaped (6 bytes each) the body stays under the API's limit
    data: Annotated[str, StringConstraints(max_length=32 * 1024)] | None = None


class CallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    action: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    payload: MetaData = Field(default_factory=dict)


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class UpdateFirmwareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    location: Url | None = Field(None, description="where the station downloads the firmware from")
    file: Sha256 | None = Field(
        None,
        description="instead of location: the _id (sha256) of a file uploaded with POST "
        "/v1.1/files, which the station downloads from serve's files listener",
    )
    retrieveDate: TimeText | None = None

    @model_validator(mode="after")
    def _one_source(self) -> UpdateFirmwareRequest:
        if (self.location is None) == (self.file is None):
            raise ValueError("give either location (a URL) or file (an uploaded file's _id)")
        return self


class GetDiagnosticsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    location: Url | None = Field(
        None,
        description="where the station uploads its file (a directory URL); without it, to "
        "serve's own one-time upload target, the file then kept with the Action "
        "(GET /v1.1/actions/{id}/file)",
    )
    since: TimeText | None = None
    until: TimeText | None = None
    security: bool = Field(False, description="the security log instead of diagnostics")


class SessionStartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    chargestation: Word = Field(description="the station's _id or endpoint")
    idTag: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    evseId: Number | None = None
    connectorId: Number | None = None


class SessionStopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    chargestation: Word = Field(description="the station's _id or endpoint")


ConfigKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ConfigValue = Annotated[str, StringConstraints(max_length=1000)] | int | float | bool


def new_station(body: StationCreate, now: str) -> dict:
    return {
        "_id": new_id(),
        "endpoint": body.endpoint,
        "protocol": body.protocol,
        "online": False,
        "active": body.active,
        "status": None,
        "evses": [],
        "connectors": [],
        "location": body.location,
        "organization": body.organization,
        "manufacturer": None,
        "model": None,
        "bootInfo": {},
        "createdAt": now,
        "updatedAt": now,
        "lastConnectAt": None,
        "lastDisconnectAt": None,
        "lastMessageAt": None,
        "csconfig": [],
        "csconfigFetchedAt": None,
        "public": body.public,
        "is_simulator": body.is_simulator,
        "static_endpoint": body.static_endpoint,
        "coordinates": body.coordinates,
        "meta_data": body.meta_data,
        "security": {"type": body.security.type, "profile": SECURITY_PROFILES[body.security.type]},
        "authorize": body.authorize,
    }


# --- meter values ----------------------------------------------------------------------------

ENERGY_REGISTER = "Energy.Active.Import.Register"  # the measurand when a sample names none


def energy_registers(meter_values: list[dict] | None) -> Iterator[tuple[dict, float]]:
    """Each reading of the energy register in Wh, in order, with its sampled value (1.6: value
    as text, `unit`; 2.0.1: value as a number, `unitOfMeasure` with a power-of-ten
    multiplier). Per-phase readings are not the register and are left out."""
    for mv in meter_values or []:
        for sv in mv.get("sampledValue") or []:
            if sv.get("measurand", ENERGY_REGISTER) != ENERGY_REGISTER or sv.get("phase"):
                continue
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            uom = sv.get("unitOfMeasure") or {}
            unit = uom.get("unit") or sv.get("unit") or "Wh"
            value *= 10 ** uom.get("multiplier", 0)
            if unit == "kWh":
                value *= 1000
            if math.isfinite(value):
                yield sv, value


def energy_register_wh(meter_values: list[dict] | None) -> float | None:
    """The last reading of the energy register in Wh, or None when there is none."""
    found = None
    for _, value in energy_registers(meter_values):
        found = value
    return found


# --- the status rule -------------------------------------------------------------------------

# A station's `status` is the most urgent status among its connectors, in this order: a fault
# needs the admin first, then what is in use, then what could be used, then what cannot.
STATUS_PRECEDENCE = (
    "Faulted",
    "Charging",
    "SuspendedEVSE",
    "SuspendedEV",
    "Finishing",
    "Preparing",
    "Occupied",
    "Reserved",
    "Available",
    "Unavailable",
)
_RANK = {s: i for i, s in enumerate(STATUS_PRECEDENCE)}


def station_status(connectors: list[dict], station_level: str | None) -> str | None:
    """The station's status from its connectors.

    `station_level` is what the station said for itself (1.6 connector 0, or a 2.0.1 report
    without an EVSE): Unavailable or Faulted there covers the whole station; otherwise the most
    urgent connector status wins (STATUS_PRECEDENCE). With no connector known yet, the station
    level status is used.
    """
    if station_level in ("Unavailable", "Faulted"):
        return station_level
    # a connector with a reported problem (2.0.1 NotifyEvent Problem=true) is Faulted
    statuses = [
        "Faulted" if c.get("problem") else c["status"]
        for c in connectors
        if c.get("problem") or c.get("status") in _RANK
    ]
    if not statuses:
        return station_level
    return min(statuses, key=_RANK.__getitem__)


def status_of(doc: dict) -> str | None:
    """A record's `status`, from what its connectors and the station itself reported."""
    level = "Faulted" if doc.get("stationProblem") else doc.get("stationStatus")
    return station_status(doc["connectors"], level)


def upsert_connector(
    station: dict, evse_id: int, connector_id: int, now: str, **fields: Any
) -> dict:
    """Find or add the connector (evse_id, connector_id) of a station record and update it."""
    for c in station["connectors"]:
        if c["evseId"] == evse_id and c["connectorId"] == connector_id:
            break
    else:
        c = {
            "_id": new_id(),
            "evseId": evse_id,
            "connectorId": connector_id,
            "active": True,
            "status": None,
            "errorCode": None,
            "type": None,
            "format": None,
            "power_type": None,
            "power": None,
            "chargestation": station["_id"],
            "createdAt": now,
            "updatedAt": now,
        }
        station["connectors"].append(c)
        station["connectors"].sort(key=lambda x: (x["evseId"], x["connectorId"]))
        station["evses"] = sorted({x["evseId"] for x in station["connectors"]})
    c.update(fields)
    c["updatedAt"] = now
    return c


class BatchRequest(BaseModel):
    """One command to many stations (fleet/batch.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    selector: dict[str, Any] = Field(
        description="field=value pairs over the records (location, organization, manufacturer, "
        'model, firmware, protocol, status, online, active, endpoint), {"ids": [...]}, or '
        '{"all": true}'
    )
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="the command: reset, unlock_connector, change_availability, "
        "trigger_message, configurations, clear_cache, data_transfer, call, update_firmware, "
        "get_diagnostics"
    )
    data: Any = Field(None, description="the body the single-station route takes")
    max_in_flight: Annotated[int, Field(ge=1, le=1000)] = 10
    max_failures: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    dry_run: bool = False
    only_differences: bool = Field(
        False, description="configurations: send each station only the keys that differ"
    )
    follow: bool = Field(False, description="a station is done when its Action's outcome is")
