"""Several `serve` nodes on one PostgreSQL, behind HAProxy (tests/cluster_env.py): commands
through any node reach every station; a node killed or frozen loses nothing acknowledged and
its stations come back on the others; a frozen node's writes are fenced; a database outage
closes no socket; rebalance moves stations back to a restarted node.

One cluster for the module (3 nodes, 300 simulated stations); each test starts from every
station online and every node up, and leaves it so (tests run in random order).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.asyncio.client import connect

import cluster_env
from conftest import TOKEN, hermetic_env, start_server
from edrvctl import model
from edrvctl.store import EventQuery
from stored import read
from timing import scaled, until

STATIONS = 300
P16 = "ocpp1.6"
NOW = "2026-01-01T00:00:00Z"

why_not = cluster_env.available()
if why_not and os.environ.get("CI"):
    raise RuntimeError(f"the cluster tests cannot run: {why_not}")
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


def steady(cluster: cluster_env.Cluster, timeout: float = 60) -> dict[str, int]:
    """Wait until every node is healthy and every station is connected to one."""

    def ready() -> dict[str, int] | None:
        if any(cluster.health(n) != 200 for n in cluster.nodes):
            return None
        counts = cluster.online()
        return counts if sum(counts.values()) == STATIONS else None

    return until(ready, timeout=timeout, interval=0.5, what="every station online")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    c = cluster_env.Cluster(root, 3)
    sim = None
    try:
        env = {**hermetic_env(root), "EDRV_TOKEN": TOKEN}
        sim = subprocess.Popen(
            [
                sys.executable, "-m", "edrvctl", "--api-url", c.nodes["n1"].api_url,
                "simulate", "-n", str(STATIONS), "--url", c.haproxy.url, "--create",
                "--prefix", "CL", "--heartbeat", "5",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(root / "simulate.log", "w"),  # noqa: SIM115
        )  # fmt: skip
        c.sim = sim  # type: ignore[attr-defined]
        steady(c, 120)
        yield c
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(scaled(20))
        c.close()


def stations_of(cluster: cluster_env.Cluster) -> list[dict]:
    with cluster.api("n1") as api:
        r = api.get("/v1.1/chargestations", params={"paginate_limit": 1000})
        r.raise_for_status()
        return r.json()["result"]


def owners(cluster: cluster_env.Cluster) -> dict[str, str]:
    """endpoint -> node holding it, from the online events."""
    found: dict[str, str] = {}
    for e in read(
        cluster.pg.url(),
        lambda tx: tx.list_events(EventQuery(types=("chargestation.online",), limit=None)),
    ):
        found[e["endpoint"]] = e["data"].get("node")
    return found


def trigger(api: httpx.Client, station: str) -> tuple[int, float]:
    started = time.perf_counter()
    r = api.post(
        f"/v1.1/chargestations/{station}/trigger_message",
        json={"requestedMessage": "Heartbeat"},
    )
    return r.status_code, time.perf_counter() - started


def balanced(cluster: cluster_env.Cluster) -> None:
    """Every node holds stations (after a drain or a restart one may hold none)."""
    if min(steady(cluster).values()) >= STATIONS // 6:
        return
    with cluster.api("n1") as api:
        api.post("/v1.1/nodes/rebalance", json={"max": 50}).raise_for_status()

    def spread() -> bool:
        now = cluster.online()
        return sum(now.values()) == STATIONS and min(now.values()) >= STATIONS // 6

    until(spread, timeout=60, interval=0.5, what="the stations to spread over the nodes")


def test_commands_through_every_node_reach_every_station(cluster):
    balanced(cluster)
    stations = [s["endpoint"] for s in stations_of(cluster) if s["endpoint"].startswith("CL0")]
    assert len(stations) == STATIONS
    held = owners(cluster)
    assert set(held.values()) == {"n1", "n2", "n3"}
    for name in cluster.nodes:
        with cluster.api(name) as api, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda s: trigger(api, s), stations))
        codes = [code for code, _ in results]
        assert codes.count(201) == STATIONS, f"through {name}: {sorted(set(codes))}"
        # the Action records the answer whichever node holds the station
    with cluster.api("n2") as api:
        r = api.get("/v1.1/actions", params={"type": "trigger_message", "paginate_limit": 1})
        assert r.json()["result"][0]["status"] == "completed"


def test_an_offline_station_is_406_at_once(cluster):
    steady(cluster)
    with cluster.api("n1") as api:
        api.post("/v1.1/chargestations", json={"endpoint": "CL-NEVER"}).raise_for_status()
        started = time.perf_counter()
        r = api.post(
            "/v1.1/chargestations/CL-NEVER/trigger_message",
            json={"requestedMessage": "Heartbeat"},
        )
        assert r.status_code == 406
        assert time.perf_counter() - started < scaled(1)
        api.delete("/v1.1/chargestations/CL-NEVER").raise_for_status()


async def acknowledged_statuses(url: str, endpoint: str, n: int) -> list[str]:
    """Send n StatusNotifications that each change the status; the ones answered."""
    acked = []
    async with connect(f"{url}/{endpoint}", subprotocols=[P16], open_timeout=scaled(10)) as ws:
        await ws.send(
            json.dumps(
                [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        await ws.recv()
        for i in range(n):
            status = ("Available", "Preparing")[i % 2]
            payload = {"connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": NOW}
            await ws.send(json.dumps([2, str(i), "StatusNotification", payload]))
            reply = json.loads(await ws.recv())
            if reply[0] == 3:
                acked.append(str(i))
    return acked


def test_kill_9_fails_its_commands_and_its_stations_come_back_then_rebalance(cluster):
    before = steady(cluster)
    victim = max(before, key=before.get)
    others = [n for n in cluster.nodes if n != victim]
    station_ids = {s["endpoint"]: s["_id"] for s in stations_of(cluster)}
    held = owners(cluster)
    theirs = [ep for ep, node in held.items() if node == victim and ep.startswith("CL0")][:20]
    # acknowledged writes through the victim itself, just before it dies
    with cluster.api(victim) as api:
        api.post("/v1.1/chargestations", json={"endpoint": "CL-ACK"})
    acked = asyncio.run(acknowledged_statuses(cluster.nodes[victim].ocpp_url, "CL-ACK", 20))
    assert len(acked) == 20
    # commands in flight: the victim is frozen, so they wait on it; then it dies
    cluster.kill(victim, signal.SIGSTOP)
    with cluster.api(others[0]) as api, ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(trigger, api, ep) for ep in theirs]
        time.sleep(scaled(0.5))
        cluster.kill(victim)
        killed = time.monotonic()
        results = [f.result() for f in futures]
    codes = [code for code, _ in results]
    assert all(code in (406, 504) for code in codes), codes
    assert max(t for _, t in results) < scaled(20)  # the lease (10 s) and then at once
    with cluster.api(others[0]) as api:
        found = api.get(
            "/v1.1/actions", params={"type": "trigger_message", "paginate_limit": 20}
        ).json()
    assert all(a["status"] == "failed" for a in found["result"][: len(theirs)])

    # every station back on the others within 30 s
    def back() -> bool:
        counts = cluster.online()
        return sum(counts.get(n, 0) for n in others) == STATIONS

    until(back, timeout=30, interval=0.5, what="the victim's stations to reconnect elsewhere")
    assert time.monotonic() - killed < scaled(30) + 5
    # nothing acknowledged was lost
    statuses = read(
        cluster.pg.url(),
        lambda tx: tx.list_events(
            EventQuery(
                station_id=station_ids.get("CL-ACK") or None,
                types=("chargestation.connector_status.updated",),
                limit=None,
            )
        ),
    )
    assert len([e for e in statuses if e["endpoint"] == "CL-ACK"]) >= len(acked) - 1
    # the node comes back empty; rebalance moves stations back to it, a bounded share each
    cluster.restart_node(victim)
    time.sleep(scaled(2))
    assert cluster.online().get(victim, 0) == 0  # nothing moves back on its own
    counts = cluster.online()
    with cluster.api(others[0]) as api:
        r = api.post("/v1.1/nodes/rebalance", json={"max": 30})
        assert r.status_code == 202, r.text
        moves = r.json()["result"]["moves"]
    for node, n in moves.items():
        assert n <= int(counts[node] * 0.3)

    def spread() -> bool:
        now = cluster.online()
        return sum(now.values()) == STATIONS and min(now.values()) >= STATIONS / 3 * 0.5

    until(spread, timeout=60, interval=0.5, what="the restarted node to take stations")
    steady(cluster)


def test_a_frozen_node_is_fenced_and_closes_the_socket_it_lost(cluster):
    steady(cluster)
    frozen, other = "n2", "n3"
    with cluster.api("n1") as api:
        api.post("/v1.1/chargestations", json={"endpoint": "CL-MOVE"})

    async def scenario() -> tuple[bool, float]:
        boot = json.dumps(
            [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
        )
        old = await connect(f"{cluster.nodes[frozen].ocpp_url}/CL-MOVE", subprotocols=[P16])
        await old.send(boot)
        await old.recv()
        cluster.kill(frozen, signal.SIGSTOP)
        try:
            # past the lease: the others take over its stations
            def lost() -> bool:
                return cluster.health(frozen) != 200 and frozen not in cluster.online()

            await asyncio.to_thread(until, lost, 30, 0.5, "the frozen node to be taken over")
            new = await connect(f"{cluster.nodes[other].ocpp_url}/CL-MOVE", subprotocols=[P16])
            await new.send(boot)
            await new.recv()
        finally:
            cluster.kill(frozen, signal.SIGCONT)
        resumed = time.monotonic()
        try:
            await asyncio.wait_for(old.wait_closed(), scaled(10))
            closed = True
        except TimeoutError:
            closed = False
        took = time.monotonic() - resumed
        await new.close()
        return closed, took

    closed, took = asyncio.run(scenario())
    assert closed and took < scaled(5)
    # the frozen node wrote nothing for the station after it lost it: the newer node's
    # online is the last word until the new socket closed
    with cluster.api("n1") as api:
        doc = api.get("/v1.1/chargestations/CL-MOVE").json()["result"]
    events = read(
        cluster.pg.url(),
        lambda tx: tx.list_events(
            EventQuery(
                station_id=doc["_id"],
                types=("chargestation.online", "chargestation.offline"),
                limit=None,
            )
        ),
    )
    kinds = [(e["type"].rsplit(".", 1)[1], e["data"].get("node")) for e in events]
    assert ("offline", frozen) not in kinds, kinds
    steady(cluster)


def test_a_database_outage_closes_no_station_socket(cluster):
    before = steady(cluster)
    since = model.utcnow()
    with cluster.api("n1") as api:
        api.post("/v1.1/chargestations", json={"endpoint": "CL-BLIP"})

    async def during_outage() -> tuple[list, list]:
        boot = [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Faulted", "timestamp": NOW}
        url = f"{cluster.nodes['n1'].ocpp_url}/CL-BLIP"
        async with connect(url, subprotocols=[P16], open_timeout=scaled(10)) as ws:
            await ws.send(json.dumps(boot))
            await ws.recv()
            await asyncio.to_thread(cluster.pg.stop)
            await asyncio.sleep(scaled(1))
            await ws.send(json.dumps([2, "s1", "StatusNotification", status]))
            down = json.loads(await ws.recv())  # the store cannot take it: a CALLERROR
            await asyncio.sleep(scaled(4))
            await asyncio.to_thread(cluster.pg.start)
            until_up = time.monotonic() + scaled(30)
            while True:  # the station tries again, as a station does, until it is stored
                await ws.send(json.dumps([2, "s2", "StatusNotification", status]))
                up = json.loads(await ws.recv())
                if up[0] == 3 or time.monotonic() > until_up:
                    return down, up
                await asyncio.sleep(scaled(0.5))

    down, up = asyncio.run(during_outage())
    assert down[0] == 4 and down[2] == "InternalError", down
    assert up[0] == 3, up
    after = steady(cluster, 60)
    assert after == before  # nobody moved: no socket was closed
    offline = read(
        cluster.pg.url(),
        lambda tx: tx.list_events(
            EventQuery(types=("chargestation.offline",), since=since, limit=None)
        ),
    )
    assert [e for e in offline if e["endpoint"] != "CL-BLIP"] == []  # that one we closed


def test_events_webhooks_and_frames_reach_every_node(cluster):
    import threading

    from test_webhooks_live import receiver

    steady(cluster)
    with cluster.api("n1") as api:
        api.post("/v1.1/chargestations", json={"endpoint": "CL-EV"})
        station_id = api.get("/v1.1/chargestations/CL-EV").json()["result"]["_id"]
    streamed: list[dict] = []
    opened = threading.Event()

    def follow() -> None:  # the event stream of a node that does not hold the station
        node = cluster.nodes["n1"]
        with httpx.stream(
            "GET",
            node.api_url + "/v1.1/events/stream",
            params={"type": "chargestation.connector_status.updated", "chargestation": station_id},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=scaled(30),
        ) as r:
            for line in r.iter_lines():
                if line.startswith(": stream open"):
                    opened.set()
                elif line.startswith("data: "):
                    streamed.append(json.loads(line[6:]))
                    if len(streamed) == 6:
                        return

    with receiver() as rx:
        with cluster.api("n2") as api:
            r = api.post(
                "/v1.1/webhooks",
                json={"url": rx.url, "events": ["chargestation.connector_status.updated"]},
            )
            assert r.status_code == 201, r.text
            hook = r.json()["result"]["_id"]
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(scaled(10))
        acked = asyncio.run(acknowledged_statuses(cluster.nodes["n3"].ocpp_url, "CL-EV", 6))
        assert len(acked) == 6
        reader.join(scaled(20))
        assert [e["data"]["status"] for e in streamed] == ["Available", "Preparing"] * 3
        # delivered once each, by one node, whichever node the webhook was made on
        until(lambda: len(rx.of(station_id)) >= 6, timeout=30, what="six deliveries")
        time.sleep(scaled(1))
        ids = [doc["_id"] for _, doc in rx.of(station_id)]
        assert sorted(ids) == sorted({e["_id"] for e in streamed})
        with cluster.api("n2") as api:
            api.delete(f"/v1.1/webhooks/{hook}")

    # the station's frames, read through another node than the one that logged them
    def frames() -> list[dict]:
        with cluster.api("n1") as api:
            return api.get("/v1.1/chargestations/CL-EV/messages", params={"limit": 100}).json()[
                "result"
            ]

    logged = until(
        lambda: [f for f in frames() if f["action"] == "StatusNotification"] or None,
        timeout=10,
        what="the frames of CL-EV through n1",
    )
    assert len([f for f in logged if f["direction"] == "in"]) == 6


def test_nodes_list_and_drain(cluster, tmp_path):
    steady(cluster)
    env = {**hermetic_env(tmp_path), "EDRV_TOKEN": TOKEN}
    # the CLI against the load balancer: any node answers
    cli = [sys.executable, "-m", "edrvctl", "--api-url", cluster.haproxy.api_url]
    out = subprocess.run([*cli, "nodes", "list", "-o", "json"], env=env, capture_output=True)
    assert out.returncode == 0, out.stderr
    nodes = {n["_id"]: n for n in json.loads(out.stdout)}
    assert set(nodes) == {"n1", "n2", "n3"} and all(n["live"] for n in nodes.values())
    assert sum(n["stations"] for n in nodes.values()) >= STATIONS
    # drain n2: its stations move to the others, and it takes none while draining
    before = owners(cluster)
    out = subprocess.run([*cli, "nodes", "drain", "n2"], env=env, capture_output=True)
    assert out.returncode == 0, out.stderr
    until(lambda: cluster.health("n2") == 503, timeout=5, what="n2 to say it is draining")

    def drained() -> bool:
        counts = cluster.online()
        return counts.get("n2") == 0 and sum(counts.values()) >= STATIONS

    until(drained, timeout=60, interval=0.5, what="n2's stations to move")
    # n2 asks on behalf of stations it no longer holds: routed, not refused by its old claim
    moved = [ep for ep, node in before.items() if node == "n2" and ep.startswith("CL0")][:5]
    with cluster.api("n2") as api:
        assert [trigger(api, ep)[0] for ep in moved] == [201] * len(moved)
    # a restart ends the drain (and, as after any restart, nothing moves back on its own)
    cluster.kill("n2", signal.SIGTERM)
    cluster.nodes["n2"].proc.wait(scaled(20))
    cluster.restart_node("n2")
    steady(cluster)


def test_a_second_process_with_a_node_s_id_is_refused(cluster, tmp_path):
    steady(cluster)
    with pytest.raises(RuntimeError, match="another process runs as node n1"):
        start_server(tmp_path / "again", "--node-id", "n1", "--no-files", store=cluster.pg.url())
    assert cluster.health("n1") == 200
