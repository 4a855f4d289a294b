"""Commands through the admin API, end to end: a real `edrvctl serve` (the `server` fixture),
simulated stations (SimStation) over real OCPP-J, both versions. Each command answers with
its Action and the status the Action stands for (201, 502, 504, 202), or fails before
anything is sent (404, 406, 400, 422)."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading

import httpx
import pytest

from test_simulator import file_server
from timing import scaled, until

BASE = "/v1.1/chargestations"
PROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]
_seq = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}"


class Sim:
    """A SimStation on its own event loop in a thread."""

    def __init__(self, ocpp_url: str, endpoint: str, protocol: str, **kw):
        from edrvctl.simulator import SimStation

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make():
            return SimStation(
                endpoint,
                ocpp_url,
                protocol,
                connectors=1,
                reconnect=False,
                firmware="1.0.0",
                reboot_delay=0.05,
                transfer_step=0.01,
                **kw,
            )

        self.sim = asyncio.run_coroutine_threadsafe(make(), self.loop).result(scaled(10))
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(scaled(10))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(scaled(5))


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(
        base_url=server.api_url,
        timeout=scaled(60),
        headers={"Authorization": f"Bearer {server.token}"},
    ) as c:
        yield c


def online(server, protocol: str, **kw):
    """A booted station of `protocol`: (endpoint, Sim)."""
    endpoint = uniq("act")
    server.create(endpoint, protocol=protocol)
    sim = Sim(server.ocpp_url, endpoint, protocol, **kw)

    def ready():
        doc = server.get(endpoint)
        return doc["online"] and doc.get("bootInfo") and doc["status"] == "Available"

    until(ready, 15, interval=0.05, what=f"{endpoint} online and booted")
    return endpoint, sim


@pytest.fixture(scope="module", params=PROTOCOLS)
def station(request, server):
    endpoint, sim = online(server, request.param)
    yield {"endpoint": endpoint, "protocol": request.param, "sim": sim}
    sim.stop()


def answer(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["ok"] is (status < 400), body
    return body


def ended(api, action: dict, timeout: float = 15) -> dict:
    def done():
        a = answer(api.get(f"/v1.1/actions/{action['_id']}"), 200)["result"]
        return a if a["outcome"] != "pending" else None

    return until(done, timeout, interval=0.05, what=f"action {action['_id']} to end")


def test_short_commands_answer_201_with_the_action(api, station):
    ep, v16 = station["endpoint"], station["protocol"] == "ocpp1.6"
    a = answer(api.post(f"{BASE}/{ep}/clear_cache"), 201)["result"]
    assert (a["type"], a["status"], a["stage"], a["outcome"]) == (
        "clear_cache",
        "completed",
        "done",
        "succeeded",
    )

    body = {"connectorId": 1} if v16 else {"evseId": 1}
    a = answer(api.post(f"{BASE}/{ep}/unlock_connector", json=body), 201)["result"]
    assert a["response_data"]["status"] == "Unlocked"

    a = answer(
        api.post(f"{BASE}/{ep}/change_availability", json={"type": "Operative", **body}), 201
    )["result"]
    assert (a["type"], a["status"]) == ("change_availability", "completed")

    a = answer(api.post(f"{BASE}/{ep}/call", json={"action": "ClearCache", "payload": {}}), 201)
    assert a["result"]["type"] == "call"

    a = answer(
        api.post(f"{BASE}/{ep}/trigger_message", json={"requestedMessage": "Heartbeat"}), 201
    )
    a = ended(api, a["result"])
    assert a["outcome"] == "succeeded", a

    key = "HeartbeatInterval" if v16 else "OCPPCommCtrlr.HeartbeatInterval"
    got = answer(api.patch(f"{BASE}/{ep}/configurations", json={key: 77}), 201)["result"]
    assert [(x["type"], x["outcome"]) for x in got] == [("set_configuration", "succeeded")]
    assert station["sim"].sim.config[key] == "77"
    doc = answer(api.get(f"{BASE}/{ep}"), 200)["result"]
    assert any(e["key"] == key and e["value"] == "77" for e in doc["csconfig"])


def test_long_commands_are_followed_to_their_end(api, station):
    ep, v16 = station["endpoint"], station["protocol"] == "ocpp1.6"
    start = {
        "chargestation": ep,
        "idTag": "TAG-9",
        **({"connectorId": 1} if v16 else {"evseId": 1}),
    }
    a = answer(api.post("/v1.1/sessions", json=start), 201)["result"]
    assert (a["type"], a["status"]) == ("remote_start", "completed")
    a = ended(api, a)
    assert a["outcome"] == "succeeded", a
    tx = a["progress"][0]["transactionId"]

    until(lambda: station["sim"].sim.transactions.get(1), 10, what="the transaction to run")
    a = answer(api.get(f"/v1.1/sessions/{tx}/stop", params={"chargestation": ep}), 201)["result"]
    assert (a["type"], ended(api, a)["outcome"]) == ("remote_stop", "succeeded")

    a = answer(api.post(f"{BASE}/{ep}/reset", json={"hard": True}), 201)["result"]
    assert a["response_data"]["status"] == "Accepted"
    a = ended(api, a)
    assert [p["status"] for p in a["progress"]] == ["Disconnected", "BootNotification"]

    with file_server() as (base, files):
        until(lambda: server_online(api, ep), 10, what="the station back after the reset")
        a = answer(
            api.post(f"{BASE}/{ep}/update_firmware", json={"location": f"{base}/fw.bin"}), 201
        )["result"]
        a = ended(api, a, 30)
        assert (a["outcome"], a["stage"]) == ("succeeded", "done"), a
        until(lambda: server_online(api, ep), 10, what="the station back after the update")
        a = answer(api.post(f"{BASE}/{ep}/get_diagnostics", json={"location": f"{base}/up/"}), 201)[
            "result"
        ]
        a = ended(api, a, 30)
        assert [p["status"] for p in a["progress"]] == ["Uploading", "Uploaded"], a
        assert files


def server_online(api, ep: str) -> bool:
    doc = answer(api.get(f"{BASE}/{ep}"), 200)["result"]
    return bool(doc["online"] and doc["status"] == "Available")


def test_refused_is_502_with_the_action(api, station):
    r = api.post(f"{BASE}/{station['endpoint']}/data_transfer", json={"vendorId": "acme"})
    a = answer(r, 502)["result"]
    assert (a["status"], a["outcome"], a["error"]["code"]) == ("failed", "failed", "Rejected")
    assert a["response_data"]["status"] in ("Rejected", "UnknownVendorId")


def test_callerror_is_502_with_the_action(api, station):
    r = api.post(
        f"{BASE}/{station['endpoint']}/call",
        json={"action": "CancelReservation", "payload": {"reservationId": 1}},
    )
    a = answer(r, 502)["result"]
    assert (a["status"], a["error"]["code"]) == ("failed", "CallError"), a


def test_wait_0_is_202_and_the_action_ends_later(api, station):
    r = api.post(f"{BASE}/{station['endpoint']}/clear_cache", params={"wait": 0})
    a = answer(r, 202)["result"]
    assert (a["status"], a["stage"], a["outcome"]) == ("requested", "queued", "pending")
    assert ended(api, a)["status"] == "completed"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_silent_station_is_504(server, api, protocol):
    ep, sim = online(server, protocol, silent=True)
    try:
        r = api.post(f"{BASE}/{ep}/clear_cache", params={"wait": 1})
        a = answer(r, 504)["result"]
        assert (a["status"], a["outcome"], a["error"]["code"]) == ("failed", "timed_out", "Timeout")
    finally:
        sim.stop()


def test_offline_is_406_and_nothing_is_recorded(server, api):
    ep = uniq("off")
    doc = server.create(ep)
    r = api.post(f"{BASE}/{ep}/reset")
    assert "offline" in answer(r, 406)["message"]
    got = answer(api.get("/v1.1/actions", params={"chargestation": doc["_id"]}), 200)
    assert (got["result"], got["total"]) == ([], 0)


def test_unknown_station_is_404(api):
    answer(api.post(f"{BASE}/{uniq('none')}/clear_cache"), 404)
    answer(api.post("/v1.1/sessions", json={"chargestation": uniq("none"), "idTag": "T"}), 404)


def test_wrong_type_for_the_version_is_400_before_sending(api, station):
    ep, v16 = station["endpoint"], station["protocol"] == "ocpp1.6"
    other = "OnIdle" if v16 else "Soft"
    before = answer(api.get("/v1.1/actions", params={"chargestation": ep}), 200)["total"]
    msg = answer(api.post(f"{BASE}/{ep}/reset", json={"type": other}), 400)["message"]
    assert other in msg and ("Soft or Hard" if v16 else "OnIdle or Immediate") in msg
    trigger = "SignChargingStationCertificate" if v16 else "DiagnosticsStatusNotification"
    answer(api.post(f"{BASE}/{ep}/trigger_message", json={"requestedMessage": trigger}), 400)
    answer(api.post(f"{BASE}/{ep}/call", json={"action": "NoSuchAction", "payload": {}}), 400)
    answer(
        api.post(f"{BASE}/{ep}/call", json={"action": "Reset", "payload": {"type": "Sideways"}}),
        400,
    )
    bad = {"Nope.Key[x": "1"} if not v16 else {"K" * 60: "1"}  # 1.6 keys: at most 50
    answer(api.patch(f"{BASE}/{ep}/configurations", json=bad), 400)
    answer(api.patch(f"{BASE}/{ep}/configurations", json={"": "1"}), 422)
    answer(api.patch(f"{BASE}/{ep}/configurations", json={}), 400)
    # A request that breaks the OCPP schema may leave an Action, failed Invalid, never sent
    got = answer(api.get("/v1.1/actions", params={"chargestation": ep}), 200)
    for a in got["result"][: got["total"] - before]:
        assert (a["stage"], a["error"]["code"]) == ("queued", "Invalid"), a


@pytest.mark.parametrize(
    "path,body",
    [
        ("reset", {"type": "Sideways"}),
        ("reset", {"hard": "yes"}),
        ("unlock_connector", {"connectorId": -1}),
        ("change_availability", {"type": "Broken"}),
        ("change_availability", {}),
        ("trigger_message", {}),
        ("data_transfer", {"vendorId": ""}),
        ("call", {"payload": {}}),
        ("update_firmware", {"location": "not a url"}),
        ("update_firmware", {"location": "http://x/fw", "retrieveDate": "soon"}),
        ("update_firmware", {}),  # neither location nor file
        ("update_firmware", {"file": "not-a-sha256"}),
        ("get_diagnostics", {"location": "not a url"}),
        ("clear_cache", None),  # a body is not needed; the check below is the field
    ],
)
def test_bad_fields_are_422(api, station, path, body):
    if body is None:
        r = api.post(f"{BASE}/{station['endpoint']}/{path}", params={"wait": 500})
        answer(r, 400)
        return
    answer(api.post(f"{BASE}/{station['endpoint']}/{path}", json=body), 422)


def test_actions_list_filters_and_pages(api, station):
    ep = station["endpoint"]
    for _ in range(3):
        answer(api.post(f"{BASE}/{ep}/clear_cache"), 201)
    answer(api.post(f"{BASE}/{ep}/data_transfer", json={"vendorId": "acme"}), 502)
    got = answer(
        api.get(
            "/v1.1/actions",
            params={"chargestation": ep, "type": "clear_cache", "paginate_limit": 2},
        ),
        200,
    )
    assert len(got["result"]) == 2 and got["hasNext"] is True and got["total"] >= 3
    assert {a["type"] for a in got["result"]} == {"clear_cache"}
    failed = answer(api.get("/v1.1/actions", params={"chargestation": ep, "status": "failed"}), 200)
    assert failed["result"] and {a["status"] for a in failed["result"]} == {"failed"}
    one = answer(api.get(f"/v1.1/actions/{got['result'][0]['_id']}"), 200)["result"]
    assert one == got["result"][0]
    answer(api.get("/v1.1/actions/" + "0" * 24), 404)
    answer(api.get("/v1.1/actions", params={"status": "weird"}), 400)
    answer(api.get("/v1.1/actions", params={"nope": 1}), 400)
    answer(api.get("/v1.1/actions", params={"createdAt[$gte]": "yesterday"}), 400)
