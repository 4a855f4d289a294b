"""Who may charge, in process and fast: the authorization policy (fleet/tokens.py) over a fresh
in-memory fleet with fake live stations (tests/test_fleet.py's pattern), the answers in each
OCPP version's words, token events, local lists and the CSV import's rules."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from edrvctl import model
from edrvctl.errors import Conflict, NotFound, UsageError
from edrvctl.fleet import Fleet, events, tokens
from edrvctl.fleet.live import LocalListEntry, SendLocalList
from edrvctl.ocppj import schemas
from edrvctl.server import ocpp16, ocpp201
from edrvctl.store import EventQuery, TokenQuery, open_store
from test_fleet import FakeLive

T = "2024-05-01T10:00:00.000Z"
PAST, FUTURE = "2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"
_names = itertools.count(1)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet():
    f = Fleet(open_store(":memory:"), FakeLive())
    f.tokens = tokens.Authorizer("known", clock=Clock())
    return f


async def station(fleet: Fleet, protocol: str = "ocpp1.6", **body: Any) -> dict:
    doc, _ = await fleet.create(
        model.StationCreate(endpoint=f"TK-{next(_names)}", protocol=protocol, **body)
    )
    return doc


async def token(fleet: Fleet, physical_id: str, **body: Any) -> dict:
    return await tokens.create(fleet, tokens.TokenCreate(physicalId=physical_id, **body))


async def status(fleet: Fleet, doc: dict, tag: str, token_type: str | None = None) -> str:
    return (await fleet.authorize(doc["endpoint"], tag, token_type)).status


async def token_events(fleet: Fleet, doc: dict) -> list[dict]:
    query = EventQuery(station_id=doc["_id"], types=("token.*",), limit=None)
    async with fleet.store.unit() as tx:
        return await tx.list_events(query)


# --- the policy ----------------------------------------------------------------------------


def test_known_policy_answers_each_tokens_own_status(fleet):
    async def scenario():
        doc = await station(fleet)
        await token(fleet, "GOOD", parentIdTag="FLEET-1", expiryDate=FUTURE)
        await token(fleet, "OFF", active=False)
        await token(fleet, "OLD", expiryDate=PAST)
        good = await fleet.authorize(doc["endpoint"], "good")  # id tags compare without case
        assert (good.status, good.group, good.expiry) == ("Accepted", "FLEET-1", FUTURE)
        assert good.id_tag_info() == {
            "status": "Accepted",
            "expiryDate": FUTURE,
            "parentIdTag": "FLEET-1",
        }
        assert good.id_token_info() == {
            "status": "Accepted",
            "cacheExpiryDateTime": FUTURE,
            "groupIdToken": {"idToken": "FLEET-1", "type": "Central"},
        }
        assert await status(fleet, doc, "OFF") == "Blocked"
        assert await status(fleet, doc, "OLD") == "Expired"
        unknown = await fleet.authorize(doc["endpoint"], "NOBODY")
        # OCPP 1.6 has no Unknown: it says Invalid; 2.0.1 says Unknown
        assert unknown.id_tag_info() == {"status": "Invalid"}
        assert unknown.id_token_info() == {"status": "Unknown"}
        # a refused token gives neither its expiry nor its group
        blocked = await fleet.authorize(doc["endpoint"], "OFF")
        assert blocked.id_tag_info() == {"status": "Blocked"}

    run(scenario())


def test_every_answer_is_valid_ocpp_in_both_versions(fleet):
    async def scenario():
        doc = await station(fleet)
        await token(fleet, "GOOD", parentIdTag="G", expiryDate=FUTURE)
        await token(fleet, "ORG", organization="elsewhere")
        other = await station(fleet, organization="here")
        for where, tag in ((doc, "GOOD"), (doc, "NOBODY"), (other, "ORG")):
            d = await fleet.authorize(where["endpoint"], tag)
            schemas.validate("1.6", "Authorize", schemas.RESPONSE, {"idTagInfo": d.id_tag_info()})
            schemas.validate(
                "2.0.1", "Authorize", schemas.RESPONSE, {"idTokenInfo": d.id_token_info()}
            )

    run(scenario())


def test_an_inactive_station_refuses_every_token_whatever_the_policy(fleet):
    async def scenario():
        await token(fleet, "GOOD")
        closed = await station(fleet, active=False)
        open_ = await station(fleet, active=False, authorize="open")
        for doc in (closed, open_):
            assert await status(fleet, doc, "GOOD") == "Blocked"
            assert await status(fleet, doc, "NOBODY") == "Blocked"
            _, d = await fleet.start_transaction(doc["endpoint"], 1, "GOOD", 0, T)
            assert d.status == "Blocked"
        # refused because of the station, not the token: no token.refused event
        assert [e["type"] for e in await token_events(fleet, closed)] == ["token.unknown"]

    run(scenario())


def test_open_policy_accepts_every_tag_and_gives_a_known_ones_group(fleet):
    async def scenario():
        fleet.tokens.policy = "open"
        doc = await station(fleet)
        await token(fleet, "OFF", active=False, parentIdTag="G")
        await token(fleet, "OLD", expiryDate=PAST)
        for tag in ("OFF", "OLD", "NOBODY"):
            assert await status(fleet, doc, tag) == "Accepted"
        d = await fleet.authorize(doc["endpoint"], "OFF")
        assert d.id_tag_info() == {"status": "Accepted", "parentIdTag": "G"}
        # an unknown tag is still noted, so that its card can be added before `known`
        seen = await token_events(fleet, doc)
        assert [(e["type"], e["data"]["idTag"]) for e in seen] == [("token.unknown", "NOBODY")]
        assert seen[0]["data"]["policy"] == "open"

    run(scenario())


def test_a_stations_own_policy_overrides_the_servers(fleet):
    async def scenario():
        strict = await station(fleet)  # the server's: known
        free = await station(fleet, authorize="open")
        assert await status(fleet, strict, "NOBODY") == "Unknown"
        assert await status(fleet, free, "NOBODY") == "Accepted"
        fleet.tokens.policy = "open"
        known = await station(fleet, authorize="known")
        assert await status(fleet, strict, "NOBODY") == "Accepted"
        assert await status(fleet, known, "NOBODY") == "Unknown"
        # back to the server's
        await fleet.update(known["_id"], model.StationUpdate(authorize=None))
        assert await status(fleet, known, "NOBODY") == "Accepted"
        await fleet.update(strict["_id"], model.StationUpdate(authorize="known"))
        assert await status(fleet, strict, "NOBODY") == "Unknown"

    run(scenario())


def test_a_token_of_another_organization_is_not_at_this_location(fleet):
    async def scenario():
        here = await station(fleet, organization="acme")
        anywhere = await station(fleet)
        await token(fleet, "MINE", organization="acme")
        await token(fleet, "THEIRS", organization="globex")
        await token(fleet, "SHARED")
        assert await status(fleet, here, "MINE") == "Accepted"
        assert await status(fleet, here, "SHARED") == "Accepted"
        d = await fleet.authorize(here["endpoint"], "THEIRS")
        assert (d.status, d.id_tag_info(), d.id_token_info()) == (
            "NotAtThisLocation",
            {"status": "Invalid"},
            {"status": "NotAtThisLocation"},
        )
        assert await status(fleet, anywhere, "THEIRS") == "Accepted"  # a station of none

    run(scenario())


def test_which_token_an_id_tag_is_in_each_version(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        await token(fleet, "CARD", type="ISO14443")
        await token(fleet, "CARD", type="ISO15693", active=False)
        await token(fleet, "APP-1", type="eMAID")
        # 2.0.1 names the type: that token
        assert await status(fleet, doc, "CARD", "ISO14443") == "Accepted"
        assert await status(fleet, doc, "CARD", "ISO15693") == "Blocked"
        assert await status(fleet, doc, "CARD", "KeyCode") == "Unknown"
        # a Central idToken (a remote start's) may be a token of any type
        assert await status(fleet, doc, "APP-1", "Central") == "Accepted"
        # 1.6 names the id tag alone: any type, the best status
        assert await status(fleet, doc, "CARD") == "Accepted"

    run(scenario())


def test_concurrent_sessions_of_one_token(fleet):
    async def scenario():
        a16 = await station(fleet)
        b16 = await station(fleet)
        a201 = await station(fleet, "ocpp2.0.1")
        await token(fleet, "TAG")
        _, d = await fleet.start_transaction(a16["endpoint"], 1, "TAG", 0, T)
        assert d.status == "Accepted"
        # the same tag starting elsewhere: another station, another connector
        assert (await fleet.start_transaction(b16["endpoint"], 1, "TAG", 0, T))[1].status == (
            "ConcurrentTx"
        )
        assert (await fleet.start_transaction(a16["endpoint"], 2, "TAG", 0, T))[1].status == (
            "ConcurrentTx"
        )
        # a start sent again on the same connector (its answer was lost) is not refused
        assert (await fleet.start_transaction(a16["endpoint"], 1, "TAG", 0, T))[1].accepted
        # 1.6 Authorize never says ConcurrentTx (1.6: only StartTransaction does)
        assert await status(fleet, b16, "TAG") == "Accepted"
        # 2.0.1 Authorize: a session on another station counts; on this one it may be a stop
        assert await status(fleet, a201, "TAG", "ISO14443") == "ConcurrentTx"
        # a token ending its session is never ConcurrentTx
        d = await fleet.authorize(b16["endpoint"], "TAG", purpose="stop")
        assert d.status == "Accepted"
        # once every session of it has ended, it may start again
        async with fleet.store.unit() as tx:
            running = await tx.active_transactions("tag")
        for t in running:
            station_ = a16 if t["station_id"] == a16["_id"] else b16
            await fleet.stop_transaction(station_["endpoint"], t["tx_key"], 10, T, "Local")
        assert (await fleet.start_transaction(b16["endpoint"], 1, "TAG", 0, T))[1].accepted

    run(scenario())


def test_a_201_transaction_is_not_concurrent_with_itself(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        other = await station(fleet, "ocpp2.0.1")
        await token(fleet, "TAG")
        _, d = await fleet.start_transaction(
            doc["endpoint"], 1, "TAG", 0, T, tx_key="tx-1", token_type="ISO14443"
        )
        assert d.accepted
        # Started sent again, and the token named again in an Updated event of it
        _, d = await fleet.start_transaction(
            doc["endpoint"], 1, "TAG", 0, T, tx_key="tx-1", token_type="ISO14443"
        )
        assert d.accepted
        d = await fleet.authorize(
            doc["endpoint"], "TAG", "ISO14443", purpose="start", evse=1, tx_key="tx-1"
        )
        assert d.accepted
        # a 2.0.1 transaction started without a token, then given this one: elsewhere
        _, d = await fleet.start_transaction(other["endpoint"], 1, None, 0, T, tx_key="tx-9")
        assert d.accepted  # no token yet: the station alone decides
        d = await fleet.authorize(
            other["endpoint"], "TAG", "ISO14443", purpose="start", evse=1, tx_key="tx-9"
        )
        assert d.status == "ConcurrentTx"
        async with fleet.store.unit() as tx:
            stored = await tx.get_transaction(doc["_id"], "tx-1")
        assert (stored["idTag"], stored["idTokenType"]) == ("TAG", "ISO14443")

    run(scenario())


def test_a_refused_start_is_recorded_refused(fleet):
    async def scenario():
        doc = await station(fleet)
        await token(fleet, "OFF", active=False)
        for tag in ("OFF", "NOBODY"):
            key, d = await fleet.start_transaction(doc["endpoint"], 1, tag, 0, T)
            assert not d.accepted
            async with fleet.store.unit() as tx:
                assert (await tx.get_transaction(doc["_id"], key))["status"] == "Refused"
        async with fleet.store.unit() as tx:  # a refused session holds no token
            assert await tx.active_transactions("OFF") == []

    run(scenario())


def test_unknown_and_refused_tokens_are_events_at_most_once_a_minute(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        other = await station(fleet)
        t = await token(fleet, "OFF", active=False)
        for _ in range(3):
            await fleet.authorize(doc["endpoint"], "NEW-CARD", "ISO14443")
            await fleet.authorize(doc["endpoint"], "OFF", "ISO14443")
        await fleet.start_transaction(
            doc["endpoint"], 1, "NEW-CARD", 0, T, tx_key="x", token_type="ISO14443"
        )
        seen = await token_events(fleet, doc)
        assert [(e["type"], e["data"]["idTag"]) for e in seen] == [
            ("token.unknown", "NEW-CARD"),
            ("token.refused", "OFF"),
        ]
        assert seen[0]["data"] == {
            "idTag": "NEW-CARD",
            "type": "ISO14443",
            "status": "Unknown",
            "policy": "known",
        }
        assert seen[1]["data"]["token"] == t["_id"] and seen[1]["data"]["status"] == "Blocked"
        assert seen[0]["endpoint"] == doc["endpoint"]
        # another station, or another type, is noted on its own
        await fleet.authorize(other["endpoint"], "NEW-CARD")
        await fleet.authorize(doc["endpoint"], "NEW-CARD", "KeyCode")
        assert len(await token_events(fleet, other)) == 1
        assert len(await token_events(fleet, doc)) == 3
        # a minute later, again
        fleet.tokens._clock.now += tokens.NOTE_EVERY
        await fleet.authorize(doc["endpoint"], "new-card", "ISO14443")
        assert len(await token_events(fleet, doc)) == 4
        # the events reach the feed (webhooks, streams) like every other
        assert events.TOKEN_UNKNOWN == "token.unknown"

    run(scenario())


def test_the_memo_of_noted_tokens_is_bounded(fleet, monkeypatch):
    async def scenario():
        monkeypatch.setattr(tokens, "MAX_REMEMBERED", 10)
        doc = await station(fleet)
        for n in range(25):
            await fleet.authorize(doc["endpoint"], f"CARD-{n}")
        assert len(fleet.tokens._noted) <= 10
        assert len(await token_events(fleet, doc)) == 25

    run(scenario())


# --- tokens ----------------------------------------------------------------------------------


def test_token_records_unique_per_type_and_named_by_id_or_physical_id(fleet):
    async def scenario():
        a = await token(fleet, "CARD", organization="acme", meta_data={"driver": "ann"})
        assert {k: a[k] for k in ("physicalId", "type", "active", "organization")} == {
            "physicalId": "CARD",
            "type": "ISO14443",
            "active": True,
            "organization": "acme",
        }
        with pytest.raises(Conflict):
            await token(fleet, "card")  # the same id tag, in another case
        b = await token(fleet, "CARD", type="KeyCode")
        assert (await tokens.get(fleet, a["_id"]))["_id"] == a["_id"]
        with pytest.raises(UsageError, match="2 tokens"):
            await tokens.get(fleet, "CARD")
        assert (await tokens.get(fleet, "card", "KeyCode"))["_id"] == b["_id"]
        c = await tokens.update(
            fleet, b["_id"], tokens.TokenUpdate(active=False, parentIdTag="G", organization=None)
        )
        assert (c["active"], c["parentIdTag"], c["organization"]) == (False, "G", None)
        with pytest.raises(Conflict):  # onto another token's physicalId and type
            await tokens.update(fleet, b["_id"], tokens.TokenUpdate(type="ISO14443"))
        await tokens.delete(fleet, a["_id"])
        with pytest.raises(NotFound):
            await tokens.get(fleet, a["_id"])
        assert (await tokens.get(fleet, "CARD"))["_id"] == b["_id"]  # one left
        found, total = await tokens.list_(fleet, TokenQuery({"active": False}))
        assert total == 1 and found[0]["_id"] == b["_id"]

    run(scenario())


@pytest.mark.parametrize(
    "body, error",
    [
        ({"physicalId": ""}, "only a NoAuthorization"),
        ({"physicalId": "X" * 37}, "at most 36"),
        ({"physicalId": "A\x1b[2J"}, "control characters"),
        ({"physicalId": "A", "type": "RFID"}, "type"),
        ({"physicalId": "A", "parentIdTag": "G" * 21}, "at most 20"),
        ({"physicalId": "A", "expiryDate": "tomorrow"}, "ISO-8601"),
        ({"physicalId": "A", "active": "yes"}, "boolean"),
    ],
)
def test_token_fields_are_checked(body, error):
    with pytest.raises(Exception, match=error):
        tokens.TokenCreate.model_validate(body)


def test_a_no_authorization_token_may_have_an_empty_id():
    assert tokens.TokenCreate(physicalId="", type="NoAuthorization").physicalId == ""


# --- CSV import ------------------------------------------------------------------------------


def test_csv_rows_become_tokens():
    body = (
        "\ufeffphysicalId,type,active,organization,expiryDate,parentIdTag\n"
        "TAG-1,,,,,\n"
        "TAG-2,KeyCode,false,acme,2030-01-01T00:00:00Z,FLEET\n"
        "\n"
        '"TAG,3",ISO15693,TRUE,,,\n'
    ).encode()
    docs = tokens.parse_csv(body, T)
    assert [(d["physicalId"], d["type"], d["active"]) for d in docs] == [
        ("TAG-1", "ISO14443", True),
        ("TAG-2", "KeyCode", False),
        ("TAG,3", "ISO15693", True),
    ]
    assert docs[1]["organization"] == "acme" and docs[1]["parentIdTag"] == "FLEET"
    assert docs[1]["expiryDate"] == "2030-01-01T00:00:00.000Z"
    # columns in any order, only physicalId required
    docs = tokens.parse_csv(b"parentIdTag,physicalId\nG,A\n", T)
    assert (docs[0]["physicalId"], docs[0]["parentIdTag"]) == ("A", "G")


@pytest.mark.parametrize(
    "body, error",
    [
        (b"", "empty import"),
        (b"id,type\nA,B\n", "line 1: unknown column 'id'"),
        (b"type\nKeyCode\n", "line 1: the physicalId column is required"),
        (b"physicalId,physicalId\nA,B\n", "line 1: a column is named twice"),
        (b"physicalId,type\nA,KeyCode\nB,Badge\n", "line 3: type"),
        (b"physicalId,active\nA,true\nB,maybe\n", "line 3: active is true or false"),
        (b"physicalId\nA\nB\nA\n", "line 4: .* is on line 2 already"),
        (b"physicalId\nA\na\n", "line 3: .* is on line 2 already"),
        (b"physicalId,type\nA,KeyCode\nB\n", "line 3: 1 fields, the header names 2"),
        (b'physicalId\n"A\n\n"\nB,C\n', "line 5"),  # a quoted newline: lines, not rows
        (b"physicalId\nA\n\xff\n", "line 3: not UTF-8"),
        (b"physicalId,expiryDate\nA,2030-13-01\n", "line 2: expiryDate"),
    ],
)
def test_a_bad_csv_row_is_named_by_its_line(body, error):
    with pytest.raises(UsageError, match=error):
        tokens.parse_csv(body, T)


def test_an_import_is_all_or_nothing_and_updates_what_exists(fleet):
    async def scenario():
        kept = await token(fleet, "TAG-1", meta_data={"driver": "ann"})
        with pytest.raises(UsageError, match="line 3"):
            await tokens.import_csv(fleet, b"physicalId,active\nTAG-2,true\nTAG-3,never\n")
        assert (await tokens.list_(fleet, TokenQuery()))[1] == 1  # nothing imported
        result = await tokens.import_csv(
            fleet, b"physicalId,active,parentIdTag\ntag-1,false,G\nTAG-2,true,\n"
        )
        assert result == {"rows": 2, "created": 1, "updated": 1}
        updated = await tokens.get(fleet, kept["_id"])
        assert (updated["active"], updated["parentIdTag"], updated["physicalId"]) == (
            False,
            "G",
            "tag-1",
        )
        assert updated["meta_data"] == {"driver": "ann"}  # kept
        assert updated["createdAt"] == kept["createdAt"]

    run(scenario())


def test_an_import_has_a_row_budget(monkeypatch):
    monkeypatch.setattr(tokens, "MAX_IMPORT_ROWS", 3)
    with pytest.raises(UsageError, match="line 5: an import has at most 3 tokens"):
        tokens.parse_csv(b"physicalId\nA\nB\nC\nD\n", T)


# --- local authorization lists -------------------------------------------------------------


async def online(fleet: Fleet, doc: dict) -> None:
    fleet.live.online.add(doc["endpoint"])  # type: ignore[attr-defined]
    await fleet.connected(doc["endpoint"])
    await fleet.boot(doc["endpoint"], {"chargePointVendor": "V"})


def entries(command: SendLocalList) -> list[tuple]:
    return sorted((e.id_tag, e.type, e.status, e.group) for e in command.entries)


def test_a_local_list_holds_the_tokens_usable_at_the_station(fleet):
    async def scenario():
        doc = await station(fleet, organization="acme")
        await online(fleet, doc)
        fleet.live.answers[SendLocalList] = ("Accepted", {"status": "Accepted"})  # type: ignore[attr-defined]
        await token(fleet, "MINE", organization="acme", parentIdTag="G", expiryDate=FUTURE)
        await token(fleet, "ANY")
        await token(fleet, "OFF", active=False)
        await token(fleet, "THEIRS", organization="globex")
        await token(fleet, "LONG-" + "X" * 20)  # a 1.6 id tag has at most 20 characters
        a = await fleet.send_local_list(doc["endpoint"], True, 5)
        assert (a["type"], a["status"], a["data"]) == (
            "send_local_list",
            "completed",
            {"listVersion": 1, "updateType": "Full", "entries": 3},
        )
        sent = fleet.live.sent[-1][1]  # type: ignore[attr-defined]
        assert entries(sent) == [
            ("ANY", "ISO14443", "Accepted", None),
            ("MINE", "ISO14443", "Accepted", "G"),
            ("OFF", "ISO14443", "Blocked", None),
        ]
        mine = next(e for e in sent.entries if e.id_tag == "MINE")
        assert mine.expiry == FUTURE
        kept = await tokens.local_list_of(fleet, doc["endpoint"])
        assert (kept["version"], kept["updateType"], len(kept["entries"])) == (1, "Full", 3)

        # what changed since: a token blocked, one deleted, one added
        await tokens.update(fleet, "ANY", tokens.TokenUpdate(active=False))
        await tokens.delete(fleet, "OFF")
        await token(fleet, "NEW", organization="acme")
        await fleet.send_local_list(doc["endpoint"], False, 5)
        diff = fleet.live.sent[-1][1]  # type: ignore[attr-defined]
        assert (diff.version, diff.full) == (2, False)
        assert entries(diff) == [
            ("ANY", "ISO14443", "Blocked", None),
            ("NEW", "ISO14443", "Accepted", None),
            ("OFF", "ISO14443", None, None),  # taken off
        ]
        kept = await tokens.local_list_of(fleet, doc["endpoint"])
        assert kept["version"] == 2
        assert sorted(e["idTag"] for e in kept["entries"]) == ["ANY", "MINE", "NEW"]
        # nothing changed: an empty differential update, a new version
        await fleet.send_local_list(doc["endpoint"], False, 5)
        assert entries(fleet.live.sent[-1][1]) == []  # type: ignore[attr-defined]

        # refused: what the station holds is unchanged
        fleet.live.answers[SendLocalList] = ("VersionMismatch", {"status": "VersionMismatch"})  # type: ignore[attr-defined]
        a = await fleet.send_local_list(doc["endpoint"], False, 5)
        assert (a["status"], a["error"]["code"]) == ("failed", "Rejected")
        assert (await tokens.local_list_of(fleet, doc["endpoint"]))["version"] == 3

    run(scenario())


def test_a_local_list_in_each_versions_words():
    command = SendLocalList(
        4,
        False,
        (
            LocalListEntry("A", "KeyCode", "Accepted", FUTURE, "G"),
            LocalListEntry("B", "ISO14443", "Blocked"),
            LocalListEntry("C", "ISO14443", None),
        ),
    )
    action, p16 = ocpp16.translate(command)
    assert (action, p16) == (
        "SendLocalList",
        {
            "listVersion": 4,
            "updateType": "Differential",
            "localAuthorizationList": [
                {
                    "idTag": "A",
                    "idTagInfo": {"status": "Accepted", "expiryDate": FUTURE, "parentIdTag": "G"},
                },
                {"idTag": "B", "idTagInfo": {"status": "Blocked"}},
                {"idTag": "C"},
            ],
        },
    )
    _, p201 = ocpp201.translate(command)
    assert p201["versionNumber"] == 4 and p201["localAuthorizationList"][0] == {
        "idToken": {"idToken": "A", "type": "KeyCode"},
        "idTokenInfo": {
            "status": "Accepted",
            "cacheExpiryDateTime": FUTURE,
            "groupIdToken": {"idToken": "G", "type": "Central"},
        },
    }
    schemas.validate("1.6", "SendLocalList", schemas.REQUEST, p16)
    schemas.validate("2.0.1", "SendLocalList", schemas.REQUEST, p201)
    # an empty full list: 2.0.1 leaves the list out (it has at least one entry when given)
    _, empty = ocpp201.translate(SendLocalList(1, True))
    assert empty == {"versionNumber": 1, "updateType": "Full"}
    schemas.validate("2.0.1", "SendLocalList", schemas.REQUEST, empty)


def test_a_local_list_has_a_budget(fleet, monkeypatch):
    async def scenario():
        monkeypatch.setattr(tokens, "MAX_LOCAL_LIST", 2)
        doc = await station(fleet)
        await online(fleet, doc)
        for tag in ("A", "B", "C"):
            await token(fleet, tag)
        with pytest.raises(UsageError, match="3 tokens may be used"):
            await fleet.send_local_list(doc["endpoint"], True, 5)
        assert fleet.live.sent == []  # type: ignore[attr-defined]

    run(scenario())


def test_token_events_count_against_the_stations_daily_budget(fleet):
    async def scenario():
        doc = await station(fleet)
        fleet.budgets.stored_per_day = 400  # bytes: a few events' worth
        for n in range(20):
            assert await status(fleet, doc, f"CARD-{n}") == "Unknown"  # answered all the same
        kept = await token_events(fleet, doc)
        assert 0 < len(kept) < 20

    run(scenario())


def test_an_id_tag_the_store_cannot_hold_is_unknown_and_not_noted(fleet):
    async def scenario():
        doc = await station(fleet, "ocpp2.0.1")
        assert await status(fleet, doc, "BAD\ud800", "ISO14443") == "Unknown"
        assert await token_events(fleet, doc) == []

    run(scenario())
