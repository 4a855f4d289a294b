"""One `serve` node among several on one PostgreSQL (`serve --node-id`): its lease, the stations
it holds, the commands it routes and those it carries out for others, and taking over for a node
that died or hung. The SQL is in store/pgcluster.py; reference/scale-out.md has the design.

Correctness never rests on a lease or a notification: every write a node makes for a station is
fenced by the station's epoch inside PostgreSQL (the store checks `store.claims` at commit), so a
node that was frozen or cut off can be slow or wrong without corrupting anything. Leases and the
per-node advisory lock only decide who is taken to be alive; NOTIFY only wakes, and every wait
reads the row again at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edrvctl import errors
from edrvctl.errors import EdrvError, NotFound, StationTimeout, Unavailable, UsageError
from edrvctl.fleet.live import (
    Command,
    decode_answer,
    decode_command,
    encode_answer,
    encode_command,
)
from edrvctl.store.pgcluster import LEADER_KEY, LOCK_KEY, ClusterDb, channel

log = logging.getLogger("edrvctl.cluster")

LEASE = 10.0  # seconds a node is taken to be alive after its last renewal
RENEW = 2.0  # seconds between renewals
REAP = 1.0  # seconds between looks for dead nodes
# a node whose process is gone (its lock is free) is taken over once this long unrenewed; a
# live node always renews within it, even just after a database outage
SILENT = 3 * RENEW
# after (re)connecting to the database, wait this long before taking over anyone: every node
# lost its lock in the same outage and needs a moment to take it again
GRACE = LEASE
SHED_RATE = 20.0  # sockets closed per second by drain and rebalance
KEEP_DONE = 600.0  # seconds answered commands are kept


def _encode_error(e: BaseException) -> bytes:
    kind = type(e).__name__ if isinstance(e, EdrvError) else "EdrvError"
    message = e.message if isinstance(e, EdrvError) else f"{type(e).__name__}: {e}"
    return orjson.dumps({"error": {"kind": kind, "message": message}})


def _raise_error(error: dict) -> None:
    kind = getattr(errors, str(error.get("kind")), None)
    if not (isinstance(kind, type) and issubclass(kind, EdrvError)):
        kind = EdrvError
    raise kind(str(error.get("message")))


class ClusterNode:
    def __init__(
        self,
        fleet: Any,
        registry: Any,
        store: Any,
        url: str,
        node_id: str,
        public_url: str = "",
    ) -> None:
        self.fleet, self.registry, self.store = fleet, registry, store
        self.url, self.node_id, self.public_url = url, node_id, public_url
        self.api_url = ""
        self.db: ClusterDb | None = None
        self.remote: dict[str, str] = {}  # endpoint -> node holding it (not this one)
        self.held: dict[str, tuple[str, int]] = {}  # station _id -> (endpoint, epoch), ours
        self.renewed = 0.0  # monotonic time of the last successful renewal
        self.draining = False
        # one node at a time does what must be done once: deliver webhooks, prune
        self.leader = False
        self.on_lead: Callable[[bool], Awaitable[None]] | None = None
        self._listener: Any = None
        self._connected_at = 0.0
        self._waiting: dict[int, asyncio.Future] = {}
        self._early: deque[int] = deque(maxlen=1000)  # answers heard before their waiter
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._shed: asyncio.Task | None = None

    # --- start and stop ---

    async def start(self, api_url: str) -> None:
        import asyncpg

        self.api_url = api_url
        self.store.node_id = self.node_id  # its writes for the stations it claims are fenced
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        self.db = ClusterDb(pool)
        await self._listen()
        # what a previous run of this node left behind (it was killed): given up now
        await self._take_over(self.node_id)
        await self.db.register(self.node_id, api_url, self.public_url, LEASE)
        self.renewed = time.monotonic()
        await self._try_to_lead()
        self.registry.cluster = self
        self.fleet.router = self
        for loop in (self._renew_loop, self._reap_loop, self._owners_loop, self._watch_loop):
            self._loops.append(asyncio.create_task(loop()))
        log.info("node %s joined the cluster (lease %gs)", self.node_id, LEASE)

    async def stop(self) -> None:
        """After the listener closed our sockets (each released as it went)."""
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(BaseException):
                await task
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self.db.leave(self.node_id)
            with contextlib.suppress(Exception):
                if self._listener is not None:
                    await self._listener.close()
            await self.db.pool.close()

    async def _listen(self) -> None:
        """The connection that holds this node's lock and hears its channel."""
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            locked = await conn.fetchval(f"SELECT pg_try_advisory_lock({LOCK_KEY})", self.node_id)
            if not locked:
                raise UsageError(
                    f"another process runs as node {self.node_id} on this database",
                    hint="give each node its own --node-id",
                )
            await conn.add_listener(channel(self.node_id), self._heard)
            conn.add_termination_listener(lambda c: self._lost_listener())
        except BaseException:
            await conn.close()
            raise
        self._listener = conn
        self._connected_at = time.monotonic()

    def _lost_listener(self) -> None:
        log.warning("node %s: lost its database connection; reconnecting", self.node_id)
        self._listener = None
        if self.leader:  # its lock went with the connection
            self.leader = False
            self._spawn(self._lead(False))

    async def _try_to_lead(self) -> None:
        if self.leader or self._listener is None:
            return
        if await self._listener.fetchval(f"SELECT pg_try_advisory_lock({LEADER_KEY})"):
            self.leader = True
            log.info("node %s leads: it delivers webhooks and prunes", self.node_id)
            await self._lead(True)

    async def _lead(self, leading: bool) -> None:
        if self.on_lead is not None:
            try:
                await self.on_lead(leading)
            except Exception:
                log.exception(
                    "node %s: %s leading failed",
                    self.node_id,
                    "taking up" if leading else "giving up",
                )

    # --- health ---

    def healthy(self) -> str | None:
        """Why this node should take no new stations, or None."""
        if self.draining:
            return "draining"
        if self._listener is None:
            return "no connection to the database"
        if time.monotonic() - self.renewed > LEASE - RENEW:
            return "its lease is not being renewed"
        return None

    # --- the loops ---

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW)
            try:
                if self._listener is None:
                    await self._listen()
                    await self._revalidate()
                    self._spawn(self._run_queued())
                assert self.db is not None
                if await self.db.renew(self.node_id, LEASE):
                    self.renewed = time.monotonic()
                    await self._try_to_lead()
                else:  # taken over while we were away: nothing we held is ours
                    log.warning("node %s was taken over by another node; rejoining", self.node_id)
                    await self._revalidate()
                    await self.db.register(self.node_id, self.api_url, self.public_url, LEASE)
                    self.renewed = time.monotonic()
            except Exception as e:
                log.warning("node %s: lease not renewed: %s", self.node_id, e)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP)
            if self._listener is None or time.monotonic() - self._connected_at < GRACE:
                continue
            try:
                assert self.db is not None
                for node_id, stations, failed in await self.db.reap(self.node_id, LEASE - SILENT):
                    log.warning(
                        "node %s lost: %d station(s) offline, %d command(s) failed",
                        node_id,
                        len(stations),
                        len(failed),
                    )
                    await self.fleet.lost(stations, f"node {node_id} lost")
                await self.db.prune(KEEP_DONE)
            except Exception as e:
                log.warning("node %s: looking for lost nodes failed: %s", self.node_id, e)

    async def _owners_loop(self) -> None:
        """The stations other nodes hold, read whole now and then (events keep it current)."""
        while True:
            try:
                assert self.db is not None
                owners = await self.db.owners()
                self.remote = {ep: node for ep, node in owners.items() if node != self.node_id}
            except Exception as e:
                log.debug("owners not read: %s", e)
            await asyncio.sleep(RENEW)

    async def _watch_loop(self) -> None:
        """Keep `remote` current from the events every node sees, between full reads."""
        from edrvctl.fleet import events

        with self.fleet.feed.subscribe() as sub:
            while True:
                try:
                    rows = await sub.next(None)
                except events.Lagged:
                    continue
                except events.Closed:
                    return
                for row in rows:
                    endpoint, data = row.get("endpoint"), row.get("data") or {}
                    if endpoint is None:
                        continue
                    if row["type"] == events.ONLINE:
                        node = data.get("node")
                        if node and node != self.node_id:
                            self.remote[endpoint] = node
                        else:
                            self.remote.pop(endpoint, None)
                    elif row["type"] == events.OFFLINE and data.get("node") == self.remote.get(
                        endpoint
                    ):
                        self.remote.pop(endpoint, None)

    async def _take_over(self, node_id: str) -> None:
        assert self.db is not None
        stations = await self.db.take_over(node_id, f"node {node_id} restarted")
        if stations:
            await self.fleet.lost(stations, f"node {node_id} restarted")

    async def _revalidate(self) -> None:
        """Close the sockets of stations another node took while we could not hear it."""
        assert self.db is not None
        held = await self.db.held(self.node_id)
        for station_id, (_, epoch) in list(self.held.items()):
            if held.get(station_id) != epoch:
                self.evict(station_id, None)

    # --- messages from other nodes ---

    def _heard(self, conn: Any, pid: int, chan: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "c":
            self._spawn(self._carry_out(int(rest)))
        elif kind == "r":
            fut = self._waiting.get(int(rest))
            if fut is None:  # answered before its sender heard back from the enqueue
                self._early.append(int(rest))
            elif not fut.done():
                fut.set_result(None)
        elif kind == "e":
            station_id, _, epoch = rest.rpartition(":")
            self.evict(station_id, int(epoch))
        elif kind == "s":
            self.shed(int(rest))
        elif kind == "d":
            self.draining = True  # /health turns 503: the load balancer sends no new ones
            self.shed(None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- stations this node holds ---

    async def claim(self, endpoint: str) -> dict:
        """A station connected here: own it under a new epoch before anything is written for
        it. Returns what the online event says of the node."""
        assert self.db is not None
        doc = await self.fleet.is_known(endpoint)
        if doc is None:
            raise Unavailable(f"chargestation {endpoint} is unknown")
        epoch = await self.db.claim(doc["_id"], endpoint, self.node_id)
        self.held[doc["_id"]] = (endpoint, epoch)
        self.store.claims[doc["_id"]] = epoch
        self.remote.pop(endpoint, None)
        return {"node": self.node_id, "epoch": epoch}

    async def release(self, endpoint: str) -> None:
        """The station's socket here closed (after its offline was written, fenced)."""
        for station_id, (ep, epoch) in list(self.held.items()):
            if ep == endpoint:
                del self.held[station_id]
                self._unclaim(station_id, epoch)
                assert self.db is not None
                try:
                    await self.db.release(station_id, self.node_id, epoch)
                except Exception as e:
                    log.warning("%s: ownership not released: %s", endpoint, e)

    def evict(self, station_id: str, epoch: int | None) -> None:
        """Another node holds the station now (epoch None: we learnt it late): close our
        socket without writing anything for it. store.claims keeps our old epoch until the
        socket is closed, so that the store refuses any write still in flight for it."""
        held = self.held.get(station_id)
        if held is None or (epoch is not None and held[1] >= epoch):
            return
        endpoint = held[0]
        del self.held[station_id]
        log.info("%s: connected to another node now; closing our socket", endpoint)
        self._spawn(self._evict(station_id, endpoint, held[1]))

    async def _evict(self, station_id: str, endpoint: str, epoch: int) -> None:
        await self.registry.evict(endpoint, "replaced by a newer connection on another node")
        self._unclaim(station_id, epoch)

    def _unclaim(self, station_id: str, epoch: int) -> None:
        """The socket is closed: this node's writes for the station are admin writes again
        (unfenced), unless it has claimed the station anew meanwhile."""
        if self.store.claims.get(station_id) == epoch:
            del self.store.claims[station_id]

    def shed(self, n: int | None) -> None:
        """Close up to n of our stations' sockets (None: all, for as long as we drain: the
        load balancer may send some back before it sees /health fail), SHED_RATE a second,
        with 1012 (service restart): they reconnect through the load balancer, to the least
        loaded node."""
        if self._shed is not None and not self._shed.done():
            self._shed.cancel()
        self._shed = asyncio.ensure_future(self._shed_some(n))

    async def _shed_some(self, n: int | None) -> None:
        while True:
            for endpoint in [ep for ep, _ in list(self.held.values())][:n]:
                self._spawn(self.registry.shed(endpoint, "moved to another node"))
                await asyncio.sleep(1 / SHED_RATE)
            if n is not None or not self.draining:
                return
            await asyncio.sleep(1.0)

    # --- moving stations between nodes ---

    async def nodes(self) -> list[dict]:
        assert self.db is not None
        return await self.db.nodes()

    async def drain(self, node_id: str) -> dict:
        """Move every station off a node, SHED_RATE a second; it takes none until restarted."""
        found = {n["_id"]: n for n in await self.nodes()}
        if node_id not in found:
            raise NotFound(
                f"node {node_id!r} not found", hint="list them with `edrvctl nodes list`"
            )
        assert self.db is not None
        await self.db.tell(node_id, "d:")
        return {**found[node_id], "moving": found[node_id]["stations"]}

    async def rebalance(self, max_share: float) -> dict[str, int]:
        """Have each live node above the mean shed what it holds beyond it, but at most
        `max_share` (0..1) of its stations: node -> stations told to move."""
        live = [n for n in await self.nodes() if n["live"]]
        if not live:
            return {}
        mean = sum(n["stations"] for n in live) / len(live)
        moves: dict[str, int] = {}
        for node in live:
            excess = min(int(node["stations"] - mean), int(node["stations"] * max_share))
            if excess > 0:
                moves[node["_id"]] = excess
        assert self.db is not None
        for node_id, count in moves.items():
            await self.db.tell(node_id, f"s:{count}")
        return moves

    # --- routed commands ---

    def is_local(self, endpoint: str) -> bool:
        return self.registry.is_online(endpoint)

    async def route(
        self, station_id: str, endpoint: str, kind: str, body: dict, timeout: float
    ) -> Any:
        """Have the node holding the station carry out a command; its answer (or its error,
        raised here)."""
        assert self.db is not None
        wait = timeout + 2.0  # the owner's own timeout, and the trip both ways
        queued = await self.db.enqueue(station_id, endpoint, kind, body, self.node_id, wait)
        if queued is None:
            self.remote.pop(endpoint, None)
            raise Unavailable(f"chargestation {endpoint} is offline")
        command_id, owner = queued
        fut = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = fut
        if command_id in self._early:
            fut.set_result(None)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), wait)
            result = await self.db.result(command_id)  # NOTIFY only wakes: the row says
            if result is None:
                # not answered in time: end it here, unless its answer comes just now
                late = StationTimeout(
                    f"node {owner} did not answer for chargestation {endpoint} within {wait:g} s"
                )
                await self.db.finish(command_id, _encode_error(late))
                result = await self.db.result(command_id)
        finally:
            self._waiting.pop(command_id, None)
        if result is None:
            raise StationTimeout(f"chargestation {endpoint}: no answer")
        if "error" in result:
            _raise_error(result["error"])
        return decode_answer(result)

    async def send(self, station_id: str, endpoint: str, command: Command, timeout: float) -> Any:
        body = {"command": encode_command(command), "timeout": timeout}
        return await self.route(station_id, endpoint, "send", body, timeout)

    async def carry_out(self, action: dict, command: Command, timeout: float) -> dict:
        """Fleet.command for a station held by another node: that node sends it and follows
        it; the Action as it recorded the answer."""
        body = {"command": encode_command(command), "timeout": timeout, "action": action["_id"]}
        return await self.route(
            action["chargestation"], action["endpoint"], "action", body, timeout
        )

    async def _run_queued(self) -> None:
        """Commands routed to us while we could not hear (NOTIFY is not durable)."""
        assert self.db is not None
        for command_id in await self.db.queued(self.node_id):
            self._spawn(self._carry_out(command_id))

    async def _carry_out(self, command_id: int) -> None:
        assert self.db is not None
        try:
            row = await self.db.take(command_id, self.node_id)
            if row is None:
                return  # done already, or someone else's
            held = self.held.get(row["station_id"])
            if held is None or held[1] != row["epoch"]:
                raise Unavailable(f"chargestation {row['endpoint']} is no longer connected here")
            command = decode_command(row["body"]["command"])
            timeout = min(float(row["body"]["timeout"]), row["left"])
            if row["kind"] == "action":
                answer: Any = await self.fleet.carry_out_here(
                    row["body"]["action"], command, timeout
                )
            else:
                answer = await self.registry.send(row["endpoint"], command, timeout)
            result = orjson.dumps(encode_answer(answer))
        except Exception as e:
            if not isinstance(e, EdrvError):
                log.exception("a routed command failed")
            result = _encode_error(e)
        try:
            await self.db.finish(command_id, result)
        except Exception as e:
            log.warning("the answer to routed command %d not recorded: %s", command_id, e)


class ClusterLive:
    """fleet.live.LiveStations over the whole cluster: this node's stations directly, the
    others' through the node holding them."""

    def __init__(self, registry: Any, node: ClusterNode) -> None:
        self.local, self.node = registry, node

    def is_online(self, endpoint: str) -> bool:
        return self.local.is_online(endpoint) or endpoint in self.node.remote

    def check(self, endpoint: str, command: Command) -> None:
        if self.local.is_online(endpoint):
            self.local.check(endpoint, command)
        elif endpoint not in self.node.remote:
            raise Unavailable(f"chargestation {endpoint} is offline")

    async def send(self, endpoint: str, command: Command, timeout: float) -> Any:
        if self.local.is_online(endpoint):
            return await self.local.send(endpoint, command, timeout)
        doc = await self.node.fleet.is_known(endpoint)
        if doc is None:
            raise Unavailable(f"chargestation {endpoint} is offline")
        return await self.node.send(doc["_id"], endpoint, command, timeout)
