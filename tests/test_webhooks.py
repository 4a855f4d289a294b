"""Webhook rules, in process: the signature, the globs, the backoff schedule, FIFO per station,
the budgets, the secret shown once. A fresh in-memory store, a fake clock, and an httpx mock
transport as the receiver; `Webhooks.intake` and `run_due` are driven by hand (the worker's own
loops are exercised at the end, and end to end in test_webhooks_live.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from pydantic import ValidationError

from edrvctl import model
from edrvctl.errors import Conflict, NotFound
from edrvctl.fleet import events
from edrvctl.fleet import webhooks as wh
from edrvctl.fleet.webhooks import WebhookCreate, Webhooks, WebhookUpdate, backoff, sign
from edrvctl.store import Store, open_store
from timing import scaled, until_async

T0 = 1_700_000_000.0
URL = "http://receiver.test/hook"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, scaled(20)))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def iso(self) -> str:
        return model.format_time(datetime.fromtimestamp(self.now, UTC))


class Receiver:
    """Records every request; `answer(request, body)` gives the status (or raises)."""

    def __init__(self, answer: Callable[[httpx.Request, dict], int] = lambda r, b: 200):
        self.got: list[httpx.Request] = []
        self.answer = answer
        self.transport = httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.got.append(request)
        status = self.answer(request, orjson.loads(request.content))
        if asyncio.iscoroutine(status):
            status = await status
        return httpx.Response(status)

    def bodies(self) -> list[dict]:
        return [orjson.loads(r.content) for r in self.got]

    def names(self) -> list[str]:
        return [b["data"].get("n") for b in self.bodies()]


def world(rx: Receiver, **kw) -> tuple[Webhooks, Store, Clock]:
    store = open_store(":memory:")
    feed = events.Feed()
    store.on_events = feed.publish
    clock = Clock()
    return Webhooks(store, feed, clock=clock, transport=rx.transport, **kw), store, clock


async def add(store: Store, clock: Clock, station: str, n: str, kind: str = events.ONLINE) -> dict:
    async with store.unit() as tx:
        return await tx.add_event(station, clock.iso(), kind, {"n": n}, f"ep-{station}")


async def hook(hooks: Webhooks, globs: tuple[str, ...] = ("*",), **kw) -> tuple[str, str]:
    doc, secret = await hooks.create(WebhookCreate(url=URL, events=list(globs), **kw))
    return doc["_id"], secret


def verified(secret: str, request: httpx.Request) -> int:
    """The signature checked as a receiver would (README); returns its t."""
    fields = dict(p.split("=", 1) for p in request.headers["edrv-signature"].split(","))
    signed = fields["t"].encode() + b"." + request.content
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), request.headers["edrv-signature"]
    return int(fields["t"])


# --- the rules --------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_t_dot_body():
    body = b'{"_id":"7","type":"chargestation.online"}'
    header = sign("whsec_abc", body, 1_700_000_123)
    expected = hmac.new(b"whsec_abc", b"1700000123." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000123,v1={expected}"
    assert sign("whsec_abc", body + b" ", 1_700_000_123) != header  # the body is what is signed
    assert sign("whsec_abd", body, 1_700_000_123) != header
    assert sign("whsec_abc", body, 1_700_000_124) != header


def test_backoff_doubles_from_one_second_up_to_ten_minutes():
    assert [backoff(n) for n in range(1, 13)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        600,
        600,
    ]
    assert backoff(10_000) == 600
    # a day of retries: ten doublings (1023 s), then one every ten minutes
    total, n = 0.0, 0
    while total + backoff(n + 1) <= wh.RETRY_FOR:
        n += 1
        total += backoff(n)
    assert n == 10 + (24 * 3600 - 1023) // 600 == 152


@pytest.mark.parametrize(
    "url",
    [
        "ftp://receiver.test/hook",
        "receiver.test/hook",
        "http:///no-host",
        "http://user:pw@receiver.test/hook",
        "http://receiver.test/with space",
        "http://receiver.test/\x1b[2J",
        "http://receiver.test:99999/",
        "http://receiver.test/" + "a" * wh.MAX_URL,
    ],
)
def test_receiver_urls_are_http_or_https_bounded_and_without_credentials(url):
    with pytest.raises(ValidationError):
        WebhookCreate(url=url, events=["*"])


def test_a_webhook_needs_some_globs_and_bounded_ones():
    assert WebhookCreate(url="https://r.test:8443/a?b=c", events=["session.*"]).url
    for globs in ([], ["a b"], ["x" * (wh.MAX_GLOB + 1)], ["*"] * (wh.MAX_GLOBS + 1)):
        with pytest.raises(ValidationError):
            WebhookCreate(url=URL, events=globs)


# --- intake and dispatch ----------------------------------------------------------------------


def test_an_event_is_delivered_as_its_envelope_signed_with_its_id():
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        hid, secret = await hook(hooks)
        row = await add(store, clock, "A", "a1", events.CONNECTOR_STATUS)
        assert await hooks.intake([row]) == 1
        await hooks.run_due(hid)
        [request] = rx.got
        assert request.method == "POST" and str(request.url) == URL
        assert request.headers["content-type"] == "application/json"
        assert orjson.loads(request.content) == events.envelope(row)
        assert request.headers["edrv-event-id"] == str(row["seq"])
        assert verified(secret, request) == int(T0)
        [d] = await hooks.deliveries(hid)
        assert d["status"] == "delivered" and d["attempts"] == 1 and d["lastStatus"] == 200
        assert d["event"] == str(row["seq"]) and d["type"] == events.CONNECTOR_STATUS
        assert d["chargestation"] == "A" and d["deliveredAt"] == clock.iso()
        assert request.headers["edrv-delivery-id"] == d["_id"]
        assert hooks.backlog() == {hid: 0}

    run(scenario())


def test_globs_choose_the_events_and_an_event_is_taken_once():
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        some, _ = await hook(hooks, ("chargestation.connector_status.*", "session.ended"))
        every, _ = await hook(hooks, ("*",))
        rows = [
            await add(store, clock, "A", str(i), kind)
            for i, kind in enumerate(
                (
                    events.ONLINE,
                    events.CONNECTOR_STATUS,
                    events.SESSION_STARTED,
                    events.SESSION_ENDED,
                    events.action_type("reset", "accepted"),
                )
            )
        ]
        assert await hooks.intake(rows) == 2 + 5
        assert await hooks.intake(rows) == 0  # behind both cursors now
        assert [d["type"] for d in await hooks.deliveries(some)] == [
            events.SESSION_ENDED,
            events.CONNECTOR_STATUS,
        ]
        assert len(await hooks.deliveries(every)) == 5
        assert hooks.backlog() == {some: 2, every: 5}

    run(scenario())


def test_fifo_per_station_a_failing_event_holds_back_its_station_only():
    failed_once: list[str] = []

    def answer(request, body) -> int:
        if body["data"]["n"] == "a1" and not failed_once:
            failed_once.append("a1")
            return 500
        return 200

    rx = Receiver(answer)
    hooks, store, clock = world(rx)

    async def scenario():
        hid, _ = await hook(hooks)
        rows = [
            await add(store, clock, station, n)
            for station, n in (("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2"))
        ]
        await hooks.intake(rows)
        await hooks.run_due(hid)  # the head of each station's lane
        assert sorted(rx.names()) == ["a1", "b1"]
        await hooks.run_due(hid)  # B goes on; a1 waits its backoff, and a2 behind it
        assert rx.names()[2:] == ["b2"]
        await hooks.run_due(hid)
        assert len(rx.got) == 3
        clock.now += backoff(1)
        await hooks.run_due(hid)
        assert rx.names()[3:] == ["a1"]
        await hooks.run_due(hid)
        assert rx.names()[4:] == ["a2"]
        log = {d["event"]: d for d in await hooks.deliveries(hid)}
        first = log[str(rows[0]["seq"])]
        assert first["status"] == "delivered" and first["attempts"] == 2
        assert all(d["status"] == "delivered" for d in log.values())

    run(scenario())


def test_retries_follow_the_backoff_then_give_up_and_the_next_event_goes():
    rx = Receiver(lambda r, b: 500 if b["data"]["n"] == "first" else 200)
    hooks, store, clock = world(rx, retry_for=20)

    async def scenario():
        hid, secret = await hook(hooks)
        rows = [await add(store, clock, "A", "first"), await add(store, clock, "A", "second")]
        await hooks.intake(rows)
        while True:
            await hooks.run_due(hid)
            d = {x["event"]: x for x in await hooks.deliveries(hid)}[str(rows[0]["seq"])]
            if d["status"] != "pending":
                break
            assert rx.names() == ["first"] * d["attempts"]  # the second waits behind it
            clock.now = datetime.fromisoformat(d["nextAttemptAt"]).timestamp()
        await hooks.run_due(hid)  # given up: the next of the station goes
        times = [verified(secret, r) - int(T0) for r in rx.got]
        # 1 s, doubling; the next (16 s after the one at 15 s) would be past the 20 s window
        assert times == [0, 1, 3, 7, 15, 15]
        assert rx.names() == ["first"] * 5 + ["second"]
        log = {d["event"]: d for d in await hooks.deliveries(hid)}
        first, second = log[str(rows[0]["seq"])], log[str(rows[1]["seq"])]
        assert first["status"] == "failed" and first["attempts"] == 5
        assert first["lastStatus"] == 500 and first["nextAttemptAt"] is None
        assert first["lastError"].startswith("HTTP 500; given up after 5 attempt(s)")
        assert second["status"] == "delivered"
        assert hooks.backlog() == {hid: 0}

    run(scenario())


def test_a_delivery_found_past_its_window_fails_unsent():
    rx = Receiver()
    hooks, store, clock = world(rx, retry_for=60)

    async def scenario():
        hid, _ = await hook(hooks)
        await hooks.intake([await add(store, clock, "A", "old")])
        clock.now += 61  # the server was down meanwhile
        await hooks.run_due(hid)
        assert rx.got == []
        [d] = await hooks.deliveries(hid)
        assert d["status"] == "failed" and d["attempts"] == 0
        assert d["lastError"] == "not sent within 0.0166667 h of the event"

    run(scenario())


def test_no_connection_and_no_answer_are_failed_attempts(monkeypatch):
    monkeypatch.setattr(wh, "ATTEMPT_TIMEOUT", scaled(0.2))

    async def answer(request, body):
        if body["data"]["n"] == "refused":
            raise httpx.ConnectError("connection refused")
        await asyncio.sleep(3600)  # never answers

    rx = Receiver(answer)
    hooks, store, clock = world(rx)

    async def scenario():
        hid, _ = await hook(hooks)
        await hooks.intake(
            [await add(store, clock, "A", "refused"), await add(store, clock, "B", "silent")]
        )
        await hooks.run_due(hid)
        log = {d["chargestation"]: d for d in await hooks.deliveries(hid)}
        assert log["A"]["lastError"] == "ConnectError: connection refused"
        assert log["B"]["lastError"] == f"no answer within {scaled(0.2):g} s"
        for d in log.values():
            assert d["status"] == "pending" and d["attempts"] == 1 and d["lastStatus"] is None
            assert d["nextAttemptAt"] == model.format_time(datetime.fromtimestamp(T0 + 1, UTC))

    run(scenario())


def test_past_the_backlog_budget_the_oldest_pending_fail_and_are_counted(caplog):
    rx = Receiver(lambda r, b: 500)
    hooks, store, clock = world(rx, max_backlog=3)

    async def scenario():
        hid, _ = await hook(hooks)
        rows = [await add(store, clock, f"S{i}", str(i)) for i in range(5)]
        await hooks.intake(rows[:2])
        await hooks.intake(rows[2:])
        assert hooks.backlog() == {hid: 3} and hooks.dropped() == {hid: 2}
        failed = await hooks.deliveries(hid, "failed")
        assert [d["event"] for d in failed] == [str(rows[1]["seq"]), str(rows[0]["seq"])]
        assert all(d["lastError"] == "backlog over 3: given up" for d in failed)
        assert len(await hooks.deliveries(hid, "pending")) == 3
        assert (await hooks.get(hid))["pending"] == 3
        for i in range(5, 8):  # one more dropped each time: not one more log line each time
            await hooks.intake([await add(store, clock, f"S{i}", str(i))])
        assert hooks.dropped() == {hid: 5}
        return hid

    with caplog.at_level("WARNING", logger="edrvctl.webhooks"):
        hid = run(scenario())
    assert caplog.messages == [
        f"webhook {hid}: backlog over 3: 2 oldest pending deliveries failed since the start"
    ]


def test_the_delivery_log_is_pruned_by_count(monkeypatch):
    monkeypatch.setattr(wh, "KEEP_DONE", 2)
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        hid, _ = await hook(hooks)
        await hooks.intake([await add(store, clock, f"S{i}", str(i)) for i in range(5)])
        await hooks.run_due(hid)
        assert len(await hooks.deliveries(hid)) == 5
        assert await hooks.prune() == 3
        assert [d["type"] for d in await hooks.deliveries(hid)] == [events.ONLINE] * 2

    run(scenario())


# --- the records ------------------------------------------------------------------------------


def test_the_secret_is_shown_once_and_a_new_one_signs_from_then_on():
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        hid, secret = await hook(hooks, description="billing")
        assert secret.startswith("whsec_") and len(secret) > 40
        shown = await hooks.get(hid)
        assert "secret" not in shown and secret not in orjson.dumps(shown).decode()
        assert all("secret" not in d for d in await hooks.all())
        doc, new = await hooks.rotate_secret(hid)
        assert new != secret and "secret" not in doc
        await hooks.intake([await add(store, clock, "A", "x")])
        await hooks.run_due(hid)
        verified(new, rx.got[0])

    run(scenario())


def test_update_delete_and_the_number_of_webhooks(monkeypatch):
    monkeypatch.setattr(wh, "MAX_WEBHOOKS", 2)
    rx = Receiver()
    hooks = world(rx)[0]

    async def scenario():
        a, _ = await hook(hooks)
        await hook(hooks)
        with pytest.raises(Conflict, match="2 webhooks"):
            await hook(hooks)
        doc = await hooks.update(a, WebhookUpdate(url="https://other.test/x", events=["a.*"]))
        assert doc["url"] == "https://other.test/x" and doc["events"] == ["a.*"]
        assert doc["active"] is True
        await hooks.delete(a)
        with pytest.raises(NotFound):
            await hooks.get(a)
        with pytest.raises(NotFound):
            await hooks.deliveries(a)
        await hook(hooks)  # room again

    run(scenario())


def test_an_inactive_webhook_takes_nothing_and_switched_on_takes_what_follows():
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        hid, _ = await hook(hooks, active=False)
        before = await add(store, clock, "A", "while-off")
        assert await hooks.intake([before]) == 0
        await hooks.update(hid, WebhookUpdate(active=True))
        assert await hooks.intake([before]) == 0  # not taken later either
        after = await add(store, clock, "A", "after")
        assert await hooks.intake([after]) == 1

    run(scenario())


def test_a_test_event_is_signed_and_says_how_the_receiver_answered():
    rx = Receiver(lambda r, b: 200 if len(rx.got) == 1 else 503)
    hooks = world(rx)[0]

    async def scenario():
        hid, secret = await hook(hooks)
        ok = await hooks.test(hid)
        assert ok["delivered"] is True and ok["status"] == 200 and ok["error"] is None
        body = rx.bodies()[0]
        assert body["type"] == "webhook.test" and body["data"] == {"webhook": hid, "url": URL}
        assert rx.got[0].headers["edrv-event-id"] == body["_id"] == ok["event"]["_id"]
        verified(secret, rx.got[0])
        bad = await hooks.test(hid)
        assert bad["delivered"] is False and bad["status"] == 503 and bad["error"] == "HTTP 503"
        assert await hooks.deliveries(hid) == []  # not part of the log

    run(scenario())


# --- the worker -------------------------------------------------------------------------------


def test_the_worker_follows_committed_events_and_picks_up_after_a_stop():
    ok = {"on": False}
    rx = Receiver(lambda r, b: 200 if ok["on"] else 500)
    store = open_store(":memory:")
    feed = events.Feed()
    store.on_events = feed.publish

    async def scenario():
        first = Webhooks(store, feed, transport=rx.transport)
        await first.start()
        hid, secret = await hook(first, (events.CONNECTOR_STATUS,))
        async with store.unit() as tx:  # committed events reach the worker through the feed
            for n in ("1", "2", "3"):
                await tx.add_event("A", model.utcnow(), events.CONNECTOR_STATUS, {"n": n})
            await tx.add_event("A", model.utcnow(), events.OFFLINE, {"n": "other"})
        await until_async(lambda: len(rx.got) >= 1, what="a first attempt")
        await first.stop()
        assert rx.names() and set(rx.names()) == {"1"}  # FIFO: the head failed, so it waits
        ok["on"] = True
        second = Webhooks(store, feed, transport=rx.transport)
        await second.start()
        try:
            assert second.backlog() == {hid: 3}
            await until_async(lambda: rx.names()[-3:] == ["1", "2", "3"], what="all three")
            await until_async(lambda: second.backlog() == {hid: 0}, what="an empty backlog")
            for r in rx.got:
                verified(secret, r)
            async with store.unit() as tx:
                internals = await tx.webhook_internals()
            assert internals[hid][1] >= int(rx.bodies()[-1]["_id"])
        finally:
            await second.stop()

    run(scenario())


def test_the_readme_shows_how_to_verify_a_delivery():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    readme_verified = namespace["verified"]
    rx = Receiver()
    hooks, store, clock = world(rx)

    async def scenario():
        hid, secret = await hook(hooks)
        await hooks.intake([await add(store, clock, "A", "x")])
        await hooks.run_due(hid)
        [request] = rx.got
        header, body = request.headers["edrv-signature"], request.content
        assert readme_verified(secret, header, body, window=10**10)
        assert not readme_verified(secret, header, body + b" ", window=10**10)
        assert not readme_verified("whsec_other", header, body, window=10**10)
        assert not readme_verified(secret, header, body)  # signed in 2023: outside the window

    run(scenario())
