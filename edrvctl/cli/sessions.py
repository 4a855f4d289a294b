"""`edrvctl sessions`: start and stop charging sessions remotely (each command an Action)."""

from __future__ import annotations

from typing import Annotated

import typer

from edrvctl.cli.actions import TimeoutOpt, WaitOpt
from edrvctl.cli.base import Command, Group
from edrvctl.cli.chargestations import (
    ConnectorOpt,
    EvseOpt,
    OutputOpt,
    QuietOpt,
    Station,
    _client,
    _complete_station,
    _fmt,
)

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


@command()
def start(
    station: Station,
    id_tag: Annotated[
        str, typer.Option("--id-tag", metavar="TAG", help="The idTag the session is charged to")
    ],
    evse: EvseOpt = None,
    connector: ConnectorOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Start a charging session remotely (1.6 RemoteStartTransaction on --connector N;
    2.0.1 RequestStartTransaction on --evse N).

    With --wait, the command ends when the transaction has started; its id is in the
    Action's progress (`-o json`).

    Examples:

    \b
      edrvctl sessions start edrv01 --id-tag TAG-1 --connector 1 --wait
      edrvctl sessions start cp201 --id-tag TAG-1 --evse 1 -o json
    """
    from edrvctl.cli.actions import run

    body = {"chargestation": station, "idTag": id_tag}
    if evse is not None:
        body["evseId"] = evse  # type: ignore[assignment]
    if connector is not None:
        body["connectorId"] = connector  # type: ignore[assignment]
    run(_client(), "POST", "/v1.1/sessions", body, _fmt(out, quiet), timeout, wait)


@command()
def stop(
    session: Annotated[str, typer.Argument(metavar="SESSION", help="The session's transaction id")],
    station: Annotated[
        str,
        typer.Option(
            "--station",
            metavar="STATION",
            help="The station running it (_id or endpoint)",
            autocompletion=_complete_station,
        ),
    ],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stop a charging session remotely (1.6 RemoteStopTransaction, 2.0.1
    RequestStopTransaction).

    With --wait, the command ends when the transaction has ended.

    Example:

    \b
      edrvctl sessions stop 1234 --station edrv01 --wait
    """
    from urllib.parse import quote

    from edrvctl.cli.actions import run

    path = f"/v1.1/sessions/{quote(session, safe='')}/stop"
    run(_client(), "POST", path, {"chargestation": station}, _fmt(out, quiet), timeout, wait)
