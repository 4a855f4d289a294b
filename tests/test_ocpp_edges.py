"""Around the happy path, on the wire: a raw websocket client against a real `edrvctl serve`,
for what an independent station hit (each of these failed before it was fixed)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from edrvctl.fleet import events
from edrvctl.store import EventQuery
from stored import read_async
from test_ocpp_frames import BOOT, P16, P201, call, now, open_station, recv, run, uniq
from timing import scaled, until_async

BASE = "/v1.1/chargestations"


async def stored(server, what: str, station_id: str) -> list[dict]:
    return await read_async(server.store, lambda tx: getattr(tx, what)(station_id))


async def api(server, method: str, path: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=server.api_url,
        timeout=scaled(20),
        headers={"Authorization": f"Bearer {server.token}"},
    ) as c:
        return await c.request(method, path, **kw)


async def answer_next_call(ws, reply) -> list:
    """Read frames until the server's CALL; answer it with reply(frame) (a frame list)."""
    while True:
        frame = await recv(ws, timeout=scaled(10))
        if frame[0] == 2:
            await ws.send(json.dumps(reply(frame)))
            return frame


def test_basic_auth_for_an_endpoint_with_a_colon(server):
    async def scenario():
        ep = f"CP:{uniq()}"
        with httpx.Client(
            base_url=server.api_url, headers={"Authorization": f"Bearer {server.token}"}
        ) as c:
            r = c.post(BASE, json={"endpoint": ep, "security": {"type": "basic_auth"}})
        assert r.status_code == 201, r.text
        password = r.json()["result"]["password"]
        auth = base64.b64encode(f"{ep}:{password}".encode()).decode()
        async with connect(
            f"{server.ocpp_url}/{ep}",
            subprotocols=[P16],
            proxy=None,
            additional_headers={"Authorization": f"Basic {auth}"},
            open_timeout=scaled(5),
        ) as ws:
            frame = await call(ws, "BootNotification", BOOT[P16])
            assert frame[2]["status"] == "Accepted"

    run(scenario())


@pytest.mark.parametrize("proto", [P16, P201])
def test_unknown_and_unsupported_actions_carry_their_own_descriptions(server, proto):
    async def scenario():
        ws, _ = await open_station(server, proto)
        async with ws:
            unknown = await call(ws, "FooBar", {})
            assert unknown[2] == "NotImplemented"
            assert "not known" in unknown[3], unknown
            unsupported = await call(ws, "Reset", {"type": "Hard" if proto == P16 else "Immediate"})
            assert unsupported[2] == "NotSupported"
            assert "not supported" in unsupported[3], unsupported

    run(scenario())


@pytest.mark.parametrize("proto", [P16, P201])
def test_a_callerror_code_ocpp_does_not_define_is_a_502(server, proto):
    async def scenario():
        ws, doc = await open_station(server, proto)
        async with ws:
            pending = asyncio.ensure_future(
                api(
                    server,
                    "POST",
                    f"{BASE}/{doc['_id']}/get_variables",
                    json={
                        "keys": [
                            "HeartbeatInterval"
                            if proto == P16
                            else "OCPPCommCtrlr.HeartbeatInterval"
                        ],
                        "timeout": 10,
                    },
                )
            )
            await answer_next_call(ws, lambda f: [4, f[1], "TotallyMadeUp", "no", {}])
            r = await pending
        assert r.status_code == 502, r.text
        assert "TotallyMadeUp" in r.json()["message"]

    run(scenario())


def test_a_key_longer_than_the_schema_allows_is_a_usage_error_and_nothing_is_sent(server):
    async def scenario():
        ws, doc = await open_station(server, P16)
        async with ws:
            r = await api(
                server, "POST", f"{BASE}/{doc['_id']}/get_variables", json={"keys": ["K" * 60]}
            )
            assert r.status_code == 400, r.text
            assert "not sent" in r.json()["message"]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), scaled(0.3))  # the station heard nothing

    run(scenario())


def test_commands_wait_for_the_first_boot(server):
    async def scenario():
        doc = server.create(uniq(), protocol=P16)
        async with connect(
            f"{server.ocpp_url}/{doc['endpoint']}",
            subprotocols=[P16],
            proxy=None,
            open_timeout=scaled(5),
        ) as ws:
            await until_async(lambda: server.get(doc["_id"])["online"], what="online")
            r = await api(server, "POST", f"{BASE}/{doc['_id']}/get_variables", json={})
            assert r.status_code == 406, r.text
            assert "BootNotification" in r.json()["message"]
            assert (await call(ws, "BootNotification", BOOT[P16]))[2]["status"] == "Accepted"

    run(scenario())


def test_what_the_station_sent_is_stored_without_schema_defaults(server):
    async def scenario():
        ws, doc = await open_station(server, P201)
        sample = [{"timestamp": now(), "sampledValue": [{"value": 230.1, "measurand": "Voltage"}]}]
        async with ws:
            frame = await call(ws, "MeterValues", {"evseId": 1, "meterValue": sample})
            assert frame[0] == 3, frame
        (row,) = await stored(server, "meter_values", doc["_id"])
        assert row["values"] == sample  # no unitOfMeasure {"unit": "Wh"} added

    run(scenario())


@pytest.mark.parametrize(
    "proto,action,payload",
    [
        (
            P16,
            "StopTransaction",
            {
                "meterStop": 10,
                "timestamp": "NOW",
                "transactionId": 1,
                "transactionData": [{"timestamp": "yesterday", "sampledValue": [{"value": "1"}]}],
            },
        ),
        (
            P201,
            "TransactionEvent",
            {
                "eventType": "Updated",
                "timestamp": "NOW",
                "triggerReason": "MeterValuePeriodic",
                "seqNo": 1,
                "transactionInfo": {"transactionId": "t-1"},
                "meterValue": [
                    {"timestamp": "2024-13-45T99:00:00Z", "sampledValue": [{"value": 1}]}
                ],
            },
        ),
        (
            P201,
            "NotifyEvent",
            {
                "generatedAt": "NOW",
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 1,
                        "timestamp": "noon",
                        "trigger": "Delta",
                        "actualValue": "1",
                        "eventNotificationType": "HardWiredNotification",
                        "component": {"name": "ChargingStation"},
                        "variable": {"name": "Problem"},
                    }
                ],
            },
        ),
    ],
)
def test_nested_timestamps_are_checked(server, proto, action, payload):
    async def scenario():
        ws, _ = await open_station(server, proto)
        body = json.loads(json.dumps(payload).replace('"NOW"', json.dumps(now())))
        async with ws:
            frame = await call(ws, action, body)
        assert frame[0] == 4, frame
        assert frame[2] == ("FormationViolation" if proto == P16 else "FormatViolation")

    run(scenario())


def energy(wh: float) -> list[dict]:
    return [
        {
            "timestamp": now(),
            "sampledValue": [
                {
                    "value": wh / 1000,
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "kWh"},
                }
            ],
        }
    ]


def tx_event(kind: str, seq: int, tx: str, **extra) -> dict:
    return {
        "eventType": kind,
        "timestamp": now(),
        "seqNo": seq,
        "triggerReason": {
            "Started": "Authorized",
            "Updated": "MeterValuePeriodic",
            "Ended": "StopAuthorized",
        }[kind],
        "transactionInfo": {"transactionId": tx, **extra.pop("info", {})},
        **extra,
    }


def test_a_201_transaction_has_meter_start_stop_and_its_connector(server):
    async def scenario():
        ws, doc = await open_station(server, P201)
        tx = uniq("tx")
        async with ws:
            for frame in (
                tx_event(
                    "Started",
                    0,
                    tx,
                    evse={"id": 2, "connectorId": 1},
                    idToken={"idToken": "TAG", "type": "ISO14443"},
                    meterValue=energy(1000),
                ),
                tx_event("Updated", 1, tx, meterValue=energy(3000)),
                tx_event("Ended", 2, tx, meterValue=energy(5000), info={"stoppedReason": "Local"}),
            ):
                assert (await call(ws, "TransactionEvent", frame))[0] == 3
        (t,) = await stored(server, "transactions", doc["_id"])
        assert (t["meterStart"], t["meterStop"], t["connector"]) == (1000, 5000, 2)
        assert (t["status"], t["stopReason"]) == ("Completed", "Local")
        rows = await stored(server, "meter_values", doc["_id"])
        assert [r["connector"] for r in rows] == [2, 2, 2]

    run(scenario())


def test_a_201_transaction_with_a_blocked_token_ends_refused(server):
    async def scenario():
        doc = server.create(uniq(), protocol=P201, active=False)
        async with connect(
            f"{server.ocpp_url}/{doc['endpoint']}",
            subprotocols=[P201],
            proxy=None,
            open_timeout=scaled(5),
        ) as ws:
            assert (await call(ws, "BootNotification", BOOT[P201]))[2]["status"] == "Accepted"
            tx = uniq("tx")
            started = await call(
                ws,
                "TransactionEvent",
                tx_event(
                    "Started",
                    0,
                    tx,
                    evse={"id": 1, "connectorId": 1},
                    idToken={"idToken": "TAG", "type": "ISO14443"},
                ),
            )
            assert started[2]["idTokenInfo"]["status"] == "Blocked"
            assert (
                await call(
                    ws,
                    "TransactionEvent",
                    tx_event("Ended", 1, tx, info={"stoppedReason": "DeAuthorized"}),
                )
            )[0] == 3
        (t,) = await stored(server, "transactions", doc["_id"])
        assert t["status"] == "Refused"

    run(scenario())


def test_a_problem_reported_by_notify_event_faults_the_station(server):
    async def scenario():
        ws, doc = await open_station(server, P201)

        def event(value: str) -> dict:
            return {
                "generatedAt": now(),
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 1,
                        "timestamp": now(),
                        "trigger": "Delta",
                        "actualValue": value,
                        "eventNotificationType": "HardWiredNotification",
                        "techInfo": "RCD",
                        "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
                        "variable": {"name": "Problem"},
                    }
                ],
            }

        async with ws:
            await call(
                ws,
                "StatusNotification",
                {"timestamp": now(), "evseId": 1, "connectorId": 1, "connectorStatus": "Available"},
            )
            assert (await call(ws, "NotifyEvent", event("true")))[0] == 3
            assert server.get(doc["_id"])["status"] == "Faulted"
            assert (await call(ws, "NotifyEvent", event("false")))[0] == 3
            assert server.get(doc["_id"])["status"] == "Available"

    run(scenario())


def test_201_variables_are_unique_per_evse_and_accepted_back_as_printed(server):
    async def scenario():
        ws, doc = await open_station(server, P201)

        def report_item(evse: int, value: str) -> dict:
            return {
                "component": {"name": "EVSE", "evse": {"id": evse}},
                "variable": {"name": "Power"},
                "variableAttribute": [{"value": value, "mutability": "ReadOnly"}],
            }

        async with ws:
            pending = asyncio.ensure_future(
                api(server, "POST", f"{BASE}/{doc['_id']}/get_variables", json={"timeout": 10})
            )
            request = await answer_next_call(ws, lambda f: [3, f[1], {"status": "Accepted"}])
            await call(
                ws,
                "NotifyReport",
                {
                    "requestId": request[3]["requestId"],
                    "generatedAt": now(),
                    "seqNo": 0,
                    "reportData": [report_item(1, "11000"), report_item(2, "22000")],
                },
            )
            r = await pending
            assert r.status_code == 201, r.text
            keys = {e["key"]: e["value"] for e in r.json()["result"]["csconfig"]}
            assert keys == {"EVSE[1].Power": "11000", "EVSE[2].Power": "22000"}

            pending = asyncio.ensure_future(
                api(
                    server,
                    "POST",
                    f"{BASE}/{doc['_id']}/get_variables",
                    json={"keys": ["EVSE[2].Power"], "timeout": 10},
                )
            )
            asked = await answer_next_call(
                ws,
                lambda f: [
                    3,
                    f[1],
                    {
                        "getVariableResult": [
                            {
                                "attributeStatus": "Accepted",
                                "attributeValue": "21000",
                                "component": f[3]["getVariableData"][0]["component"],
                                "variable": f[3]["getVariableData"][0]["variable"],
                            }
                        ]
                    },
                ],
            )
            assert asked[3]["getVariableData"] == [
                {"component": {"name": "EVSE", "evse": {"id": 2}}, "variable": {"name": "Power"}}
            ]
            r = await pending
            assert r.status_code == 201, r.text
        entries = {e["key"]: e["value"] for e in server.get(doc["_id"])["csconfig"]}
        assert entries == {"EVSE[1].Power": "11000", "EVSE[2].Power": "21000"}

    run(scenario())


def test_a_fragmented_message_is_answered_and_bad_utf8_closes_1007(server):
    """The listener reassembles a message sent in parts (the sans-I/O protocol only parses
    frames), and a text frame that is not UTF-8 closes the connection (1007), as RFC 6455
    asks."""

    async def scenario():
        ws, _ = await open_station(server, P16)
        text = json.dumps([2, "frag", "Heartbeat", {}])
        await ws.send([text[:5], text[5:12], text[12:]])  # three frames, one message
        frame = await recv(ws)
        assert frame[:2] == [3, "frag"] and "currentTime" in frame[2]
        await ws.send(json.dumps([2, "after", "Heartbeat", {}]))
        assert (await recv(ws))[:2] == [3, "after"]
        # a text frame whose bytes are not UTF-8, written under the library's checks
        ws.protocol.send_frame(Frame(Opcode.TEXT, b'[2,"x","Heartbeat",{"a":"\xff"}]'))
        ws.send_data()
        with pytest.raises(ConnectionClosed) as e:
            await recv(ws)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1007

    run(scenario())


def test_a_repeated_status_is_answered_without_a_write(server):
    """A StatusNotification that says what the connector last said is only a touch (answered
    at once, without a coroutine): no event is written for it; a change is."""

    async def status_events(sid: str) -> list[dict]:
        query = EventQuery(station_id=sid, types=(events.CONNECTOR_STATUS,), limit=None)
        return await read_async(server.store, lambda tx: tx.list_events(query))

    async def scenario():
        ws, doc = await open_station(server, P16)
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        assert (await call(ws, "StatusNotification", status))[0] == 3
        assert len(await status_events(doc["_id"])) == 1
        for _ in range(20):
            assert (await call(ws, "StatusNotification", status))[0] == 3
        assert (await call(ws, "StatusNotification", {**status, "status": "Preparing"}))[0] == 3
        # answered after its commit: the change is stored, the repeats were not
        assert len(await status_events(doc["_id"])) == 2
        await ws.close()

    run(scenario())
