"""`edrvctl chargestations` (alias `cs`): list, create, inspect, update, activate, deactivate,
delete, rotate-password, config; and the commands that operate a station (reset, unlock,
availability, trigger, configure, clear-cache, data-transfer, call, update-firmware, diagnostics)."""

import sys
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.base import Command, Group, confirm, report
from edrvctl.constants import PROTOCOLS, STATUSES
from edrvctl.errors import Conflict, EdrvError, NotFound, UsageError

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def command(name: str | None = None, **kw):
    """`app.command` with edrvctl's help style."""
    return app.command(name, cls=Command, **kw)


# Choices for Typer, made from the constants (member names like "ocpp1.6" cannot be class
# attributes); mypy cannot see the members of an Enum made this way.
Format = Enum("Format", {f: f for f in output.FORMATS}, type=str)  # type: ignore[misc]
ProtocolName = Enum("ProtocolName", {p: p for p in PROTOCOLS}, type=str)  # type: ignore[misc]
StatusName = Enum("StatusName", {s: s for s in STATUSES}, type=str)  # type: ignore[misc]
SECURITY_TYPES = ("none", "basic_auth", "tls_basic_auth", "tls_client_cert")
SecurityName = Enum("SecurityName", {s: s for s in SECURITY_TYPES}, type=str)  # type: ignore[misc]
AuthorizeName = Enum(  # type: ignore[misc]
    "AuthorizeName", {p: p for p in ("open", "known", "server")}, type=str
)
AuthorizeOpt = Annotated[
    AuthorizeName | None,
    typer.Option(
        metavar="POLICY",
        case_sensitive=False,
        help="Who may charge here: open (every id tag), known (stored tokens only; "
        "`edrvctl tokens`), or server (the server's --authorize, the default)",
        show_default=False,
    ),
]
SECURITY_HELP = (
    "OCPP security profile: none (0), basic_auth (1), tls_basic_auth (2), tls_client_cert (3)"
)


def _complete_station(incomplete: str):
    from edrvctl.completion import station_candidates

    return station_candidates(incomplete)


Station = Annotated[
    str,
    typer.Argument(
        help="The station's _id or endpoint", metavar="STATION", autocompletion=_complete_station
    ),
]
Stations = Annotated[
    list[str],
    typer.Argument(
        help="The stations' _ids or endpoints", metavar="STATION", autocompletion=_complete_station
    ),
]
OutputOpt = Annotated[
    Format | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FORMAT",
        help="table, wide, plain, json or yaml [default: table on a terminal, plain otherwise]",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print ids only")]
YesOpt = Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation")]
NoHeadersOpt = Annotated[bool, typer.Option("--no-headers", help="Omit the header row")]


def _client():
    from edrvctl.cli.base import state
    from edrvctl.cli.settings import resolve
    from edrvctl.client import Client

    settings = resolve(state.api_url, state.context)
    return Client(settings.api_url, settings.token, auth_hint=settings.token_hint)


def _fmt(o: Format | None, quiet: bool = False) -> str:
    return output.resolve_format(o.value if o else None, quiet)


def _confirm(verb: str, stations: list[str] | str, yes: bool) -> None:
    if yes:
        return
    names = [stations] if isinstance(stations, str) else stations
    what = names[0] if len(names) == 1 else f"{len(names)} chargestations ({', '.join(names)})"
    if not sys.stdin.isatty():
        raise UsageError(
            f"refusing to {verb} {what} without confirmation: stdin is not a terminal; pass --yes"
        )
    noun = "chargestation " if len(names) == 1 else ""
    if not confirm(f"{verb.capitalize()} {noun}{what}?"):
        output.info("nothing changed")
        raise typer.Exit(1)


def _done(doc: dict, verb: str, fmt: str) -> None:
    from edrvctl.textsafe import printable

    if fmt in ("json", "yaml"):
        output.dump(doc, fmt)
    elif fmt == "ids":
        print(printable(doc["_id"]))
    else:
        print(f"chargestation/{printable(doc['endpoint'])} {verb}")


def _each(client_call, keys: list[str]) -> tuple[list[dict], EdrvError | None]:
    """client_call(key) for each station; a failure about one station (not found, conflict,
    bad name) is reported and the others go on. Returns the results and the first failure."""
    docs, failed = [], None
    for key in keys:
        try:
            docs.append(client_call(key))
        except (NotFound, Conflict, UsageError) as e:
            if len(keys) == 1:
                raise
            report(e)
            failed = failed or e
    return docs, failed


@command("list")
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
        StatusName | None,
        typer.Option(
            metavar="STATUS",
            case_sensitive=False,
            help="Only stations with this status: " + ", ".join(STATUSES) + " (any case)",
            show_default=False,
        ),
    ] = None,
    protocol: Annotated[
        ProtocolName | None,
        typer.Option(
            metavar="PROTOCOL",
            case_sensitive=False,
            help="Only this OCPP version: ocpp1.6 or ocpp2.0.1",
            show_default=False,
        ),
    ] = None,
    location: Annotated[
        str | None, typer.Option(metavar="LOCATION", help="Only this location id")
    ] = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Only this organization")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", help="At most this many stations", min=1)
    ] = 100,
    all_: Annotated[bool, typer.Option("--all", help="Every matching station (no limit)")] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Then redraw whenever a station changes (on a terminal; otherwise one line "
            "per change). Ctrl-C ends",
        ),
    ] = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List chargestations, newest first.

    A table fits the terminal: the ID column goes first when it is narrow (the endpoint names
    a station too), then other columns; `-o plain` and `-o json` always have every field.

    Examples:

    \b
      edrvctl cs list --online
      edrvctl cs list --status faulted -o json
      edrvctl cs list -q --inactive | xargs -n1 edrvctl cs activate
      edrvctl cs list --online --watch
    """
    from edrvctl.cli import fast
    from edrvctl.cli.base import state

    filters = fast.station_filters(
        online,
        active,
        status.value if status else None,
        protocol.value if protocol else None,
        location,
        organization,
    )

    def show() -> None:
        fast.show(state.api_url, state.context, filters, limit, all_, _fmt(out, quiet), no_headers)

    if not watch:
        show()
        return
    from edrvctl.cli import events

    events.watch(_client(), {"type": "chargestation.*"}, show)


@command()
def unknown(
    out: OutputOpt = None,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List the endpoints that tried to connect but are no chargestation (last seen first):
    a station pointed here before it was created, or a typo in its URL. `cs create` of one
    takes it off the list.

    Examples:

    \b
      edrvctl cs unknown
      edrvctl cs unknown -o json
    """
    from edrvctl.timefmt import ago

    found = _client().request("GET", "/v1.1/unknown_chargestations")["result"]
    fmt = _fmt(out)
    if fmt in ("json", "yaml"):
        output.dump(found, fmt)
        return
    if fmt == "ids":
        sys.stdout.write("".join(output.printable(u["endpoint"]) + "\n" for u in found))
        return
    headers = ["ENDPOINT", "SEEN", "LAST ADDRESS", "SUBPROTOCOLS", "LAST SEEN", "FIRST SEEN"]
    rows = [
        [
            u["endpoint"],
            u["seen"],
            u.get("address") or "-",
            ",".join(u.get("subprotocols") or []) or "-",
            u["lastSeenAt"] if fmt == "plain" else ago(u["lastSeenAt"]),
            u["firstSeenAt"] if fmt == "plain" else ago(u["firstSeenAt"]),
        ]
        for u in found
    ]
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
    else:
        output.table(
            headers,
            rows,
            cuttable=[True, False, False, True, False, False],
            no_headers=no_headers,
            drop_order=("FIRST SEEN", "SUBPROTOCOLS"),
        )
        if not found:
            output.info("no unknown endpoints have tried to connect")


@command()
def create(
    endpoint: Annotated[
        str, typer.Argument(metavar="ENDPOINT", help="OCPP identity the station connects with")
    ],
    protocol: Annotated[
        ProtocolName,
        typer.Option(metavar="PROTOCOL", case_sensitive=False, help="ocpp1.6 or ocpp2.0.1"),
    ] = ProtocolName["ocpp1.6"],
    location: Annotated[str | None, typer.Option(metavar="LOCATION", help="Location id")] = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Organization id")
    ] = None,
    public: Annotated[bool, typer.Option(help="Visible to the public")] = False,
    simulator: Annotated[bool, typer.Option("--simulator", help="Mark as a simulator")] = False,
    inactive: Annotated[bool, typer.Option("--inactive", help="Create it deactivated")] = False,
    security: Annotated[
        SecurityName, typer.Option(metavar="TYPE", case_sensitive=False, help=SECURITY_HELP)
    ] = SecurityName["none"],
    authorize: AuthorizeOpt = None,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create a chargestation; it may then connect to ws://HOST:PORT/ENDPOINT.

    With --security basic_auth or tls_basic_auth a strong password is generated and shown
    this once (stderr, or `password` with -o json); only its hash is kept.

    Examples:

    \b
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
    if authorize is not None:
        body["authorize"] = None if authorize.value == "server" else authorize.value
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


@command()
def inspect(stations: Stations, out: OutputOpt = None) -> None:
    """Show everything about chargestations, including their stored csconfig.

    With one station, -o json/yaml prints its object; with several, a list of them. A station
    that is not found is reported on stderr and the others are still shown (exit 3).

    Examples:

    \b
      edrvctl cs inspect edrv01
      edrvctl cs inspect 5eb0c0d2f8a1b2c3d4e5f601 -o yaml
      edrvctl cs inspect edrv01 edrv02 -o json
    """
    fmt = _fmt(out)
    docs, failed = _each(_client().get_station, stations)
    if fmt in ("json", "yaml") and len(stations) > 1:
        output.dump(docs, fmt)
    else:
        for n, doc in enumerate(docs):
            if n:
                print()
            output.station(doc, fmt)
    if failed:
        raise typer.Exit(failed.exit_code)


@command()
def update(
    station: Station,
    location: Annotated[
        str | None, typer.Option(metavar="LOCATION", help="Location id ('' removes it)")
    ] = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Organization id ('' removes it)")
    ] = None,
    public: Annotated[
        bool | None,
        typer.Option("--public/--no-public", help="Visible to the public", show_default=False),
    ] = None,
    meta_data: Annotated[
        str | None,
        typer.Option(
            "--meta-data",
            metavar="JSON",
            help="Replace meta_data with this JSON object ('{}' empties it)",
        ),
    ] = None,
    security: Annotated[
        SecurityName | None,
        typer.Option(
            metavar="TYPE",
            case_sensitive=False,
            help=SECURITY_HELP + "; asks first",
            show_default=False,
        ),
    ] = None,
    authorize: AuthorizeOpt = None,
    yes: YesOpt = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Change a chargestation's location, organization, visibility, meta_data, security or
    authorization policy.

    Only what is given changes. A new --security takes effect at once: a connected station
    is disconnected and must come back under its new profile. Moving to basic_auth or
    tls_basic_auth from a profile without a password issues a password, shown this once
    (stderr, or `password` with -o json), as `create` does.

    Examples:

    \b
      edrvctl cs update edrv01 --location depot-south --public
      edrvctl cs update edrv01 --meta-data '{"owner": "ops"}' -o json
      edrvctl cs update edrv01 --security basic_auth --yes
      edrvctl cs update edrv01 --authorize known
    """
    body: dict = {}
    for name, value in (("location", location), ("organization", organization)):
        if value is not None:
            body[name] = value or None
    if public is not None:
        body["public"] = public
    if meta_data is not None:
        import json

        try:
            parsed = json.loads(meta_data)
        except ValueError as e:
            raise UsageError(f"--meta-data is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise UsageError('--meta-data must be a JSON object, such as \'{"owner": "ops"}\'')
        body["meta_data"] = parsed
    if security is not None:
        body["security"] = {"type": security.value}
    if authorize is not None:
        body["authorize"] = None if authorize.value == "server" else authorize.value
    if not body:
        raise UsageError(
            "nothing to change: give --location, --organization, --public/--no-public, "
            "--meta-data, --security or --authorize"
        )
    if security is not None:
        _confirm(f"change the security profile to {security.value} of", station, yes)
    client = _client()
    doc = client.update_station(station, body)
    fmt = _fmt(out, quiet)
    _done(doc, "updated", fmt)
    _show_password(doc, fmt)


def _set_active(station: str, active: bool, out: Format | None, quiet: bool) -> None:
    doc = _client().update_station(station, {"active": active})
    _done(doc, "activated" if active else "deactivated", _fmt(out, quiet))


@command()
def activate(station: Station, out: OutputOpt = None, quiet: QuietOpt = False) -> None:
    """Activate a chargestation: it may charge again.

    A connected one is told Operative.

    Example:

    \b
      edrvctl cs activate edrv01
    """
    _set_active(station, True, out, quiet)


@command()
def deactivate(
    station: Station, yes: YesOpt = False, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Deactivate a chargestation: it cannot start charging.

    A connected one is told Inoperative, and commands to it are refused.

    Example:

    \b
      edrvctl cs deactivate edrv01 --yes
    """
    _confirm("deactivate", station, yes)
    _set_active(station, False, out, quiet)


@command()
def delete(
    stations: Stations, yes: YesOpt = False, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Delete chargestations and what they reported; a connected one is disconnected.

    One confirmation covers every station given. A station that is not found is reported on
    stderr and the others are still deleted (exit 3). With several, -o json/yaml prints a
    list.

    Examples:

    \b
      edrvctl cs delete edrv01 --yes
      edrvctl cs list -q --location old-depot | xargs edrvctl cs delete --yes
    """
    _confirm("delete", stations, yes)
    client = _client()
    fmt = _fmt(out, quiet)
    from edrvctl.completion import remember

    def delete_one(key: str) -> dict:
        doc = client.delete_station(key)
        remember(client.api_url, [], forget=[doc["endpoint"]])
        if fmt not in ("json", "yaml"):
            _done(doc, "deleted", fmt)
        return doc

    docs, failed = _each(delete_one, stations)
    if fmt in ("json", "yaml"):
        output.dump(docs if len(stations) > 1 else docs[0], fmt)
    if failed:
        raise typer.Exit(failed.exit_code)


@command("rotate-password")
def rotate_password(station: Station, yes: YesOpt = False, out: OutputOpt = None) -> None:
    """Issue a new password for a station and retire the old one at once.

    A station connected with the old one is disconnected until it is given the new one.

    Example:

    \b
      edrvctl cs rotate-password edrv03 --yes -o json
    """
    _confirm("rotate the password of", station, yes)
    fmt = _fmt(out)
    doc = _client().rotate_password(station)
    _done(doc, "password rotated", fmt)
    _show_password(doc, fmt)


@command()
def config(
    station: Station,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            metavar="KEY",
            help="Only this key, as printed: a 1.6 name, or for 2.0.1 Component.Variable "
            "(per EVSE or connector: EVSE[2].Power, Connector[1,2].ConnectorType); repeatable",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds to wait for the station", min=0.1, max=300),
    ] = 30.0,
    out: OutputOpt = None,
    no_headers: NoHeadersOpt = False,
) -> None:
    """Fetch the live station's configuration (csconfig), store it, and print it.

    OCPP 1.6 uses GetConfiguration; 2.0.1 uses GetBaseReport, or GetVariables with --key.
    Keys are printed exactly as --key takes them back. When the station knows none of the
    keys asked for, the exit code is 3; the stored copy stays readable with `inspect` while
    the station is offline.

    Examples:

    \b
      edrvctl cs config edrv01
      edrvctl cs config edrv01 -k HeartbeatInterval -k MeterValueSampleInterval -o json
      edrvctl cs config cp201 -k OCPPCommCtrlr.HeartbeatInterval -k EVSE[1].Power
    """
    client = _client()
    fmt = _fmt(out)
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.text import Text

        from edrvctl.textsafe import printable

        waiting = Text(f"asking {printable(station)} for its configuration...")
        with Console(stderr=True).status(waiting):
            result = client.get_variables(station, key or [], timeout)
    else:
        result = client.get_variables(station, key or [], timeout)
    unknown = result.get("unknownKeys") or []
    if key and unknown and not result["csconfig"]:
        raise NotFound(
            f"chargestation {result.get('endpoint') or station} knows none of the keys asked "
            f"for: {', '.join(unknown)}",
            hint="`edrvctl cs config STATION` prints every key as --key takes it (2.0.1: "
            "Component.Variable, per EVSE EVSE[1].Power)",
        )
    output.config(result["csconfig"], fmt, no_headers=no_headers)
    if unknown:
        output.info("unknown to the station: " + ", ".join(unknown))


# --- operating stations: each command an Action (edrvctl.cli.actions) ------------------------

from edrvctl.cli.actions import TimeoutOpt, WaitOpt  # noqa: E402
from edrvctl.cli.bulk import (  # noqa: E402
    AllOpt,
    DryRunOpt,
    MaxFailuresOpt,
    MaxInFlightOpt,
    SelectorOpt,
)

EvseOpt = Annotated[int | None, typer.Option("--evse", metavar="N", help="The EVSE (2.0.1)", min=0)]
ConnectorOpt = Annotated[
    int | None,
    typer.Option(
        "--connector", metavar="N", help="The connector (1.6: connector n is EVSE n)", min=0
    ),
]


def _path(station: str, verb: str) -> str:
    from edrvctl.client import _seg

    return f"/v1.1/chargestations/{_seg(station)}/{verb}"


def _where(evse: int | None, connector: int | None) -> dict:
    return {k: v for k, v in (("evseId", evse), ("connectorId", connector)) if v is not None}


def _act(
    station: str,
    verb: str,
    body: Any,
    out: Format | None,
    quiet: bool,
    timeout: float,
    wait: bool = False,
    method: str = "POST",
) -> None:
    from edrvctl.cli.actions import run

    run(_client(), method, _path(station, verb), body, _fmt(out, quiet), timeout, wait)


Targets = Annotated[
    list[str] | None,
    typer.Argument(
        help="The stations' _ids or endpoints (or -l / --all)",
        metavar="STATION",
        autocompletion=_complete_station,
        show_default=False,
    ),
]


def _operate(
    stations: list[str],
    bulk: tuple[str | None, bool, bool, int, int | None],
    verb: str,
    body: Any,
    out: Format | None,
    quiet: bool,
    timeout: float,
    wait: bool = False,
    method: str = "POST",
    confirm_verb: str | None = None,
    yes: bool = False,
) -> None:
    """One station: the command, as always. Several, `-l`, `--all` or `--dry-run`: a batch
    (cli/bulk.py), one row per station and a summary."""
    from edrvctl.cli import bulk as bulk_

    selector, all_, dry_run, max_in_flight, max_failures = bulk
    if not bulk_.is_bulk(stations, selector, all_, dry_run):
        if confirm_verb:
            _confirm(confirm_verb, stations[0], yes)
        _act(stations[0], verb, body, out, quiet, timeout, wait, method)
        return
    bulk_.run_batch(
        _client(),
        verb,
        body,
        stations,
        selector,
        all_,
        dry_run,
        max_in_flight,
        max_failures,
        _fmt(out, quiet),
        wait,
        confirm_verb,
        yes,
    )


def _split_last(targets: list[str] | None, what: str) -> tuple[list[str], str]:
    """`[STATION]... WHAT`: the stations and the last argument."""
    if not targets:
        raise UsageError(f"missing argument {what}")
    return targets[:-1], targets[-1]


@command()
def reset(
    stations: Targets = None,
    hard: Annotated[
        bool, typer.Option("--hard", help="Reboot at once (1.6 Hard, 2.0.1 Immediate)")
    ] = False,
    yes: YesOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Reboot a station: 1.6 Soft (Hard with --hard); 2.0.1 OnIdle (Immediate with --hard).

    With --wait, the command ends when the station has booted again.

    Examples:

    \b
      edrvctl cs reset edrv01 --yes
      edrvctl cs reset edrv01 --hard --wait --yes
      edrvctl cs reset -l location=depot-north,model=X --max-in-flight 20 --wait --yes
    """
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(
        stations or [],
        bulk,
        "reset",
        {"hard": hard},
        out,
        quiet,
        timeout,
        wait,
        confirm_verb="reset",
        yes=yes,
    )


@command()
def unlock(
    stations: Targets = None,
    evse: EvseOpt = None,
    connector: ConnectorOpt = None,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Unlock a connector (1.6: --connector N; 2.0.1: --evse N, connector 1 unless told).

    Examples:

    \b
      edrvctl cs unlock edrv01 --connector 1
      edrvctl cs unlock cp201 --evse 2
    """
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    body = _where(evse, connector)
    _operate(stations or [], bulk, "unlock_connector", body, out, quiet, timeout)


class Availability(StrEnum):
    operative = "operative"
    inoperative = "inoperative"


@command()
def availability(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[STATION...] operative|inoperative",
            help="The stations (or -l / --all), then the new state",
            autocompletion=_complete_station,
            show_default=False,
        ),
    ] = None,
    evse: EvseOpt = None,
    connector: ConnectorOpt = None,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Make the whole station, one EVSE or one connector operative or inoperative.

    The station may answer Scheduled: it applies the change when its transaction ends.

    Examples:

    \b
      edrvctl cs availability edrv01 inoperative --connector 2
      edrvctl cs availability cp201 operative
    """
    stations, word = _split_last(targets, "operative|inoperative")
    try:
        state = Availability(word.lower())
    except ValueError:
        raise UsageError(f"{word!r} is not operative or inoperative") from None
    body = {"type": state.value.capitalize(), **_where(evse, connector)}
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(stations, bulk, "change_availability", body, out, quiet, timeout)


@command()
def trigger(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[STATION...] MESSAGE",
            help="The stations (or -l / --all), then what they should send: BootNotification, "
            "Heartbeat, StatusNotification, MeterValues, ... (their version's names)",
            autocompletion=_complete_station,
            show_default=False,
        ),
    ] = None,
    evse: EvseOpt = None,
    connector: ConnectorOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Ask the station to send a message now (TriggerMessage).

    With --wait, the command ends when the message has come.

    Examples:

    \b
      edrvctl cs trigger edrv01 Heartbeat --wait
      edrvctl cs trigger edrv01 StatusNotification --connector 1
    """
    stations, message = _split_last(targets, "MESSAGE")
    body = {"requestedMessage": message, **_where(evse, connector)}
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(stations, bulk, "trigger_message", body, out, quiet, timeout, wait)


@command()
def configure(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[STATION...] [SETTING...]",
            help="The stations (or -l / --all), then KEY=VALUE settings, the key as `cs config` "
            "prints it (2.0.1: Component.Variable, EVSE[1].Power)",
            autocompletion=_complete_station,
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "-f",
            "--file",
            metavar="FILE",
            help="A baseline: a YAML (or JSON) mapping KEY: VALUE; only what differs from the "
            "stored csconfig is sent",
            show_default=False,
        ),
    ] = None,
    diff: Annotated[
        bool,
        typer.Option("--diff", help="With -f: show per station what differs; send nothing"),
    ] = False,
    refresh: Annotated[
        bool,
        typer.Option("--refresh", help="With -f: fetch the stations' keys first (get_variables)"),
    ] = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Change configuration keys, one at a time, each read back and stored in csconfig.

    1.6 uses ChangeConfiguration, 2.0.1 SetVariables. RebootRequired is reported as a note:
    the value takes effect after `cs reset`. Exit 5 when a key is refused or reads back
    otherwise.

    A baseline (`-f FILE`) sends each station only the keys whose stored value differs;
    `--diff` shows them and sends nothing; `--refresh` reads the keys from the stations first.

    Examples:

    \b
      edrvctl cs configure edrv01 HeartbeatInterval=300 MeterValueSampleInterval=60
      edrvctl cs configure cp201 OCPPCommCtrlr.HeartbeatInterval=300
      edrvctl cs configure -l model=X -f baseline.yaml --refresh --diff
    """
    from edrvctl.cli import bulk as bulk_

    stations = [t for t in targets or [] if "=" not in t]
    body: dict[str, str] = {}
    for item in targets or []:
        if "=" not in item:
            continue
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"{item!r} is not KEY=VALUE")
        body[key] = value
    if file is not None:
        body = {**_baseline(file), **body}
    elif diff or refresh:
        raise UsageError("--diff and --refresh compare with a baseline: give -f FILE")
    if not body:
        raise UsageError("give at least one KEY=VALUE, or -f FILE")
    if file is None and not bulk_.is_bulk(stations, selector, all_, dry_run):
        _act(stations[0], "configurations", body, out, quiet, timeout, method="PATCH")
        return
    client = _client()
    if refresh:
        planned = client.create_batch(
            {
                "selector": bulk_.selector_of(stations, selector, all_),
                "type": "configurations",
                "data": body,
                "dry_run": True,
            }
        )
        for row in planned["stations"]:
            try:
                client.get_variables(row["chargestation"], list(body), timeout)
            except EdrvError as e:
                report(e)
    bulk_.run_batch(
        client,
        "configurations",
        body,
        stations,
        selector,
        all_,
        dry_run or diff,
        max_in_flight,
        max_failures,
        _fmt(out, quiet),
        only_differences=file is not None,
    )


def _baseline(path: str) -> dict[str, str]:
    """A flat KEY: VALUE mapping from a YAML or JSON file; values as text (true/false)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f.read(1 << 20))
    except OSError as e:
        raise UsageError(f"cannot read {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path}: give a mapping KEY: VALUE")
    out: dict[str, str] = {}
    for k, v in data.items():
        if isinstance(v, dict | list) or v is None:
            raise UsageError(f"{path}: {k}: give a single value")
        out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


@command("clear-cache")
def clear_cache(
    stations: Targets = None,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Clear the station's authorization cache.

    Example:

    \b
      edrvctl cs clear-cache edrv01
    """
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(stations or [], bulk, "clear_cache", None, out, quiet, timeout)


@command("data-transfer")
def data_transfer(
    vendor: Annotated[str, typer.Option("--vendor", metavar="V", help="The vendorId")],
    stations: Targets = None,
    message_id: Annotated[
        str | None, typer.Option("--message-id", metavar="M", help="The messageId")
    ] = None,
    data: Annotated[str | None, typer.Option("--data", metavar="D", help="The data (text)")] = None,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Send a vendor-specific DataTransfer; the station's answer is in the Action.

    Example:

    \b
      edrvctl cs data-transfer edrv01 --vendor com.acme --message-id Ping -o json
    """
    body = {"vendorId": vendor}
    if message_id is not None:
        body["messageId"] = message_id
    if data is not None:
        body["data"] = data
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(stations or [], bulk, "data_transfer", body, out, quiet, timeout)


@command()
def call(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[STATION...] ACTION",
            help="The stations (or -l / --all), then an OCPP action, e.g. Reset",
            autocompletion=_complete_station,
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            "-d", "--data", metavar="JSON|@FILE", help="The payload: JSON, or @file to read it"
        ),
    ] = "{}",
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Send any CSMS-to-station OCPP action, its payload checked against the version's schema.

    Example:

    \b
      edrvctl cs call edrv01 GetLocalListVersion
      edrvctl cs call edrv01 ChangeConfiguration -d '{"key": "HeartbeatInterval", "value": "60"}'
    """
    import orjson

    text = data
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                raw = f.read(256 * 1024 + 1)
        except OSError as e:
            raise UsageError(f"cannot read {data[1:]!r}: {e.strerror}") from None
        text = raw.decode("utf-8", "replace")
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UsageError(f"--data is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise UsageError("--data must be a JSON object")
    stations, action = _split_last(targets, "ACTION")
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    body = {"action": action, "payload": payload}
    _operate(stations, bulk, "call", body, out, quiet, timeout)


@command("update-firmware")
def update_firmware(
    stations: Targets = None,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL", help="Where the station downloads the firmware"),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="PATH",
            help="A local firmware file: uploaded to the server, which the station downloads "
            "it from (serve's files listener)",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", metavar="TIME", help="When to download it (ISO-8601) [default: now]"),
    ] = None,
    yes: YesOpt = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    selector: SelectorOpt = None,
    all_: AllOpt = False,
    dry_run: DryRunOpt = False,
    max_in_flight: MaxInFlightOpt = 10,
    max_failures: MaxFailuresOpt = None,
) -> None:
    """Update the stations' firmware from a URL, or from a local file (--file).

    With --file, the file is uploaded to `edrvctl serve` (POST /v1.1/files), and the station
    is told to download it from serve's files listener (serve --files-port,
    --public-files-url). With --wait, the command ends when the station has booted with a
    new firmware version.

    Examples:

    \b
      edrvctl cs update-firmware edrv01 --file ./fw-2.1.bin --wait --yes
      edrvctl cs update-firmware edrv01 --url https://files.example.com/fw-2.1.bin --wait --yes
      edrvctl cs update-firmware -l model=X --file ./fw-2.1.bin --max-in-flight 20 --yes
    """
    if (url is None) == (file is None):
        raise UsageError("give either --url URL or --file PATH")
    body: dict[str, Any] = {"location": url} if url else {}
    if file is not None and not dry_run:  # uploaded once, whatever the number of stations
        stored = _client().upload_file(file)
        output.info(f"uploaded {stored['name']} ({stored['size']} bytes) as file {stored['_id']}")
        body["file"] = stored["_id"]
    elif file is not None:
        body["location"] = "http://example.invalid/dry-run"  # nothing is sent in a dry run
    if at:
        body["retrieveDate"] = at
    bulk = (selector, all_, dry_run, max_in_flight, max_failures)
    _operate(
        stations or [],
        bulk,
        "update_firmware",
        body,
        out,
        quiet,
        timeout,
        wait,
        confirm_verb="update the firmware of",
        yes=yes,
    )


@command()
def diagnostics(
    station: Station,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            help="Where the station uploads its file (a directory) [default: serve's own "
            "one-time upload target]",
            show_default=False,
        ),
    ] = None,
    output_file: Annotated[
        str | None,
        typer.Option(
            "-O",
            "--output-file",
            metavar="FILE",
            help="Save the uploaded file here (implies --wait; not with --url)",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="TIME", help="Oldest entries (ISO-8601)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="TIME", help="Newest entries (ISO-8601)")
    ] = None,
    security: Annotated[
        bool, typer.Option("--security", help="The security log instead of diagnostics")
    ] = False,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Have the station upload its diagnostics (1.6 GetDiagnostics, 2.0.1 GetLog).

    Without --url the station uploads to `edrvctl serve` itself (a one-time URL on its files
    listener), and the file is kept with the Action; -O FILE waits for it and saves it. With
    --wait, the command ends when the upload is done.

    Examples:

    \b
      edrvctl cs diagnostics edrv01 -O edrv01-diag.zip
      edrvctl cs diagnostics edrv01 --url ftp://logs.example.com/in/ --since 2030-01-01T00:00:00Z --wait
    """
    if url and output_file:
        raise UsageError("-O saves a file uploaded to the server: not with --url")
    body: dict[str, Any] = {"security": security}
    if url:
        body["location"] = url
    if since:
        body["since"] = since
    if until:
        body["until"] = until
    client = _client()
    wait = wait or output_file is not None
    from edrvctl.cli.actions import run

    path = _path(station, "get_diagnostics")
    done = run(client, "POST", path, body, _fmt(out, quiet), timeout, wait)
    if output_file is not None:
        action = done[0]
        if not action.get("file"):
            raise NotFound(f"get_diagnostics {action['_id']} ended without a file")
        size = client.download(f"/v1.1/actions/{action['_id']}/file", output_file)
        output.info(f"saved {action['file']['name']} ({size} bytes) to {output_file}")
