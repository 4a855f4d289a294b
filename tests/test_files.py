"""Firmware and diagnostics with nothing else installed: serve's files listener. A firmware
file uploaded through the admin API (`cs update-firmware --file`) is downloaded by the
station from the files listener; diagnostics without a location are uploaded by the station
to a one-time URL there, and `cs diagnostics -O FILE` saves them. Real server, SimStations
of both versions."""

from __future__ import annotations

import hashlib
import json
import socket

import httpx
import pytest

from conftest import TOKEN, hermetic_env, start_server
from test_api_actions import BASE, answer, online, server_online
from test_cli import cli, ok
from timing import scaled, until

PROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]


def files_url(server) -> str:
    return json.loads((server.folder / "server.json").read_text())["files_url"]


@pytest.fixture(scope="module")
def api(server):
    with server.api() as c:
        c.timeout = httpx.Timeout(scaled(60))
        yield c


@pytest.fixture(scope="module", params=PROTOCOLS)
def station(request, server):
    endpoint, sim = online(server, request.param)
    yield {"endpoint": endpoint, "protocol": request.param, "sim": sim}
    sim.stop()


def test_firmware_from_a_local_file_is_installed(server, api, station, cli_env, tmp_path):
    ep = station["endpoint"]
    fw = tmp_path / "fw-2.1.bin"
    fw.write_bytes(b"\x7fFIRMWARE" + bytes(range(256)) * 400)
    r = ok(cli_env, "cs", "update-firmware", ep, "--file", str(fw), "--wait", "--yes", "-o", "json")
    a = json.loads(r.stdout)
    assert (a["outcome"], a["stage"]) == ("succeeded", "done"), a
    sha = hashlib.sha256(fw.read_bytes()).hexdigest()
    assert a["data"]["url"] == f"{files_url(server)}/files/firmware/{sha}/fw-2.1.bin"
    assert "Installed" in [p["status"] for p in a["progress"]]
    assert a["progress"][-1] == {
        **a["progress"][-1],
        "status": "BootNotification",
        "firmwareVersion": "1.0.1",
    }
    # the file is listed, and the station-facing URL serves it without any token
    listed = answer(api.get("/v1.1/files"), 200)["result"]
    assert any(f["_id"] == sha and f["size"] == fw.stat().st_size for f in listed)
    got = httpx.get(a["data"]["url"], timeout=scaled(10))
    assert got.status_code == 200 and got.content == fw.read_bytes()
    until(lambda: server_online(api, ep), 10, what="the station back after the update")


def test_diagnostics_to_serve_end_on_the_admins_disk(server, api, station, cli_env, tmp_path):
    ep = station["endpoint"]
    until(lambda: server_online(api, ep), 10, what="the station online")
    out = tmp_path / "diag.txt"
    r = ok(cli_env, "cs", "diagnostics", ep, "-O", str(out), "-o", "json")
    a = json.loads(r.stdout)
    assert (a["outcome"], a["stage"]) == ("succeeded", "done"), a
    statuses = [p["status"] for p in a["progress"]]
    assert "Uploaded" in statuses and "FileReceived" in statuses, a
    data = out.read_bytes()
    assert data and a["file"]["size"] == len(data)
    assert a["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert a["file"]["name"].startswith(ep)
    # the upload URL was one-time: using it again is refused
    location = a["data"]["url"]
    assert location.startswith(f"{files_url(server)}/uploads/")
    r2 = httpx.put(location + "again.txt", content=b"x", timeout=scaled(10))
    assert r2.status_code == 404, r2.text
    # the file is for the admin only
    assert httpx.get(f"{server.api_url}/v1.1/actions/{a['_id']}/file").status_code == 401


def _diagnostics_target(api, ep: str) -> tuple[dict, str]:
    """A get_diagnostics Action to serve's target whose station never uploads (wait=0 on a
    station that does not answer is not needed: the upload URL is in the Action's data)."""
    a = answer(api.post(f"{BASE}/{ep}/get_diagnostics", json={}, params={"wait": 0}), 202)
    return a["result"], a["result"]["data"]["url"]


@pytest.fixture
def mute(server, monkeypatch):
    """A booted 1.6 station that accepts GetDiagnostics but never uploads (the simulator's
    upload is switched off in this test process while the test runs)."""
    from edrvctl.simulator import SimStation

    async def nothing(*a, **kw):
        return None

    endpoint, sim = online(server, "ocpp1.6")
    monkeypatch.setattr(SimStation, "_upload_log", nothing)
    yield endpoint
    sim.stop()


def test_upload_target_refuses_traversal_oversize_reuse_and_unknown(server, api, mute):
    base = files_url(server)
    a, url = _diagnostics_target(api, mute)
    assert url.startswith(f"{base}/uploads/") and url.endswith("/")
    # unknown token
    assert httpx.put(f"{base}/uploads/nope/x.txt", content=b"x").status_code == 404
    # path traversal: a name with .. or a hidden name, and an encoded slash
    for name in ("..", ".hidden", "a..b", "%2e%2e%2fetc%2fpasswd", "x%2fy"):
        r = httpx.put(url + name, content=b"x")
        assert r.status_code in (400, 404), (name, r.status_code, r.text)
    assert httpx.put(url + "../../x", content=b"x").status_code in (400, 404)
    # oversized (the module's server caps at 50 MB; say so by Content-Length)
    assert _raw_put(url + "big.bin", 51 * 1024 * 1024).startswith(b"HTTP/1.1 413")
    # a multipart POST is accepted once, then the URL is used up
    r = httpx.post(url, files={"file": ("log.txt", b"hello log\n", "text/plain")})
    assert r.status_code == 201, r.text
    assert r.json()["result"] == {
        "name": "log.txt",
        "size": 10,
        "sha256": hashlib.sha256(b"hello log\n").hexdigest(),
    }
    assert httpx.put(url + "again.txt", content=b"x").status_code == 404
    rec = answer(api.get(f"/v1.1/actions/{a['_id']}"), 200)["result"]
    assert rec["file"]["name"] == "log.txt"
    got = api.get(f"/v1.1/actions/{a['_id']}/file")
    assert got.status_code == 200 and got.content == b"hello log\n"
    # nothing escaped the uploads folder
    uploads = server.folder / "uploads"
    assert sorted(p.name for p in (uploads / a["_id"]).iterdir()) == ["log.txt"]
    assert oct((server.folder / "uploads").stat().st_mode & 0o777) == "0o700"


def _raw_put(url: str, length: int) -> bytes:
    """PUT headers saying `length` bytes, then only the start: the answer's first bytes."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=scaled(10)) as s:
        s.sendall(
            f"PUT {u.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            + b"x" * 1024
        )
        return s.recv(200)


def test_firmware_store_refuses_bad_names_and_unknown_ids(server, api):
    assert api.post("/v1.1/files", content=b"x").status_code == 400  # no name
    r = api.post("/v1.1/files", params={"name": "../evil"}, content=b"x")
    assert r.status_code == 400, r.text
    r = httpx.post(f"{server.api_url}/v1.1/files", params={"name": "fw.bin"}, content=b"x")
    assert r.status_code == 401
    r = api.post(f"{BASE}/nobody/update_firmware", json={"file": "0" * 64})
    assert r.status_code == 404, r.text
    r = api.post(f"{BASE}/nobody/update_firmware", json={"file": "0" * 64, "location": "http://x/"})
    assert r.status_code == 422, r.text
    # a firmware file bigger than the admin API's 256 KiB body limit is accepted
    big = bytes(300 * 1024)
    r = api.post("/v1.1/files", params={"name": "big.bin"}, content=big)
    assert r.status_code == 201, r.text
    sha = hashlib.sha256(big).hexdigest()
    base = files_url(server)
    assert httpx.get(f"{base}/files/firmware/{sha}/big.bin").content == big
    assert httpx.get(f"{base}/files/firmware/{sha}/other.bin").status_code == 404
    assert httpx.get(f"{base}/files/firmware/{'0' * 64}/big.bin").status_code == 404
    assert httpx.get(f"{base}/files/firmware/{sha}/..%2f..%2ftoken").status_code in (400, 404)


def test_a_small_upload_cap_and_no_files(tmp_path):
    srv = start_server(tmp_path / "capped", "--max-upload-mb", "0.01")
    try:
        with srv.api() as c:
            r = c.post("/v1.1/files", params={"name": "fw.bin"}, content=bytes(20 * 1024))
            assert r.status_code == 413, r.text
            # streamed without a Content-Length: cut off at the cap too
            r = c.post(
                "/v1.1/files", params={"name": "fw.bin"}, content=iter([bytes(8 * 1024)] * 3)
            )
            assert r.status_code == 413, r.text
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path / "none", "--no-files")
    try:
        assert json.loads((srv.folder / "server.json").read_text())["files_url"] is None
        with srv.api() as c:
            r = c.post("/v1.1/chargestations/x/get_diagnostics", json={})
            assert r.status_code in (404, 409), r.text
    finally:
        assert srv.stop() == 0


def test_files_port_in_use_names_the_flag(tmp_path):
    import subprocess
    import sys

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        env = {**hermetic_env(tmp_path), "EDRV_TOKEN": TOKEN}
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edrvctl",
                "serve",
                "--store",
                str(tmp_path / "s.db"),
                "--api-port",
                "0",
                "--ocpp-port",
                "0",
                "--ocpp-host",
                "127.0.0.1",
                "--files-port",
                str(port),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    assert f"port {port}" in r.stderr and "--files-port" in r.stderr


def test_cli_update_firmware_needs_url_or_file(cli_env):
    r = cli(cli_env, "cs", "update-firmware", "x", "--yes")
    assert r.exit_code == 2
    r = cli(cli_env, "cs", "diagnostics", "x", "--url", "http://x/", "-O", "f")
    assert r.exit_code == 2


def test_uploaded_before_the_file_waits_for_the_file():
    from edrvctl.fleet import actions
    from edrvctl.fleet.live import GetDiagnostics

    hosted = actions.Follow("a1", GetDiagnostics("http://x/uploads/t/", upload_token="t"), 1e12)
    step = actions.follow(hosted, "DiagnosticsStatusNotification", {"status": "Uploaded"})
    assert step is not None and step.outcome is None and hosted.reported
    hosted.received = True
    other = actions.Follow("a2", GetDiagnostics("ftp://logs/in/"), 1e12)
    step = actions.follow(other, "DiagnosticsStatusNotification", {"status": "Uploaded"})
    assert step is not None and step.outcome == "succeeded"
    assert "upload_token" not in actions.data_of(hosted.command)


def test_one_firmware_file_to_several_stations_of_both_versions(server, api, cli_env, tmp_path):
    """`-l`/several stations with --file: the file is uploaded once, and every station, 1.6
    and 2.0.1, downloads it from the files listener and boots with a new version."""
    stations = [online(server, proto) for proto in PROTOCOLS]
    try:
        fw = tmp_path / "fw-3.0.bin"
        fw.write_bytes(b"\x7fFIRMWARE-3" + bytes(range(256)) * 50)
        eps = [ep for ep, _ in stations]
        r = ok(cli_env, "cs", "update-firmware", *eps, "--file", str(fw), "--wait", "--yes")
        assert r.stderr.count("uploaded fw-3.0.bin") == 1, r.stderr
        for ep in eps:
            acts = answer(
                api.get("/v1.1/actions", params={"chargestation": ep, "type": "update_firmware"}),
                200,
            )["result"]
            assert len(acts) == 1 and acts[0]["outcome"] == "succeeded", acts
            assert acts[0]["data"]["url"].endswith("/fw-3.0.bin")
        # a batch of diagnostics needs a location (serve's upload target is per station)
        r = api.post(
            "/v1.1/actions/batch",
            json={"selector": {"ids": eps}, "type": "get_diagnostics", "data": {}},
        )
        assert r.status_code == 400, r.text
    finally:
        for _, sim in stations:
            sim.stop()
