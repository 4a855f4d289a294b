"""`edrvctl simulate`: run simulated chargestations against a central system."""

import sys
from enum import Enum
from typing import Annotated

import typer

from edrvctl.cli import output

# Choices for Typer (member names like "ocpp1.6" cannot be class attributes); mypy cannot see
# the members of an Enum made this way.
SimProtocol = Enum(  # type: ignore[misc]
    "SimProtocol", {p: p for p in ("ocpp1.6", "ocpp2.0.1", "mixed")}, type=str
)
SummaryFormat = Enum(  # type: ignore[misc]
    "SummaryFormat", {f: f for f in ("text", "json")}, type=str
)


def _local_ocpp_url() -> str | None:
    import json

    from edrvctl import paths

    try:
        return json.loads(paths.server_file(paths.default_store()).read_text())["ocpp_url"]
    except (OSError, ValueError, KeyError):
        return None


def _register(endpoints: list[tuple[str, str]]) -> int:
    """Create the stations through the admin API (marked is_simulator); existing ones are
    kept. Returns how many were created."""
    from edrvctl.cli.chargestations import _client
    from edrvctl.errors import Conflict

    client, created = _client(), 0
    for endpoint, protocol in endpoints:
        try:
            client.create_station(
                {"endpoint": endpoint, "protocol": protocol, "is_simulator": True}
            )
            created += 1
        except Conflict:
            doc = client.get_station(endpoint)
            if doc["protocol"] != protocol:
                output.info(
                    f"warning: {endpoint} exists with {doc['protocol']}; it will be "
                    f"refused when it offers {protocol}"
                )
    return created


def simulate(
    url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Central system's OCPP URL, e.g. ws://127.0.0.1:9000 [default: the local server]",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option("--count", "-n", metavar="N", help="How many stations", min=1, max=100_000),
    ] = 1,
    protocol: Annotated[
        SimProtocol,
        typer.Option(metavar="PROTOCOL", case_sensitive=False, help="ocpp1.6, ocpp2.0.1 or mixed"),
    ] = SimProtocol["ocpp1.6"],
    prefix: Annotated[
        str, typer.Option(metavar="PREFIX", help="Endpoints are PREFIX00001, PREFIX00002 and on")
    ] = "SIM",
    password: Annotated[
        str | None,
        typer.Option(
            metavar="PASSWORD",
            envvar="EDRV_STATION_PASSWORD",
            show_envvar=True,
            help="HTTP Basic password the stations send (security profiles 1 and 2); '-' reads "
            "it from stdin. The variable keeps it out of `ps`",
            show_default=False,
        ),
    ] = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Register the stations through the admin API first (marked is_simulator)",
        ),
    ] = False,
    connectors: Annotated[
        int, typer.Option(metavar="N", help="Connectors per station", min=1, max=8)
    ] = 2,
    sessions: Annotated[
        bool,
        typer.Option(
            "--sessions", help="Run charging sessions: authorize, start, meter values, stop"
        ),
    ] = False,
    meter_interval: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds between meter values in a session", min=0.1),
    ] = 10,
    heartbeat: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Heartbeat this often instead of the interval the server gives",
            min=0.1,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="Stop after this long [default: run until Ctrl-C]", min=0.1
        ),
    ] = None,
    out: Annotated[
        SummaryFormat | None,
        typer.Option(
            "-o", "--output", metavar="FORMAT", help="text or json: the final summary on stdout"
        ),
    ] = None,
) -> None:
    """Run simulated chargestations against a central system.

    They boot, heartbeat, report status and answer the central system like real hardware,
    reconnecting when it goes away. Stations created with --security basic_auth need the
    password `cs create` showed: --password, or better EDRV_STATION_PASSWORD. If no station
    ever got an answer, the exit code says why: 4 refused for the password, 3 unknown
    endpoints, 6 nothing reachable.

    Examples:

    \b
      edrvctl simulate --create -n 10
      edrvctl simulate --url ws://127.0.0.1:9000 -n 1000 --protocol mixed --sessions
      edrvctl simulate -n 5 --duration 30 -o json
      EDRV_STATION_PASSWORD=... edrvctl simulate --duration 60
    """
    import asyncio
    import signal

    from edrvctl.errors import UsageError

    url = url or _local_ocpp_url()
    if not url:
        raise UsageError(
            "no central system to connect to: pass --url ws://HOST:PORT, or start "
            "one with `edrvctl serve`"
        )
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--url must start with ws:// or wss://, not {url!r}")
    if password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    if password == "":
        raise UsageError("the station password is empty")
    protos = ("ocpp1.6", "ocpp2.0.1")
    endpoints = [
        (f"{prefix}{i:05d}", protos[(i - 1) % 2] if protocol.value == "mixed" else protocol.value)
        for i in range(1, count + 1)
    ]
    if create:
        created = _register(endpoints)
        output.info(f"registered {created} new station(s)")

    async def run() -> dict:
        from edrvctl.simulator import run_fleet

        fleet = await run_fleet(
            url,
            count,
            protocol.value,
            prefix=prefix,
            connectors=connectors,
            sessions=sessions,
            meter_interval=meter_interval,
            heartbeat_interval_override=heartbeat,
            password=password,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if duration:
            loop.call_later(duration, stop.set)
        try:
            if sys.stderr.isatty():
                await _live_summary(fleet, stop)
            else:
                await stop.wait()
        finally:
            summary = fleet.summary()
            await fleet.stop()
        return summary.__dict__

    summary = asyncio.run(run())
    if out and out.value == "json":
        output.dump(summary, "json")
    else:
        print(
            f"{summary['booted']}/{summary['total']} booted, {summary['sent']} calls sent, "
            f"{summary['errors']} errors, {summary['reconnects']} reconnects in "
            f"{summary['elapsed']:.0f} s"
        )
    if not summary["received"]:
        raise _nothing_connected(url, summary["last_errors"], password is not None)
    if summary["last_errors"]:
        output.info("warning: not connected at the end: " + _reasons(summary["last_errors"]))


def _reasons(last_errors: dict[str, int]) -> str:
    return "; ".join(
        f"{reason} ({n} station{'s' if n > 1 else ''})" for reason, n in last_errors.items()
    )


def _nothing_connected(url: str, last_errors: dict[str, int], with_password: bool):
    """The error for a run in which no station ever got an answer: its exit code says why
    (the most common reason)."""
    from edrvctl.errors import AuthError, NotFound, Unavailable

    message = f"no simulated station got an answer from {url}"
    reason = next(iter(last_errors), "")
    message += f": {_reasons(last_errors)}" if last_errors else " (the run ended first)"
    if reason in ("HTTP 401", "HTTP 403"):
        return AuthError(
            message,
            hint="the stations' security profile needs a password or TLS: give the one "
            "`edrvctl cs create` or `cs rotate-password` showed with EDRV_STATION_PASSWORD"
            if not with_password
            else "the password is wrong: `edrvctl cs rotate-password STATION` issues a new one",
        )
    if reason == "HTTP 404":
        return NotFound(message, hint="the server does not know these endpoints: add --create")
    return Unavailable(
        message,
        hint="is `edrvctl serve` running there? (a longer --duration gives slow servers time)",
    )


async def _live_summary(fleet, stop) -> None:
    import asyncio

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from edrvctl.textsafe import printable

    def line() -> Text:  # Text: what a server or the network said is never read as markup
        s = fleet.summary()
        errors = "; ".join(f"{printable(k)} x{v}" for k, v in s.last_errors.items())
        return Text(
            f"stations {s.total}  connected {s.connected}  booted {s.booted}  "
            f"msgs/s {s.msgs_per_s:.0f}  errors {s.errors}  reconnects {s.reconnects}"
            + (f"\n  offline because: {errors}" if errors else "")
            + "\n  Ctrl-C stops"
        )

    console = Console(
        stderr=True,
        no_color=not output.use_color(sys.stderr),
        markup=False,
        emoji=False,
        highlight=False,
    )
    with Live(line(), console=console, refresh_per_second=4, transient=True) as live:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            live.update(line())
