"""`edrvctl serve`: run the OCPP central system and the admin API."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from edrvctl import paths


def serve(
    store: Annotated[
        str | None,
        typer.Option(
            envvar=paths.STORE_ENV,
            show_envvar=True,
            help="SQLite file; its folder also holds the token, server.json and the lock (one "
            "server per folder) [default: $XDG_DATA_HOME/edrvctl/edrvctl.db]. Or a "
            "postgresql://USER@HOST:PORT/DB URL (the admin token then comes from EDRV_TOKEN "
            "or --token-file)",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="The admin token's file (mode 0600; created if missing), instead of the one "
            "beside a SQLite store; give every node of a PostgreSQL store the same one",
            show_default=False,
        ),
    ] = None,
    store_max_mb: Annotated[
        int | None,
        typer.Option(
            help="Cap the store's size; past it, writes are refused as on a full disk",
            min=1,
            show_default=False,
        ),
    ] = None,
    api_host: Annotated[
        str, typer.Option(help="Admin API address (loopback by default)")
    ] = "127.0.0.1",
    api_port: Annotated[
        int, typer.Option(help="Admin API port; 0 picks a free one", min=0, max=65535)
    ] = 7780,
    ocpp_host: Annotated[str, typer.Option(help="Address stations connect to")] = "0.0.0.0",
    ocpp_port: Annotated[
        int, typer.Option(help="OCPP websocket port; 0 picks a free one", min=0, max=65535)
    ] = 9000,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="ws:// base URL stations are told to use (connection_url, `cs create`), when "
            "they reach this server by another name or through a proxy [default: --ocpp-host, "
            "or this machine's name for 0.0.0.0]",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    public_tls_url: Annotated[
        str | None,
        typer.Option(
            help="wss:// base URL told to TLS-profile stations, with --tls-cert [default: as "
            "--public-url, on --ocpp-tls-port]",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    files_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the files listener stations download firmware from and upload "
            "diagnostics to (on --ocpp-host); 0 picks a free one [default: 9001; a free one "
            "if 9001 is taken or --ocpp-port is 0]",
            min=0,
            max=65535,
            show_default=False,
        ),
    ] = None,
    no_files: Annotated[
        bool, typer.Option("--no-files", help="No files listener: commands need a URL")
    ] = False,
    public_files_url: Annotated[
        str | None,
        typer.Option(
            help="http(s):// base URL stations are told for files [default: the host of "
            "--public-url (or --ocpp-host) on --files-port]",
            metavar="URL",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            help="MB of one uploaded file (diagnostics, or firmware via the API)", min=0.001
        ),
    ] = 50,
    heartbeat_interval: Annotated[
        int, typer.Option(help="Heartbeat interval given to stations at boot, seconds", min=1)
    ] = 300,
    ping_interval: Annotated[
        float, typer.Option(help="Seconds between websocket pings; 0 disables them", min=0)
    ] = 30,
    ping_timeout: Annotated[
        float,
        typer.Option(help="Seconds a station has to answer a ping before it is dropped", min=0.1),
    ] = 60,
    response_timeout: Annotated[
        float, typer.Option(help="Default seconds to wait for a station's answer", min=0.1)
    ] = 30,
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Certificate (PEM) for wss:// stations (profiles 2, 3) and --api-tls"),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM)")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA (PEM) that signs station certificates, for profile 3")
    ] = None,
    ocpp_tls_port: Annotated[
        int, typer.Option(help="wss:// port, with --tls-cert; 0 picks a free one", min=0, max=65535)
    ] = 9443,
    api_tls: Annotated[
        bool, typer.Option("--api-tls", help="Serve the admin API over HTTPS (with --tls-cert)")
    ] = False,
    insecure_api: Annotated[
        bool,
        typer.Option("--insecure-api", help="Allow a non-loopback --api-host without --api-tls"),
    ] = False,
    max_frame: Annotated[
        int, typer.Option(help="Largest websocket message a station may send, bytes", min=1024)
    ] = 1024 * 1024,
    handshake_timeout: Annotated[
        float, typer.Option(help="Seconds a station has to finish the websocket upgrade", min=0.1)
    ] = 10,
    max_connections_per_address: Annotated[
        int, typer.Option(help="Open station connections from one IP address; 0 = no limit", min=0)
    ] = 1024,
    max_rate: Annotated[
        float,
        typer.Option(
            help="Messages per second a station may send (burst: twice that); 0 = no limit", min=0
        ),
    ] = 50,
    max_connectors: Annotated[
        int, typer.Option(help="Connectors a station's record may hold", min=1)
    ] = 128,
    max_stored_mb_per_day: Annotated[
        float,
        typer.Option(
            help="MB of messages (meter values, events, ...) kept per station and UTC day",
            min=0.001,
        ),
    ] = 50,
    max_payload_kb: Annotated[
        float, typer.Option(help="KB of one kept station message", min=1)
    ] = 64,
    max_report_mb: Annotated[
        float, typer.Option(help="MB of one assembled 2.0.1 report (GetBaseReport)", min=0.001)
    ] = 8,
    frame_log: Annotated[
        str,
        typer.Option(
            help="Keep every OCPP frame in and out (all), only CALLERRORs and invalid frames "
            "with the CALLs they answer (errors), or none (off): `edrvctl logs`",
            metavar="all|errors|off",
        ),
    ] = "all",
    frames_per_station: Annotated[
        int, typer.Option(help="Frames kept per station (its newest)", min=0, metavar="N")
    ] = 10_000,
    frames_days: Annotated[
        float, typer.Option(help="Days a frame is kept at most", min=0.0001, metavar="DAYS")
    ] = 7,
    authorize: Annotated[
        str,
        typer.Option(
            metavar="POLICY",
            help="Who may charge: open (every id tag is Accepted on an active station) or "
            "known (only stored tokens, by their status; `edrvctl tokens`); a station's own "
            "`authorize` overrides it",
        ),
    ] = "open",
    keep_events_days: Annotated[
        float,
        typer.Option(help="Days events are kept; 0 keeps them for ever", min=0),
    ] = 30,
    keep_events_max: Annotated[
        int,
        typer.Option(help="Events kept at most, the latest; 0 = no limit but their age", min=0),
    ] = 0,
    node_id: Annotated[
        str | None,
        typer.Option(
            help="Run as one of several nodes on one PostgreSQL --store, behind a load "
            "balancer (README: running several nodes); lowercase letters, digits, - and _",
            metavar="ID",
            show_default=False,
        ),
    ] = None,
    keep_meter_values_days: Annotated[
        float,
        typer.Option(
            help="Days meter values are kept (a session's go together, once it has ended and "
            "its last is that old); 0 keeps them for ever",
            min=0,
        ),
    ] = 90,
    keep_actions_days: Annotated[
        float,
        typer.Option(help="Days finished Actions are kept; 0 keeps them for ever", min=0),
    ] = 30,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
) -> None:
    """Run the OCPP central system and the admin API until SIGINT/SIGTERM.

    Stations connect to ws://OCPP_HOST:OCPP_PORT/<endpoint> with OCPP 1.6-J or 2.0.1. The
    admin token is EDRV_TOKEN, or one created beside the store (mode 0600) that the CLI finds.
    One server per store: a second one on the same store is refused. Scripts wait for it with
    `edrvctl wait-ready`.

    Examples:

      edrvctl serve

      edrvctl serve --store ./fleet.db --api-port 0 --ocpp-port 0

      edrvctl serve --public-url ws://cs.example.com:9000

    Stations download firmware from, and upload diagnostics to, a files listener
    (--files-port, on --ocpp-host; `cs update-firmware --file`, `cs diagnostics -O`).
    """
    import logging
    import ssl

    from edrvctl.cli import state
    from edrvctl.errors import EdrvError, UsageError
    from edrvctl.fleet import Budgets
    from edrvctl.fleet.retention import Retention
    from edrvctl.server import ServeConfig, is_loopback, run, tls_context
    from edrvctl.server import serve as run_server
    from edrvctl.server.listener import ListenerSettings
    from edrvctl.server.logs import setup_logging
    from edrvctl.store.pgcluster import NODE_ID

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    if frame_log not in ("all", "errors", "off"):
        raise typer.BadParameter("use all, errors or off", param_hint="--frame-log")
    if authorize not in ("open", "known"):
        raise typer.BadParameter("use open or known", param_hint="--authorize")
    setup_logging(log_level.upper(), log_format)
    log = logging.getLogger("edrvctl.serve")
    try:
        if bool(tls_cert) != bool(tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        if (tls_client_ca or api_tls) and not tls_cert:
            raise UsageError("--tls-client-ca and --api-tls need --tls-cert and --tls-key")
        if public_tls_url and not tls_cert:
            raise UsageError("--public-tls-url needs a TLS listener: add --tls-cert and --tls-key")
        _check_public_url(public_url, "ws", "--public-url")
        _check_public_url(public_tls_url, "wss", "--public-tls-url")
        _check_public_url(public_files_url, ("http", "https"), "--public-files-url")
        if node_id is not None and not NODE_ID.fullmatch(node_id):
            raise UsageError(
                f"--node-id {node_id!r}: use 1 to 40 lowercase letters, digits, - and _"
            )
        if no_files and (files_port is not None or public_files_url):
            raise UsageError("--no-files and --files-port/--public-files-url contradict")
        if not is_loopback(api_host) and not api_tls and not insecure_api:
            raise UsageError(
                f"refusing to serve the admin API on {api_host} without TLS: add "
                "--api-tls (with --tls-cert/--tls-key), or --insecure-api if a proxy "
                "in front of it does TLS"
            )
        from edrvctl.store import is_url

        database = store if store and is_url(store) else None
        if node_id is not None and not database:
            raise UsageError(
                "--node-id: several nodes share one PostgreSQL store; give --store "
                "postgresql://USER@HOST:PORT/DB"
            )
        if database and store_max_mb:
            raise UsageError("--store-max-mb caps a SQLite file, not a PostgreSQL store")
        # a PostgreSQL store: server.json, files and the lock in the data folder
        store_path = paths.store_of(store) if store and not database else paths.default_store()
        if store_path.suffix == ".json":
            raise UsageError(
                f"{store_path} is a server's discovery file, not a store: give --store (or "
                f"{paths.STORE_ENV}) the SQLite file"
            )
        try:
            tls = tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load the TLS certificate or key: {e}") from None
        cfg = ServeConfig(
            store=store_path,
            database=database,
            token_file=token_file,
            api_host=api_host,
            api_port=api_port,
            store_max_bytes=store_max_mb * 1024 * 1024 if store_max_mb else None,
            heartbeat_interval=heartbeat_interval,
            authorize=authorize,
            api_tls=api_tls,
            tls_cert=tls_cert,
            tls_key=tls_key,
            public_url=public_url,
            public_tls_url=public_tls_url,
            files=not no_files,
            files_port=files_port,
            public_files_url=public_files_url,
            max_upload_bytes=int(max_upload_mb * (1 << 20)),
            frame_log=frame_log,
            frames_per_station=frames_per_station,
            frames_days=frames_days,
            budgets=Budgets(
                connectors=max_connectors,
                stored_per_day=int(max_stored_mb_per_day * (1 << 20)),
                payload=int(max_payload_kb * 1024),
                report=int(max_report_mb * (1 << 20)),
            ),
            retention=Retention(
                events_days=keep_events_days,
                meter_values_days=keep_meter_values_days,
                actions_days=keep_actions_days,
                events_max=keep_events_max or None,
            ),
            node_id=node_id,
            listener=ListenerSettings(
                host=ocpp_host,
                port=ocpp_port,
                tls_port=ocpp_tls_port,
                tls=tls,
                ping_interval=ping_interval or None,
                ping_timeout=ping_timeout,
                response_timeout=response_timeout,
                max_frame=max_frame,
                handshake_timeout=handshake_timeout,
                max_per_address=max_connections_per_address,
                max_rate=max_rate,
                burst=max(1, int(2 * max_rate)),
            ),
        )

        def ready(info: dict) -> None:
            log.info("admin API on %s", info["api_url"])
            log.info("OCPP on %s/<endpoint>", info["ocpp_url"])
            if info["ocpp_tls_url"]:
                log.info("OCPP over TLS on %s/<endpoint>", info["ocpp_tls_url"])
            if info["public_url"] != info["ocpp_url"]:
                log.info("stations are told to connect to %s/<endpoint>", info["public_url"])
            if info["public_tls_url"] and info["public_tls_url"] != info["ocpp_tls_url"]:
                log.info(
                    "TLS-profile stations are told to connect to %s/<endpoint>",
                    info["public_tls_url"],
                )
            if info["files_url"]:
                log.info(
                    "files on %s (stations are told %s)",
                    info["files_url"],
                    info["public_files_url"],
                )
            log.info("store %s", info["store"])
            tls = f" ocpp-tls {info['ocpp_tls_url']}" if info["ocpp_tls_url"] else ""
            files = f" files {info['files_url']}" if info["files_url"] else ""
            line = (
                f"edrvctl serve: api {info['api_url']} ocpp {info['ocpp_url']}{tls}{files} "
                f"loop {info['loop']}"
            )
            if log_format == "json":  # stderr stays one JSON object per line
                log.info(line)
            else:
                print(line, file=sys.stderr, flush=True)

        run(run_server(cfg, on_ready=ready))
    except EdrvError as e:
        if log_format != "json" or state.debug:
            raise
        # stderr stays one JSON object per line, the last one included
        log.error("%s%s", e.message, f"; {e.hint}" if e.hint else "")
        raise typer.Exit(e.exit_code) from None


def _check_public_url(url: str | None, scheme: str | tuple[str, ...], flag: str) -> None:
    from urllib.parse import urlsplit

    from edrvctl.errors import UsageError

    if url is None:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as e:
        raise UsageError(f"{flag} {url!r} is not a URL: {e}") from None
    schemes = (scheme,) if isinstance(scheme, str) else scheme
    if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
        port = {"ws": 9000, "wss": 9443}.get(schemes[0], 9001)
        raise UsageError(
            f"{flag} must be a {schemes[0]}:// base URL such as {schemes[0]}://cs.example.com:"
            f"{port}, not {url!r}"
        )


def wait_ready(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait at most; 0 asks once", min=0)
    ] = 30,
) -> None:
    """Wait until the admin API answers: for scripts that start `edrvctl serve &`.

    Asks the API the other commands would use (--api-url, EDRV_API_URL, the server on
    EDRVCTL_STORE, a context, or the local server), with their token, until it answers.
    Exit 0 once it does; 7 after --timeout; 4 if it refuses the token.

    Example:

      edrvctl serve & edrvctl wait-ready --timeout 30 && edrvctl cs list
    """
    import time

    from edrvctl.cli import state
    from edrvctl.cli.settings import resolve
    from edrvctl.client import Client
    from edrvctl.errors import AuthError, StationTimeout, Unavailable

    deadline = time.monotonic() + timeout
    while True:
        try:
            settings = resolve(state.api_url, state.context)
            client = Client(
                settings.api_url,
                settings.token,
                timeout=min(5.0, max(0.5, deadline - time.monotonic())),
                auth_hint=settings.token_hint,
            )
            try:
                client.request("GET", "/v1.1/chargestations", params={"paginate_limit": 1})
            finally:
                client.close()
        except (Unavailable, StationTimeout, AuthError) as e:
            # Nothing configured and the local server not up yet: whatever answers on the
            # default URL meanwhile is not it; keep waiting for the local one.
            if isinstance(e, AuthError) and settings.source != "default":
                raise
            if time.monotonic() >= deadline:
                raise StationTimeout(
                    f"not ready after {timeout:g} s: {e.message}",
                    hint=e.hint or "is `edrvctl serve` running? Its log says why it stopped",
                ) from None
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            continue
        print(f"ready: {settings.api_url}", file=sys.stderr)
        return
