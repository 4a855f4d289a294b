"""Domain rules: the one place that decides what an admin request or a station message does.

The REST routes (server/api.py) and the OCPP handlers (server/ocpp16.py, server/ocpp201.py) are
thin translators into the methods below. Everything here runs on the server's event loop; store
calls are short synchronous SQLite statements, so a read-modify-write of a record never
interleaves with another.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any, Callable

import orjson

from edrvctl import model
from edrvctl.timefmt import ago
from edrvctl.errors import NotFound, StationRejected, Unavailable, UsageError
from edrvctl.store import Store, StationQuery

log = logging.getLogger("edrvctl.fleet")


def _last_seen(doc: dict) -> str:
    when = doc.get("lastMessageAt") or doc.get("lastConnectAt")
    return f"last seen {ago(when)}" if when else "never connected"


class Fleet:
    def __init__(self, store: Store, heartbeat_interval: int = 300):
        from edrvctl.server.stations import Stations

        self.store = store
        self.stations = Stations()
        self.ocpp_url: str | None = None  # base URL stations are pointed at, once it is bound
        self.heartbeat_interval = heartbeat_interval
        self._tasks: set[asyncio.Task] = set()
        # lastMessageAt of stations whose message changed nothing else, not yet written:
        # written at most once a second per station (flush_seen), not once per Heartbeat.
        self._seen: dict[str, str] = {}
        self._ids: dict[str, str] = {}  # endpoint -> _id of connected stations
        # endpoint -> {(evse, connector): what it last said}, while connected
        self._statuses: dict[str, dict[tuple[int, int], tuple]] = {}
        self._group = None
        self._process_key = os.urandom(32)
        self._verified: dict[str, bytes] = {}  # endpoint -> keyed digest of a checked password

    def commit_in_groups(self) -> None:
        """Server mode: writes are committed per event-loop turn (server/commit.py)."""
        from edrvctl.server.commit import GroupCommit

        self._group = GroupCommit(self.store)

    async def durable(self) -> None:
        """Return once every write so far is committed: await before acknowledging."""
        if self._group is not None:
            await self._group.durable()

    def _load(self, key: str) -> dict | None:
        """A record by `_id` or endpoint, with its latest lastMessageAt."""
        doc = self.store.get_station(key)
        if doc is not None and doc["endpoint"] in self._seen:
            doc["lastMessageAt"] = self._seen[doc["endpoint"]]
        return doc

    def _save(self, doc: dict) -> None:
        self.store.save_station(doc)

    def _touch(self, endpoint: str) -> None:
        self._seen[endpoint] = model.utcnow()

    def flush_seen(self) -> None:
        """Write the pending lastMessageAt stamps (the server calls this every second)."""
        if self._seen:
            seen, self._seen = self._seen, {}
            self.store.set_last_message_at(seen)

    def _station_id(self, endpoint: str) -> str:
        sid = self._ids.get(endpoint)
        if sid is None:
            doc = self._load(endpoint)
            if doc is None:  # deleted while connected; the session is being closed
                raise NotFound(f"chargestation {endpoint!r} not found")
            sid = doc["_id"]
        return sid

    # --- reading ------------------------------------------------------------------------------

    def present(self, doc: dict) -> dict:
        return {**doc, "connection_url": self.ocpp_url}

    def get(self, key: str) -> dict:
        doc = self._load(key)
        if doc is None:
            raise NotFound(f"chargestation {key!r} not found",
                           hint="list them with `edrvctl cs list`")
        return doc

    def list_json(self, query: StationQuery) -> tuple[list[str], int]:
        """A page of records as JSON texts, `connection_url` included. Parsing and re-encoding
        10,000 records costs more than the rest of a list request; splicing costs nothing."""
        docs, total = self.store.list_stations_json(query)
        extra = ',"connection_url":' + orjson.dumps(self.ocpp_url).decode() + "}"
        return [d[:-1] + extra for d in docs], total

    # --- admin changes ------------------------------------------------------------------------

    async def create(self, body: model.StationCreate) -> tuple[dict, str | None]:
        """Returns the record, and the station's password when its profile has one (the only
        time it is ever shown)."""
        now = model.utcnow()
        doc = model.new_station(body, now)
        password, hashed = None, None
        if model.needs_password(doc["security"]):
            password, hashed = await self._new_password()
        with self.store.transaction():
            self.store.create_station(doc)
            if hashed:
                self.store.set_password_hash(doc["_id"], hashed, now)
        return doc, password

    @staticmethod
    async def _new_password() -> tuple[str, str]:
        """A new password and its hash (the slow hash runs in a thread, off the event loop)."""
        from edrvctl import passwords

        password = passwords.generate()
        return password, await asyncio.to_thread(passwords.hash_password, password)

    async def rotate_password(self, key: str) -> tuple[dict, str]:
        """Issue a new password and retire the old one at once; a station connected with the
        old one is disconnected (it must come back with the new one)."""
        doc = self.get(key)
        if not model.needs_password(doc["security"]):
            raise UsageError(f"chargestation {doc['endpoint']} uses security "
                             f"{doc['security']['type']!r}, which has no password")
        password, hashed = await self._new_password()
        doc = self.get(key)  # re-read after the await
        now = model.utcnow()
        self.store.set_password_hash(doc["_id"], hashed, now)
        self._verified.pop(doc["endpoint"], None)
        doc["updatedAt"] = now
        self._save(doc)
        session = self.stations.get(doc["endpoint"])
        if session is not None:
            await session.close(reason="password rotated")
        return doc, password

    async def check_password(self, endpoint: str, password: str) -> bool:
        """Constant-time check of a station's password. The slow hash runs in a thread once
        per station and server run; after that a keyed digest kept in memory answers."""
        from edrvctl import passwords

        doc = self._load(endpoint)
        stored = self.store.password_hash(doc["_id"]) if doc else None
        if stored is None:
            return False
        quick = hmac.new(self._process_key, f"{stored}\0{password}".encode(), "sha256").digest()
        known = self._verified.get(endpoint)
        if known is not None:
            return hmac.compare_digest(known, quick)
        if await asyncio.to_thread(passwords.verify, password, stored):
            self._verified[endpoint] = quick
            return True
        return False

    def update(self, key: str, patch: model.StationUpdate) -> dict:
        doc = self.get(key)
        changes = patch.model_dump(exclude_unset=True)
        was_active = doc["active"]
        doc.update(changes)
        doc["updatedAt"] = model.utcnow()
        self._save(doc)
        if doc["active"] != was_active:
            self._spawn(self.push_availability(doc["endpoint"]))
        return doc

    async def delete(self, key: str) -> dict:
        doc = self.get(key)
        self.store.delete_station(doc["_id"])
        for memo in (self._seen, self._ids, self._verified, self._statuses):
            memo.pop(doc["endpoint"], None)
        session = self.stations.get(doc["endpoint"])
        if session is not None:
            await session.close(reason="chargestation deleted")
        return doc

    # --- commands to live stations ------------------------------------------------------------

    def _session_for(self, doc: dict):
        if not doc["active"]:
            raise Unavailable(f"chargestation {doc['endpoint']} is inactive",
                              hint=f"activate it with `edrvctl cs activate {doc['endpoint']}`")
        session = self.stations.get(doc["endpoint"])
        if session is None:
            raise Unavailable(f"chargestation {doc['endpoint']} is offline "
                              f"({_last_seen(doc)})",
                              hint="its stored csconfig is shown by `edrvctl cs inspect`")
        return session

    async def fetch_config(self, key: str, keys: list[str], timeout: float) -> dict:
        """Ask the live station for its configuration, store it as `csconfig`, return it."""
        doc = self.get(key)
        session = self._session_for(doc)
        entries, unknown = await session.command(lambda cp: cp.fetch_config(keys), timeout)
        now = model.utcnow()
        doc = self.get(doc["_id"])  # re-read: the station may have said things meanwhile
        if keys:  # a partial fetch refreshes those entries and keeps the rest
            old = {e["key"]: e for e in doc["csconfig"]}
            for e in entries:  # GetVariables does not say what is read-only; keep what we knew
                if e.get("readonly") is None and e["key"] in old:
                    e["readonly"] = old[e["key"]].get("readonly")
            fresh = {e["key"] for e in entries}
            doc["csconfig"] = [e for e in doc["csconfig"] if e["key"] not in fresh] + entries
        else:
            doc["csconfig"] = entries
        doc["csconfigFetchedAt"] = now
        doc["updatedAt"] = now
        self._save(doc)
        return {"_id": doc["_id"], "endpoint": doc["endpoint"], "fetchedAt": now,
                "csconfig": entries, "unknownKeys": unknown}

    async def push_availability(self, endpoint: str) -> None:
        """Tell a connected station what its `active` switch says (whole station)."""
        doc = self._load(endpoint)
        session = self.stations.get(endpoint)
        if doc is None or session is None:
            return
        try:
            status = await session.command(
                lambda cp: cp.change_availability(doc["active"]), timeout=60)
            log.info("%s: ChangeAvailability %s -> %s", endpoint,
                     "Operative" if doc["active"] else "Inoperative", status)
        except (Unavailable, StationRejected, TimeoutError, Exception) as e:
            log.warning("%s: ChangeAvailability failed: %s", endpoint, e)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what stations say --------------------------------------------------------------------

    def _change(self, endpoint: str, fn: Callable[[dict, str], Any] | None = None,
                content: bool = True, message: bool = True) -> Any:
        """Load a station, apply fn(doc, now), stamp it, save it; returns what fn returned.
        `content`: the record's content changed (updatedAt); `message`: the station said
        something (lastMessageAt)."""
        doc = self.store.get_station(endpoint)
        if doc is None:  # deleted while connected; the session is being closed
            raise NotFound(f"chargestation {endpoint!r} not found")
        now = model.utcnow()
        result = fn(doc, now) if fn else None
        seen = self._seen.pop(endpoint, None)
        if message:
            doc["lastMessageAt"] = now
        elif seen:
            doc["lastMessageAt"] = seen
        if content:
            doc["updatedAt"] = now
        self._save(doc)
        return result

    def is_known(self, endpoint: str) -> dict | None:
        """The station whose endpoint this is (only the endpoint: an `_id` in a station's URL
        is not its identity)."""
        doc = self._load(endpoint)
        return doc if doc is not None and doc["endpoint"] == endpoint else None

    def connected(self, endpoint: str) -> None:
        def apply(doc, now):
            doc["online"] = True
            doc["lastConnectAt"] = now
            return doc["_id"]
        self._ids[endpoint] = self._change(endpoint, apply, message=False)

    def disconnected(self, endpoint: str) -> None:
        def apply(doc, now):
            doc["online"] = False
            doc["lastDisconnectAt"] = now
        self._ids.pop(endpoint, None)
        self._statuses.pop(endpoint, None)
        try:
            self._change(endpoint, apply, message=False)
        except NotFound:
            pass

    def heartbeat(self, endpoint: str) -> None:
        self._touch(endpoint)

    def boot(self, endpoint: str, boot_info: dict) -> tuple[str, int]:
        """Record BootNotification; every known station is Accepted (unknown ones never get
        past the websocket upgrade). Returns (registration status, heartbeat interval)."""
        def apply(doc, now):
            doc["bootInfo"] = {k: v for k, v in boot_info.items() if v is not None}
            doc["manufacturer"] = boot_info.get("chargePointVendor")
            doc["model"] = boot_info.get("chargePointModel")
        self._change(endpoint, apply)
        return "Accepted", self.heartbeat_interval

    def status_notification(self, endpoint: str, evse_id: int, connector_id: int, status: str,
                            error_code: str | None = None, info: str | None = None) -> None:
        said = (status, error_code, info)
        last = self._statuses.setdefault(endpoint, {})
        if last.get((evse_id, connector_id)) == said:
            self._touch(endpoint)  # stations repeat their status: no read, no write
            return

        def apply(doc, now):
            if evse_id == 0:
                doc["stationStatus"] = status
            else:
                model.upsert_connector(doc, evse_id, connector_id, now, status=status,
                                       errorCode=error_code, info=info)
            doc["status"] = model.station_status(doc["connectors"], doc.get("stationStatus"))
        self._change(endpoint, apply)
        last[(evse_id, connector_id)] = said

    def authorize(self, endpoint: str, id_tag: str) -> str:
        """Id tags are not managed here: every tag is accepted on an active station. An inactive
        station is Blocked, so it cannot start charging."""
        return "Accepted" if self._message_from(endpoint)["active"] else "Blocked"

    def _message_from(self, endpoint: str) -> dict:
        """The record of a station that just said something that changes nothing in it."""
        doc = self._load(endpoint)
        if doc is None:  # deleted while connected; the session is being closed
            raise NotFound(f"chargestation {endpoint!r} not found")
        self._touch(endpoint)
        return doc

    def start_transaction(self, endpoint: str, connector: int, id_tag: str | None,
                          meter_start: float | None, timestamp: str,
                          tx_key: str | None = None) -> tuple[str, str]:
        """Record a transaction start. Returns (transaction key, id-tag status)."""
        doc = self._message_from(endpoint)
        status = "Accepted" if doc["active"] else "Blocked"
        tx = {"station_id": doc["_id"], "tx_key": tx_key, "connector": connector,
              "idTag": id_tag, "meterStart": meter_start, "startedAt": timestamp,
              "stoppedAt": None, "meterStop": None, "stopReason": None,
              "status": "Active" if status == "Accepted" else "Refused"}
        if tx_key is not None and self.store.get_transaction(doc["_id"], tx_key):
            return tx_key, status  # a repeated start (2.0.1 Started resent): already recorded
        self.store.start_transaction(tx)
        return tx["tx_key"], status

    def stop_transaction(self, endpoint: str, tx_key: str, meter_stop: float | None,
                         timestamp: str, reason: str | None) -> bool:
        sid = self._station_id(endpoint)
        self._touch(endpoint)
        tx = self.store.update_transaction(sid, tx_key, {
            "meterStop": meter_stop, "stoppedAt": timestamp, "stopReason": reason,
            "status": "Completed"})
        return tx is not None

    def meter_values(self, endpoint: str, connector: int, tx_key: str | None,
                     values: list[dict]) -> None:
        sid = self._station_id(endpoint)
        self._touch(endpoint)
        self.store.add_meter_values(sid, tx_key, connector, values)

    def record_event(self, endpoint: str, kind: str, payload: dict,
                     from_station: bool = True) -> None:
        """Notifications kept as they came (firmware, diagnostics, security, ...), and things
        the server saw happen to a station (from_station=False: not a message from it)."""
        sid = self._station_id(endpoint)
        if from_station:
            self._touch(endpoint)
        self.store.add_event(sid, model.utcnow(), kind, payload)
