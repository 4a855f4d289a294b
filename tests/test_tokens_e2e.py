"""Who may charge, end to end: a real `edrvctl serve --authorize known` (and the default, open),
simulated stations of both OCPP versions asking about id tags, local lists pushed and their
version read back, the /v1.1/tokens API and `edrvctl tokens`. The store is read through
tests/stored.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from conftest import hermetic_env, start_server
from edrvctl.cli import app
from edrvctl.simulator import SimStation, utcnow
from stored import events_of, read
from timing import scaled, until_async

PROTOS = ["ocpp1.6", "ocpp2.0.1"]
P16, P201 = PROTOS
FUTURE = "2999-01-01T00:00:00.000Z"
PAST = "2020-01-01T00:00:00.000Z"

_seq = itertools.count(1)
runner = CliRunner()


def uniq(prefix: str = "tk") -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}-{time.monotonic_ns() % 10**6}"


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, scaled(timeout)))


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A server whose policy is `known`: only stored tokens charge."""
    srv = start_server(tmp_path_factory.mktemp("known"), "--authorize", "known")
    yield srv
    srv.stop()


def api(server) -> httpx.Client:
    return server.api()


def create_token(server, physical_id: str, **body) -> dict:
    with api(server) as c:
        r = c.post("/v1.1/tokens", json={"physicalId": physical_id, **body})
    assert r.status_code == 201, r.text
    return r.json()["result"]


@contextlib.asynccontextmanager
async def sim_running(server, endpoint: str, protocol: str):
    st = SimStation(endpoint, server.ocpp_url, protocol, reconnect=False, connectors=2)
    task = asyncio.create_task(st.start())
    try:
        await until_async(lambda: st.booted.is_set() or task.done(), what=f"{endpoint} to boot")
        assert st.booted.is_set(), st.last_error
        yield st
    finally:
        await st.stop()
        with contextlib.suppress(Exception):
            await task


async def ask(st: SimStation, proto: str, tag: str, token_type: str = "ISO14443") -> dict:
    """Authorize: the idTagInfo / idTokenInfo the station is told."""
    if proto == P16:
        return (await st.send("Authorize", {"idTag": tag}))["idTagInfo"]
    answer = await st.send("Authorize", {"idToken": {"idToken": tag, "type": token_type}})
    return answer["idTokenInfo"]


async def start(st: SimStation, proto: str, tag: str, connector: int) -> tuple[str, dict]:
    """A transaction started with `tag`: (its key, what the station is told of the tag)."""
    if proto == P16:
        res = await st.send(
            "StartTransaction",
            {"connectorId": connector, "idTag": tag, "meterStart": 0, "timestamp": utcnow()},
        )
        return str(res["transactionId"]), res["idTagInfo"]
    key = str(uuid.uuid4())
    res = await st.send(
        "TransactionEvent",
        {
            "eventType": "Started",
            "timestamp": utcnow(),
            "triggerReason": "Authorized",
            "seqNo": 0,
            "transactionInfo": {"transactionId": key},
            "evse": {"id": connector, "connectorId": 1},
            "idToken": {"idToken": tag, "type": "ISO14443"},
        },
    )
    return key, res["idTokenInfo"]


def group(proto: str, info: dict) -> str | None:
    if proto == P16:
        return info.get("parentIdTag")
    return (info.get("groupIdToken") or {}).get("idToken")


@pytest.mark.parametrize("proto", PROTOS)
def test_known_policy_end_to_end(known, proto):
    # every token and station of this module has an organization of its own: tokens of none
    # would be in every other test's local lists
    org = uniq("org")
    ep = known.create(uniq(), protocol=proto, organization=org)["endpoint"]
    good, off, old = uniq("GOOD")[:20], uniq("OFF")[:20], uniq("OLD")[:20]
    create_token(known, good, parentIdTag="FLEET-1", expiryDate=FUTURE, organization=org)
    create_token(known, off, active=False, organization=org)
    create_token(known, old, expiryDate=PAST, organization=org)
    stranger = uniq("NEW")[:20]

    async def scenario():
        async with sim_running(known, ep, proto) as st:
            info = await ask(st, proto, good.lower())  # id tags compare without case
            assert info["status"] == "Accepted" and group(proto, info) == "FLEET-1"
            assert info["expiryDate" if proto == P16 else "cacheExpiryDateTime"] == FUTURE
            assert (await ask(st, proto, off))["status"] == "Blocked"
            assert (await ask(st, proto, old))["status"] == "Expired"
            # unknown: 1.6 says Invalid, 2.0.1 Unknown
            assert (await ask(st, proto, stranger))["status"] == (
                "Invalid" if proto == P16 else "Unknown"
            )
            key, info = await start(st, proto, good, 1)
            assert info["status"] == "Accepted" and group(proto, info) == "FLEET-1"
            _, info = await start(st, proto, off, 2)
            assert info["status"] == "Blocked"
            # the same token on another connector while its session runs
            _, info = await start(st, proto, good, 2)
            assert info["status"] == "ConcurrentTx"

            # an inactive station refuses every token
            with api(known) as c:
                assert c.patch(f"/v1.1/chargestations/{ep}", json={"active": False}).is_success
            assert (await ask(st, proto, good))["status"] == "Blocked"
        return key

    key = run(scenario())
    station = known.get(ep)
    # the session records which token started it
    txs = read(known.store, lambda tx: tx.transactions(station["_id"]))
    started = next(t for t in txs if t["tx_key"] == key)
    assert started["idTag"] == good and started["status"] == "Active"
    assert started["idTokenType"] == (None if proto == P16 else "ISO14443")
    assert [t["status"] for t in txs if t["idTag"] == off] == ["Refused"]
    # the unknown card and the refused ones are events on the station, once each
    seen = events_of(known.store, station["_id"], "token.*")
    assert [(e["type"], e["data"]["idTag"]) for e in seen] == [
        ("token.refused", off),
        ("token.refused", old),
        ("token.unknown", stranger),
        ("token.refused", good),  # ConcurrentTx
    ]
    with api(known) as c:
        r = c.get("/v1.1/events", params={"type": "token.unknown", "chargestation": ep})
    (event,) = r.json()["result"]
    assert (event["object"], event["endpoint"], event["data"]["idTag"]) == (
        "token",
        ep,
        stranger,
    )


async def event(st: SimStation, key: str, event_type: str, tag: str, seq: int) -> dict:
    """A 2.0.1 TransactionEvent of transaction `key` naming `tag`: its idTokenInfo."""
    p: dict = {
        "eventType": event_type,
        "timestamp": utcnow(),
        "triggerReason": "Authorized" if event_type == "Updated" else "StopAuthorized",
        "seqNo": seq,
        "transactionInfo": {"transactionId": key},
        "idToken": {"idToken": tag, "type": "ISO14443"},
    }
    if event_type == "Ended":
        p["transactionInfo"]["stoppedReason"] = "Local"
    return (await st.send("TransactionEvent", p))["idTokenInfo"]


@pytest.mark.parametrize("proto", PROTOS)
def test_the_token_that_ends_a_session_and_one_given_later_are_answered(known, proto):
    org = uniq("org")
    ep = known.create(uniq(), protocol=proto, organization=org)["endpoint"]
    card, colleague, off = uniq("C")[:20], uniq("M")[:20], uniq("OFF")[:20]
    create_token(known, card, parentIdTag="TEAM", organization=org)
    create_token(known, colleague, parentIdTag="TEAM", organization=org)
    create_token(known, off, active=False, organization=org)

    async def scenario():
        async with sim_running(known, ep, proto) as st:
            key, info = await start(st, proto, card, 1)
            assert info["status"] == "Accepted"
            if proto == P16:
                # a colleague of the same group ends it: told Accepted, with the group
                res = await st.send(
                    "StopTransaction",
                    {
                        "transactionId": int(key),
                        "idTag": colleague,
                        "meterStop": 10,
                        "timestamp": utcnow(),
                        "reason": "Local",
                    },
                )
                assert res["idTagInfo"] == {"status": "Accepted", "parentIdTag": "TEAM"}
            else:
                # a token given later in the transaction: refused, and said so
                assert (await event(st, key, "Updated", off, 1))["status"] == "Blocked"
                info = await event(st, key, "Ended", colleague, 2)
                assert info["status"] == "Accepted"
                assert info["groupIdToken"] == {"idToken": "TEAM", "type": "Central"}

    run(scenario())


def test_open_policy_is_the_default_and_notes_unknown_cards(server):
    ep = server.create(uniq(), protocol=P16)["endpoint"]
    tag = uniq("CARD")[:20]

    async def scenario():
        async with sim_running(server, ep, P16) as st:
            assert await ask(st, P16, tag) == {"status": "Accepted"}
            _, info = await start(st, P16, tag, 1)
            assert info == {"status": "Accepted"}

    run(scenario())
    seen = events_of(server.store, server.get(ep)["_id"], "token.unknown")
    assert [(e["data"]["idTag"], e["data"]["policy"]) for e in seen] == [(tag, "open")]


def test_a_stations_own_policy_overrides_the_servers(known):
    strict = known.create(uniq(), protocol=P201)["endpoint"]
    free = known.create(uniq(), protocol=P201, authorize="open")["endpoint"]
    assert known.get(free)["authorize"] == "open"
    tag = uniq("X")[:20]

    async def scenario():
        async with sim_running(known, strict, P201) as a, sim_running(known, free, P201) as b:
            assert (await ask(a, P201, tag))["status"] == "Unknown"
            assert (await ask(b, P201, tag))["status"] == "Accepted"
            with api(known) as c:
                r = c.patch(f"/v1.1/chargestations/{free}", json={"authorize": None})
            assert r.status_code == 200 and r.json()["result"]["authorize"] is None
            assert (await ask(b, P201, tag))["status"] == "Unknown"

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_local_list_pushed_and_its_version_read_back(known, proto):
    org = uniq("org")
    ep = known.create(uniq(), protocol=proto, organization=org)["endpoint"]
    a, b = uniq("A")[:20], uniq("B")[:20]
    create_token(known, a, organization=org, parentIdTag="G")
    create_token(known, b, organization=org, active=False)
    create_token(known, uniq("THEIRS")[:20], organization=uniq("other"))

    def key(tag: str) -> tuple:
        return (tag, None if proto == P16 else "ISO14443")

    async def scenario():
        async with (
            sim_running(known, ep, proto) as st,
            httpx.AsyncClient(
                base_url=known.api_url, headers={"Authorization": f"Bearer {known.token}"}
            ) as c,
        ):
            r = await c.post(f"/v1.1/chargestations/{ep}/send_local_list")
            assert r.status_code == 201, r.text
            action = r.json()["result"]
            assert action["data"] == {"listVersion": 1, "updateType": "Full", "entries": 2}
            assert st.local_list_version == 1
            assert set(st.local_list) == {key(a), key(b)}
            assert st.local_list[key(a)]["status"] == "Accepted"
            assert group(proto, st.local_list[key(a)]) == "G"
            assert st.local_list[key(b)]["status"] == "Blocked"

            # a change, sent as a differential update
            r = await c.patch(f"/v1.1/tokens/{b}", json={"active": True})
            assert r.status_code == 200
            r = await c.delete(f"/v1.1/tokens/{a}")
            assert r.status_code == 200
            r = await c.post(
                f"/v1.1/chargestations/{ep}/send_local_list",
                json={"updateType": "Differential"},
            )
            assert r.status_code == 201, r.text
            assert r.json()["result"]["data"]["entries"] == 2
            assert st.local_list_version == 2
            assert set(st.local_list) == {key(b)}
            assert st.local_list[key(b)]["status"] == "Accepted"

            r = await c.post(f"/v1.1/chargestations/{ep}/get_local_list_version")
            assert r.status_code == 201, r.text
            answer = r.json()["result"]["response_data"]
            assert answer == ({"listVersion": 2} if proto == P16 else {"versionNumber": 2})
            r = await c.get(f"/v1.1/chargestations/{ep}/local_list")
            kept = r.json()["result"]
            assert (kept["version"], [e["idTag"] for e in kept["entries"]]) == (2, [b])

    run(scenario())


# --------------------------------------------------------------------------- the API


def test_tokens_api_crud_and_list(known):
    org = uniq("org")
    a = create_token(known, uniq("A")[:20], organization=org, meta_data={"driver": "ann"})
    b = create_token(known, uniq("B")[:20], organization=org, type="KeyCode", active=False)
    with api(known) as c:
        r = c.post("/v1.1/tokens", json={"physicalId": a["physicalId"].lower()})
        assert r.status_code == 409, r.text
        r = c.post("/v1.1/tokens", json={"physicalId": "X", "type": "Badge"})
        assert r.status_code == 422
        r = c.get("/v1.1/tokens", params={"organization": org})
        page = r.json()
        assert [d["_id"] for d in page["result"]] == [b["_id"], a["_id"]]  # newest first
        assert page["total"] == 2 and page["hasNext"] is False
        r = c.get(
            "/v1.1/tokens", params={"organization": org, "paginate_limit": 1, "paginate_page": 2}
        )
        assert [d["_id"] for d in r.json()["result"]] == [a["_id"]]
        r = c.get("/v1.1/tokens", params={"organization": org, "active": "false"})
        assert [d["_id"] for d in r.json()["result"]] == [b["_id"]]
        r = c.get("/v1.1/tokens", params={"organization": org, "type": "KeyCode"})
        assert [d["_id"] for d in r.json()["result"]] == [b["_id"]]
        r = c.get("/v1.1/tokens", params={"physicalId": a["physicalId"]})
        assert [d["_id"] for d in r.json()["result"]] == [a["_id"]]
        assert c.get("/v1.1/tokens", params={"nope": 1}).status_code == 400
        # by _id or physicalId
        assert c.get(f"/v1.1/tokens/{a['_id']}").json()["result"] == a
        assert c.get(f"/v1.1/tokens/{a['physicalId']}").json()["result"] == a
        assert c.get("/v1.1/tokens/no-such-card").status_code == 404
        r = c.patch(f"/v1.1/tokens/{b['physicalId']}", json={"active": True, "expiryDate": FUTURE})
        assert r.status_code == 200
        assert (r.json()["result"]["active"], r.json()["result"]["expiryDate"]) == (True, FUTURE)
        assert c.patch(f"/v1.1/tokens/{a['_id']}", json={"active": None}).status_code == 422
        assert c.delete(f"/v1.1/tokens/{a['_id']}").status_code == 200
        assert c.get(f"/v1.1/tokens/{a['_id']}").status_code == 404


def test_tokens_import_all_or_nothing_with_the_bad_line(known):
    org = uniq("org")
    good = "".join(f"I{n}-{org}"[:20] + f",KeyCode,true,{org},,G\n" for n in range(3))
    header = "physicalId,type,active,organization,expiryDate,parentIdTag\n"
    with api(known) as c:
        bad = header + good + f"BAD-{org}"[:20] + ",Badge,true,,,\n"
        r = c.post("/v1.1/tokens/import", content=bad.encode())
        assert r.status_code == 400, r.text
        assert "line 5" in r.json()["message"]
        r = c.get("/v1.1/tokens", params={"organization": org})
        assert r.json()["total"] == 0  # nothing imported
        r = c.post(
            "/v1.1/tokens/import",
            content=(header + good).encode(),
            headers={"content-type": "text/csv"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["result"] == {"rows": 3, "created": 3, "updated": 0}
        assert c.get("/v1.1/tokens", params={"organization": org}).json()["total"] == 3
        # bigger than the 256 KiB of other bodies is fine; past 16 MiB is 413
        big = header + "".join(f"B{n}-{org}"[:20] + f",,,{org},,\n" for n in range(12_000))
        assert len(big) > 256 * 1024
        r = c.post("/v1.1/tokens/import", content=big.encode())
        assert r.status_code == 201, r.text

        def chunks():
            yield header.encode()
            for _ in range(17):
                yield b"#" * (1 << 20)

        r = c.post("/v1.1/tokens/import", content=chunks())  # no Content-Length: counted
        assert r.status_code == 413 and "16 MiB" in r.json()["message"]
    # a Content-Length over the cap is refused before a byte of the body is read
    host, port = known.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=scaled(10)) as sock:
        sock.sendall(
            b"POST /v1.1/tokens/import HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {known.token}\r\n".encode()
            + f"Content-Length: {17 << 20}\r\n\r\n".encode()
        )
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"16 MiB" in answer, answer


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def known_env(known, tmp_path):
    env = hermetic_env(tmp_path)
    env.update(EDRV_API_URL=known.api_url, EDRV_TOKEN=known.token)
    return env


def cli(env, *args: str, input: str | None = None):
    return runner.invoke(app, list(args), env=env, input=input)


def test_cli_import_with_a_bad_row_names_the_line_and_imports_nothing(known, known_env, tmp_path):
    org = uniq("org")
    path = tmp_path / "cards.csv"
    c1, c2, c3 = (f"C{n}-{org}"[:20] for n in (1, 2, 3))
    path.write_text(f"physicalId,organization,active\n{c1},{org},true\n{c2},{org},perhaps\n")
    r = cli(known_env, "tokens", "import", str(path))
    assert r.exit_code == 2, r.output
    assert "line 3" in r.stderr and "active is true or false" in r.stderr
    r = cli(known_env, "tokens", "list", "--organization", org, "-q")
    assert r.exit_code == 0 and r.stdout == ""
    path.write_text(f"physicalId,organization\n{c1},{org}\n{c2},{org}\n")
    r = cli(known_env, "tokens", "import", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "2 token(s) imported: 2 created, 0 updated"
    r = cli(known_env, "tokens", "import", "-", input=f"physicalId,organization\n{c3},{org}\n")
    assert r.exit_code == 0, r.output
    r = cli(known_env, "tokens", "list", "--organization", org, "-o", "plain", "--no-headers")
    assert sorted(line.split("\t")[0] for line in r.stdout.splitlines()) == [c1, c2, c3]


def test_cli_tokens_lifecycle_and_from_event(known, known_env):
    org = uniq("org")
    tag = uniq("T")[:20]
    r = cli(known_env, "tokens", "create", tag, "--organization", org, "--group", "G", "-q")
    assert r.exit_code == 0, r.output
    token_id = r.stdout.strip()
    r = cli(known_env, "tokens", "list", "--organization", org, "-o", "plain")
    lines = r.stdout.splitlines()
    assert lines[0].split("\t")[:4] == ["PHYSICAL ID", "TYPE", "ACTIVE", "EXPIRES"]
    assert lines[1].split("\t")[:3] == [tag, "ISO14443", "true"]
    r = cli(known_env, "tokens", "block", tag)
    assert r.exit_code == 0 and r.stdout.strip() == f"token/{tag} (ISO14443) blocked"
    r = cli(known_env, "tokens", "inspect", token_id, "-o", "json")
    assert '"active": false' in r.stdout
    r = cli(known_env, "tokens", "unblock", tag, "-o", "json")
    assert '"active": true' in r.stdout
    r = cli(known_env, "tokens", "update", tag, "--group", "", "--expiry", FUTURE, "-o", "json")
    assert r.exit_code == 0 and '"parentIdTag": null' in r.stdout
    r = cli(known_env, "tokens", "inspect", "no-such-card")
    assert r.exit_code == 3
    r = cli(known_env, "tokens", "delete", tag)  # no terminal: needs --yes
    assert r.exit_code == 2 and "--yes" in r.stderr
    r = cli(known_env, "tokens", "delete", tag, "--yes")
    assert r.exit_code == 0 and r.stdout.strip() == f"token/{tag} (ISO14443) deleted"

    # a card seen at a station becomes a token from its event
    ep = known.create(uniq(), protocol=P201, organization=org)["endpoint"]
    station_id = known.get(ep)["_id"]
    seen = uniq("SEEN")[:20]

    async def scenario():
        async with sim_running(known, ep, P201) as st:
            assert (await ask(st, P201, seen, "ISO15693"))["status"] == "Unknown"
            online = await asyncio.to_thread(events_of, known.store, station_id, "*.online")
            r = await asyncio.to_thread(
                cli, known_env, "tokens", "create", "--from-event", str(online[-1]["seq"])
            )
            assert r.exit_code == 2 and "not about an id tag" in r.stderr, r.output
            unknown = await asyncio.to_thread(events_of, known.store, station_id, "token.unknown")
            r = await asyncio.to_thread(
                cli,
                known_env,
                "tokens",
                "create",
                "--from-event",
                str(unknown[-1]["seq"]),
                "--organization",
                org,
                "-o",
                "json",
            )
            assert r.exit_code == 0, r.output
            assert f'"physicalId": "{seen}"' in r.stdout and '"type": "ISO15693"' in r.stdout
            assert (await ask(st, P201, seen, "ISO15693"))["status"] == "Accepted"

    run(scenario())


@pytest.mark.parametrize("proto", PROTOS)
def test_cli_send_local_list_and_read_its_version(known, known_env, proto):
    org = uniq("org")
    ep = known.create(uniq(), protocol=proto, organization=org)["endpoint"]
    create_token(known, uniq("L")[:20], organization=org)

    async def scenario():
        async with sim_running(known, ep, proto) as st:
            r = await asyncio.to_thread(cli, known_env, "cs", "send-local-list", ep)
            assert r.exit_code == 0, r.output
            assert "send_local_list completed" in r.stdout
            r = await asyncio.to_thread(cli, known_env, "cs", "send-local-list", ep, "--diff")
            assert r.exit_code == 0, r.output
            assert st.local_list_version == 2
            r = await asyncio.to_thread(cli, known_env, "cs", "local-list-version", ep)
            assert r.exit_code == 0, r.output
            assert f"chargestation/{ep} local list version 2 (last sent from here: 2" in r.stdout
            r = await asyncio.to_thread(cli, known_env, "cs", "local-list-version", ep, "-q")
            assert r.stdout.strip() == "2"

    run(scenario())
    r = cli(known_env, "cs", "send-local-list", ep)  # offline now
    assert r.exit_code == 6, r.output


def test_cli_sets_a_stations_policy(known, known_env):
    ep = uniq()
    r = cli(known_env, "cs", "create", ep, "--authorize", "open", "-o", "json")
    assert r.exit_code == 0, r.output
    assert known.get(ep)["authorize"] == "open"
    r = cli(known_env, "cs", "inspect", ep, "-o", "plain")
    assert "Authorize\topen" in r.stdout
    r = cli(known_env, "cs", "update", ep, "--authorize", "known")
    assert r.exit_code == 0 and known.get(ep)["authorize"] == "known"
    r = cli(known_env, "cs", "update", ep, "--authorize", "server")
    assert r.exit_code == 0 and known.get(ep)["authorize"] is None
    r = cli(known_env, "cs", "update", ep, "--authorize", "sometimes")
    assert r.exit_code == 2
