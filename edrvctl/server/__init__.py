"""`edrvctl serve`: the OCPP listener and the admin API on one event loop, over one store."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import secrets
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edrvctl import paths
from edrvctl.errors import UsageError
from edrvctl.fleet.retention import Pruner, Retention
from edrvctl.server.files import FILES_MAX_CONNECTIONS, FILES_READ_TIMEOUT, Files
from edrvctl.server.listener import ListenerSettings

if TYPE_CHECKING:
    from edrvctl.fleet import Budgets
    from edrvctl.server.cluster import ClusterNode
    from edrvctl.store import Store

log = logging.getLogger("edrvctl.serve")


@dataclass
class ServeConfig:
    store: Path  # the SQLite file; with `database`, where server.json, files and the lock go
    listener: ListenerSettings
    database: str | None = None  # a postgresql:// URL: the store
    token_file: Path | None = None  # the admin token's file, instead of the one beside `store`
    api_host: str = "127.0.0.1"
    api_port: int = 7780
    heartbeat_interval: int = 300
    authorize: str = "open"  # who may charge (fleet/tokens.py): open or known
    store_max_bytes: int | None = None
    api_tls: bool = False  # serve the admin API over HTTPS with the listener's certificate
    tls_cert: Path | None = None
    tls_key: Path | None = None
    budgets: Budgets | None = None
    public_url: str | None = None  # what stations are told (connection_url); None: the bind
    public_tls_url: str | None = None  # address, or this machine's name for 0.0.0.0
    # the station-facing files listener (server/files.py): None port = 9001, or a free one
    # if 9001 is taken; files=False: none
    files: bool = True
    files_port: int | None = None
    public_files_url: str | None = None  # http(s):// base told to stations
    max_upload_bytes: int = 50 * 1024 * 1024
    # the frame log (fleet/frames.py): all | errors | off; kept per station: a count and days
    frame_log: str = "all"
    frames_per_station: int = 10_000
    frames_days: float = 7.0
    retention: Retention = field(default_factory=Retention)  # what the store keeps, by age
    # one of several nodes on one PostgreSQL store (server/cluster.py); None: alone
    node_id: str | None = None


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


def admin_token(
    store: Path, token_file: Path | None = None, database: str | None = None
) -> tuple[str, Path | None]:
    """EDRV_TOKEN if set; else `token_file`, or the token kept beside a SQLite store, created
    on first start (mode 0600, in a folder created 0700). A PostgreSQL store (`database`) has
    no token beside it. A token file that is not safely ours (another user's, open to other
    users, empty, a symlink) is refused, never trusted nor overwritten. Returns the token and
    the file it is in (None: EDRV_TOKEN)."""
    token = os.environ.get("EDRV_TOKEN")
    if token:
        return token, None
    if token_file is None and database is not None:
        raise UsageError(
            "a PostgreSQL store keeps no admin token: set EDRV_TOKEN, or give --token-file "
            "PATH (the same token on every node)"
        )
    path = token_file or paths.token_file(store)
    for _ in range(3):  # created by another process between our read and our create: read it
        try:
            return paths.read_private(path, "token file"), path
        except FileNotFoundError:
            pass
        except paths.PrivateFileError as e:
            raise UsageError(
                str(e), hint=f"remove {path} to have a new token created, or set EDRV_TOKEN"
            ) from None
        try:
            paths.create_secret(path, secrets.token_urlsafe(32) + "\n")
            log.info("created the admin token %s (mode 0600)", path)
        except FileExistsError:
            continue
    raise UsageError(f"cannot read or create the token file {path}")


FDS_WANTED = 10_240  # open files for the 10,000 stations the README's load figure holds, and more


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one: each station is a socket, and a soft
    limit of 1024 (a common default) would refuse the 1,000th. Says so when the hard limit
    itself is low."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        for candidate in (target, 1 << 16, 10_240):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(candidate, target), hard))
            except (ValueError, OSError):
                continue
            log.info("open-file limit raised from %d to %d", soft, min(candidate, target))
            soft = min(candidate, target)
            break
    if soft != resource.RLIM_INFINITY and soft < FDS_WANTED:
        log.warning(
            "the open-file limit is %d (the hard limit): about %d stations can be "
            "connected at once; raise the hard limit (`ulimit -Hn`, systemd "
            "LimitNOFILE=) for more",
            soft,
            max(0, soft - 64),
        )


def _listen_error(e: OSError, host: str, port: int, port_flag: str, host_flag: str) -> str:
    if e.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use ({port_flag} {port}, on {host}): stop what uses it, or "
            f"choose another port ({port_flag} 0 picks a free one)"
        )
    if e.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} ({port_flag} {port}): ports below 1024 "
            "need privileges"
        )
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host} ({host_flag} {host}): {e.strerror or e}"
    return f"cannot listen on {host}:{port} ({port_flag} {port}): {e.strerror or e}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on accepted connections: without it
    # each kept-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


WILDCARDS = ("", "0.0.0.0", "::")


def public_url(given: str | None, bound: str, host: str, flag: str) -> str:
    """The base URL stations are told (`connection_url`): --public-url / --public-tls-url, or
    the address the listener is bound to; for every address (0.0.0.0), this machine's name."""
    if given:
        return given.rstrip("/")
    parts = urlsplit(bound)
    if host not in WILDCARDS:
        return bound
    name = socket.gethostname() or "127.0.0.1"
    url = f"{parts.scheme}://{name}:{parts.port}"
    log.warning(
        "OCPP listens on every address (%s) and no %s was given: stations are told %s "
        "(this machine's name); give %s %s://HOST:PORT if they reach it by another "
        "name",
        host or "0.0.0.0",
        flag,
        url,
        flag,
        parts.scheme,
    )
    return url


def event_loop() -> str:
    """The event loop `run` uses: uvloop when it is installed (the `fast` extra), unless
    EDRVCTL_LOOP=asyncio asks for the standard library's."""
    if os.environ.get("EDRVCTL_LOOP", "auto") != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            return "uvloop"
    return "asyncio"


def run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run(main) on event_loop()'s loop."""
    if event_loop() == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


async def serve(
    cfg: ServeConfig,
    on_ready: Callable[[dict], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM). One server per store: a second one on the
    same store is refused before it touches anything (UsageError)."""
    lock = paths.ServeLock(cfg.store)
    try:
        lock.acquire()
    except paths.StoreInUse as e:
        raise UsageError(
            f"another edrvctl serve (pid {e.pid if e.pid else 'unknown'}) uses this store "
            f"({cfg.store.parent}): stop it first, or give --store a file in another folder"
        ) from None
    except OSError as e:
        raise UsageError(
            f"cannot open the store at {cfg.store}: its lock file {lock.path}: {e.strerror}"
        ) from None
    try:
        await _serve(cfg, on_ready, stop)
    finally:
        lock.release()


async def _serve(
    cfg: ServeConfig, on_ready: Callable[[dict], None] | None, stop: asyncio.Event | None
) -> None:
    from edrvctl.store import open_store

    raise_open_file_limit()
    if (
        cfg.store.parent == paths.data_dir()
        and cfg.store.parent.is_dir()
        and cfg.store.parent.stat().st_mode & 0o077
    ):
        cfg.store.parent.chmod(0o700)  # edrvctl's own folder, made by an older version
        log.info("made %s readable by its owner only (0700)", cfg.store.parent)
    token, token_path = admin_token(cfg.store, cfg.token_file, cfg.database)
    try:
        api_sock = _bind(cfg.api_host, cfg.api_port)
    except OSError as e:
        raise UsageError(
            _listen_error(e, cfg.api_host, cfg.api_port, "--api-port", "--api-host")
        ) from None
    files_sock: socket.socket | None = None
    if cfg.files:
        files_sock = _bind_files(cfg, api_sock)
    try:
        # Thousands of connections make many long-lived objects: with the default thresholds
        # the collector took ~27% of the CPU while 10,000 stations connected, in pauses of up
        # to 0.8 s.
        gc.freeze()
        # (The third threshold stays low enough that Python's own rule, a full collection
        # once a quarter of the long-lived objects are new, can run: refused connections
        # leave cycles that only a full collection frees; at 1000 they piled up unbounded.)
        gc.set_threshold(50_000, 50, 10)
        store = open_store(cfg.database or cfg.store, cfg.store_max_bytes)
        try:
            if cfg.database is not None:  # connect and migrate now: a failure stops the start
                await store.open()  # type: ignore[attr-defined]
            await _run(cfg, on_ready, stop, store, token, token_path, api_sock, files_sock)
        finally:
            await store.close()
    finally:
        api_sock.close()
        if files_sock is not None:
            files_sock.close()


def _bind_files(cfg: ServeConfig, api_sock: socket.socket) -> socket.socket:
    from edrvctl.server.files import DEFAULT_PORT

    host = cfg.listener.host or "0.0.0.0"
    port = cfg.files_port
    if port is None:  # a free OCPP port asked for: a free files port too
        port = 0 if cfg.listener.port == 0 else DEFAULT_PORT
    try:
        return _bind(host, port)
    except OSError as e:
        if cfg.files_port is None and port and e.errno == errno.EADDRINUSE:
            log.warning(
                "port %d (the files listener's default) is in use: a free port is used "
                "instead; give --files-port to choose one",
                DEFAULT_PORT,
            )
            try:
                return _bind(host, 0)
            except OSError as e2:
                e = e2
        api_sock.close()
        raise UsageError(_listen_error(e, host, port, "--files-port", "--ocpp-host")) from None


def files_public_url(cfg: ServeConfig, bound: str) -> str:
    """What stations are told for files: --public-files-url; else the host of --public-url
    (or the bound address, this machine's name for 0.0.0.0) on the files port, over http."""
    if cfg.public_files_url:
        return cfg.public_files_url.rstrip("/")
    port = urlsplit(bound).port
    if cfg.public_url:
        host = urlsplit(cfg.public_url).hostname or "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return public_url(None, bound, cfg.listener.host, "--public-files-url")


async def _run(
    cfg: ServeConfig,
    on_ready: Callable[[dict], None] | None,
    stop: asyncio.Event | None,
    store: Store,
    token: str,
    token_path: Path | None,
    api_sock: socket.socket,
    files_sock: socket.socket | None = None,
) -> None:
    import uvicorn

    from edrvctl.fleet import Fleet
    from edrvctl.fleet.webhooks import Webhooks
    from edrvctl.server import api as admin_api
    from edrvctl.server import api_metrics
    from edrvctl.server.listener import Listener
    from edrvctl.store import redact

    fleet = Fleet(store, heartbeat_interval=cfg.heartbeat_interval, budgets=cfg.budgets)
    fleet.command_timeout = cfg.listener.response_timeout
    fleet.frames.configure(cfg.frame_log, cfg.frames_per_station, cfg.frames_days)
    fleet.tokens.policy = cfg.authorize
    if cfg.node_id is None:  # alone: nothing is connected or in flight at start
        stale = await fleet.mark_all_offline()
        if stale:
            log.info("marked %d station(s) offline that were online when the last run ended", stale)
        failed = await fleet.fail_pending_actions("the server stopped while it was in flight")
        if failed:
            log.info("%d action(s) in flight when the last run ended marked failed", failed)

    listener = Listener(fleet, cfg.listener)
    pruner = Pruner(store, cfg.retention, fleet.metrics)
    host, port = api_sock.getsockname()[:2]
    api_url = f"http{'s' if cfg.api_tls else ''}://{f'[{host}]' if ':' in host else host}:{port}"
    webhooks = Webhooks(store, fleet.feed)
    cluster: ClusterNode | None = None
    if cfg.node_id is not None:  # before the listener: every station is claimed as it comes
        from edrvctl.server.cluster import ClusterLive, ClusterNode

        if cfg.database is None:
            raise UsageError("--node-id needs a PostgreSQL --store (postgresql://...)")
        cluster = ClusterNode(
            fleet, listener.stations, store, cfg.database, cfg.node_id, cfg.public_url or ""
        )
        fleet.live = ClusterLive(listener.stations, cluster)
        fleet.frames.reread = 1.0
        webhooks.shared = 2.0

        async def lead(leading: bool) -> None:  # one node delivers webhooks
            await (webhooks.start() if leading else webhooks.stop())

        cluster.on_lead = lead
        await cluster.start(api_url)
    try:
        ocpp_url, ocpp_tls_url = await listener.start()
    except OSError as e:
        tls_failed = bool(listener.servers)  # the ws:// one started: the wss:// one failed
        await listener.stop()
        port = (cfg.listener.tls_port or 0) if tls_failed else cfg.listener.port
        raise UsageError(
            _listen_error(
                e,
                cfg.listener.host,
                port,
                "--ocpp-tls-port" if tls_failed else "--ocpp-port",
                "--ocpp-host",
            )
        ) from None
    fleet.ocpp_url = public_url(cfg.public_url, ocpp_url, cfg.listener.host, "--public-url")
    if ocpp_tls_url:
        fleet.ocpp_tls_url = public_url(
            cfg.public_tls_url, ocpp_tls_url, cfg.listener.host, "--public-tls-url"
        )

    files: Files | None = None
    files_url: str | None = None
    if files_sock is not None:
        fhost, fport = files_sock.getsockname()[:2]
        files_url = f"http://{f'[{fhost}]' if ':' in fhost else fhost}:{fport}"
        files = Files(cfg.store, fleet, cfg.max_upload_bytes)
        files.prepare()
        files.public_url = files_public_url(cfg, files_url)

    class ApiServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self):  # serve() owns SIGINT/SIGTERM, not uvicorn
            yield

    client_certs = cfg.listener.tls is not None and cfg.listener.tls.verify_mode != ssl.CERT_NONE
    api_metrics.register(fleet, listener, webhooks)
    api = ApiServer(
        uvicorn.Config(
            admin_api.create_app(
                fleet, token, client_certs=client_certs, files=files, webhooks=webhooks
            ),
            # uvicorn's records go to our handler and format (logs.setup_logging), at our levels
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan="off",
            # every connection bounded in time and number
            http=admin_api.protocol_class(),
            ws="none",
            timeout_keep_alive=admin_api.API_KEEP_ALIVE,
            ssl_certfile=str(cfg.tls_cert) if cfg.api_tls else None,
            ssl_keyfile=str(cfg.tls_key) if cfg.api_tls else None,
        )
    )
    api_task = asyncio.create_task(api.serve(sockets=[api_sock]))
    files_server: ApiServer | None = None
    files_task: asyncio.Task | None = None
    if files is not None and files_sock is not None:
        files_server = ApiServer(
            uvicorn.Config(
                files,
                log_config=None,
                log_level=None,
                access_log=False,
                lifespan="off",
                http=admin_api.protocol_class(FILES_READ_TIMEOUT, FILES_MAX_CONNECTIONS),
                ws="none",
                timeout_keep_alive=admin_api.API_KEEP_ALIVE,
            )
        )
        files_task = asyncio.create_task(files_server.serve(sockets=[files_sock]))
    flusher: asyncio.Task | None = None
    try:
        if cluster is None:  # else the leading node delivers them
            await webhooks.start()  # deliveries go on from the stored cursors
        while not api.started and not api_task.done():
            await asyncio.sleep(0.01)
        if api_task.done():
            api_task.result()  # raises what stopped it
        while files_server is not None and files_task is not None and not files_server.started:
            if files_task.done():
                files_task.result()
            await asyncio.sleep(0.01)

        info = {
            "api_url": api_url,
            "ocpp_url": ocpp_url,
            "ocpp_tls_url": ocpp_tls_url,
            "public_url": fleet.ocpp_url,
            "public_tls_url": fleet.ocpp_tls_url,
            "files_url": files_url,
            "public_files_url": files.public_url if files is not None else None,
            "pid": os.getpid(),
            "store": redact(cfg.database) if cfg.database else str(cfg.store),
            "token_file": str(token_path) if token_path else None,
            "loop": event_loop(),
        }
        paths.write_secret(paths.server_file(cfg.store), json.dumps(info) + "\n")
        if on_ready:
            on_ready(info)

        async def flush_seen() -> None:
            while True:
                await asyncio.sleep(1)
                try:
                    await fleet.flush_seen()
                    await fleet.expire_actions()
                except Exception as e:  # a full store: the next second tries again
                    log.error("lastMessageAt or expired actions not written: %s", e)
                try:
                    await fleet.frames.prune()
                except Exception as e:
                    log.error("frame log not pruned: %s", e)
                try:
                    if cluster is None or cluster.leader:
                        await pruner.tick()
                except Exception as e:
                    log.error("retention: pruning failed: %s", e)

        flusher = asyncio.create_task(flush_seen())
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await stop.wait()
    finally:
        log.info("stopping")
        fleet.feed.close()  # live streams end, so the API can finish its responses
        fleet.frames.end_streams()
        api.should_exit = True
        if files_server is not None:
            files_server.should_exit = True
        await listener.stop()  # stations see a clean close and are marked offline
        await api_task
        if files_task is not None:
            await files_task
        for session in listener.stations.all():
            await listener.stations.detach(session)
        if flusher is not None:
            flusher.cancel()
        await fleet.flush_seen()
        if cluster is None or cluster.leader:
            await webhooks.stop()
        if cluster is not None:
            await cluster.stop()
        try:
            await fleet.frames.close()
        except Exception as e:
            log.error("frame log: the last frames not written: %s", e)
        try:
            paths.server_file(cfg.store).unlink()  # ours: we hold the store's lock
        except FileNotFoundError:
            pass
