"""Running the server (issue 10) and its own hardening (issue 9): one server per store, clear
port errors, how the CLI finds a server and to whom it sends the local token, the URL stations
are told, waiting for readiness, the log (JSON, escaped, admin changes), the open-file limit,
bounded admin connections, and the token file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from conftest import TOKEN, hermetic_env, sqlite_only, start_server
from edrvctl.cli import app
from timing import scaled, until

P16 = "ocpp1.6"
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
_CLEAR = dict.fromkeys(
    ("EDRV_API_URL", "EDRV_TOKEN", "EDRVCTL_CONTEXT", "EDRVCTL_STORE", "_EDRVCTL_COMPLETE")
)
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def cli(env: dict, *args: str):
    r = runner.invoke(app, list(args), env={**_CLEAR, **env}, prog_name="edrvctl")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"edrvctl {' '.join(args)} crashed: {r.exception!r}\n{r.stderr}")
    return r


def serve_cmd(store: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edrvctl",
        "serve",
        "--store",
        str(store),
        "--api-port",
        "0",
        "--ocpp-port",
        "0",
        "--ocpp-host",
        "127.0.0.1",
        *args,
    ]


def run_serve(
    store: Path, env: dict, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess:
    """A `serve` expected to stop by itself (refused at start)."""
    return subprocess.run(
        serve_cmd(store, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def default_store(env: dict) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "edrvctl" / "edrvctl.db"


def listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(d / "server.pem")
    cert.private_key_pem.write_to_path(d / "server.key")
    ca.cert_pem.write_to_path(d / "ca.pem")
    return ca, d


def tls_args(d: Path, client_ca: bool = True) -> list[str]:
    args = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")]
    args += ["--ocpp-tls-port", "0"]
    return args + (["--tls-client-ca", str(d / "ca.pem")] if client_ca else [])


# --------------------------------------------------------------------------- one store, one server


@sqlite_only
def test_a_second_serve_on_the_same_store_is_refused_and_touches_nothing(tmp_path):
    srv = start_server(tmp_path / "a")
    try:
        ep = srv.create()["endpoint"]

        async def scenario():
            async with connect(f"{srv.ocpp_url}/{ep}", subprotocols=[P16]) as ws:
                await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
                await ws.recv()
                assert srv.get(ep)["online"] is True
                discovery = srv.store.parent / "server.json"
                before = discovery.read_text()
                r = await asyncio.to_thread(run_serve, srv.store, srv.env)
                assert r.returncode == 2, r.stderr
                assert "Traceback" not in r.stderr
                (line,) = error_lines(r.stderr)
                assert f"another edrvctl serve (pid {srv.proc.pid}) uses this store" in line
                # the running server's stations stay online, its discovery file stays its own
                assert (await asyncio.to_thread(srv.get, ep))["online"] is True
                assert discovery.read_text() == before
                # and the first one goes on serving
                await ws.send(json.dumps([2, "2", "Heartbeat", {}]))
                assert json.loads(await ws.recv())[0] == 3

        asyncio.run(scenario())
    finally:
        assert srv.stop() == 0
    assert not (srv.store.parent / "server.json").exists()


@sqlite_only
def test_a_server_killed_with_sigkill_does_not_block_the_next_start(tmp_path):
    first = start_server(tmp_path / "a")
    first.stop(signal.SIGKILL)
    assert (first.store.parent / "serve.lock").exists()  # left behind, and harmless
    second = start_server(tmp_path / "b", store=first.store)
    try:
        info = json.loads((first.store.parent / "server.json").read_text())
        assert info["pid"] == second.proc.pid
    finally:
        assert second.stop() == 0


# --------------------------------------------------------------------------- ports in use


@pytest.mark.parametrize("flag", ["--api-port", "--ocpp-port", "--ocpp-tls-port"])
def test_a_port_in_use_is_one_line_naming_port_and_flag_exit_2(tmp_path, pki, flag):
    _, d = pki
    busy = listening_socket()
    try:
        port = busy.getsockname()[1]
        env = {**hermetic_env(tmp_path), "EDRV_TOKEN": TOKEN}
        r = run_serve(
            tmp_path / "s.db", env, "--api-host", "127.0.0.1", *tls_args(d), flag, str(port)
        )
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = error_lines(r.stderr)
    assert f"port {port}" in line and flag in line
    assert not (tmp_path / "server.json").exists()


# --------------------------------------------------------------------------- CLI discovery


@pytest.fixture
def other_store_server(tmp_path):
    """A server on a store that is not the default one, with a token file (no EDRV_TOKEN)."""
    srv = start_server(tmp_path / "srv", token=None, store=tmp_path / "project" / "fleet.db")
    yield srv
    srv.stop()


def test_the_cli_finds_a_server_on_another_store_by_edrvctl_store(other_store_server, tmp_path):
    srv = other_store_server
    env = hermetic_env(tmp_path / "cli")
    doc = srv.create()
    for named in (srv.store, srv.store.parent / "server.json", srv.store.parent):
        r = cli({**env, "EDRVCTL_STORE": str(named)}, "cs", "list", "-q")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.split() == [doc["_id"]]
    # without it, the default store has no server: said so, and nothing is asked of 7780
    r = cli(env, "cs", "list")
    assert r.exit_code == 6, r.stderr
    assert "no edrvctl serve is running" in r.stderr and str(default_store(env)) in r.stderr


def test_serve_takes_its_store_from_edrvctl_store_too(tmp_path):
    env = hermetic_env(tmp_path)
    store = tmp_path / "here" / "fleet.db"
    env["EDRVCTL_STORE"] = str(store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edrvctl", "serve", "--api-port", "0", "--ocpp-port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: (store.parent / "server.json").exists(), what="server.json")
        r = cli(env, "cs", "list", "-o", "json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=scaled(15))
    assert proc.returncode == 0


class Recorder(BaseHTTPRequestHandler):
    """Whatever else might listen on a port: records the Authorization headers it is sent."""

    seen: list[str | None]

    def do_GET(self):
        self.seen.append(self.headers.get("Authorization"))
        body = b'{"ok": false, "message": "nope", "result": null}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def recorder(port: int = 0) -> tuple[ThreadingHTTPServer, list]:
    seen: list = []
    handler = type("R", (Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, seen


def test_the_local_token_is_not_sent_when_no_local_server_runs(tmp_path, monkeypatch):
    """A token file beside the default store, no server running: whatever listens on the
    default URL (here a recorder, standing in for 127.0.0.1:7780) never sees the token."""
    env = hermetic_env(tmp_path)
    token_file = default_store(env).parent / "token"
    token_file.parent.mkdir(parents=True, mode=0o700)
    token_file.write_text("local-secret-token\n")
    token_file.chmod(0o600)
    httpd, seen = recorder()
    try:
        from edrvctl.cli import settings

        monkeypatch.setattr(settings, "DEFAULT_API_URL", f"http://127.0.0.1:{httpd.server_port}")
        r = cli(env, "cs", "list")
    finally:
        httpd.shutdown()
    assert r.exit_code == 6, r.stderr
    assert "no edrvctl serve is running" in r.stderr
    assert not any(h and "local-secret-token" in h for h in seen), seen


def test_a_stale_server_file_does_not_send_the_token_to_its_old_port(tmp_path):
    """The server was killed (-9): its server.json remains and names a port that someone else
    now listens on. The token is not sent there."""
    env = hermetic_env(tmp_path)
    srv = start_server(tmp_path / "srv", token=None, store=default_store(env), env=env)
    srv.stop(signal.SIGKILL)
    port = int(srv.api_url.rsplit(":", 1)[1])
    httpd, seen = recorder(port)
    try:
        r = cli(env, "cs", "list")
    finally:
        httpd.shutdown()
    assert r.exit_code == 6, r.stderr
    assert "no edrvctl serve is running" in r.stderr
    assert not any(h and srv.token in h for h in seen), seen


def test_api_url_to_the_local_server_finds_its_token_and_only_there(tmp_path):
    env = hermetic_env(tmp_path)
    srv = start_server(tmp_path / "srv", token=None, store=default_store(env), env=env)
    try:
        r = cli(env, "--api-url", srv.api_url, "cs", "list", "-o", "json")
        assert r.exit_code == 0, r.stderr
        r = cli({**env, "EDRV_API_URL": srv.api_url + "/"}, "cs", "list", "-o", "json")
        assert r.exit_code == 0, r.stderr
        # the same server by another name is another URL: no token, and the error says where
        # the token was looked for and why it was not sent
        other = srv.api_url.replace("127.0.0.1", "localhost")
        r = cli(env, "--api-url", other, "cs", "list")
        assert r.exit_code == 4, r.stderr
        assert "EDRV_TOKEN" in r.stderr and srv.api_url in r.stderr and other in r.stderr
        assert srv.token not in r.stderr
        # a wrong explicit token says where it came from
        r = cli({**env, "EDRV_TOKEN": "wrong"}, "cs", "list")
        assert r.exit_code == 4 and "EDRV_TOKEN" in r.stderr
    finally:
        srv.stop()


def test_a_server_file_that_is_not_ours_is_not_believed(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    env = hermetic_env(tmp_path)
    srv = start_server(tmp_path / "srv", token=None, store=default_store(env), env=env)
    try:
        discovery = srv.store.parent / "server.json"
        os.chown(discovery, 4242, 4242)
        r = cli(env, "cs", "list")
        assert r.exit_code == 6, r.stderr
        assert "another user" in r.stderr and str(discovery) in r.stderr
    finally:
        srv.stop()


# --------------------------------------------------------------------------- what stations are told


def test_public_url_is_the_connection_url(tmp_path):
    srv = start_server(tmp_path, "--public-url", "ws://cs.example.com:9000/ocpp/")
    try:
        doc = srv.create()
        assert doc["connection_url"] == "ws://cs.example.com:9000/ocpp"
        with srv.api() as c:
            listed = c.get("/v1.1/chargestations").json()["result"]
        assert {d["connection_url"] for d in listed} == {"ws://cs.example.com:9000/ocpp"}
        env = {**hermetic_env(tmp_path / "cli"), "EDRV_API_URL": srv.api_url, "EDRV_TOKEN": TOKEN}
        r = cli(env, "cs", "create", f"pub-{os.getpid()}", "-o", "json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["connection_url"] == "ws://cs.example.com:9000/ocpp"
        # where it listens has not changed
        assert "edrvctl serve: api" in srv.logs() and srv.ocpp_url.startswith("ws://127.0.0.1:")
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--public-url", "http://cs.example.com"),
        ("--public-url", "cs.example.com:9000"),
        ("--public-url", "ws://cs.example.com:99999"),
        ("--public-tls-url", "wss://cs.example.com"),  # no TLS listener
    ],
)
def test_a_bad_public_url_is_a_usage_error(tmp_path, flag, value):
    r = run_serve(tmp_path / "s.db", hermetic_env(tmp_path), flag, value)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert flag in error_lines(r.stderr)[0]


def test_every_address_without_public_url_warns_and_uses_the_machine_name(tmp_path):
    srv = start_server(tmp_path, "--ocpp-host", "0.0.0.0")
    try:
        port = int(srv.ocpp_url.rsplit(":", 1)[1])
        expected = f"ws://{socket.gethostname()}:{port}"
        assert srv.create()["connection_url"] == expected
        warning = next(line for line in srv.logs().splitlines() if "--public-url" in line)
        assert "WARNING" in warning and expected in warning
    finally:
        srv.stop()


def test_tls_profiles_are_told_the_wss_url(tmp_path, pki):
    _, d = pki
    srv = start_server(tmp_path, *tls_args(d))
    try:
        tls_url = next(w for w in srv.logs().split() if w.startswith("wss://")).split("/<")[0]
        plain, p2, p3 = (
            srv.create(),
            srv.create(security={"type": "tls_basic_auth"}),
            srv.create(security={"type": "tls_client_cert"}),
        )
        assert plain["connection_url"] == srv.ocpp_url
        assert p2["connection_url"] == p3["connection_url"] == tls_url
        with srv.api() as c:
            listed = c.get("/v1.1/chargestations", params={"paginate_limit": 1000}).json()
        by_ep = {doc["endpoint"]: doc["connection_url"] for doc in listed["result"]}
        assert by_ep[plain["endpoint"]] == srv.ocpp_url
        assert by_ep[p2["endpoint"]] == by_ep[p3["endpoint"]] == tls_url
    finally:
        srv.stop()


def test_public_tls_url(tmp_path, pki):
    _, d = pki
    srv = start_server(tmp_path, *tls_args(d), "--public-tls-url", "wss://cs.example.com")
    try:
        assert srv.create(security={"type": "tls_basic_auth"})["connection_url"] == (
            "wss://cs.example.com"
        )
        assert srv.create()["connection_url"] == srv.ocpp_url
    finally:
        srv.stop()


def test_a_tls_profile_is_refused_where_it_could_never_connect(tmp_path, pki):
    _, d = pki
    plain = start_server(tmp_path / "plain")
    no_ca = start_server(tmp_path / "no-ca", *tls_args(d, client_ca=False))
    try:
        env = {**hermetic_env(tmp_path / "cli"), "EDRV_TOKEN": TOKEN}
        for kind in ("tls_basic_auth", "tls_client_cert"):
            with plain.api() as c:
                r = c.post(
                    "/v1.1/chargestations",
                    json={"endpoint": f"x-{kind}", "security": {"type": kind}},
                )
            assert r.status_code == 409 and r.json()["ok"] is False
            assert "--tls-cert" in r.json()["message"]
            res = cli(
                {**env, "EDRV_API_URL": plain.api_url},
                "cs",
                "create",
                f"y-{kind}",
                "--security",
                kind,
            )
            assert res.exit_code == 5 and "TLS listener" in res.stderr
        with no_ca.api() as c:
            r = c.post(
                "/v1.1/chargestations",
                json={"endpoint": "z3", "security": {"type": "tls_client_cert"}},
            )
            assert r.status_code == 409 and "--tls-client-ca" in r.json()["message"]
        assert no_ca.create(security={"type": "tls_basic_auth"})["connection_url"].startswith(
            "wss://"
        )
    finally:
        plain.stop()
        no_ca.stop()


# --------------------------------------------------------------------------- readiness


def readme_ci_line() -> str:
    readme = (ROOT / "README.md").read_text()
    (line,) = [m.group(1) for m in re.finditer(r"^In CI[^`]*`([^`]+)`", readme, re.MULTILINE)]
    return line


def test_the_readme_ci_one_liner_waits_for_the_server(tmp_path):
    """The README's line, run as written (with ports that are free here), many times: never a
    race between the server starting and the command after it."""
    line = readme_ci_line()
    assert "wait-ready" in line
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edrvctl"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m edrvctl "$@"\n')
    shim.chmod(0o755)
    # the only change: free ports instead of 7780/9000, which may be taken on this machine
    script = line.replace(
        "edrvctl serve", "edrvctl serve --api-port 0 --ocpp-port 0 --ocpp-host 127.0.0.1", 1
    )
    for i in range(3):
        env = hermetic_env(tmp_path / f"run{i}")
        env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(ROOT))
        r = subprocess.run(
            ["bash", "-c", f"{script}; s=$?; kill %1; wait; exit $s"],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ENDPOINT\t"), r.stdout  # cs list's header: it answered


def test_wait_ready_times_out_with_exit_7_when_nothing_starts(tmp_path):
    start = time.monotonic()
    r = cli(hermetic_env(tmp_path), "wait-ready", "--timeout", str(scaled(0.5)))
    assert r.exit_code == 7, r.stderr
    assert "not ready" in r.stderr and "no edrvctl serve is running" in r.stderr
    assert time.monotonic() - start < scaled(10)


def test_wait_ready_returns_once_the_api_answers(server, tmp_path):
    env = {**hermetic_env(tmp_path), "EDRV_API_URL": server.api_url, "EDRV_TOKEN": server.token}
    r = cli(env, "wait-ready", "--timeout", str(scaled(10)))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and server.api_url in r.stderr
    r = cli({**env, "EDRV_TOKEN": "wrong"}, "wait-ready", "--timeout", str(scaled(10)))
    assert r.exit_code == 4


# --------------------------------------------------------------------------- the log


def test_json_log_is_one_object_per_line_with_utc_times_and_admin_changes(tmp_path):
    srv = start_server(tmp_path, "--log-format", "json")
    try:
        doc = srv.create(security={"type": "basic_auth"})
        ep = doc["endpoint"]
        with srv.api() as c:
            assert c.patch(f"/v1.1/chargestations/{ep}", json={"active": False}).status_code == 200
            assert c.patch(f"/v1.1/chargestations/{ep}", json={"active": True}).status_code == 200
            assert c.patch(f"/v1.1/chargestations/{ep}", json={"location": "x"}).status_code == 200
            r = c.patch(f"/v1.1/chargestations/{ep}/reset_password")
            new_password = r.json()["result"]["password"]
            assert c.delete(f"/v1.1/chargestations/{ep}").status_code == 200
        # uvicorn's own complaint about a broken request
        port = int(srv.api_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as s:
            s.sendall(b"NOT HTTP\r\n\r\n")
            s.recv(1000)
        until(lambda: "Invalid HTTP request" in srv.logs(), what="uvicorn's line")
    finally:
        assert srv.stop() == 0
    entries = [json.loads(line) for line in srv.logs().splitlines()]  # every line is JSON
    for e in entries:
        assert ISO_Z.match(e["time"]), e
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    admin = [e["message"] for e in entries if e["logger"] == "edrvctl.api"]
    for words in (
        "created",
        "deactivated",
        "activated",
        "updated (location)",
        "new password",
        "deleted",
    ):
        assert any(ep in m and words in m for m in admin), (words, admin)
    assert doc["password"] not in srv.logs() and new_password not in srv.logs()
    assert TOKEN not in srv.logs()


def record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("edrvctl.ocpp", logging.WARNING, __file__, 1, msg, args, exc_info)


FORGED = "ab\n2024-01-01T00:00:00.000Z INFO    edrvctl.api: admin did it\x1b[2J\u2028x"


def test_log_formatters_escape_control_characters():
    from edrvctl.server.logs import JsonFormatter, TextFormatter

    try:
        raise ValueError(FORGED)
    except ValueError:
        exc = sys.exc_info()
    text = TextFormatter().format(record("refused %s", FORGED))
    assert "\n" not in text and "\x1b" not in text and "\u2028" not in text
    assert "ab\\n2024" in text
    assert ISO_Z.match(text.split(" ")[0])
    tb = TextFormatter().format(record("failed", exc_info=exc)).split("\n")
    assert tb[0].endswith("failed")
    assert all(line.startswith("    ") for line in tb[1:])  # no line passes for a record
    assert not any("\x1b" in line for line in tb)
    entry = json.loads(JsonFormatter().format(record("refused %s", FORGED, exc_info=exc)))
    assert "\x1b" not in entry["message"] and "\n" not in entry["message"]
    assert "\x1b" not in entry["exc"] and ISO_Z.match(entry["time"])


def test_a_url_path_cannot_forge_a_text_log_line(server):
    port = int(server.ocpp_url.rsplit(":", 1)[1])
    path = "/x%0A2024-01-01T00:00:00.000Z%20INFO%20forged%1B%5B2J"
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n".encode()
        )
        assert b" 404 " in s.recv(1000)
    until(lambda: "forged" in server.logs(), what="the refusal in the log")
    assert not any(line.startswith("2024-01-01") for line in server.logs().splitlines())
    assert "\x1b" not in server.logs()


# --------------------------------------------------------------------------- open files


def test_serve_raises_its_open_file_limit(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip("the hard limit is below what this test needs")

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    srv = start_server(tmp_path, preexec_fn=low)
    try:
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        soft_now = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert soft_now > 64
        assert "open-file limit raised from 64" in srv.logs()
        # and it serves more connections at once than the old soft limit allowed
        port = int(srv.api_url.rsplit(":", 1)[1])
        request = (
            f"GET /v1.1/chargestations?paginate_limit=1 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {srv.token}\r\n\r\n"
        ).encode()
        socks = [
            socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) for _ in range(120)
        ]
        try:
            for s in socks:
                s.sendall(request)
            for s in socks:
                assert s.recv(100).startswith(b"HTTP/1.1 200")
        finally:
            for s in socks:
                s.close()
    finally:
        srv.stop()


def test_a_low_hard_open_file_limit_is_said(tmp_path):
    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))

    srv = start_server(tmp_path, preexec_fn=low)
    try:
        warning = next(line for line in srv.logs().splitlines() if "open-file limit is" in line)
        assert "WARNING" in warning and "512" in warning and "ulimit" in warning
    finally:
        srv.stop()


# --------------------------------------------------------------------------- admin connections


def test_the_admin_api_closes_idle_and_trickling_connections(server):
    from edrvctl.server.api import API_KEEP_ALIVE, API_READ_TIMEOUT

    port = int(server.api_url.rsplit(":", 1)[1])

    def closed_within(s: socket.socket, seconds: float, trickle: bytes = b"") -> float:
        """Seconds until the server closes `s` (it reads what it is sent, then EOF)."""
        start = time.monotonic()
        s.settimeout(0.5)
        for i in range(int(scaled(seconds) / 0.5) + 1):
            if trickle and i < len(trickle):
                try:
                    s.sendall(trickle[i : i + 1])
                except OSError:
                    return time.monotonic() - start
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - start
            if data == b"":
                return time.monotonic() - start
        raise AssertionError(f"still open after {scaled(seconds)} s")

    idle = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    kept = socket.create_connection(("127.0.0.1", port))
    kept.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    results: dict[str, float] = {}
    threads = [
        threading.Thread(
            target=lambda: results.update(idle=closed_within(idle, API_READ_TIMEOUT + 5))
        ),
        threading.Thread(
            target=lambda: results.update(
                slow=closed_within(
                    slow, API_READ_TIMEOUT + 5, b"GET /openapi.json HTTP/1.1\r\nX-a: " + b"a" * 60
                )
            )
        ),
        threading.Thread(
            target=lambda: results.update(kept=closed_within(kept, API_KEEP_ALIVE + 5))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (idle, slow, kept):
        s.close()
    assert set(results) == {"idle", "slow", "kept"}


def test_two_authorization_headers_are_a_400_envelope(server):
    good = f"Bearer {server.token}"
    for pair in ((good, good), ("Bearer wrong", good), (good, "Bearer wrong")):
        headers = httpx.Headers([("Authorization", pair[0]), ("Authorization", pair[1])])
        r = httpx.get(f"{server.api_url}/v1.1/chargestations", headers=headers, timeout=scaled(10))
        assert r.status_code == 400, r.text
        assert r.json() == {"ok": False, "message": r.json()["message"], "result": None}
        assert "Authorization" in r.json()["message"]


# --------------------------------------------------------------------------- the token file


def test_the_token_file_is_0600_in_a_0700_folder(tmp_path):
    store = tmp_path / "new" / "fleet.db"
    srv = start_server(tmp_path / "srv", token=None, store=store)
    try:
        assert stat.S_IMODE((store.parent / "token").stat().st_mode) == 0o600
        assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    finally:
        srv.stop()


def planted(folder: Path, how: str) -> Path:
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    token = folder / "token"
    if how == "symlink":
        target = folder / "elsewhere"
        target.write_text("planted-token\n")
        target.chmod(0o600)
        token.symlink_to(target)
        return token
    token.write_text("" if how == "empty" else "planted-token\n")
    token.chmod(0o644 if how == "readable" else 0o600)
    if how == "other-owner":
        os.chown(token, 4242, 4242)
    return token


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("readable", "open to other users"),
        ("empty", "empty"),
        ("symlink", "symbolic link"),
        ("other-owner", "another user"),
    ],
)
def test_a_planted_token_file_is_refused(tmp_path, how, words):
    if how == "other-owner" and os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    store = tmp_path / "shared" / "fleet.db"
    token = planted(store.parent, how)
    before = (
        token.lstat().st_mode,
        token.lstat().st_uid,
        os.readlink(token) if token.is_symlink() else token.read_text(),
    )
    r = run_serve(store, hermetic_env(tmp_path))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = error_lines(r.stderr)
    assert words in line and str(token) in line
    after = (
        token.lstat().st_mode,
        token.lstat().st_uid,
        os.readlink(token) if token.is_symlink() else token.read_text(),
    )
    assert after == before  # neither trusted nor overwritten
    assert not (store.parent / "server.json").exists()


def test_tls_listener_is_used_by_a_real_tls_station(tmp_path, pki):
    """The wss URL a TLS-profile station is told is one it can connect to."""
    ca, d = pki
    srv = start_server(tmp_path, *tls_args(d))
    try:
        doc = srv.create(security={"type": "tls_client_cert"})
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ca.issue_cert(doc["endpoint"], common_name=doc["endpoint"]).configure_cert(ctx)

        async def scenario():
            async with connect(
                f"{doc['connection_url']}/{doc['endpoint']}", subprotocols=[P16], ssl=ctx
            ) as ws:
                await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
                assert json.loads(await ws.recv())[0] == 3

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_admin_connections_past_the_limit_get_a_503_envelope(server):
    from edrvctl.server.api import API_MAX_CONNECTIONS

    port = int(server.api_url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(API_MAX_CONNECTIONS)]
    try:
        # the server has accepted them all (one answered request proves the last is in)
        held[-1].sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        held[-1].settimeout(scaled(10))
        assert held[-1].recv(100).startswith(b"HTTP/1.1 200")
        r = httpx.get(f"{server.api_url}/openapi.json", timeout=scaled(10))
        assert r.status_code == 503
        assert r.json() == {"ok": False, "message": r.json()["message"], "result": None}
    finally:
        for s in held:
            s.close()
    until(
        lambda: httpx.get(f"{server.api_url}/openapi.json", timeout=scaled(10)).status_code == 200,
        what="the API to serve again",
    )


def test_a_refusal_at_start_is_a_json_line_too_with_log_format_json(tmp_path):
    busy = listening_socket()
    try:
        port = busy.getsockname()[1]
        env = {**hermetic_env(tmp_path), "EDRV_TOKEN": TOKEN}
        r = run_serve(tmp_path / "s.db", env, "--log-format", "json", "--api-port", str(port))
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    entries = [json.loads(line) for line in r.stderr.splitlines()]
    (error,) = [e for e in entries if e["level"] == "ERROR"]
    assert f"port {port}" in error["message"] and "--api-port" in error["message"]


# --------------------------------------------------------------------------- a PostgreSQL store


def test_serve_on_postgresql_takes_its_token_from_the_environment_or_a_file(tmp_path, pg_url):
    env = hermetic_env(tmp_path)
    r = run_serve(pg_url, env)  # no token beside a database: refused, saying where it comes from
    assert r.returncode == 2, r.stderr
    (line,) = error_lines(r.stderr)
    assert "EDRV_TOKEN" in line and "--token-file" in line
    assert not default_store(env).parent.joinpath("token").exists()

    secret = pg_url.replace("postgres@", "postgres:s3cret@")  # trust auth: any password passes
    token_file = tmp_path / "shared" / "token"
    srv = start_server(tmp_path / "a", "--token-file", str(token_file), token=None, store=secret)
    try:
        made = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        with httpx.Client(base_url=srv.api_url, headers={"Authorization": f"Bearer {made}"}) as c:
            assert c.get("/v1.1/chargestations").status_code == 200
        info = json.loads((default_store(srv.env).parent / "server.json").read_text())
        assert info["store"] == pg_url.replace("postgres@", "postgres:***@")
        assert "s3cret" not in srv.logs()
    finally:
        assert srv.stop() == 0
    # a second node on the same database and token file serves the same data
    other = start_server(tmp_path / "b", "--token-file", str(token_file), token=None, store=pg_url)
    try:
        with httpx.Client(base_url=other.api_url, headers={"Authorization": f"Bearer {made}"}) as c:
            assert c.get("/v1.1/chargestations").status_code == 200
    finally:
        assert other.stop() == 0
