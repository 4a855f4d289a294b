"""Sessions: the transactions stations report, one shape for both OCPP versions.

A session is a row of the store's transactions: 1.6 StartTransaction / StopTransaction and
2.0.1 TransactionEvent Started / Updated / Ended record the same fields, and `present` gives
the outside shape (API, CLI, events):

- `_id` (ours, stable), `chargestation` (the station's `_id`), `endpoint`, `transactionId`
  (1.6: ours, a number; 2.0.1: the station's), `evseId` and `connectorId` (1.6 connector n is
  EVSE n), `idTag` (the token that started it) and `idTokenType` (2.0.1's type of it).
- `status`: Active until it ends, then Completed; Refused from the start when its id token was
  refused (it never was a charge), whatever happens after.
- `startedAt`, `stoppedAt` (the station's times), `meterStart`, `meterStop` (Wh), `energyKwh`
  (stop - start; while active, the latest reading of the energy register - start),
  `stopReason` (1.6 reason, 2.0.1 stoppedReason), `chargingState` (2.0.1, the latest).
- 2.0.1 has no meterStart: it is the energy register in the Started event's meter values, else
  the first reading of the session (a reading taken at its end does not count).
- `closedBy`, `closeReason`: an admin closed a session its station will never end.

Meter values are kept per message as the station sent them (store `meter_values`); `series`
reads them as one row per sampled value.

Events (fleet/events.py), each in the unit that writes the session: `session.started`,
`session.updated` (from meter values at most once a minute per session; at once when a 2.0.1
chargingState changes or an id token comes later), `session.ended` (with its energy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from edrvctl import model
from edrvctl.errors import Conflict, NotFound, StationRejected, StationTimeout
from edrvctl.fleet import events
from edrvctl.fleet.live import TransactionStatus
from edrvctl.store import SessionQuery, Unit

if TYPE_CHECKING:
    from edrvctl.fleet import Fleet

UPDATE_EVERY = 60.0  # s: a session is brought up to date from its meter values at most this often
MAX_REMEMBERED = 100_000  # running sessions remembered (Recent); cleared past this
LOOKBACK = 20  # newest messages of a session searched for its latest energy reading
CHUNK = 500  # messages read at a time when a session's series is paged through
# bytes a session's record is counted as against its station's daily budget (Fleet._charge):
# a station inventing ever new transactions must not grow the store without bound
RECORD_BYTES = 1024
END = "Transaction.End"


# --- the shape -----------------------------------------------------------------------------


def new(
    station: dict,
    tx_key: str | None,
    evse: int,
    connector: int | None,
    id_tag: str | None,
    meter_start: float | None,
    started_at: str | None,
    status: str,
    charging_state: str | None,
    now: str,
    token_type: str | None = None,
) -> dict:
    """A session as stored (the transaction row's document)."""
    return {
        "_id": model.new_id(),
        "station_id": station["_id"],
        "endpoint": station["endpoint"],
        "tx_key": tx_key,
        "connector": evse,  # the EVSE (1.6: the connector, which is EVSE n there)
        "connectorId": connector,
        "idTag": id_tag,
        "idTokenType": token_type,  # 2.0.1's idToken type (1.6 has none)
        "status": status,
        "chargingState": charging_state,
        "startedAt": started_at,
        "stoppedAt": None,
        "meterStart": meter_start,
        "meterStop": None,
        "meterLast": meter_start,  # the latest energy reading recorded in the session (Wh)
        "stopReason": None,
        "createdAt": now,
        "updatedAt": now,
    }


def energy_kwh(doc: dict, latest_wh: float | None = None) -> float | None:
    """Stop - start in kWh (to the Wh); while active, the latest reading - start."""
    start, end = doc.get("meterStart"), doc.get("meterStop")
    if end is None and doc.get("stoppedAt") is None:
        end = latest_wh if latest_wh is not None else doc.get("meterLast")
    if start is None or end is None:
        return None
    return round((end - start) / 1000, 3)


def present(doc: dict, latest_wh: float | None = None) -> dict:
    """The outside shape of a stored session; `latest_wh`: the latest energy reading, read
    from its meter values (an active session's doc may be up to UPDATE_EVERY behind)."""
    return {
        "_id": doc.get("_id"),
        "chargestation": doc["station_id"],
        "endpoint": doc.get("endpoint"),
        "transactionId": doc["tx_key"],
        "evseId": doc.get("connector"),
        "connectorId": doc.get("connectorId"),
        "idTag": doc.get("idTag"),
        "idTokenType": doc.get("idTokenType"),
        "status": doc.get("status"),
        "chargingState": doc.get("chargingState"),
        "startedAt": doc.get("startedAt"),
        "stoppedAt": doc.get("stoppedAt"),
        "meterStart": doc.get("meterStart"),
        "meterStop": doc.get("meterStop"),
        "energyKwh": energy_kwh(doc, latest_wh),
        "stopReason": doc.get("stopReason"),
        "closedBy": doc.get("closedBy"),
        "closeReason": doc.get("closeReason"),
        # eDRV's names for the same facts
        "metrics": {
            "chargingStart": doc.get("startedAt"),
            "chargingStop": doc.get("stoppedAt"),
            "meterStart": doc.get("meterStart"),
            "chargingState": doc.get("chargingState"),
            "chargingStopReason": doc.get("stopReason"),
        },
        "createdAt": doc.get("createdAt"),
        "updatedAt": doc.get("updatedAt"),
    }


def _number(value: Any, multiplier: Any) -> Any:
    """A sampled value as a number (2.0.1's multiplier applied); text that is no number is
    given back as it came."""
    try:
        number = float(value) * 10 ** int(multiplier or 0)
    except (TypeError, ValueError, OverflowError):
        return value
    return number if number == number and abs(number) != float("inf") else value


def series(rows: Iterable[dict]) -> Iterator[dict]:
    """Stored meter-value messages as one row per sampled value, in order: {timestamp,
    measurand, value, unit, phase, context, location, evseId}. OCPP's defaults are filled in
    (measurand Energy.Active.Import.Register, context Sample.Periodic, unit Wh for energy)."""
    for row in rows:
        for mv in row["values"]:
            if not isinstance(mv, dict):
                continue
            for sv in mv.get("sampledValue") or []:
                if not isinstance(sv, dict):
                    continue
                uom = sv.get("unitOfMeasure") or {}
                measurand = sv.get("measurand", model.ENERGY_REGISTER)
                unit = uom.get("unit") or sv.get("unit")
                if unit is None and str(measurand).startswith("Energy"):
                    unit = "Wh"
                yield {
                    "timestamp": mv.get("timestamp"),
                    "measurand": measurand,
                    "value": _number(sv.get("value"), uom.get("multiplier")),
                    "unit": unit,
                    "phase": sv.get("phase"),
                    "context": sv.get("context", "Sample.Periodic"),
                    "location": sv.get("location"),
                    "evseId": row["connector"],
                }


def start_register(meter_values: Iterable[dict]) -> float | None:
    """The first energy reading that is not one taken at the transaction's end."""
    for sv, wh in model.energy_registers(list(meter_values)):
        if sv.get("context") != END:
            return wh
    return None


# --- what fleet remembers of running sessions -----------------------------------------------


class Recent:
    """Running sessions' last check, so that a meter value does not read its session each
    time: (station _id, transaction key) -> (monotonic time, chargingState committed)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._clock = clock

    def due(self, key: tuple[str, str], charging_state: str | None, id_tag: str | None) -> bool:
        """Whether a message about the session should read (and perhaps update) it now."""
        seen = self._seen.get(key)
        if seen is None or id_tag is not None:
            return True
        at, state = seen
        if charging_state is not None and charging_state != state:
            return True
        return self._clock() - at >= UPDATE_EVERY

    def known(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def checked(self, key: tuple[str, str], charging_state: str | None) -> None:
        """Checked now; `charging_state` is the session's (None: the one known still is)."""
        if charging_state is None:
            charging_state = self._seen.get(key, (0.0, None))[1]
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen[key] = (self._clock(), charging_state)

    def forget(self, key: tuple[str, str]) -> None:
        self._seen.pop(key, None)


# --- recording (inside the caller's unit) ---------------------------------------------------


async def _first_reading(tx: Unit, station_id: str, tx_key: str) -> float | None:
    """The first energy reading stored for a transaction (start_register)."""
    rows = await tx.meter_values(station_id, tx_key, limit=LOOKBACK)
    return start_register(mv for row in rows for mv in row["values"])


async def latest_wh(tx: Unit, doc: dict) -> float | None:
    """The latest energy reading of a session: its newest meter values, else the doc's."""
    for limit in (1, LOOKBACK):  # nearly always the newest message has one
        rows = await tx.meter_values(doc["station_id"], doc["tx_key"], limit=limit, newest=True)
        for row in rows:
            wh = model.energy_register_wh(row["values"])
            if wh is not None:
                return wh
        if len(rows) < limit:
            break
    return doc.get("meterLast")


async def record_start(
    tx: Unit,
    station: dict,
    tx_key: str | None,
    evse: int,
    connector: int | None,
    id_tag: str | None,
    meter_start: float | None,
    started_at: str,
    accepted: bool,
    charging_state: str | None,
    meter_values: list[dict] | None,
    *,
    token_type: str | None = None,
) -> tuple[dict, bool]:
    """A transaction start: (the session, whether it is new). A start repeated (2.0.1 Started
    resent) records nothing again; the start of a session first heard of in a later event
    fills in what that event did not say."""
    sid = station["_id"]
    now = model.utcnow()
    if tx_key is not None:
        known = await tx.get_transaction(sid, tx_key)
        if known is not None:
            if known.get("startedAt") is None:
                fields: dict[str, Any] = {"startedAt": started_at, "updatedAt": now}
                if known.get("idTag") is None:
                    fields["idTag"] = id_tag
                    fields["idTokenType"] = token_type
                if meter_start is None and meter_values:
                    meter_start = start_register(meter_values)
                if meter_start is not None:
                    fields["meterStart"] = meter_start
                known = await tx.update_transaction(sid, tx_key, fields) or known
            return known, False
    if meter_start is None and meter_values:
        meter_start = start_register(meter_values)
    status = "Active" if accepted else "Refused"
    doc = new(
        station,
        tx_key,
        evse,
        connector,
        id_tag,
        meter_start,
        started_at,
        status,
        charging_state,
        now,
        token_type,
    )
    latest = model.energy_register_wh(meter_values)
    if latest is not None:
        doc["meterLast"] = latest
    key = await tx.start_transaction(doc)
    if meter_values:
        await tx.add_meter_values(sid, key, evse, meter_values)
    await tx.add_event(sid, now, events.SESSION_STARTED, present(doc), station["endpoint"])
    return doc, True


async def record_values(
    tx: Unit,
    station: dict,
    tx_key: str,
    evse: int,
    values: list[dict],
    charging_state: str | None = None,
    id_tag: str | None = None,
    accepted: bool = True,
    learn: bool = False,
) -> dict | None:
    """Bring a running session up to date from a message about it (its meter values are
    stored already): the latest energy reading, a meterStart not known yet, a new
    chargingState, an id token given after the start (refused: the session is Refused). One
    session.updated event if anything changed. `learn`: a transaction not recorded yet is
    recorded now, as running (2.0.1 names its own; a 1.6 id that is not ours is left alone).
    Returns the session written, if any."""
    sid, endpoint = station["_id"], station["endpoint"]
    now = model.utcnow()
    known = await tx.get_transaction(sid, tx_key)
    if known is None:
        if not learn:
            return None
        doc = new(
            station,
            tx_key,
            evse,
            None,
            id_tag,
            await _first_reading(tx, sid, tx_key),
            None,
            "Active" if accepted else "Refused",
            charging_state,
            now,
        )
        latest = model.energy_register_wh(values)
        if latest is not None:
            doc["meterLast"] = latest
        await tx.start_transaction(doc)
        await tx.add_event(sid, now, events.SESSION_STARTED, present(doc), endpoint)
        return doc
    if known.get("stoppedAt") is not None:
        return None  # ended: what comes after changes nothing
    fields: dict[str, Any] = {}
    wh = model.energy_register_wh(values)
    if wh is not None and wh != known.get("meterLast"):
        fields["meterLast"] = wh
    if known.get("meterStart") is None and values:
        start = start_register(values)
        if start is not None:
            fields["meterStart"] = start
    if charging_state is not None and charging_state != known.get("chargingState"):
        fields["chargingState"] = charging_state
    if id_tag is not None and known.get("idTag") is None:
        fields["idTag"] = id_tag
        if not accepted:
            fields["status"] = "Refused"
    if not fields:
        return None
    fields["updatedAt"] = now
    updated = await tx.update_transaction(sid, tx_key, fields)
    if updated is not None:
        await tx.add_event(sid, now, events.SESSION_UPDATED, present(updated), endpoint)
    return updated


async def record_end(
    tx: Unit,
    station: dict,
    tx_key: str,
    meter_stop: float | None,
    stopped_at: str,
    reason: str | None,
    meter_values: list[dict] | None,
    evse: int | None = None,
    id_tag: str | None = None,
    charging_state: str | None = None,
    learn: bool = False,
) -> dict | None:
    """A transaction's end, with the meter values sent with it: the session ends Completed
    (Refused stays Refused), meterStop the reading given, else the latest one. A stop
    repeated records nothing again; a station's own end after an admin's close wins (it
    knows the meter). `learn`: an end whose start was never seen is recorded as a session of
    its own (2.0.1), its meterStart the first reading of it, if any. Returns the session, or
    None when nothing was recorded (an unknown 1.6 transaction)."""
    sid, endpoint = station["_id"], station["endpoint"]
    known = await tx.get_transaction(sid, tx_key)
    if known is not None and known.get("stoppedAt") is not None and not known.get("closedBy"):
        return known  # a repeated stop: recorded already
    if meter_values:
        connector = known["connector"] if known else (evse or 0)
        await tx.add_meter_values(sid, tx_key, connector, meter_values)
    if meter_stop is None:
        meter_stop = model.energy_register_wh(meter_values)
    now = model.utcnow()
    if known is None:
        if not learn:
            return None
        known = new(
            station,
            tx_key,
            evse or 0,
            None,
            id_tag,
            await _first_reading(tx, sid, tx_key),
            None,
            "Active",
            charging_state,
            now,
        )
        await tx.start_transaction(known)
    if meter_stop is None:
        meter_stop = await latest_wh(tx, known)
    fields = {
        "meterStop": meter_stop,
        "meterLast": meter_stop,
        "stoppedAt": stopped_at,
        "stopReason": reason,
        # a transaction whose token was refused stays so: it never was a charge
        "status": "Refused" if known.get("status") == "Refused" else "Completed",
        "updatedAt": now,
    }
    if charging_state is not None:
        fields["chargingState"] = charging_state
    if id_tag is not None and known.get("idTag") is None:
        fields["idTag"] = id_tag
    doc = await tx.update_transaction(sid, tx_key, fields) or {**known, **fields}
    await tx.add_event(sid, now, events.SESSION_ENDED, present(doc), endpoint)
    return doc


# --- reading and closing (the API's) -----------------------------------------------------


async def _presented(tx: Unit, doc: dict) -> dict:
    latest = await latest_wh(tx, doc) if doc.get("stoppedAt") is None else None
    return present(doc, latest)


async def _stored(fleet: Fleet, session_id: str) -> dict:
    async with fleet.store.unit() as tx:
        doc = await tx.get_session(session_id)
    if doc is None:
        raise NotFound(
            f"session {session_id!r} not found", hint="list them with `edrvctl sessions list`"
        )
    return doc


async def get(fleet: Fleet, session_id: str) -> dict:
    async with fleet.store.unit() as tx:
        doc = await tx.get_session(session_id)
        if doc is None:
            raise NotFound(
                f"session {session_id!r} not found", hint="list them with `edrvctl sessions list`"
            )
        return await _presented(tx, doc)


async def find(fleet: Fleet, session_id: str) -> dict | None:
    """A session by its `_id`, or None."""
    async with fleet.store.unit() as tx:
        doc = await tx.get_session(session_id)
    return present(doc) if doc is not None else None


async def list_(
    fleet: Fleet, query: SessionQuery, station: str | None = None
) -> tuple[list[dict], int]:
    """A page of sessions, newest first, and how many match; `station`: an _id or endpoint
    (one that is no station matches nothing)."""
    if station is not None:
        doc = await fleet._read(station)
        query.station_id = doc["_id"] if doc else station
    async with fleet.store.unit() as tx:
        docs, total = await tx.list_sessions(query)
        return [await _presented(tx, d) for d in docs], total


async def meter_values(
    fleet: Fleet, session_id: str, limit: int, offset: int
) -> tuple[list[dict], bool]:
    """A page of a session's series (`series`): `limit` rows after `offset`, and whether
    more follow. Messages are read CHUNK at a time, so memory stays bounded whatever the
    session's length."""
    doc = await _stored(fleet, session_id)
    page: list[dict] = []
    skipped, read = 0, 0
    while True:
        async with fleet.store.unit() as tx:
            rows = await tx.meter_values(doc["station_id"], doc["tx_key"], CHUNK, read)
        if not rows:
            return page, False
        read += len(rows)
        for sample in series(rows):
            if skipped < offset:
                skipped += 1
            elif len(page) == limit:
                return page, True
            else:
                page.append(sample)


async def close(
    fleet: Fleet, session_id: str, reason: str, force: bool = False, timeout: float = 30.0
) -> dict:
    """End a session its station will never end, as an admin: recorded (stoppedAt now,
    meterStop the latest reading, closedBy admin) with a session.ended event. A 2.0.1 station
    that is online is asked first (GetTransactionStatus): if it says the transaction is still
    going on, or that it still has messages about it queued, the close is refused (Conflict)
    unless `force`. Nothing is sent to the station."""
    doc = await _stored(fleet, session_id)
    if doc.get("stoppedAt") is not None:
        raise Conflict(f"session {session_id} ended at {doc['stoppedAt']}: nothing to close")
    station = await fleet._read(doc["station_id"])
    if station is None:
        raise NotFound(f"session {session_id!r} not found")
    endpoint = station["endpoint"]
    if (
        not force
        and station["protocol"] == "ocpp2.0.1"
        and fleet.live.is_online(endpoint)
        and station.get("bootInfo")
    ):
        hint = "or close it anyway with --force (force: true)"
        try:
            _, answer = await fleet.live.send(endpoint, TransactionStatus(doc["tx_key"]), timeout)
        except (StationRejected, StationTimeout) as e:
            raise type(e)(
                f"{e.message}: GetTransactionStatus was not answered, so nothing was closed",
                hint=hint,
            ) from None
        what = f"chargestation {endpoint} says transaction {doc['tx_key']}"
        if answer.get("ongoingIndicator"):
            raise Conflict(
                f"{what} is still ongoing",
                hint=f"stop it with `edrvctl sessions stop {session_id}`, {hint}",
            )
        if answer.get("messagesInQueue"):
            raise Conflict(
                f"{what} still has messages queued: its end may yet come",
                hint=f"wait for them, {hint}",
            )
    async with fleet.store.unit() as tx:
        current = await tx.get_transaction(doc["station_id"], doc["tx_key"])
        if current is None:
            raise NotFound(f"session {session_id!r} not found")
        if current.get("stoppedAt") is not None:
            raise Conflict(
                f"session {session_id} ended at {current['stoppedAt']} meanwhile: nothing to close"
            )
        now = model.utcnow()
        stop = await latest_wh(tx, current)
        closed = await tx.update_transaction(
            doc["station_id"],
            doc["tx_key"],
            {
                "stoppedAt": now,
                "meterStop": stop,
                "meterLast": stop,
                "status": "Refused" if current.get("status") == "Refused" else "Completed",
                "closedBy": "admin",
                "closeReason": reason,
                "updatedAt": now,
            },
        )
        result = present(closed or current)
        await tx.add_event(
            doc["station_id"],
            now,
            events.SESSION_ENDED,
            {**result, "closedBy": "admin", "reason": reason},
            endpoint,
        )
    fleet.recent_sessions.forget((doc["station_id"], doc["tx_key"]))
    return result
