"""What several `serve` nodes share in PostgreSQL besides the fleet's data: which nodes are
alive (a lease, and a session advisory lock per node), which node holds each station's socket
(an epoch that rises at every connect: the store fences every write a node makes for a station
with it), and the commands one node routes to another (durable rows; NOTIFY only wakes).

The SQL of the cluster lives here; server/cluster.py decides when to run it. Messages between
nodes go on the channel `edrv_node_<node id>`, one short text each:
`c:<id>` a command for you, `r:<id>` the answer to yours is in, `e:<station>:<epoch>` another
node took that station (close your socket), `s:<n>` shed n stations (drain, rebalance).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# node ids name a NOTIFY channel and a log line: short and plain
NODE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def channel(node_id: str) -> str:
    return f"edrv_node_{node_id}"


# the advisory lock a node holds on its listening connection while it runs
LOCK_KEY = "hashtextextended('edrv_node:' || $1, 0)"
# and the one the node that delivers webhooks and prunes holds
LEADER_KEY = "hashtextextended('edrv_leader', 0)"


def _err(kind: str, message: str) -> bytes:
    return orjson.dumps({"error": {"kind": kind, "message": message}})


class ClusterDb:
    """Short transactions on a small pool of the store's database (asyncpg)."""

    def __init__(self, pool: Any):
        self.pool = pool

    # --- nodes ---

    async def register(self, node_id: str, api_url: str, public_url: str, lease: float) -> None:
        await self.pool.execute(
            "INSERT INTO nodes (node_id, api_url, public_url, lease_until, started_at) "
            "VALUES ($1, $2, $3, now() + make_interval(secs => $4), now()) "
            "ON CONFLICT (node_id) DO UPDATE SET api_url = $2, public_url = $3, "
            "lease_until = now() + make_interval(secs => $4), started_at = now()",
            node_id,
            api_url,
            public_url,
            lease,
        )

    async def renew(self, node_id: str, lease: float) -> bool:
        """False if the node was reaped (its stations were given up for it)."""
        row = await self.pool.fetchval(
            "UPDATE nodes SET lease_until = now() + make_interval(secs => $2) "
            "WHERE node_id = $1 RETURNING 1",
            node_id,
            lease,
        )
        return row is not None

    async def leave(self, node_id: str) -> None:
        await self.pool.execute("DELETE FROM nodes WHERE node_id = $1", node_id)

    async def nodes(self) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT n.node_id, n.api_url, n.public_url, n.lease_until, n.started_at, "
            "n.lease_until > now() AS live, "
            "(SELECT count(*) FROM station_owner o WHERE o.node_id = n.node_id AND o.connected) "
            "AS stations FROM nodes n ORDER BY n.node_id"
        )
        return [
            {
                "_id": r["node_id"],
                "apiUrl": r["api_url"],
                "publicUrl": r["public_url"],
                "leaseUntil": _iso(r["lease_until"]),
                "live": r["live"],
                "stations": r["stations"],
                "startedAt": _iso(r["started_at"]),
            }
            for r in rows
        ]

    async def reap(self, me: str, silent_for: float) -> list[tuple[str, list[str], list[dict]]]:
        """Take over every other node whose lease ran out, or whose process is gone (its lock is
        free) and that has not renewed for `silent_for` seconds: for each, (its id, the
        stations it held, now offline under a new epoch, its open commands, now failed)."""
        reaped = []
        candidates = await self.pool.fetch(
            "SELECT node_id FROM nodes WHERE node_id <> $1", me
        )  # fmt: skip
        for (node_id,) in candidates:
            async with self.pool.acquire() as db, db.transaction():
                gone = await db.fetchval(
                    "DELETE FROM nodes WHERE node_id = $1 AND (lease_until < now() OR "
                    "(lease_until < now() + make_interval(secs => $2) "
                    f"AND pg_try_advisory_xact_lock({LOCK_KEY}))) RETURNING 1",
                    node_id,
                    silent_for,
                )
                if gone is None:
                    continue
                stations, failed = await self._give_up(db, node_id, f"node {node_id} lost")
                reaped.append((node_id, stations, failed))
        return reaped

    async def take_over(self, node_id: str, reason: str) -> list[str]:
        """What a node held is no longer held (its process is gone): the stations, now
        offline under a new epoch; its open commands fail."""
        async with self.pool.acquire() as db, db.transaction():
            stations, _ = await self._give_up(db, node_id, reason)
        return stations

    async def _give_up(self, db: Any, node_id: str, reason: str) -> tuple[list[str], list[dict]]:
        rows = await db.fetch(
            "UPDATE station_owner SET epoch = epoch + 1, connected = false "
            "WHERE node_id = $1 AND connected RETURNING station_id",
            node_id,
        )
        failed = await self._fail(db, "node_id = $1", node_id, "Unavailable", reason)
        return [r[0] for r in rows], failed

    async def tell(self, node_id: str, message: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", channel(node_id), message)

    # --- station ownership ---

    async def claim(self, station_id: str, endpoint: str, node_id: str) -> int:
        """This node holds the station's socket now: its new epoch. The previous owner is told
        to close its socket, and commands routed under an older epoch fail."""
        async with self.pool.acquire() as db, db.transaction():
            old = await db.fetchrow(
                "SELECT node_id, epoch, connected FROM station_owner "
                "WHERE station_id = $1 FOR UPDATE",
                station_id,
            )
            epoch = await db.fetchval(
                "INSERT INTO station_owner (station_id, node_id, epoch, claimed_at, connected, "
                "endpoint) VALUES ($1, $2, 1, now(), true, $3) ON CONFLICT (station_id) DO "
                "UPDATE SET node_id = $2, epoch = station_owner.epoch + 1, claimed_at = now(), "
                "connected = true, endpoint = $3 RETURNING epoch",
                station_id,
                node_id,
                endpoint,
            )
            await self._fail(
                db,
                "station_id = $1 AND epoch < $2",
                (station_id, epoch),
                "Unavailable",
                f"chargestation {endpoint} reconnected meanwhile",
            )
            if old is not None and old["node_id"] != node_id and old["connected"]:
                await db.execute(
                    "SELECT pg_notify($1, $2)",
                    channel(old["node_id"]),
                    f"e:{station_id}:{epoch}",
                )
        return epoch

    async def release(self, station_id: str, node_id: str, epoch: int) -> None:
        await self.pool.execute(
            "UPDATE station_owner SET connected = false "
            "WHERE station_id = $1 AND node_id = $2 AND epoch = $3",
            station_id,
            node_id,
            epoch,
        )

    async def held(self, node_id: str) -> dict[str, int]:
        """station_id -> epoch of the stations this node holds, as the database sees it."""
        rows = await self.pool.fetch(
            "SELECT station_id, epoch FROM station_owner WHERE node_id = $1 AND connected",
            node_id,
        )
        return {r[0]: r[1] for r in rows}

    async def owners(self) -> dict[str, str]:
        """endpoint -> node id, of every station held by a node whose lease is fresh."""
        rows = await self.pool.fetch(
            "SELECT o.endpoint, o.node_id FROM station_owner o JOIN nodes n "
            "USING (node_id) WHERE o.connected AND n.lease_until > now()"
        )
        return {r[0]: r[1] for r in rows}

    # --- routed commands ---

    async def enqueue(
        self, station_id: str, endpoint: str, kind: str, body: dict, reply_node: str, wait: float
    ) -> tuple[int, str] | None:
        """Route a command to the node holding the station: (its id, that node), or None if no
        live node holds it (the station is offline)."""
        async with self.pool.acquire() as db, db.transaction():
            owner = await db.fetchrow(
                "SELECT o.node_id, o.epoch FROM station_owner o JOIN nodes n USING (node_id) "
                "WHERE o.station_id = $1 AND o.connected AND n.lease_until > now()",
                station_id,
            )
            if owner is None:
                return None
            command_id = await db.fetchval(
                "INSERT INTO node_commands (station_id, endpoint, node_id, epoch, reply_node, "
                "kind, body, deadline) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                "now() + make_interval(secs => $8)) RETURNING id",
                station_id,
                endpoint,
                owner["node_id"],
                owner["epoch"],
                reply_node,
                kind,
                orjson.dumps(body).decode(),
                wait,
            )
            await db.execute(
                "SELECT pg_notify($1, $2)", channel(owner["node_id"]), f"c:{command_id}"
            )
        return command_id, owner["node_id"]

    async def take(self, command_id: int, node_id: str) -> dict | None:
        """A command routed to this node, now being carried out; None if it is not queued."""
        row = await self.pool.fetchrow(
            "UPDATE node_commands SET status = 'sent' WHERE id = $1 AND node_id = $2 "
            "AND status = 'queued' RETURNING station_id, endpoint, epoch, kind, body, "
            "GREATEST(extract(epoch FROM deadline - now()), 0)::float8 AS left",
            command_id,
            node_id,
        )
        if row is None:
            return None
        return {**dict(row), "body": orjson.loads(row["body"])}

    async def queued(self, node_id: str) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM node_commands WHERE node_id = $1 AND status = 'queued' ORDER BY id",
            node_id,
        )
        return [r[0] for r in rows]

    async def finish(self, command_id: int, result: bytes) -> bool:
        """Record a command's result (once) and tell the node that asked."""
        async with self.pool.acquire() as db, db.transaction():
            reply = await db.fetchval(
                "UPDATE node_commands SET status = 'done', result = $2 "
                "WHERE id = $1 AND status <> 'done' RETURNING reply_node",
                command_id,
                result.decode(),
            )
            if reply is None:
                return False
            await db.execute("SELECT pg_notify($1, $2)", channel(reply), f"r:{command_id}")
        return True

    async def result(self, command_id: int) -> dict | None:
        """The recorded result, or None while there is none."""
        found = await self.pool.fetchval(
            "SELECT result FROM node_commands WHERE id = $1 AND status = 'done'", command_id
        )
        return None if found is None else orjson.loads(found)

    async def prune(self, keep: float, limit: int = 500) -> int:
        """Forget answered commands older than `keep` seconds."""
        done = await self.pool.execute(
            "DELETE FROM node_commands WHERE id IN (SELECT id FROM node_commands "
            "WHERE status = 'done' AND created_at < now() - make_interval(secs => $1) "
            "LIMIT $2)",
            keep,
            limit,
        )
        return int(done.split()[-1])

    async def _fail(self, db: Any, where: str, args: Any, kind: str, message: str) -> list[dict]:
        """End open commands matching `where` with an error; tell the nodes that asked."""
        args = args if isinstance(args, tuple) else (args,)
        n = len(args)
        rows = await db.fetch(
            f"UPDATE node_commands SET status = 'done', result = ${n + 1} "
            f"WHERE {where} AND status <> 'done' RETURNING id, reply_node, kind, body",
            *args,
            _err(kind, message).decode(),
        )
        for r in rows:
            await db.execute("SELECT pg_notify($1, $2)", channel(r["reply_node"]), f"r:{r['id']}")
        return [{**dict(r), "body": orjson.loads(r["body"])} for r in rows]


def _iso(at: Any) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
