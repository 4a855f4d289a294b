"""Who may charge: id tokens and the authorization policy. The one place that decides what a
station is told when it asks about an id tag (1.6 Authorize, StartTransaction,
StopTransaction; 2.0.1 Authorize, TransactionEvent), and which tokens its local list holds.

A token is eDRV's Token object: `_id`, `physicalId` (the OCPP id tag or idToken), `type`
(TYPES), `active`, `organization`, plus `expiryDate`, `parentIdTag` (its group id),
`meta_data`, `createdAt`, `updatedAt`. A physicalId is unique per type, and compared without
case, as OCPP compares id tags.

The policy is the station's own `authorize` if it has one, else `serve --authorize`:

- `open` (the default): every id tag is Accepted on an active station, as edrvctl always did;
  a stored token's group id is given with it.
- `known`: the token's own status (`status_of`): Accepted; Blocked (not active); Expired (its
  expiryDate has passed); NotAtThisLocation (its organization is not the station's: a token
  of no organization, or a station of none, goes everywhere); Unknown (no such token); and
  ConcurrentTx when it is in a running session elsewhere (`_concurrent`).

An inactive station refuses every id tag (Blocked), whatever the policy. The answers use each
version's words (`Decision.id_tag_info`, `Decision.id_token_info`): OCPP 1.6 has no Unknown
nor NotAtThisLocation, it says Invalid for both. With Accepted, `known` also gives the token's
expiryDate (how long the station may cache it) and, under either policy, its group id.

Which token: 2.0.1 names (idToken, type), and that is the token (a Central idToken, the
central system's own id as a remote start sends it, may be a token of any type); 1.6 names the
id tag alone, and any type matches (the best status wins).

An id tag no token has is a `token.unknown` event (under either policy: run `open`, see who
charges, create their tokens, switch to `known`); a token refused for itself (not because the
station is inactive) is a `token.refused` event. At most one a minute per station, id tag and
type (`Authorizer.note`), remembered in memory.

Local authorization lists (`local_list`): the tokens usable at a station (of no organization
or of its own), with their status, sent whole or as the changes since the last list the
station accepted (kept in the store with its version).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edrvctl import model
from edrvctl.errors import NotFound, UsageError
from edrvctl.fleet import events
from edrvctl.fleet.live import LocalListEntry, SendLocalList
from edrvctl.store import TokenQuery, Unit
from edrvctl.textsafe import printable

if TYPE_CHECKING:
    from edrvctl.fleet import Fleet

TYPES = (
    "Central",
    "eMAID",
    "ISO14443",
    "ISO15693",
    "KeyCode",
    "Local",
    "MacAddress",
    "NoAuthorization",
)
POLICIES = ("open", "known")
DEFAULT_TYPE = "ISO14443"  # an RFID card, what most tokens are
NOTE_EVERY = 60.0  # s: an unknown or refused id tag is an event at most this often per station
MAX_REMEMBERED = 100_000  # (station, id tag, type) noted, kept in memory; cleared past this
MAX_LOCAL_LIST = 10_000  # entries of one SendLocalList
MAX_IMPORT_ROWS = 200_000  # tokens of one import
MAX_IMPORT_BYTES = 16 << 20  # bytes of one import's CSV body
IMPORT_COLUMNS = ("physicalId", "type", "active", "organization", "expiryDate", "parentIdTag")
ID_TAG_16 = 20  # characters of a 1.6 id tag (CiString20); a 2.0.1 idToken has 36

TokenType = Literal[
    "Central",
    "eMAID",
    "ISO14443",
    "ISO15693",
    "KeyCode",
    "Local",
    "MacAddress",
    "NoAuthorization",
]
Policy = Literal["open", "known"]


# --- the record ----------------------------------------------------------------------------


def _plain_text(value: str) -> str:
    if printable(value) != value:
        raise PydanticCustomError(
            "plain_text",
            "no control characters, bidi or zero-width marks: {shown}",
            {"shown": printable(value)},
        )
    return value


PhysicalId = Annotated[str, StringConstraints(max_length=36), AfterValidator(_plain_text)]
GroupId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_TAG_16),
    AfterValidator(_plain_text),
]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    physicalId: PhysicalId = Field(
        description="the OCPP id tag (1.6, at most 20 characters) or idToken (2.0.1, at most "
        "36); unique per type, compared without case; empty only for NoAuthorization"
    )
    type: TokenType = "ISO14443"  # DEFAULT_TYPE
    active: bool = True
    organization: model.ShortText | None = None
    expiryDate: model.TimeText | None = Field(
        None, description="after this it is Expired (ISO-8601)"
    )
    parentIdTag: GroupId | None = Field(
        None, description="its group id (1.6 parentIdTag, 2.0.1 groupIdToken)"
    )
    meta_data: model.MetaData = Field(default_factory=dict)

    @model_validator(mode="after")
    def _id_given(self) -> TokenCreate:
        if not self.physicalId and self.type != "NoAuthorization":
            raise ValueError("physicalId: only a NoAuthorization token has an empty one")
        return self


class TokenUpdate(BaseModel):
    """PATCH body: only the fields given change; null removes organization, expiryDate and
    parentIdTag."""

    model_config = ConfigDict(extra="forbid", strict=True)

    physicalId: PhysicalId = None  # type: ignore[assignment]
    type: TokenType = None  # type: ignore[assignment]
    active: bool = None  # type: ignore[assignment]
    organization: model.ShortText | None = None
    expiryDate: model.TimeText | None = None
    parentIdTag: GroupId | None = None
    meta_data: model.MetaData = None  # type: ignore[assignment]


def new_token(body: TokenCreate, now: str) -> dict:
    return {
        "_id": model.new_id(),
        "physicalId": body.physicalId,
        "type": body.type,
        "active": body.active,
        "organization": body.organization,
        "expiryDate": body.expiryDate,
        "parentIdTag": body.parentIdTag,
        "meta_data": body.meta_data,
        "createdAt": now,
        "updatedAt": now,
    }


# --- the policy ----------------------------------------------------------------------------

RANK = {"Accepted": 0, "NotAtThisLocation": 1, "Expired": 2, "Blocked": 3}


def usable_at(token: dict, station: dict) -> bool:
    """A token of no organization, or at a station of none, or of the station's own."""
    mine, theirs = token.get("organization"), station.get("organization")
    return mine is None or theirs is None or mine == theirs


def status_of(token: dict, station: dict, now: str) -> str:
    """A stored token's own status at a station (ConcurrentTx aside)."""
    if not token["active"]:
        return "Blocked"
    expiry = token.get("expiryDate")
    if expiry is not None and expiry <= now:
        return "Expired"
    if not usable_at(token, station):
        return "NotAtThisLocation"
    return "Accepted"


@dataclass(frozen=True)
class Decision:
    """What a station is told about an id tag. `status` in 2.0.1's words (Accepted, Blocked,
    ConcurrentTx, Expired, NotAtThisLocation, Unknown); `token` the stored token, if any;
    `by_station`: the station alone decided (it is inactive, or no id tag was given)."""

    status: str
    expiry: str | None = None
    group: str | None = None
    token: dict | None = None
    policy: str = "open"
    by_station: bool = False

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"

    def id_tag_info(self) -> dict:
        """OCPP 1.6 idTagInfo."""
        return id_tag_info(self.status, self.expiry, self.group)

    def id_token_info(self) -> dict:
        """OCPP 2.0.1 idTokenInfo."""
        return id_token_info(self.status, self.expiry, self.group)


def id_tag_info(status: str, expiry: str | None = None, group: str | None = None) -> dict:
    info: dict[str, Any] = {
        "status": "Invalid" if status in ("Unknown", "NotAtThisLocation") else status
    }
    if expiry:
        info["expiryDate"] = expiry
    if group:
        info["parentIdTag"] = group
    return info


def id_token_info(status: str, expiry: str | None = None, group: str | None = None) -> dict:
    info: dict[str, Any] = {"status": status}
    if expiry:
        info["cacheExpiryDateTime"] = expiry
    if group:
        info["groupIdToken"] = {"idToken": group, "type": "Central"}
    return info


def decide(station: dict, policy: str, found: list[dict], now: str) -> Decision:
    """The answer about an id tag whose stored tokens are `found`, before ConcurrentTx."""
    best = min(found, key=lambda t: RANK[status_of(t, station, now)]) if found else None
    group = best.get("parentIdTag") if best else None
    if not station["active"]:
        return Decision("Blocked", token=best, policy=policy, by_station=True)
    if policy == "open":
        return Decision("Accepted", group=group, token=best, policy=policy)
    if best is None:
        return Decision("Unknown", policy=policy)
    status = status_of(best, station, now)
    if status != "Accepted":
        return Decision(status, token=best, policy=policy)
    return Decision("Accepted", best.get("expiryDate"), group, best, policy)


def _may_be_concurrent(station: dict, purpose: str) -> bool:
    """Whether ConcurrentTx is an answer here: not when a session ends (1.6 StopTransaction,
    2.0.1 Ended), nor to a 1.6 Authorize (1.6 says it is only for StartTransaction)."""
    return purpose != "stop" and not (purpose == "authorize" and station["protocol"] == "ocpp1.6")


def _concurrent(
    running: list[dict], station: dict, purpose: str, evse: int | None, tx_key: str | None
) -> list[dict]:
    """The running sessions of an id tag that make it ConcurrentTx (one session per token):

    - 2.0.1 Authorize: those on other stations (this station may be asking to stop its own);
    - a start (1.6 StartTransaction, 2.0.1 Started, or a token given later in a 2.0.1
      transaction): those on other stations or other EVSEs of this one, but not the
      transaction itself nor an older one on the same EVSE (a start sent again)."""
    here = station["_id"]
    return [
        t
        for t in running
        if t["station_id"] != here
        or (purpose == "start" and t.get("tx_key") != tx_key and t.get("connector") != evse)
    ]


Purpose = Literal["authorize", "start", "stop"]


@dataclass(frozen=True)
class Note:
    """An event to record about an id tag, and its memo key once it is committed."""

    type: str
    data: dict
    key: tuple[str, str, str | None]


def _storable(text: str) -> bool:
    """Text the store can hold and look up (a station may send lone surrogates in JSON)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Authorizer:
    """The policy for a server (`policy`, overridden per station) and the memo of what was
    noted (`NOTE_EVERY`)."""

    def __init__(self, policy: str = "open", clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._noted: dict[tuple[str, str, str | None], float] = {}

    def policy_of(self, station: dict) -> str:
        return station.get("authorize") or self.policy

    async def check(
        self,
        tx: Unit,
        station: dict,
        id_tag: str | None,
        token_type: str | None = None,
        purpose: Purpose = "authorize",
        evse: int | None = None,
        tx_key: str | None = None,
    ) -> Decision:
        """The answer about `id_tag` (of `token_type`, 2.0.1) at `station`, read in `tx`.
        `evse` and `tx_key`: the transaction it is about, if any. No id tag (a 2.0.1
        transaction started before any was given): only the station decides."""
        policy = self.policy_of(station)
        if id_tag is None:
            active = station["active"]
            return Decision("Accepted" if active else "Blocked", policy=policy, by_station=True)
        if not _storable(id_tag):  # (a lone surrogate: no token has it, and it is not kept)
            return decide(station, policy, [], model.utcnow())
        found = await tx.find_tokens(id_tag, token_type)
        if not found and token_type == "Central":
            found = await tx.find_tokens(id_tag)
        decision = decide(station, policy, found, model.utcnow())
        if policy == "known" and decision.accepted and _may_be_concurrent(station, purpose):
            running = await tx.active_transactions(id_tag)
            if _concurrent(running, station, purpose, evse, tx_key):
                decision = Decision("ConcurrentTx", token=decision.token, policy=policy)
        return decision

    def note(
        self, station: dict, id_tag: str | None, token_type: str | None, decision: Decision
    ) -> Note | None:
        """The event this answer is, if it is one (an unknown id tag, a token refused for
        itself) and none was noted for it in the last NOTE_EVERY seconds."""
        if id_tag is None or not _storable(id_tag):
            return None
        if decision.token is None:
            kind = events.TOKEN_UNKNOWN
        elif not decision.accepted and not decision.by_station:
            kind = events.TOKEN_REFUSED
        else:
            return None
        key = (station["_id"], id_tag.casefold(), token_type)
        last = self._noted.get(key)
        if last is not None and self._clock() - last < NOTE_EVERY:
            return None
        data: dict[str, Any] = {
            "idTag": id_tag,
            "type": token_type,
            "status": decision.status,
            "policy": decision.policy,
        }
        if decision.token is not None:
            data["token"] = decision.token["_id"]
        return Note(kind, data, key)

    def noted(self, note: Note) -> None:
        """`note` was committed: the next one for its key waits NOTE_EVERY seconds."""
        if len(self._noted) >= MAX_REMEMBERED:
            self._noted.clear()
        self._noted[note.key] = self._clock()


# --- tokens for the API --------------------------------------------------------------------


async def _resolve(tx: Unit, key: str, token_type: str | None = None) -> dict:
    """A token by its `_id`, or by its physicalId (and type, if several types have it)."""
    if model.OBJECT_ID_RE.match(key):
        doc = await tx.get_token(key)
        if doc is not None:
            return doc
    found = await tx.find_tokens(key, token_type)
    if not found:
        raise NotFound(
            f"token {key!r}{f' of type {token_type}' if token_type else ''} not found",
            hint="list them with `edrvctl tokens list`",
        )
    if len(found) > 1:
        types = ", ".join(t["type"] for t in found)
        raise UsageError(
            f"{len(found)} tokens have physicalId {key!r} (types {types}): say which",
            hint="give its type (--type, ?type=) or its _id",
        )
    return found[0]


async def create(fleet: Fleet, body: TokenCreate) -> dict:
    doc = new_token(body, model.utcnow())
    async with fleet.store.unit() as tx:
        await tx.create_token(doc)
    return doc


async def get(fleet: Fleet, key: str, token_type: str | None = None) -> dict:
    async with fleet.store.unit() as tx:
        return await _resolve(tx, key, token_type)


async def update(fleet: Fleet, key: str, patch: TokenUpdate, token_type: str | None = None) -> dict:
    changes = patch.model_dump(exclude_unset=True)
    async with fleet.store.unit() as tx:
        doc = await _resolve(tx, key, token_type)
        doc.update(changes)
        if not doc["physicalId"] and doc["type"] != "NoAuthorization":
            raise UsageError("physicalId: only a NoAuthorization token has an empty one")
        doc["updatedAt"] = model.utcnow()
        await tx.save_token(doc)
    return doc


async def delete(fleet: Fleet, key: str, token_type: str | None = None) -> dict:
    async with fleet.store.unit() as tx:
        doc = await _resolve(tx, key, token_type)
        await tx.delete_token(doc["_id"])
    return doc


async def list_(fleet: Fleet, query: TokenQuery) -> tuple[list[dict], int]:
    async with fleet.store.unit() as tx:
        return await tx.list_tokens(query)


# --- CSV import ----------------------------------------------------------------------------

_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _field_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def parse_csv(body: bytes, now: str) -> list[dict]:
    """Token records from a CSV import: a header row naming the columns (IMPORT_COLUMNS,
    physicalId required, any order), then one token per row; an empty cell is the default
    (type ISO14443, active true, no organization, expiry or group). UsageError naming the
    line of the first bad row: nothing is imported then."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise UsageError(f"line {line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise UsageError(f"line 1: {e}") from None
    if not header or not any(h.strip() for h in header):
        raise UsageError(
            f"an empty import: the first line names the columns, e.g. {','.join(IMPORT_COLUMNS)}"
        )
    names = [h.strip() for h in header]
    unknown = [n for n in names if n not in IMPORT_COLUMNS]
    if unknown:
        raise UsageError(
            f"line 1: unknown column {printable(unknown[0])!r}; columns: "
            f"{', '.join(IMPORT_COLUMNS)}"
        )
    if len(set(names)) != len(names):
        raise UsageError("line 1: a column is named twice")
    if "physicalId" not in names:
        raise UsageError("line 1: the physicalId column is required")
    docs: list[dict] = []
    seen: dict[tuple[str, str], int] = {}
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(names):
                raise UsageError(f"line {line}: {len(row)} fields, the header names {len(names)}")
            if len(docs) >= MAX_IMPORT_ROWS:
                raise UsageError(
                    f"line {line}: an import has at most {MAX_IMPORT_ROWS} tokens; split the file"
                )
            values: dict[str, Any] = {}
            for name, cell in zip(names, row, strict=True):
                cell = cell.strip()
                if not cell:
                    continue  # the default
                if name == "active":
                    if cell.lower() not in _TRUE:
                        raise UsageError(
                            f"line {line}: active is true or false, not {printable(cell)!r}"
                        )
                    values[name] = _TRUE[cell.lower()]
                else:
                    values[name] = cell
            values.setdefault("physicalId", "")
            try:
                body_ = TokenCreate.model_validate(values)
            except ValidationError as e:
                raise UsageError(f"line {line}: {_field_errors(e)}") from None
            key = (body_.physicalId.casefold(), body_.type)
            if key in seen:
                raise UsageError(
                    f"line {line}: token {printable(body_.physicalId)!r} of type "
                    f"{body_.type} is on line {seen[key]} already"
                )
            seen[key] = line
            docs.append(new_token(body_, now))
    except csv.Error as e:
        raise UsageError(f"line {reader.line_num or line}: {e}") from None
    return docs


async def import_csv(fleet: Fleet, body: bytes) -> dict:
    """Every row of a CSV body as a token, in one unit: all or none. A row whose physicalId
    and type exist updates that token. Returns {rows, created, updated}."""
    import asyncio

    # parsed in a thread: the event loop goes on answering stations meanwhile
    docs = await asyncio.to_thread(parse_csv, body, model.utcnow())
    async with fleet.store.unit() as tx:
        created = await tx.import_tokens(docs) if docs else 0
    return {"rows": len(docs), "created": created, "updated": len(docs) - created}


# --- local authorization lists -------------------------------------------------------------


def _fits(token: dict, protocol: str) -> bool:
    """A token the station's version can hold: a 1.6 id tag has at most 20 characters."""
    if protocol == "ocpp1.6":
        return 0 < len(token["physicalId"]) <= ID_TAG_16
    return True


def _entry_key(entry: list, protocol: str) -> tuple:
    """1.6 lists are keyed by id tag alone; 2.0.1 ones by idToken and type."""
    if protocol == "ocpp1.6":
        return (entry[0].casefold(),)
    return (entry[0].casefold(), entry[1])


async def local_list(tx: Unit, station: dict, full: bool) -> SendLocalList:
    """The SendLocalList for a station: its tokens (of no organization or of its own, that its
    version can hold), each with its status; `full`: all of them, else what changed since the
    list it last accepted (a token gone: taken off)."""
    protocol = station["protocol"]
    docs, total = await tx.list_tokens(
        TokenQuery(usable_in=station.get("organization"), newest_first=False, limit=MAX_LOCAL_LIST)
    )
    if total > MAX_LOCAL_LIST:
        raise UsageError(
            f"{total} tokens may be used at chargestation {station['endpoint']}: a local list "
            f"holds at most {MAX_LOCAL_LIST} here",
            hint="give the station an organization, and its tokens that organization",
        )
    now = model.utcnow()
    current: dict[tuple, list] = {}
    for t in docs:
        if not _fits(t, protocol):
            continue
        status = status_of(t, station, now)
        accepted = status == "Accepted"
        entry = [
            t["physicalId"],
            t["type"],
            status,
            t.get("expiryDate") if accepted else None,
            t.get("parentIdTag") if accepted else None,
        ]
        key = _entry_key(entry, protocol)
        known = current.get(key)
        if known is None or RANK[status] < RANK[known[2]]:  # 1.6: the best of its types
            current[key] = entry
    last = await tx.get_local_list(station["_id"])
    version = (last["version"] if last else 0) + 1
    if full:
        sent = list(current.values())
    else:
        before = {_entry_key(e, protocol): e for e in (last or {}).get("entries", [])}
        sent = [e for k, e in current.items() if before.get(k) != e]
        sent += [[e[0], e[1], None, None, None] for k, e in before.items() if k not in current]
    return SendLocalList(version, full, tuple(LocalListEntry(*e) for e in sent))


async def local_list_sent(fleet: Fleet, station: dict, command: SendLocalList) -> None:
    """The station accepted `command`: keep the list it holds now, and its version."""
    protocol = station["protocol"]
    sent = [[e.id_tag, e.type, e.status, e.expiry, e.group] for e in command.entries]
    async with fleet.store.unit() as tx:
        held: dict[tuple, list] = {}
        if not command.full:
            last = await tx.get_local_list(station["_id"])
            held = {_entry_key(e, protocol): e for e in (last or {}).get("entries", [])}
        for e in sent:
            if e[2] is None:
                held.pop(_entry_key(e, protocol), None)
            else:
                held[_entry_key(e, protocol)] = e
        await tx.set_local_list(
            station["_id"],
            {
                "version": command.version,
                "updateType": "Full" if command.full else "Differential",
                "sentAt": model.utcnow(),
                "entries": list(held.values()),
            },
        )


async def local_list_of(fleet: Fleet, key: str) -> dict:
    """What a station was last sent as its local list (its version, when, the entries)."""
    station = await fleet.get(key)
    async with fleet.store.unit() as tx:
        last = await tx.get_local_list(station["_id"])
    entries = [
        {"idTag": e[0], "type": e[1], "status": e[2], "expiryDate": e[3], "parentIdTag": e[4]}
        for e in (last or {}).get("entries", [])
    ]
    return {
        "chargestation": station["_id"],
        "endpoint": station["endpoint"],
        "version": last["version"] if last else 0,
        "sentAt": last.get("sentAt") if last else None,
        "updateType": last.get("updateType") if last else None,
        "entries": entries,
    }
