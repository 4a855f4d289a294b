"""Shared fixtures: a real `edrvctl serve` process on free ports, over a real SQLite file (or,
with EDRVCTL_TEST_STORE=postgresql, a fresh PostgreSQL database of its own: tests/pg.py), and
hermetic XDG directories under tmp_path."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pg import pg_url  # noqa: F401 (a fixture: a fresh PostgreSQL database)
from timing import scaled, until

# postgresql: servers the tests start without a store of their own run on PostgreSQL
STORE_KIND = os.environ.get("EDRVCTL_TEST_STORE", "sqlite")
# a test of what only a SQLite file has (its folder's lock, its size cap, its integrity check)
sqlite_only = pytest.mark.skipif(
    STORE_KIND != "sqlite", reason="what it tests is the SQLite file's (EDRVCTL_TEST_STORE)"
)

# pytest-xdist sets COLUMNS in its workers; the CLI tests decide the width themselves.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

TOKEN = "test-token-0123456789"


@dataclass
class Server:
    proc: subprocess.Popen
    api_url: str
    ocpp_url: str
    store: Path | str  # a SQLite file, or a postgresql:// URL
    env: dict
    log: Path
    token: str = TOKEN
    _n: list = field(default_factory=lambda: [0])

    @property
    def folder(self) -> Path:
        """Where server.json and the files listener's folders are: beside a SQLite file, or
        the data folder for a PostgreSQL store."""
        if isinstance(self.store, str):
            return Path(self.env["XDG_DATA_HOME"]) / "edrvctl"
        return self.store.parent

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            timeout=scaled(30),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def create(self, endpoint: str | None = None, **body) -> dict:
        """Create a station through the API; returns its record."""
        if endpoint is None:
            self._n[0] += 1
            endpoint = f"t{os.getpid()}-{self._n[0]}"
        with self.api() as c:
            r = c.post("/v1.1/chargestations", json={"endpoint": endpoint, **body})
        assert r.status_code == 201, r.text
        return r.json()["result"]

    def get(self, key: str) -> dict:
        with self.api() as c:
            r = c.get(f"/v1.1/chargestations/{key}")
        assert r.status_code == 200, r.text
        return r.json()["result"]

    def logs(self) -> str:
        return self.log.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the server and wait for it to exit (`timeout` is scaled); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(scaled(timeout))


def hermetic_env(root: Path) -> dict:
    # (EDRVCTL_LOOP passes: .ci/run runs the servers under test on each event loop)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EDRV", "XDG_")) or k == "EDRVCTL_LOOP"
    }
    env.update(
        XDG_DATA_HOME=str(root / "data"),
        XDG_CONFIG_HOME=str(root / "config"),
        XDG_CACHE_HOME=str(root / "cache"),
        NO_COLOR="1",
    )
    return env


_databases: dict[Path, str] = {}  # root -> its PostgreSQL database (EDRVCTL_TEST_STORE)


def start_server(
    root: Path,
    *args: str,
    token: str | None = TOKEN,
    store: Path | str | None = None,
    env: dict | None = None,
    preexec_fn=None,
) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    env = dict(env or hermetic_env(root))
    if token:
        env["EDRV_TOKEN"] = token
    if store is None and STORE_KIND == "postgresql":
        store = _databases.get(root)
        if store is None:  # one per root: a test that starts its server again finds its data
            import pg

            database = contextlib.ExitStack()
            store = _databases[root] = database.enter_context(pg.database())
            # dropped when the tests end, not when the server stops
            atexit.register(database.close)
    store = store or root / "store" / "edrvctl.db"
    log = root / f"serve-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            preexec_fn=preexec_fn,  # e.g. lower a resource limit in the server only
        )

    def ready() -> re.Match | None:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}:\n{log.read_text()}")
        return re.search(r'edrvctl serve: api ([^\s"]+) ocpp ([^\s"]+)', log.read_text())

    try:
        m = until(ready, timeout=20, interval=0.05, what="`edrvctl serve` to print its ready line")
    except (AssertionError, RuntimeError) as e:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if isinstance(e, RuntimeError):
            raise
        raise RuntimeError(f"serve did not start ({e}):\n{log.read_text()}") from None
    return Server(
        proc,
        m.group(1),
        m.group(2),
        store,
        env,
        log,
        token=token or _token_file(args, store).read_text().strip(),
    )


def _token_file(args: tuple[str, ...], store: Path | str) -> Path:
    """Where a server given no EDRV_TOKEN keeps its token: --token-file, or beside the store."""
    if "--token-file" in args:
        return Path(args[args.index("--token-file") + 1])
    return Path(store).parent / "token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server per test module; tests use their own station endpoints."""
    srv = start_server(tmp_path_factory.mktemp("serve"))
    yield srv
    srv.stop()


@pytest.fixture
def cli_env(server, tmp_path):
    """Environment for CliRunner: this test's XDG dirs, pointed at the module's server."""
    env = hermetic_env(tmp_path)
    env.update(EDRV_API_URL=server.api_url, EDRV_TOKEN=server.token)
    return env
