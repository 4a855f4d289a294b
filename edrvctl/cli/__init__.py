"""The Typer app. Heavy libraries (httpx, rich tables, ocpp, websockets) are imported inside
the commands that use them, so `--help` and completion stay fast."""

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from edrvctl import __version__
from edrvctl.cli import output
from edrvctl.errors import EXIT_INTERRUPTED, EdrvError


class Root(TyperGroup):
    """The one place where failures become a message on stderr and a documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdrvError as e:
            if state.debug:
                raise
            print(f"error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"hint: {e.hint}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=Root,
    name="edrvctl",
    help="Fleet administration for EV chargestations, and an embedded OCPP central system.\n\n"
    "Start a server with `edrvctl serve`, then manage stations with `edrvctl cs ...`.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: Rich help rendering costs ~0.1 s per call
)


class State:
    api_url: str | None = None
    context: str | None = None
    debug: bool = False


state = State()


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
            help="Admin API base URL [default: the local server]",
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context", envvar="EDRVCTL_CONTEXT", help="Named context from the config file"
        ),
    ] = None,
    color: Annotated[
        str, typer.Option("--color", help="Colour: auto, always or never", metavar="WHEN")
    ] = "auto",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors")] = False,
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


from edrvctl.cli import chargestations, serve, simulate  # noqa: E402

ALIASES = {"cs": "chargestations"}
app.add_typer(chargestations.app, name="chargestations", help="Manage chargestations (alias: cs).")
app.add_typer(chargestations.app, name="cs", help="Alias of `chargestations`.", hidden=True)
app.command("serve")(serve.serve)
app.command("wait-ready")(serve.wait_ready)
app.command("simulate")(simulate.simulate)


def run() -> None:
    app(prog_name="edrvctl")
