"""`edrvctl serve`: run the OCPP central system and the admin API."""


import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edrvctl import paths


def serve(
    store: Annotated[Optional[Path], typer.Option(
        help="SQLite file [default: $XDG_DATA_HOME/edrvctl/edrvctl.db]",
        show_default=False)] = None,
    api_host: Annotated[str, typer.Option(help="Admin API address (loopback by default)")] =
        "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="Admin API port; 0 picks a free one",
                                          min=0, max=65535)] = 7780,
    ocpp_host: Annotated[str, typer.Option(help="Address stations connect to")] = "0.0.0.0",
    ocpp_port: Annotated[int, typer.Option(help="OCPP websocket port; 0 picks a free one",
                                           min=0, max=65535)] = 9000,
    heartbeat_interval: Annotated[int, typer.Option(
        help="Heartbeat interval given to stations at boot, seconds", min=1)] = 300,
    ping_interval: Annotated[float, typer.Option(
        help="Seconds between websocket pings; 0 disables them", min=0)] = 30,
    ping_timeout: Annotated[float, typer.Option(
        help="Seconds a station has to answer a ping before it is dropped", min=0.1)] = 60,
    response_timeout: Annotated[float, typer.Option(
        help="Default seconds to wait for a station's answer", min=0.1)] = 30,
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

    from edrvctl.server import ServeConfig, serve as run_server
    from edrvctl.server.logs import setup_logging

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    setup_logging(log_level.upper(), log_format)
    cfg = ServeConfig(
        store=(store or paths.default_store()).expanduser(), api_host=api_host, api_port=api_port,
        ocpp_host=ocpp_host, ocpp_port=ocpp_port, heartbeat_interval=heartbeat_interval,
        ping_interval=ping_interval or None, ping_timeout=ping_timeout,
        response_timeout=response_timeout)

    def ready(info: dict) -> None:
        log = logging.getLogger("edrvctl.serve")
        log.info("admin API on %s", info["api_url"])
        log.info("OCPP on %s/<endpoint>", info["ocpp_url"])
        log.info("store %s", info["store"])
        print(f"edrvctl serve: api {info['api_url']} ocpp {info['ocpp_url']}", file=sys.stderr,
              flush=True)

    asyncio.run(run_server(cfg, on_ready=ready))
