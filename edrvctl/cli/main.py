"""The Typer app (`edrvctl.cli.app`). Heavy libraries (httpx, rich, ocpp, websockets) are
imported inside the commands that use them, so `--help` and completion stay fast. Command classes, help style,
global options and the error-to-exit-code mapping live in `edrvctl.cli.base`."""

from typing import Annotated

import typer

from edrvctl import __version__
from edrvctl.cli import output
from edrvctl.cli.base import Command, Root, state

__all__ = ["ALIASES", "app", "run", "state"]

app = typer.Typer(
    cls=Root,
    name="edrvctl",
    help="Fleet administration for EV chargestations, and an embedded OCPP central system.\n\n"
    "Start a server with `edrvctl serve`, then manage stations with `edrvctl cs COMMAND`. "
    "The options below may also follow the command (`edrvctl cs list --context prod`).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Rich help rendering costs ~0.1 s per call
)


def _version(value: bool) -> None:
    if value:
        print(f"edrvctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api-url",
            envvar="EDRV_API_URL",
            show_envvar=True,
            metavar="URL",
            help="Admin API base URL [default: the local server]",
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            envvar="EDRVCTL_CONTEXT",
            metavar="NAME",
            help="Named context from the config file",
        ),
    ] = None,
    color: Annotated[
        str, typer.Option("--color", help="Colour: auto, always or never", metavar="WHEN")
    ] = "auto",
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on errors (exit codes stay the same)")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit"
        ),
    ] = False,
) -> None:
    """Fleet administration for EV chargestations."""
    if color not in ("auto", "always", "never"):
        raise typer.BadParameter("use auto, always or never", param_hint="--color")
    state.api_url, state.context, state.debug = api_url, context, debug
    output.color_mode = color


from edrvctl.cli import (  # noqa: E402
    actions,
    chargestations,
    events,
    logs,
    nodes,
    serve,
    sessions,
    simulate,
    tokens,
    webhooks,
)

ALIASES = {"cs": "chargestations"}
app.add_typer(chargestations.app, name="chargestations", help="Manage chargestations (alias: cs).")
app.add_typer(chargestations.app, name="cs", help="Alias of `chargestations`.", hidden=True)
app.add_typer(
    sessions.app,
    name="sessions",
    help="Charging sessions: list, inspect and close them; start and stop them remotely.",
)
app.add_typer(actions.app, name="actions", help="The commands sent to stations, and their ends.")
app.add_typer(tokens.app, name="tokens", help="The id tokens that may charge (serve --authorize).")
app.command("events", cls=Command, short_help="What happened to the fleet, and as it happens.")(
    events.events
)
app.command("logs", cls=Command, short_help="Show a station's OCPP frames in and out.")(logs.logs)
app.add_typer(webhooks.app, name="webhooks", help="Receivers the server POSTs events to, signed.")
app.add_typer(nodes.app, name="nodes", help="The serve nodes sharing one PostgreSQL store.")
app.command("serve", cls=Command, short_help="Run the OCPP central system and the admin API.")(
    serve.serve
)
app.command(
    "wait-ready", cls=Command, short_help="Wait until the admin API answers (for scripts)."
)(serve.wait_ready)
app.command(
    "simulate", cls=Command, short_help="Run simulated chargestations against a central system."
)(simulate.simulate)


def run() -> None:
    app(prog_name="edrvctl")
