"""Webhooks end to end: a real `edrvctl serve`, simulated stations of both OCPP versions, and a
receiver in the test (a small HTTP server on a free loopback port, in a thread). Deliveries
are checked as a receiver checks them: the signature, the event id, the order per station."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Server, start_server
from edrvctl.fleet import events
from test_ocpp import (
    P16,
    P201,
    PROTOS,
    _status16,
    _status201,
    all_available,
    cli,
    sim_running,
    uniq,
)
from timing import scaled, until, until_async


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


class Receiver:
    """POSTs received: (headers, raw body, the status answered), answering `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.got: list[tuple[dict[str, str], bytes, int]] = []
        self._lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = rx.status
                with rx._lock:
                    rx.got.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def of(self, station_id: str, answered: int | None = None) -> list[tuple[dict, dict]]:
        """(headers, envelope) of the events of one station, as received (optionally only
        those answered `answered`)."""
        with self._lock:
            got = list(self.got)
        found = []
        for headers, body, status in got:
            doc = json.loads(body)
            if doc.get("chargestation") == station_id and answered in (None, status):
                found.append((headers, doc))
        return found


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    try:
        yield rx
    finally:
        rx.close()


def verified(secret: str, headers: dict, body: bytes) -> None:
    """What the README tells a receiver to do."""
    t, v1 = (p.split("=", 1)[1] for p in headers["edrv-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected), headers
    assert abs(int(t) - time.time()) < 300  # a replay window


@contextlib.contextmanager
def webhook(server: Server, url: str, globs: list[str]) -> Iterator[tuple[str, str]]:
    """A webhook of the server's for the test's life: (_id, secret)."""
    with server.api() as c:
        r = c.post("/v1.1/webhooks", json={"url": url, "events": globs})
    assert r.status_code == 201, r.text
    doc = r.json()["result"]
    try:
        yield doc["_id"], doc["secret"]
    finally:
        with server.api() as c:
            c.delete(f"/v1.1/webhooks/{doc['_id']}")


def deliveries(server: Server, webhook_id: str) -> list[dict]:
    with server.api() as c:
        r = c.get(f"/v1.1/webhooks/{webhook_id}/deliveries", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["result"]


STATUSES = {
    P16: ("Preparing", "Charging", "Finishing", "Available"),
    P201: ("Occupied", "Unavailable", "Occupied", "Available"),
}


def status_message(proto: str, status: str):
    return _status16(1, status) if proto == P16 else _status201(1, status)


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_a_receiver_gets_signed_events_in_order_per_station(server, proto):
    globs = [events.ONLINE, events.CONNECTOR_STATUS]
    with receiver() as rx, webhook(server, rx.url, globs) as (hid, secret):
        doc = server.create(uniq("wh"), protocol=proto)

        async def scenario():
            async with sim_running(server, doc["endpoint"], proto) as st:
                # the station's own first statuses, after its boot, come first
                await until_async(
                    lambda: all_available(2)(server.get(doc["_id"])), what="its first statuses"
                )
                for status in STATUSES[proto]:
                    await st.send(*status_message(proto, status))

        run(scenario())

        def complete() -> bool:
            mine = rx.of(doc["_id"])
            said = [
                e["data"]["status"]
                for _, e in mine
                if e["type"] == events.CONNECTOR_STATUS and e["data"]["evseId"] == 1
            ]
            return said[-4:] == list(STATUSES[proto])

        until(complete, 20, what="the connector statuses at the receiver")
        mine = rx.of(doc["_id"])
        with rx._lock:
            raw = {json.loads(b)["_id"]: (h, b) for h, b, _ in rx.got}
        for headers, env in mine:
            assert headers["content-type"] == "application/json"
            assert headers["edrv-event-id"] == env["_id"]
            verified(secret, *raw[env["_id"]])
            assert env["endpoint"] == doc["endpoint"] and env["object"] == "chargestation"
        ids = [int(e["_id"]) for _, e in mine]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, each once
        assert mine[0][1]["type"] == events.ONLINE
        assert {e["type"] for _, e in mine} == set(globs)  # offline and booted not asked for
        log = deliveries(server, hid)
        assert all(d["status"] == "delivered" for d in log if d["chargestation"] == doc["_id"])


def test_a_failed_delivery_is_sent_again_after_a_restart(tmp_path):
    root = tmp_path / "srv"
    srv = start_server(root)
    try:
        with receiver() as rx:
            rx.status = 500
            with srv.api() as c:
                r = c.post("/v1.1/webhooks", json={"url": rx.url, "events": [events.ONLINE]})
            hid, secret = r.json()["result"]["_id"], r.json()["result"]["secret"]
            doc = srv.create(uniq("restart"), protocol=P201)

            async def online():
                async with sim_running(srv, doc["endpoint"], P201):
                    pass

            run(online())
            until(lambda: rx.of(doc["_id"]), 10, what="a first attempt")
            [first] = [d for d in deliveries(srv, hid) if d["chargestation"] == doc["_id"]]
            assert first["status"] == "pending" and first["lastStatus"] == 500
            assert first["lastError"] == "HTTP 500" and first["nextAttemptAt"]
            assert srv.stop() == 0
            rx.status = 200
            srv = start_server(root)
            until(lambda: rx.of(doc["_id"], 200), 20, what="the delivery after the restart")
            tried = rx.of(doc["_id"])
            assert {e["_id"] for _, e in tried} == {first["event"]}  # the same event, again
            with rx._lock:
                headers, body = next((h, b) for h, b, s in rx.got if s == 200)
            verified(secret, headers, body)
            [done] = [d for d in deliveries(srv, hid) if d["chargestation"] == doc["_id"]]
            assert done["status"] == "delivered" and done["attempts"] >= 2
            assert done["lastStatus"] == 200 and done["deliveredAt"]
    finally:
        srv.stop()


def test_a_dead_receiver_does_not_slow_the_stations(server):
    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    closed = socket.socket()  # a port nobody listens on: connection refused
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    try:
        with (
            webhook(server, dead_url, ["*"]) as (dead, _),
            webhook(server, refused_url, ["*"]) as (refused, _),
        ):
            doc = server.create(uniq("busy"))
            took: list[float] = []

            async def scenario():
                async with sim_running(server, doc["endpoint"], P16) as st:
                    for i in range(60):
                        status = ("Preparing", "Available")[i % 2]
                        t0 = time.monotonic()
                        await st.send(*status_message(P16, status))
                        took.append(time.monotonic() - t0)

            run(scenario())
            took.sort()
            assert took[-1] < scaled(1.0), took[-5:]  # every answer, dead receivers or not
            assert took[len(took) // 2] < scaled(0.2), took
            with server.api() as c:
                hooks = {h["_id"]: h for h in c.get("/v1.1/webhooks").json()["result"]}
            assert hooks[dead]["pending"] >= 60 and hooks[refused]["pending"] >= 1
            # (on PostgreSQL events reach the worker through the tailer: the first attempt
            # may still be on its way)
            errors = until(
                lambda: {d["lastError"] for d in deliveries(server, refused) if d["attempts"]},
                timeout=10,
                what="an attempt to the refusing receiver",
            )
            assert all("ConnectError" in e for e in errors), errors
    finally:
        silent.close()
        closed.close()


def test_webhooks_from_the_cli(server, cli_env):
    with receiver() as rx:
        r = cli(
            cli_env,
            "webhooks",
            "create",
            rx.url,
            "--events",
            f"{events.ONLINE},{events.OFFLINE}",
            "--description",
            "ops",
        )
        assert r.exit_code == 0, r.stderr
        hid = re.fullmatch(r"webhook/(\w+) created\n", r.stdout).group(1)
        m = re.search(rf"secret of webhook {hid} \(shown once; keep it\): (whsec_\S+)$", r.stderr)
        assert m, r.stderr
        secret = m.group(1)
        try:
            for args in (("list", "-o", "json"), ("inspect", hid), ("list",)):
                r = cli(cli_env, "webhooks", *args)
                assert r.exit_code == 0 and hid in r.stdout, r.stderr
                assert secret not in r.stdout and "secret" not in r.stdout
            [shown] = [
                h
                for h in json.loads(cli(cli_env, "webhooks", "list", "-o", "json").stdout)
                if h["_id"] == hid
            ]
            assert shown["events"] == [events.ONLINE, events.OFFLINE]
            assert shown["description"] == "ops" and shown["active"] is True

            r = cli(cli_env, "webhooks", "test", hid)
            assert r.exit_code == 0, r.stderr
            assert re.fullmatch(
                rf"test event delivered to {re.escape(rx.url)}: HTTP 200 in \d+ ms\n", r.stdout
            )
            headers, body, _ = rx.got[-1]
            assert json.loads(body)["type"] == "webhook.test"
            verified(secret, headers, body)

            rx.status = 500
            r = cli(cli_env, "webhooks", "test", hid)
            assert r.exit_code == 5 and "HTTP 500" in r.stderr, (r.stdout, r.stderr)
            rx.status = 200

            doc = server.create(uniq("cli"))

            async def online_then_offline():
                async with sim_running(server, doc["endpoint"], P16):
                    pass

            run(online_then_offline())
            until(lambda: len(rx.of(doc["_id"])) == 2, 10, what="online and offline")
            r = cli(cli_env, "webhooks", "deliveries", hid)
            assert r.exit_code == 0, r.stderr
            rows = [line.split("\t") for line in r.stdout.splitlines()]
            assert rows[0] == [
                "EVENT",
                "TYPE",
                "STATION",
                "STATUS",
                "ATTEMPTS",
                "LAST",
                "NEXT",
                "DELIVERED",
            ]
            mine = [row for row in rows[1:] if row[2] == doc["_id"]]
            assert [row[1] for row in mine] == [events.OFFLINE, events.ONLINE]  # newest first
            assert all(row[3] == "delivered" and row[4] == "1" and row[5] == "200" for row in mine)

            r = cli(cli_env, "webhooks", "update", hid, "--inactive")
            assert r.exit_code == 0 and r.stdout == f"webhook/{hid} updated\n", r.stderr
            r = cli(cli_env, "webhooks", "rotate-secret", hid, "--yes")
            assert r.exit_code == 0, r.stderr
            assert re.search(r"\(shown once; keep it\): whsec_", r.stderr)
            assert secret not in r.stderr
        finally:
            r = cli(cli_env, "webhooks", "delete", hid, "--yes")
        assert r.exit_code == 0 and r.stdout == f"webhook/{hid} deleted\n", r.stderr
        r = cli(cli_env, "webhooks", "inspect", hid)
        assert r.exit_code == 3, r.stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (("create", "ftp://example.test/x", "--events", "*"), 2),
        (("create", "http://example.test/x"), 2),  # which events?
        (("create", "http://u:p@example.test/x", "--events", "*"), 2),
        (("deliveries", "0" * 24), 3),
        (("test", "0" * 24), 3),
        (("update", "0" * 24), 2),  # nothing to change
        (("delete", "0" * 24), 2),  # no --yes and no terminal
    ],
)
def test_webhooks_cli_refusals(cli_env, args, code):
    r = cli(cli_env, "webhooks", *args)
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.strip()
