"""`edrvctl serve`: run the OCPP central system and the admin API."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from edrvctl import paths


def serve(
    store: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file [default: $XDG_DATA_HOME/edrvctl/edrvctl.db]", show_default=False
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
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
) -> None:
    """Run the OCPP central system and the admin API until SIGINT/SIGTERM.

    Stations connect to ws://OCPP_HOST:OCPP_PORT/<endpoint> with OCPP 1.6-J or 2.0.1. The
    admin token is EDRV_TOKEN, or one created beside the store (mode 0600) that the CLI finds.

    Examples:

      edrvctl serve

      edrvctl serve --store ./fleet.db --api-port 0 --ocpp-port 0
    """
    import asyncio
    import logging
    import ssl

    from edrvctl.errors import UsageError
    from edrvctl.fleet import Budgets
    from edrvctl.server import ServeConfig, is_loopback, tls_context
    from edrvctl.server import serve as run_server
    from edrvctl.server.listener import ListenerSettings
    from edrvctl.server.logs import setup_logging

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if (tls_client_ca or api_tls) and not tls_cert:
        raise UsageError("--tls-client-ca and --api-tls need --tls-cert and --tls-key")
    if not is_loopback(api_host) and not api_tls and not insecure_api:
        raise UsageError(
            f"refusing to serve the admin API on {api_host} without TLS: add "
            "--api-tls (with --tls-cert/--tls-key), or --insecure-api if a proxy "
            "in front of it does TLS"
        )
    try:
        tls = tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load the TLS certificate or key: {e}") from None
    setup_logging(log_level.upper(), log_format)
    cfg = ServeConfig(
        store=(store or paths.default_store()).expanduser(),
        api_host=api_host,
        api_port=api_port,
        store_max_bytes=store_max_mb * 1024 * 1024 if store_max_mb else None,
        heartbeat_interval=heartbeat_interval,
        api_tls=api_tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        budgets=Budgets(
            connectors=max_connectors,
            stored_per_day=int(max_stored_mb_per_day * (1 << 20)),
            payload=int(max_payload_kb * 1024),
            report=int(max_report_mb * (1 << 20)),
        ),
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
        log = logging.getLogger("edrvctl.serve")
        log.info("admin API on %s", info["api_url"])
        log.info("OCPP on %s/<endpoint>", info["ocpp_url"])
        if info["ocpp_tls_url"]:
            log.info("OCPP over TLS on %s/<endpoint>", info["ocpp_tls_url"])
        log.info("store %s", info["store"])
        tls = f" ocpp-tls {info['ocpp_tls_url']}" if info["ocpp_tls_url"] else ""
        line = f"edrvctl serve: api {info['api_url']} ocpp {info['ocpp_url']}{tls}"
        if log_format == "json":  # stderr stays one JSON object per line
            log.info(line)
        else:
            print(line, file=sys.stderr, flush=True)

    asyncio.run(run_server(cfg, on_ready=ready))
