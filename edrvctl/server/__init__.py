"""`edrvctl serve`: the OCPP listener and the admin API on one event loop, over one store."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import signal
import socket
import ssl
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edrvctl import paths
from edrvctl.server.listener import ListenerSettings  # noqa: F401  (ServeConfig's type)

if TYPE_CHECKING:
    from edrvctl.fleet import Budgets

log = logging.getLogger("edrvctl.serve")


@dataclass
class ServeConfig:
    store: Path
    listener: "ListenerSettings"
    api_host: str = "127.0.0.1"
    api_port: int = 7780
    heartbeat_interval: int = 300
    store_max_bytes: int | None = None
    api_tls: bool = False  # serve the admin API over HTTPS with the listener's certificate
    tls_cert: Path | None = None
    tls_key: Path | None = None
    budgets: "Budgets | None" = None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for wss:// (profiles 2 and 3). With a client CA, certificates are asked for and
    verified, but optional: profile 2 stations have none; profile 3 ones are checked per
    station in the listener."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def admin_token(store: Path) -> str:
    """EDRV_TOKEN if set; else the token kept beside the store, created on first start."""
    token = os.environ.get("EDRV_TOKEN")
    if token:
        return token
    path = paths.token_file(store)
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    paths.write_secret(path, token + "\n")
    return token


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on accepted connections: without it
    # each kept-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(cfg: ServeConfig, on_ready: Callable[[dict], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    import uvicorn

    from edrvctl.fleet import Fleet
    from edrvctl.server.api import create_app
    from edrvctl.server.listener import Listener
    from edrvctl.store import open_store

    # Thousands of connections make many long-lived objects: with the default thresholds the
    # collector took ~27% of the CPU while 10,000 stations connected, in pauses of up to 0.8 s.
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    store = open_store(cfg.store, cfg.store_max_bytes)
    token = admin_token(cfg.store)
    fleet = Fleet(store, heartbeat_interval=cfg.heartbeat_interval, budgets=cfg.budgets)
    fleet.command_timeout = cfg.listener.response_timeout
    stale = await fleet.mark_all_offline()
    if stale:
        log.info("marked %d station(s) offline that were online when the last run ended", stale)

    listener = Listener(fleet, cfg.listener)
    fleet.ocpp_url, ocpp_tls_url = await listener.start()

    api_sock = _bind(cfg.api_host, cfg.api_port)
    host, port = api_sock.getsockname()[:2]
    api_url = f"http{'s' if cfg.api_tls else ''}://{f'[{host}]' if ':' in host else host}:{port}"

    class ApiServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self):  # serve() owns SIGINT/SIGTERM, not uvicorn
            yield

    api_tls = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)} \
        if cfg.api_tls else {}
    api = ApiServer(uvicorn.Config(create_app(fleet, token), log_level="warning",
                                   access_log=False, lifespan="off", **api_tls))
    api_task = asyncio.create_task(api.serve(sockets=[api_sock]))
    while not api.started and not api_task.done():
        await asyncio.sleep(0.01)
    if api_task.done():
        api_task.result()  # raises what stopped it

    info = {"api_url": api_url, "ocpp_url": fleet.ocpp_url, "ocpp_tls_url": ocpp_tls_url,
            "pid": os.getpid(), "store": str(cfg.store)}
    paths.write_secret(paths.server_file(cfg.store), json.dumps(info) + "\n")
    if on_ready:
        on_ready(info)

    async def flush_seen() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await fleet.flush_seen()
            except Exception as e:  # a full store: the next second tries again
                log.error("lastMessageAt not written: %s", e)

    flusher = asyncio.create_task(flush_seen())
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        api.should_exit = True
        await listener.stop()  # stations see a clean close and are marked offline
        await api_task
        for session in listener.stations.all():
            await listener.stations.detach(session)
        flusher.cancel()
        await fleet.flush_seen()
        await store.close()
        try:
            paths.server_file(cfg.store).unlink()
        except FileNotFoundError:
            pass
