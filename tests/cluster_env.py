"""A cluster on this machine, for tests and bench/cluster.py: a private PostgreSQL (its own
initdb, so that it can be stopped without touching anyone else's), `edrvctl serve` nodes on it,
and HAProxy in front (TCP, leastconn, an HTTP check on each node's /health). Every process is
ours and is stopped by `close()`; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import httpx

from conftest import TOKEN, Server, start_server
from timing import scaled, until

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """Why a cluster cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return "PostgreSQL 15 server binaries are not installed (apt-get install postgresql-15)"
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is needed to run PostgreSQL as the postgres user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """initdb into a temporary folder, on a free port; stop() and start() for outages."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="edrv-pg-", dir="/tmp"))
        self.port = free_port()
        self.data = self.dir / "data"
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, capture_output=True, timeout=scaled(60))

    def url(self, db: str = "edrv") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_db(self, name: str = "edrv") -> None:
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), name)

    def close(self) -> None:
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


HAPROXY = """global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch
frontend ocpp
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
{servers}
frontend admin
    bind 127.0.0.1:{api_port}
    default_backend apis
backend apis
    balance roundrobin
    option httpchk GET /health
{apis}
"""


class Haproxy:
    def __init__(self, root: Path, nodes: dict[str, Server]) -> None:
        self.port = free_port()
        self.api_port = free_port()  # the admin API of every node, round robin
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.write(nodes)

    def write(self, nodes: dict[str, Server]) -> None:
        servers = "\n".join(
            f"    server {name} {_hostport(n.ocpp_url)} check port {_port(n.api_url)} "
            "inter 500ms fall 2 rise 2"
            for name, n in nodes.items()
        )
        apis = "\n".join(
            f"    server {name} {_hostport(n.api_url)} check inter 500ms fall 2 rise 2"
            for name, n in nodes.items()
        )
        self.config = self.root / "haproxy.cfg"
        self.config.write_text(
            HAPROXY.format(port=self.port, servers=servers, api_port=self.api_port, apis=apis)
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "haproxy.log", "w"),  # noqa: SIM115
        )
        until(lambda: _listening(self.port), timeout=10, what="haproxy to listen")

    def restart(self, nodes: dict[str, Server]) -> None:
        self.stop()
        self.write(nodes)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(scaled(10))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _hostport(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _port(url: str) -> int:
    return int(_hostport(url).rsplit(":", 1)[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    """`n` nodes (n1, n2, ...) on a private PostgreSQL, HAProxy in front."""

    def __init__(self, root: Path, n: int = 3, *args: str) -> None:
        self.root = root
        self.args = args
        self.pg = PrivatePostgres()
        self.pg.create_db()
        self.nodes: dict[str, Server] = {}
        self.haproxy: Haproxy | None = None
        try:
            for i in range(1, n + 1):
                self.start_node(f"n{i}")
            self.haproxy = Haproxy(root, self.nodes)
            self.haproxy.start()
        except BaseException:
            self.close()
            raise

    def start_node(self, name: str, *args: str) -> Server:
        self.nodes[name] = start_server(
            self.root / name,
            "--node-id",
            name,
            "--no-files",
            *self.args,
            *args,
            store=self.pg.url(),  # type: ignore[arg-type]
        )
        return self.nodes[name]

    def restart_node(self, name: str) -> Server:
        """Start a stopped node again on the same ports (HAProxy knows those)."""
        old = self.nodes[name]
        return self.start_node(
            name,
            "--api-port",
            str(_port(old.api_url)),
            "--ocpp-port",
            str(_port(old.ocpp_url)),
        )

    def api(self, name: str) -> httpx.Client:
        return self.nodes[name].api()

    def health(self, name: str) -> int:
        try:
            return httpx.get(self.nodes[name].api_url + "/health", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def online(self) -> dict[str, int]:
        """Stations connected to each running node now (its /metrics)."""
        found = {}
        for name, node in self.nodes.items():
            if node.proc.poll() is not None:
                continue
            try:
                text = httpx.get(node.api_url + "/metrics", timeout=scaled(2)).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                if line.startswith("edrvctl_stations_online "):
                    found[name] = int(float(line.split()[1]))
        return found

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.nodes[name].proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.nodes[name].proc.wait(scaled(10))

    def close(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in self.nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(scaled(10))
        self.pg.close()


__all__ = ["TOKEN", "Cluster", "PrivatePostgres", "available"]
