"""Security profiles and limits, end to end: a real server, real websockets, real TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
import time

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from conftest import hermetic_env, start_server
from timing import scaled, until_async

P16 = "ocpp1.6"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def try_connect(
    url: str,
    endpoint: str,
    headers: dict | None = None,
    tls: ssl.SSLContext | None = None,
    protocol: str = P16,
):
    """Connect, send a Heartbeat, return ("ok", reply) or ("refused", status, body, headers)."""
    try:
        async with connect(
            f"{url}/{endpoint}",
            subprotocols=[protocol],
            additional_headers=headers or {},
            ssl=tls,
            open_timeout=scaled(10),
        ) as ws:
            await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
            return ("ok", json.loads(await ws.recv()))
    except InvalidStatus as e:
        return (
            "refused",
            e.response.status_code,
            bytes(e.response.body).decode(),
            e.response.headers,
        )


def refused(result, status: int, words: str):
    assert result[0] == "refused", result
    assert result[1] == status, result
    assert words in result[2], result


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    server_cert.cert_chain_pems[0].write_to_path(d / "server.pem")
    server_cert.private_key_pem.write_to_path(d / "server.key")
    ca.cert_pem.write_to_path(d / "ca.pem")
    return ca, d


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    _ca, d = pki
    srv = start_server(
        tmp_path_factory.mktemp("tls"),
        "--tls-cert",
        str(d / "server.pem"),
        "--tls-key",
        str(d / "server.key"),
        "--tls-client-ca",
        str(d / "ca.pem"),
        "--ocpp-tls-port",
        "0",
    )
    srv.tls_url = next(w for w in srv.logs().split() if w.startswith("wss://"))
    yield srv
    srv.stop()


def client_tls(ca: trustme.CA, cert_for: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert_for:
        ca.issue_cert(cert_for, common_name=cert_for).configure_cert(ctx)
    return ctx


# --- profile 1: basic auth ---


def test_basic_auth_accepts_the_right_password_only(server):
    doc = server.create(security={"type": "basic_auth"})
    ep, password = doc["endpoint"], doc["password"]
    assert doc["security"] == {"type": "basic_auth", "profile": 1}
    assert len(password) >= 16

    async def scenario():
        ok = await try_connect(server.ocpp_url, ep, basic(ep, password))
        assert ok[0] == "ok" and ok[1][0] == 3
        no_auth = await try_connect(server.ocpp_url, ep)
        refused(no_auth, 401, "Basic authentication required")
        assert no_auth[3]["WWW-Authenticate"].startswith("Basic")
        refused(
            await try_connect(server.ocpp_url, ep, basic(ep, password + "x")), 401, "wrong password"
        )
        refused(
            await try_connect(server.ocpp_url, ep, basic("someone-else", password)),
            401,
            "username must be the endpoint",
        )
        refused(
            await try_connect(server.ocpp_url, ep, {"Authorization": "Basic !!!"}),
            401,
            "Basic authentication required",
        )

    asyncio.run(scenario())
    # the password is never shown again, and no hash is ever shown
    again = server.get(ep)
    assert "password" not in again and "hash" not in json.dumps(again)
    logs = server.logs()
    assert password not in logs and "wrong password" in logs


def test_rotate_password_retires_the_old_one_and_drops_the_station(server):
    doc = server.create(security={"type": "basic_auth"})
    ep, old = doc["endpoint"], doc["password"]

    async def scenario():
        async with connect(
            f"{server.ocpp_url}/{ep}",
            subprotocols=[P16],
            additional_headers=basic(ep, old),
            open_timeout=scaled(10),
        ) as ws:
            with server.api() as api:
                r = await asyncio.to_thread(api.patch, f"/v1.1/chargestations/{ep}/reset_password")
            assert r.status_code == 200, r.text
            new = r.json()["result"]["password"]
            assert new != old
            with pytest.raises(ConnectionClosed):  # the old session is closed at once
                await asyncio.wait_for(ws.recv(), scaled(5))
        refused(await try_connect(server.ocpp_url, ep, basic(ep, old)), 401, "wrong password")
        assert (await try_connect(server.ocpp_url, ep, basic(ep, new)))[0] == "ok"

    asyncio.run(scenario())


def test_rotate_password_of_a_station_without_one_is_refused(server):
    ep = server.create()["endpoint"]
    with server.api() as api:
        r = api.patch(f"/v1.1/chargestations/{ep}/reset_password")
    assert r.status_code == 400 and "no password" in r.json()["message"]


def test_cli_create_shows_the_password_once_and_rotates_it(server, cli_env):
    from typer.testing import CliRunner

    from edrvctl.cli import app

    runner = CliRunner()
    ep = f"cli-sec-{time.monotonic_ns()}"
    r = runner.invoke(
        app,
        ["cs", "create", ep, "--security", "basic_auth", "-o", "json"],
        env=cli_env,
        prog_name="edrvctl",
    )
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["password"]
    r = runner.invoke(app, ["cs", "inspect", ep, "-o", "json"], env=cli_env)
    assert "password" not in json.loads(r.stdout)
    r = runner.invoke(app, ["cs", "rotate-password", ep], env=cli_env)
    assert r.exit_code == 2 and "--yes" in r.stderr  # disruptive: needs confirmation
    r = runner.invoke(app, ["cs", "rotate-password", ep, "--yes"], env=cli_env)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"chargestation/{ep} password rotated"
    assert "shown once" in r.stderr and created["password"] not in r.stderr


# --- profiles 2 and 3: TLS ---


def test_tls_profiles_accept_the_right_station_and_refuse_the_wrong_one(tls_server, pki):
    ca, _ = pki
    srv = tls_server
    p2 = srv.create(security={"type": "tls_basic_auth"})
    p3 = srv.create(security={"type": "tls_client_cert"})
    p0 = srv.create()
    assert p2["security"]["profile"] == 2 and p3["security"]["profile"] == 3
    assert "password" not in p3

    async def scenario():
        ep2, pw2 = p2["endpoint"], p2["password"]
        # profile 2: TLS and the password
        assert (await try_connect(srv.tls_url, ep2, basic(ep2, pw2), client_tls(ca)))[0] == "ok"
        refused(await try_connect(srv.ocpp_url, ep2, basic(ep2, pw2)), 403, "requires TLS")
        refused(
            await try_connect(srv.tls_url, ep2, basic(ep2, "nope"), client_tls(ca)),
            401,
            "wrong password",
        )
        refused(
            await try_connect(srv.tls_url, ep2, None, client_tls(ca)),
            401,
            "Basic authentication required",
        )
        # profile 3: a client certificate for exactly this endpoint
        ep3 = p3["endpoint"]
        assert (await try_connect(srv.tls_url, ep3, None, client_tls(ca, ep3)))[0] == "ok"
        refused(
            await try_connect(srv.tls_url, ep3, None, client_tls(ca, "another-station")),
            403,
            "for 'another-station'",
        )
        refused(
            await try_connect(srv.tls_url, ep3, None, client_tls(ca)),
            403,
            "client certificate is required",
        )
        refused(await try_connect(srv.ocpp_url, ep3), 403, "requires TLS")
        # a certificate from a CA the server does not trust fails the TLS handshake itself
        other = trustme.CA()
        ctx = client_tls(ca)
        other.issue_cert(ep3, common_name=ep3).configure_cert(ctx)
        with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
            await try_connect(srv.tls_url, ep3, None, ctx)
        # profile 0 may use either
        assert (await try_connect(srv.tls_url, p0["endpoint"], None, client_tls(ca)))[0] == "ok"
        assert (await try_connect(srv.ocpp_url, p0["endpoint"]))[0] == "ok"

    asyncio.run(scenario())
    assert p2["password"] not in srv.logs()


# --- the admin API ---


def test_api_refuses_requests_without_the_token(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
        r = httpx.get(f"{server.api_url}/v1.1/chargestations", headers=headers, timeout=scaled(10))
        assert r.status_code == 401 and r.json()["ok"] is False


def test_serve_refuses_a_public_api_without_tls(tmp_path):
    env = hermetic_env(tmp_path)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edrvctl",
            "serve",
            "--store",
            str(tmp_path / "s.db"),
            "--api-host",
            "0.0.0.0",
            "--api-port",
            "0",
            "--ocpp-port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert r.returncode == 2
    assert "without TLS" in r.stderr and "--api-tls" in r.stderr


def test_api_over_tls(tmp_path, pki):
    _ca, d = pki
    srv = start_server(
        tmp_path,
        "--tls-cert",
        str(d / "server.pem"),
        "--tls-key",
        str(d / "server.key"),
        "--api-tls",
        "--ocpp-tls-port",
        "0",
    )
    try:
        assert srv.api_url.startswith("https://")
        with httpx.Client(
            verify=ssl.create_default_context(cafile=str(d / "ca.pem")), timeout=scaled(10)
        ) as c:
            r = c.get(
                f"{srv.api_url}/v1.1/chargestations",
                headers={"Authorization": f"Bearer {srv.token}"},
            )
        assert r.status_code == 200 and r.json()["ok"] is True
    finally:
        srv.stop()


def test_the_token_is_not_in_the_process_list(server):
    with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
        args = f.read().decode()
    assert server.token not in args


# --- limits ---


def test_limits(tmp_path):
    srv = start_server(
        tmp_path, "--max-rate", "5", "--max-connections-per-address", "3", "--max-frame", "4096"
    )
    try:
        eps = [srv.create()["endpoint"] for _ in range(4)]

        async def scenario():
            async with connect(
                f"{srv.ocpp_url}/{eps[0]}", subprotocols=[P16], open_timeout=scaled(10)
            ) as ws:
                # a burst of 10 (twice the rate) is answered; beyond it, GenericError at once
                codes = []
                for i in range(40):
                    await ws.send(json.dumps([2, str(i), "Heartbeat", {}]))
                    frame = json.loads(await ws.recv())
                    codes.append(frame[0] if frame[0] == 3 else frame[2])
                assert codes[:10] == [3] * 10
                assert "GenericError" in codes
                # tokens come back (5/s): before long a Heartbeat is answered again
                tries = iter(range(10**6))

                async def answered() -> bool:
                    await ws.send(json.dumps([2, f"again-{next(tries)}", "Heartbeat", {}]))
                    frame = json.loads(await ws.recv())
                    assert frame[0] == 3 or frame[2] == "GenericError", frame
                    return frame[0] == 3

                await until_async(
                    answered, timeout=1, interval=0.05, what="a Heartbeat answered after the burst"
                )
                # a frame over --max-frame closes the connection (1009: too big)
                await ws.send(
                    json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 10000}])
                )
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1009
            # three connections from one address at most
            conns = [
                await connect(f"{srv.ocpp_url}/{ep}", subprotocols=[P16], open_timeout=scaled(10))
                for ep in eps[:3]
            ]
            try:
                refused(await try_connect(srv.ocpp_url, eps[3]), 503, "too many connections")
            finally:
                for c in conns:
                    await c.close()

        asyncio.run(scenario())
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_json_logs_are_one_object_per_line(tmp_path):
    srv = start_server(tmp_path, "--log-format", "json")
    try:
        ep = srv.create(security={"type": "basic_auth"})["endpoint"]
        asyncio.run(try_connect(srv.ocpp_url, ep, basic(ep, "wrong")))
        asyncio.run(try_connect(srv.ocpp_url, ep, basic(ep, "wrong")))  # same: logged once
    finally:
        assert srv.stop() == 0
    lines = [json.loads(line) for line in srv.logs().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    assert any(e["message"].startswith("edrvctl serve: api ") for e in lines)
    refusals = [e for e in lines if "wrong password" in e["message"]]
    assert len(refusals) == 1 and refusals[0]["level"] == "WARNING"
