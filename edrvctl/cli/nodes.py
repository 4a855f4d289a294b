"""`edrvctl nodes`: the `serve` nodes sharing one PostgreSQL store, and moving stations between
them (server/cluster.py). Against a server running alone each says so and exits 2."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edrvctl.cli import output
from edrvctl.cli.base import Command, Group
from edrvctl.cli.chargestations import NoHeadersOpt, OutputOpt, _client, _fmt

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

NodeId = Annotated[str, typer.Argument(metavar="ID", help="The node's --node-id")]


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


@command("list")
def list_nodes(out: OutputOpt = None, no_headers: NoHeadersOpt = False) -> None:
    """List the nodes: id, admin URL, lease, stations held, started.

    Examples:

    \b
      edrvctl nodes list
      edrvctl nodes list -o json
    """
    from edrvctl.timefmt import ago

    found = _client().request("GET", "/v1.1/nodes")["result"]
    fmt = _fmt(out)
    if fmt in ("json", "yaml"):
        output.dump(found, fmt)
        return
    if fmt == "ids":
        from edrvctl.textsafe import printable

        sys.stdout.write("".join(printable(n["_id"]) + "\n" for n in found))
        return
    headers = ["ID", "API URL", "LEASE", "STATIONS", "STARTED"]
    rows = [
        [
            n["_id"],
            n.get("apiUrl") or "-",
            ("live" if n["live"] else "EXPIRED")
            + ("" if fmt == "plain" else f" (until {ago(n['leaseUntil'])})"),
            n["stations"],
            n["startedAt"] if fmt == "plain" else ago(n["startedAt"]),
        ]
        for n in found
    ]
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
    else:
        output.table(headers, rows, no_headers=no_headers)


@command()
def drain(node: NodeId) -> None:
    """Move every station off a node, 20 a second: each is closed with 1012 (service restart)
    and reconnects through the load balancer to another node. The node's /health turns 503,
    so it takes no new stations until it is restarted.

    Examples:

    \b
      edrvctl nodes drain n2
    """
    from urllib.parse import quote

    got = _client().request("POST", f"/v1.1/nodes/{quote(node, safe='')}/drain")
    output.info(got["message"])


@command()
def rebalance(
    max_pct: Annotated[
        str,
        typer.Option("--max", metavar="PCT", help="The most a node sheds, in % of its stations"),
    ] = "30%",
) -> None:
    """Move stations from the nodes above the mean to the others, at most --max of each
    node's stations, 20 a second. Nothing moves back on its own after a node restarts: run
    this once it is up.

    Examples:

    \b
      edrvctl nodes rebalance
      edrvctl nodes rebalance --max 10%
    """
    from edrvctl.errors import UsageError

    try:
        share = float(max_pct.rstrip("%"))
    except ValueError:
        raise UsageError(f"--max takes a percentage like 30%, not {max_pct!r}") from None
    if not 0 < share <= 100:
        raise UsageError("--max is a percentage above 0 and at most 100")
    got = _client().request("POST", "/v1.1/nodes/rebalance", body={"max": share})
    for node, n in sorted(got["result"]["moves"].items()):
        output.info(f"{node}: {n} station(s) moving")
    output.info(got["message"])
