"""Batches: one command to many stations, paced, stopped after too many failures.

A selector picks the stations (field=value pairs over their records, explicit ids or
endpoints, or all of them); the command is built per station by the same translation the
single-station routes use (`build`), and every station's command is checked before the
first is sent: a body one station's version cannot take is a UsageError and nothing is sent.
Then `Fleet.command` runs once per station (a Configure once per key), at most
`max_in_flight` at once; after `max_failures` stations failed, the ones not started yet are
skipped. Every Action carries `batch: <id>`.

Batch records are kept in memory (the last MAX_BATCHES): a batch is an operator's run, its
Actions are the durable part (`GET /v1.1/actions?batch=ID` finds them after a restart).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from edrvctl import model
from edrvctl.errors import EdrvError, InvalidBody, NotFound, UsageError
from edrvctl.fleet import live as commands
from edrvctl.store import StationQuery

if TYPE_CHECKING:
    from edrvctl.fleet import Fleet

MAX_BATCHES = 1000
POLL = 0.2  # s between two reads of an Action followed to its end (`follow`)

# selector field -> how to read it from a station record
SELECTOR_FIELDS: dict[str, Callable[[dict], Any]] = {
    "location": lambda d: d.get("location"),
    "organization": lambda d: d.get("organization"),
    "manufacturer": lambda d: d.get("manufacturer"),
    "model": lambda d: d.get("model"),
    "firmware": lambda d: (d.get("bootInfo") or {}).get("firmwareVersion"),
    "protocol": lambda d: d.get("protocol"),
    "status": lambda d: d.get("status"),
    "online": lambda d: d.get("online"),
    "active": lambda d: d.get("active"),
    "endpoint": lambda d: d.get("endpoint"),
}


def parse_selector(text: str) -> dict[str, str]:
    """`location=depot-north,model=X` -> {"location": "depot-north", "model": "X"}."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"selector {part!r} is not key=value")
        selector[key] = value.strip()
    check_selector(selector)
    return selector


def check_selector(selector: dict) -> None:
    for key, value in selector.items():
        if key in ("ids", "all"):
            continue
        if key not in SELECTOR_FIELDS:
            raise UsageError(
                f"cannot select stations by {key!r}; fields: {', '.join(SELECTOR_FIELDS)}"
            )
        if not isinstance(value, str | bool):
            raise UsageError(f"selector {key}: give a text value (or true/false)")
    if "all" in selector and selector["all"] is not True:
        raise UsageError('selector all: give {"all": true} (or no "all")')
    ids = selector.get("ids")
    if ids is not None and (
        not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids)
    ):
        raise UsageError("selector ids: give a non-empty list of _ids or endpoints")
    if not selector:
        raise UsageError('an empty selector; to target every station say {"all": true}')


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def matches(doc: dict, selector: dict) -> bool:
    """Every field=value pair holds (case-insensitive; `online=true`, `model=` for none)."""
    for key, want in selector.items():
        if key in ("ids", "all"):
            continue
        if _text(SELECTOR_FIELDS[key](doc)).casefold() != _text(want).casefold():
            return False
    return True


# --- the command of each type, as the single-station routes build it -------------------------


def reset_command(body: model.ResetRequest, protocol: str) -> commands.Reset:
    """A reset in either version's words (`type`) or in `hard`; UsageError if they differ or
    the type is not this version's."""
    hard = body.hard
    if body.type is not None:
        allowed = model.RESET_TYPES[protocol]
        if body.type not in allowed:
            raise UsageError(
                f"reset type {body.type!r} is not an {protocol} reset type; "
                f"use {' or '.join(allowed)} (or hard: true|false for either version)"
            )
        by_type = body.type == allowed[1]
        if hard is not None and hard != by_type:
            raise UsageError(f"reset type {body.type!r} and hard: {str(hard).lower()} differ")
        hard = by_type
    return commands.Reset(bool(hard), body.evseId)


def configure_commands(data: dict) -> list[commands.Configure]:
    if not data:
        raise UsageError('give at least one key: {"Key": "value", ...}')
    if len(data) > 100:
        raise UsageError(f"{len(data)} keys in one request; at most 100")
    return [
        commands.Configure(k, str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in data.items()
    ]


_CONFIG = TypeAdapter(dict[model.ConfigKey, model.ConfigValue])


def config_body(data: Any) -> dict:
    """A configurations body as the single route takes it: {"Key": value, ...}."""
    if not isinstance(data, dict):
        raise InvalidBody('data: give {"Key": "value", ...}')
    try:
        return _CONFIG.validate_python(data, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidBody(f"data.{where}: {first['msg']}") from None


# A command whose body says all of it, whatever the station's version: body model -> command.
# The single-station routes and batches build them here, one place.
_COMMAND_OF: dict[type[BaseModel], Callable[[Any], commands.Command]] = {
    model.UnlockConnectorRequest: lambda b: commands.UnlockConnector(
        connector=b.connectorId, evse=b.evseId
    ),
    model.ChangeAvailabilityRequest: lambda b: commands.ChangeAvailability(
        b.type == "Operative", evse=b.evseId, connector=b.connectorId
    ),
    model.TriggerMessageRequest: lambda b: commands.TriggerMessage(
        b.requestedMessage, evse=b.evseId, connector=b.connectorId
    ),
    model.DataTransferRequest: lambda b: commands.DataTransfer(b.vendorId, b.messageId, b.data),
    model.CallRequest: lambda b: commands.RawCall(b.action, b.payload),
}
SIMPLE_TYPES: dict[str, type[BaseModel]] = {
    "unlock_connector": model.UnlockConnectorRequest,
    "change_availability": model.ChangeAvailabilityRequest,
    "trigger_message": model.TriggerMessageRequest,
    "data_transfer": model.DataTransferRequest,
    "call": model.CallRequest,
}


def command_of(body: BaseModel) -> commands.Command:
    """The command a parsed request body stands for (the types in SIMPLE_TYPES)."""
    return _COMMAND_OF[type(body)](body)


def _parse(cls: type[BaseModel], data: Any) -> Any:
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidBody(f"data{'.' + where if where else ''}: {first['msg']}") from None


def build(type_: str, data: Any, station: dict) -> list[commands.Command]:
    """The command(s) `type_` with body `data` stands for on this station."""
    protocol = station.get("protocol", "ocpp1.6")
    if type_ == "reset":
        return [reset_command(_parse(model.ResetRequest, data), protocol)]
    if type_ in SIMPLE_TYPES:
        return [command_of(_parse(SIMPLE_TYPES[type_], data))]
    if type_ == "clear_cache":
        if data:
            raise InvalidBody("clear_cache takes no data")
        return [commands.ClearCache()]
    if type_ == "update_firmware":
        b = _parse(model.UpdateFirmwareRequest, data)
        return [commands.UpdateFirmware(b.location, b.retrieveDate)]
    if type_ == "get_diagnostics":
        b = _parse(model.GetDiagnosticsRequest, data)
        return [commands.GetDiagnostics(b.location, b.since, b.until, b.security)]
    if type_ in ("configurations", "set_configuration"):
        return list(configure_commands(config_body(data)))
    raise UsageError(f"unknown batch type {type_!r}; types: {', '.join(TYPES)}")


TYPES = (
    "reset",
    "unlock_connector",
    "change_availability",
    "trigger_message",
    "configurations",
    "clear_cache",
    "data_transfer",
    "call",
    "update_firmware",
    "get_diagnostics",
)


def differences(station: dict, wanted: dict[str, str]) -> dict[str, str]:
    """The keys of `wanted` whose stored csconfig value differs (keys case-insensitive; a key
    the station never reported differs)."""
    stored = {e["key"].casefold(): e.get("value") for e in station.get("csconfig") or []}
    return {k: v for k, v in wanted.items() if stored.get(k.casefold(), object()) != v}


# --- the records -----------------------------------------------------------------------------


class Batches:
    """The last MAX_BATCHES batch records, by _id (in memory)."""

    def __init__(self, limit: int = MAX_BATCHES):
        self.limit = limit
        self._records: collections.OrderedDict[str, dict] = collections.OrderedDict()

    def add(self, record: dict) -> None:
        self._records[record["_id"]] = record
        while len(self._records) > self.limit:
            self._records.popitem(last=False)

    def get(self, batch_id: str) -> dict:
        record = self._records.get(batch_id)
        if record is None:
            raise NotFound(f"batch {batch_id!r} not found (the last {self.limit} are kept)")
        return record


async def select(fleet: Fleet, selector: dict) -> list[dict]:
    """The stations the selector picks, by endpoint (ids: in their order); NotFound for an id that names none."""
    check_selector(selector)
    ids = selector.get("ids")
    if ids:
        docs = []
        seen = set()
        for key in ids:
            doc = await fleet.get(key)
            if doc["_id"] not in seen and matches(doc, selector):
                seen.add(doc["_id"])
                docs.append(doc)
        return docs
    async with fleet.store.unit() as tx:
        texts, _ = await tx.list_stations_json(
            StationQuery(sort_by="endpoint", descending=False, limit=None)
        )
    return [d for d in map(orjson.loads, texts) if matches(d, selector)]


async def create(
    fleet: Fleet,
    selector: dict,
    type_: str,
    data: Any,
    max_in_flight: int = 10,
    max_failures: int | None = None,
    dry_run: bool = False,
    only_differences: bool = False,
) -> tuple[dict, list[tuple[dict, list[commands.Command]]]]:
    """Select and check: the batch record (not started) and each station's commands. Every
    station's commands are built first: a UsageError about any of them sends nothing.
    `only_differences` (configurations): each station gets only the keys whose stored
    csconfig value differs; a station with none is skipped."""
    if type_ not in TYPES and type_ != "set_configuration":
        raise UsageError(f"unknown batch type {type_!r}; types: {', '.join(TYPES)}")
    if max_in_flight < 1:
        raise UsageError("max_in_flight must be at least 1")
    if max_failures is not None and max_failures < 1:
        raise UsageError("max_failures must be at least 1")
    if type_ in ("configurations", "set_configuration"):
        data = config_body(data)
    docs = await select(fleet, selector)
    plans: list[tuple[dict, list[commands.Command]]] = []
    rows = []
    for doc in docs:
        station_data = data
        if only_differences and isinstance(data, dict):
            station_data = differences(doc, {k: _text(v) for k, v in data.items()})
        row: dict[str, Any] = {
            "chargestation": doc["_id"],
            "endpoint": doc["endpoint"],
            "protocol": doc.get("protocol"),
            "online": bool(fleet.live.is_online(doc["endpoint"])),
            "data": station_data,
            "outcome": "pending",
            "actions": [],
            "error": None,
        }
        if only_differences and isinstance(data, dict):
            stored = {e["key"].casefold(): e.get("value") for e in doc.get("csconfig") or []}
            row["current"] = {k: stored.get(k.casefold()) for k in station_data}
            row["fetchedAt"] = doc.get("csconfigFetchedAt")
        if only_differences and not station_data:
            row["outcome"] = "unchanged"
            rows.append(row)
            continue
        try:
            cmds = build(type_, station_data, doc)
        except UsageError as e:
            raise UsageError(f"chargestation {doc['endpoint']}: {e.message}") from None
        check = getattr(fleet.live, "check", None)
        if check is not None and fleet.live.is_online(doc["endpoint"]):
            for c in cmds:
                try:
                    check(doc["endpoint"], c)
                except UsageError as e:
                    raise UsageError(f"chargestation {doc['endpoint']}: {e.message}") from None
        plans.append((row, cmds))
        rows.append(row)
    now = model.utcnow()
    record = {
        "_id": model.new_id(),
        "type": type_,
        "data": data,
        "selector": selector,
        "matched": len(docs),
        "dryRun": dry_run,
        "status": "finished" if dry_run else "running",
        "maxInFlight": max_in_flight,
        "maxFailures": max_failures,
        "counts": {
            "requested": len(plans),
            "completed": 0,
            "failed": 0,
            "skipped": 0,
            "unchanged": len(rows) - len(plans),
        },
        "actions": [],
        "stations": rows,
        "createdAt": now,
        "finishedAt": now if dry_run else None,
    }
    if dry_run:
        for row, _ in plans:
            row["outcome"] = "planned"
    fleet.batches.add(record)
    return record, plans


def start(
    fleet: Fleet,
    record: dict,
    plans: list[tuple[dict, list[commands.Command]]],
    timeout: float = 30.0,
    follow: bool = False,
) -> asyncio.Task:
    """`run` in the background, among the fleet's tasks; the caller may await the task."""
    task = asyncio.ensure_future(run(fleet, record, plans, timeout, follow))
    fleet._tasks.add(task)
    task.add_done_callback(fleet._tasks.discard)
    return task


async def run(
    fleet: Fleet,
    record: dict,
    plans: list[tuple[dict, list[commands.Command]]],
    timeout: float = 30.0,
    follow: bool = False,
) -> dict:
    """Carry out a batch made by `create` (its record is updated as it goes). `follow`: a
    station is done when its Action's outcome is final, not when it answered."""
    if record["dryRun"]:
        return record
    counts = record["counts"]
    limit = record["maxFailures"]
    sem = asyncio.Semaphore(record["maxInFlight"])

    async def one(row: dict, cmds: list[commands.Command]) -> None:
        async with sem:
            if limit is not None and counts["failed"] >= limit:
                row["outcome"] = "skipped"
                counts["skipped"] += 1
                return
            ok = True
            for c in cmds:
                try:
                    action = await fleet.command(
                        row["chargestation"], c, timeout, batch=record["_id"]
                    )
                except EdrvError as e:
                    row["error"] = {"code": type(e).__name__, "description": e.message}
                    ok = False
                    break
                row["actions"].append(action["_id"])
                record["actions"].append(action["_id"])
                if follow:
                    action = await _final(fleet, action)
                if action["status"] != "completed" or action["outcome"] in ("failed", "timed_out"):
                    row["error"] = action.get("error") or {
                        "code": action["status"],
                        "description": f"{action['type']} {action['status']}",
                    }
                    ok = False
                    break
            row["outcome"] = "succeeded" if ok else "failed"
            counts["completed" if ok else "failed"] += 1

    try:
        await asyncio.gather(*(one(row, cmds) for row, cmds in plans))
    finally:
        record["status"] = "finished"
        record["finishedAt"] = model.utcnow()
    return record


async def _final(fleet: Fleet, action: dict) -> dict:
    """Poll an Action until its outcome is no longer pending (its deadline ends it)."""
    while action["outcome"] == "pending":
        await asyncio.sleep(POLL)
        action = await fleet.get_action(action["_id"])
    return action
