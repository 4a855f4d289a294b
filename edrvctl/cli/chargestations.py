"""`edrvctl chargestations` (alias `cs`): list, create, inspect, activate, deactivate, delete,
config."""

import sys
from enum import Enum
from typing import Annotated

import typer

from edrvctl.cli import output
from edrvctl.constants import PROTOCOLS, STATUSES
from edrvctl.errors import UsageError

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

# Choices for Typer, made from the constants (member names like "ocpp1.6" cannot be class
# attributes); mypy cannot see the members of an Enum made this way.
Format = Enum("Format", {f: f for f in output.FORMATS}, type=str)  # type: ignore[misc]
ProtocolName = Enum("ProtocolName", {p: p for p in PROTOCOLS}, type=str)  # type: ignore[misc]
StatusName = Enum("StatusName", {s: s for s in STATUSES}, type=str)  # type: ignore[misc]
SECURITY_TYPES = ("none", "basic_auth", "tls_basic_auth", "tls_client_cert")
SecurityName = Enum("SecurityName", {s: s for s in SECURITY_TYPES}, type=str)  # type: ignore[misc]


def _complete_station(incomplete: str):
    from edrvctl.completion import station_candidates

    return station_candidates(incomplete)


Station = Annotated[
    str,
    typer.Argument(
        help="The station's _id or endpoint", metavar="STATION", autocompletion=_complete_station
    ),
]
OutputOpt = Annotated[
    Format | None,
    typer.Option(
        "-o",
        "--output",
        help="table | wide | plain | json | yaml [default: table on a terminal, plain otherwise]",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print ids only")]
YesOpt = Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")]


def _client():
    from edrvctl.cli import state
    from edrvctl.cli.settings import resolve
    from edrvctl.client import Client

    settings = resolve(state.api_url, state.context)
    return Client(settings.api_url, settings.token, auth_hint=settings.token_hint)


def _fmt(o: Format | None, quiet: bool = False) -> str:
    return output.resolve_format(o.value if o else None, quiet)


def _confirm(verb: str, station: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"refusing to {verb} {station} without confirmation: stdin is not a "
            "terminal; pass --yes"
        )
    if not typer.confirm(f"{verb.capitalize()} chargestation {station}?", err=True):
        output.info("nothing changed")
        raise typer.Exit(1)


def _done(doc: dict, verb: str, fmt: str) -> None:
    if fmt in ("json", "yaml"):
        output.dump(doc, fmt)
    elif fmt == "ids":
        print(doc["_id"])
    else:
        print(f"chargestation/{doc['endpoint']} {verb}")


@app.command("list")
def list_(
    online: Annotated[
        bool | None,
        typer.Option(
            "--online/--offline", help="Only stations that are (not) connected", show_default=False
        ),
    ] = None,
    active: Annotated[
        bool | None,
        typer.Option(
            "--active/--inactive", help="Only stations that are (not) active", show_default=False
        ),
    ] = None,
    status: Annotated[
        StatusName | None, typer.Option(help="Only stations with this status", show_default=False)
    ] = None,
    protocol: Annotated[
        ProtocolName | None, typer.Option(help="Only this OCPP version", show_default=False)
    ] = None,
    location: Annotated[str | None, typer.Option(help="Only this location id")] = None,
    organization: Annotated[str | None, typer.Option(help="Only this organization")] = None,
    limit: Annotated[int, typer.Option(help="At most this many stations", min=1)] = 100,
    all_: Annotated[bool, typer.Option("--all", help="Every matching station (no limit)")] = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header row")] = False,
) -> None:
    """List chargestations, newest first.

    Examples:

      edrvctl cs list --online

      edrvctl cs list --status Faulted -o json

      edrvctl cs list -q --inactive | xargs -n1 edrvctl cs activate
    """
    filters = {
        k: v
        for k, v in {
            "online": None if online is None else str(online).lower(),
            "active": None if active is None else str(active).lower(),
            "status": status.value if status else None,
            "protocol": protocol.value if protocol else None,
            "location": location,
            "organization": organization,
        }.items()
        if v is not None
    }
    client = _client()
    docs = list(client.list_stations(filters, None if all_ else limit + 1))
    more = not all_ and len(docs) > limit
    docs = docs[:limit] if more else docs
    from edrvctl.completion import remember

    remember(client.api_url, docs, replace=all_ and not filters)
    output.stations(docs, _fmt(out, quiet), no_headers)
    if more and sys.stderr.isatty():
        output.info(f"(showing the first {limit}; use --limit N or --all for more)")


@app.command()
def create(
    endpoint: Annotated[str, typer.Argument(help="OCPP identity the station connects with")],
    protocol: Annotated[ProtocolName, typer.Option(help="OCPP version")] = ProtocolName["ocpp1.6"],
    location: Annotated[str | None, typer.Option(help="Location id")] = None,
    organization: Annotated[str | None, typer.Option(help="Organization id")] = None,
    public: Annotated[bool, typer.Option(help="Visible to the public")] = False,
    simulator: Annotated[bool, typer.Option("--simulator", help="Mark as a simulator")] = False,
    inactive: Annotated[bool, typer.Option("--inactive", help="Create it deactivated")] = False,
    security: Annotated[
        SecurityName,
        typer.Option(
            help="OCPP security profile: none, basic_auth (1), tls_basic_auth (2), "
            "tls_client_cert (3)"
        ),
    ] = SecurityName["none"],
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create a chargestation; it may then connect to ws://HOST:PORT/ENDPOINT.

    With --security basic_auth or tls_basic_auth a strong password is generated and shown
    this once (stderr, or `password` with -o json); only its hash is kept.

    Examples:

      edrvctl cs create edrv01

      edrvctl cs create CP-0042 --protocol ocpp2.0.1 --location depot-north -q

      edrvctl cs create edrv03 --security basic_auth -o json
    """
    body = {
        "endpoint": endpoint,
        "protocol": protocol.value,
        "public": public,
        "is_simulator": simulator,
        "active": not inactive,
        "security": {"type": security.value},
    }
    body.update({k: v for k, v in (("location", location), ("organization", organization)) if v})
    client = _client()
    doc = client.create_station(body)
    from edrvctl.completion import remember

    remember(client.api_url, [doc])
    fmt = _fmt(out, quiet)
    _done(doc, "created", fmt)
    _show_password(doc, fmt)
    if fmt not in ("json", "yaml", "ids") and sys.stderr.isatty():
        output.info(f"point the station at {doc.get('connection_url')}/{doc['endpoint']}")


def _show_password(doc: dict, fmt: str) -> None:
    """A new password is shown once: inside -o json/yaml output, else on stderr (never in -q
    id lists that scripts pipe on)."""
    if doc.get("password") and fmt not in ("json", "yaml"):
        output.info(
            f"password for {doc['endpoint']} (shown once; username = endpoint): {doc['password']}"
        )


@app.command()
def inspect(station: Station, out: OutputOpt = None) -> None:
    """Show everything about one chargestation, including its stored csconfig.

    Examples:

      edrvctl cs inspect edrv01

      edrvctl cs inspect 5eb0c0d2f8a1b2c3d4e5f601 -o yaml
    """
    output.station(_client().get_station(station), _fmt(out))


def _set_active(station: str, active: bool, out: Format | None, quiet: bool) -> None:
    doc = _client().update_station(station, {"active": active})
    _done(doc, "activated" if active else "deactivated", _fmt(out, quiet))


@app.command()
def activate(station: Station, out: OutputOpt = None, quiet: QuietOpt = False) -> None:
    """Activate a chargestation: it may charge again (a connected one is told Operative).

    Example:

      edrvctl cs activate edrv01
    """
    _set_active(station, True, out, quiet)


@app.command()
def deactivate(
    station: Station, yes: YesOpt = False, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Deactivate a chargestation: it cannot start charging (a connected one is told
    Inoperative), and commands to it are refused.

    Example:

      edrvctl cs deactivate edrv01 --yes
    """
    _confirm("deactivate", station, yes)
    _set_active(station, False, out, quiet)


@app.command()
def delete(
    station: Station, yes: YesOpt = False, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Delete a chargestation and what it reported; a connected one is disconnected.

    Example:

      edrvctl cs delete edrv01 --yes
    """
    _confirm("delete", station, yes)
    client = _client()
    doc = client.delete_station(station)
    from edrvctl.completion import remember

    remember(client.api_url, [], forget=[doc["endpoint"]])
    _done(doc, "deleted", _fmt(out, quiet))


@app.command("rotate-password")
def rotate_password(station: Station, yes: YesOpt = False, out: OutputOpt = None) -> None:
    """Issue a new password for a station and retire the old one at once. A station connected
    with the old one is disconnected until it is given the new one.

    Example:

      edrvctl cs rotate-password edrv03 --yes -o json
    """
    _confirm("rotate the password of", station, yes)
    fmt = _fmt(out)
    doc = _client().rotate_password(station)
    _done(doc, "password rotated", fmt)
    _show_password(doc, fmt)


@app.command()
def config(
    station: Station,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            help="Only this key (1.6 name, or Component.Variable for 2.0.1); repeatable",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the station", min=0.1, max=300)
    ] = 30.0,
    out: OutputOpt = None,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header row")] = False,
) -> None:
    """Fetch the live station's configuration (csconfig), store it, and print it.

    OCPP 1.6 uses GetConfiguration; 2.0.1 uses GetBaseReport, or GetVariables with --key.
    The stored copy stays readable with `inspect` while the station is offline.

    Examples:

      edrvctl cs config edrv01

      edrvctl cs config edrv01 -k HeartbeatInterval -k MeterValueSampleInterval -o json

      edrvctl cs config cp201 -k OCPPCommCtrlr.HeartbeatInterval
    """
    client = _client()
    fmt = _fmt(out)
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(f"asking {station} for its configuration..."):
            result = client.get_variables(station, key or [], timeout)
    else:
        result = client.get_variables(station, key or [], timeout)
    output.config(result["csconfig"], fmt, no_headers=no_headers)
    if result.get("unknownKeys"):
        output.info("unknown to the station: " + ", ".join(result["unknownKeys"]))
