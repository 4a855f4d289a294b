"""`edrvctl actions`: list, inspect and watch the Actions (every command sent to a station), and the
helpers every station command uses to send one, print it and follow it (`--wait`)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.base import Command, Group, report
from edrvctl.errors import EdrvError, StationRejected, StationTimeout

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

ACTION_TYPES = (
    "reset",
    "unlock_connector",
    "change_availability",
    "trigger_message",
    "set_configuration",
    "clear_cache",
    "data_transfer",
    "remote_start",
    "remote_stop",
    "update_firmware",
    "get_diagnostics",
    "call",
    "send_local_list",
    "get_local_list_version",
)
POLL = 0.5  # s between two reads of an Action that --wait follows

TimeoutOpt = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        help="Seconds to wait for the station's answer (the server waits at most 120)",
        min=1,
        max=120,
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Follow the command to its end (reboot, transaction, download, upload), not "
        "only the station's answer",
    ),
]


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


def line(a: dict) -> str:
    """One line for an Action: `action/ID TYPE STATUS, stage S, outcome O`."""
    return (
        f"action/{a['_id']} {a['type']} {a['status']}, stage {a['stage']}, outcome {a['outcome']}"
    )


def failure(a: dict) -> EdrvError | None:
    """The error an Action that has ended badly stands for (exit 5 failed, 7 timed out)."""
    err = a.get("error") or {}
    text = err.get("description") or err.get("code") or a["outcome"]
    if a["outcome"] == "timed_out":
        return StationTimeout(f"{a['type']} {a['_id']} timed out: {text}")
    if a["outcome"] == "failed":
        return StationRejected(f"{a['type']} {a['_id']} failed: {text}")
    return None


def show(a: dict, fmt: str) -> None:
    from edrvctl.textsafe import printable

    if fmt in ("json", "yaml"):
        output.dump(a, fmt)
    elif fmt == "ids":
        print(printable(a["_id"]))
    else:
        print(printable(line(a)))
    if fmt not in ("json", "yaml") and a.get("note"):
        output.info(f"note: {a['note']}")


def follow(client, a: dict) -> dict:
    """Poll the Action until its outcome is no longer pending: a live stage line on a
    terminal (stderr), else one line per change."""
    if a["outcome"] != "pending":
        return a
    seen = (a["stage"], len(a.get("progress") or []))
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.text import Text

        from edrvctl.textsafe import printable

        def text(x: dict) -> Text:
            last = (x.get("progress") or [{}])[-1].get("status", "")
            return Text(printable(f"{x['type']} {x['_id']}: {x['stage']} {last}".rstrip()))

        with Console(stderr=True).status(text(a)) as status:
            while a["outcome"] == "pending":
                time.sleep(POLL)
                a = client.get_action(a["_id"])
                status.update(text(a))
        return a
    while a["outcome"] == "pending":
        time.sleep(POLL)
        a = client.get_action(a["_id"])
        now = (a["stage"], len(a.get("progress") or []))
        if now != seen:
            seen = now
            last = (a.get("progress") or [{}])[-1]
            output.info(f"{a['type']} {a['_id']}: stage {a['stage']} ({last.get('status', '')})")
    return a


def run(
    client,
    method: str,
    path: str,
    body: Any,
    fmt: str,
    timeout: float = 30.0,
    wait: bool = False,
    params: dict | None = None,
) -> list[dict]:
    """Send one command, print its Action, follow it with `wait`, and exit with the code of
    what happened (0 accepted; 5 refused, CALLERROR or failed; 7 no answer or timed out; 6
    offline; 2 not sendable). Returns the Actions when it did not exit."""
    result, error = client.act(method, path, body, params=params, wait=timeout)
    items = result if isinstance(result, list) else [result]
    if wait and error is None:
        items = [follow(client, a) for a in items]
        error = next((e for e in map(failure, items) if e is not None), None)
    if fmt in ("json", "yaml"):
        output.dump(items if isinstance(result, list) else items[0], fmt)
    else:
        for a in items:
            show(a, fmt)
    if error is None:
        error = next((e for a in items if a["status"] == "completed" and (e := failure(a))), None)
    if error is not None:
        report(error)
        raise typer.Exit(error.exit_code)
    return items


@command("list")
def list_(
    station: Annotated[
        str | None,
        typer.Option("--station", metavar="STATION", help="One station's _id or endpoint"),
    ] = None,
    type_: Annotated[
        str | None,
        typer.Option("--type", metavar="TYPE", help="One type: " + ", ".join(ACTION_TYPES)),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", metavar="STATUS", help="requested, completed or failed"),
    ] = None,
    outcome: Annotated[
        str | None,
        typer.Option(
            "--outcome", metavar="OUTCOME", help="pending, succeeded, failed or timed_out"
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="At most N actions", min=1)
    ] = 50,
    all_: Annotated[bool, typer.Option("--all", help="Every action, not only --limit")] = False,
    out: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FORMAT",
            help="table, wide, plain, json or yaml [default: table on a terminal, plain otherwise]",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print ids only")] = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header row")] = False,
) -> None:
    """List the actions (commands sent to stations), newest first.

    Examples:

    \b
      edrvctl actions list --station edrv01
      edrvctl actions list --status failed -o json
    """
    from edrvctl.cli.chargestations import _client
    from edrvctl.errors import UsageError

    if out is not None and out not in output.FORMATS:
        raise UsageError(f"--output must be one of {', '.join(output.FORMATS)}")
    filters = {
        k: v
        for k, v in (
            ("chargestation", station),
            ("type", type_),
            ("status", status),
            ("outcome", outcome),
        )
        if v is not None
    }
    fmt = output.resolve_format(out, quiet)
    docs = list(_client().list_actions(filters, None if all_ else limit))
    if fmt == "ids":
        sys.stdout.write("".join(a["_id"] + "\n" for a in docs))
        return
    if fmt in ("json", "yaml"):
        output.dump(docs, fmt)
        return
    headers = ["ID", "TYPE", "STATION", "STATUS", "STAGE", "OUTCOME", "CREATED"]
    rows = [
        [
            a["_id"],
            a["type"],
            a["chargestation"],
            a["status"],
            a["stage"],
            a["outcome"],
            a["createdAt"],
        ]
        for a in docs
    ]
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
    else:
        output.table(headers, rows, no_headers=no_headers, drop_order=("STATION", "STAGE"))
        if not docs:
            output.info("no actions found")


@command()
def inspect(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="The action's _id")],
    out: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="FORMAT", help="yaml (default) or json", show_default=False
        ),
    ] = None,
    wait: WaitOpt = False,
) -> None:
    """Show one action in full: what was asked, the answer, every follow-up, the outcome.

    Examples:

    \b
      edrvctl actions inspect 6650f1c2a1b2c3d4e5f60718
      edrvctl actions inspect 6650f1c2a1b2c3d4e5f60718 --wait -o json
    """
    from edrvctl.cli.chargestations import _client

    client = _client()
    a = client.get_action(action)
    if wait:
        a = follow(client, a)
    output.dump(a, "json" if out == "json" else "yaml")


@command()
def watch(
    action: Annotated[
        str | None, typer.Argument(metavar="ACTION", help="The action's _id", show_default=False)
    ] = None,
    station: Annotated[
        str | None,
        typer.Option(
            "--station", metavar="STATION", help="The newest action of this station instead"
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FORMAT",
            help="plain line (default), json or yaml",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Follow an action until its outcome is final, then print it (exit 5 failed, 7 timed out).

    Examples:

    \b
      edrvctl actions watch 6650f1c2a1b2c3d4e5f60718
      edrvctl actions watch --station edrv01
    """
    from edrvctl.cli.chargestations import _client
    from edrvctl.errors import NotFound, UsageError

    if (action is None) == (station is None):
        raise UsageError("give an ACTION or --station STATION (one of them)")
    client = _client()
    if action is not None:
        a = client.get_action(action)
    else:
        newest = list(client.list_actions({"chargestation": station}, 1))
        if not newest:
            raise NotFound(f"no action for chargestation {station!r}")
        a = newest[0]
    a = follow(client, a)
    show(a, out if out in ("json", "yaml") else "plain")
    error = failure(a)
    if error is not None:
        report(error)
        raise typer.Exit(error.exit_code)
