"""`edrvctl sessions`: the charging sessions stations report (list, inspect, close), and
starting and stopping them remotely (each such command an Action)."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.actions import TimeoutOpt, WaitOpt
from edrvctl.cli.base import Command, Group, when_option
from edrvctl.cli.chargestations import (
    ConnectorOpt,
    EvseOpt,
    NoHeadersOpt,
    OutputOpt,
    QuietOpt,
    Station,
    _client,
    _complete_station,
    _fmt,
)
from edrvctl.errors import UsageError

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

STATUSES = ("Active", "Completed", "Refused")
LIST_FORMATS = ("table", "plain", "json", "yaml", "csv")
ListFormat = Enum("ListFormat", {f: f for f in LIST_FORMATS}, type=str)  # type: ignore[misc]
StatusName = Enum("StatusName", {s: s for s in STATUSES}, type=str)  # type: ignore[misc]
DetailFormat = Enum("DetailFormat", {f: f for f in output.FORMATS}, type=str)  # type: ignore[misc]

SessionArg = Annotated[str, typer.Argument(metavar="SESSION", help="The session's _id")]
# what the CSV of `list -o csv` holds, in order: the API's field names
CSV_FIELDS = (
    "_id",
    "chargestation",
    "endpoint",
    "transactionId",
    "evseId",
    "connectorId",
    "idTag",
    "status",
    "startedAt",
    "stoppedAt",
    "meterStart",
    "meterStop",
    "energyKwh",
    "stopReason",
    "closedBy",
)


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


def _kwh(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _evse(s: dict) -> str:
    evse, connector = s.get("evseId"), s.get("connectorId")
    if evse is None:
        return "-"
    return str(evse) if connector in (None, evse) else f"{evse}/{connector}"


# --- list ------------------------------------------------------------------------------------

TABLE = (  # header, cell, plain value
    ("ID", lambda s: s["_id"], lambda s: s["_id"]),
    ("STATION", lambda s: s.get("endpoint") or s["chargestation"], lambda s: s.get("endpoint")),
    ("EVSE", _evse, lambda s: s.get("evseId")),
    ("ID TAG", lambda s: s.get("idTag") or "-", lambda s: s.get("idTag")),
    ("STATUS", lambda s: s.get("status") or "-", lambda s: s.get("status")),
    ("STARTED", lambda s: s.get("startedAt") or "-", lambda s: s.get("startedAt")),
    ("STOPPED", lambda s: s.get("stoppedAt") or "-", lambda s: s.get("stoppedAt")),
    ("KWH", lambda s: _kwh(s.get("energyKwh")), lambda s: s.get("energyKwh")),
    (
        "STOP REASON",
        lambda s: s.get("stopReason") or ("closed" if s.get("closedBy") else "-"),
        lambda s: s.get("stopReason"),
    ),
)
CUT = ("ID TAG", "STOP REASON")  # free text a station chose: cut to fit
DROP_ORDER = ("STOPPED", "EVSE", "STOP REASON", "ID")


def _csv_cell(value: Any) -> Any:
    """A cell of the billing CSV: numbers as numbers; text shown as text (control
    characters made visible) and never taken for a formula by a spreadsheet (a leading =, +,
    - or @ is quoted with ')."""
    from edrvctl.textsafe import printable

    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    text = printable(str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def write_csv(docs: list[dict], no_headers: bool = False) -> None:
    import csv

    out = csv.writer(sys.stdout, lineterminator="\n")
    if not no_headers:
        out.writerow(CSV_FIELDS)
    out.writerows([_csv_cell(s.get(f)) for f in CSV_FIELDS] for s in docs)
    sys.stdout.flush()


def show_list(docs: list[dict], fmt: str, no_headers: bool = False) -> None:
    from edrvctl.textsafe import printable

    if fmt == "ids":
        sys.stdout.write("".join(printable(s["_id"]) + "\n" for s in docs))
    elif fmt in ("json", "yaml"):
        output.dump(docs, fmt)
    elif fmt == "csv":
        write_csv(docs, no_headers)
    elif fmt == "plain":
        output.plain(
            [h for h, _, _ in TABLE], ([v(s) for _, _, v in TABLE] for s in docs), no_headers
        )
    else:
        output.table(
            [h for h, _, _ in TABLE],
            ([c(s) for _, c, _ in TABLE] for s in docs),
            cuttable=[h in CUT for h, _, _ in TABLE],
            limits=[output.CELL_MAX if h in CUT else None for h, _, _ in TABLE],
            no_headers=no_headers,
            drop_order=DROP_ORDER,
        )
        if not docs:
            output.info("no sessions found")


@command("list")
def list_(
    station: Annotated[
        str | None,
        typer.Option(
            "--station",
            metavar="STATION",
            help="Only this station's (_id or endpoint)",
            autocompletion=_complete_station,
        ),
    ] = None,
    active: Annotated[
        bool, typer.Option("--active", help="Only running sessions (status Active)")
    ] = False,
    status: Annotated[
        StatusName | None,
        typer.Option(
            metavar="STATUS",
            case_sensitive=False,
            help="Only this status: Active, Completed or Refused (any case)",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME", help="Started at or after TIME: ISO-8601, or ago (30m, 2h, 7d)"
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Started at or before TIME (the same forms)"),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most N sessions", min=1)] = 100,
    all_: Annotated[bool, typer.Option("--all", help="Every matching session (no limit)")] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Then redraw whenever a session starts, changes or ends (on a terminal; "
            "otherwise one line per change). Ctrl-C ends",
        ),
    ] = False,
    out: Annotated[
        ListFormat | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FORMAT",
            help="table, plain, json, yaml or csv (one row per session, for billing) "
            "[default: table on a terminal, plain otherwise]",
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    no_headers: NoHeadersOpt = False,
) -> None:
    """List charging sessions (transactions), newest first by start time.

    Energy is in kWh: meter stop - meter start, or the latest reading while a session runs.
    A session whose id token was refused is Refused, whatever its station did next. `-o csv`
    writes one row per session with the API's field names (energyKwh among them), ready for a
    spreadsheet: text a station sent never becomes a formula.

    Examples:

    \b
      edrvctl sessions list --active
      edrvctl sessions list --active --watch
      edrvctl sessions list --station edrv01 --since 7d
      edrvctl sessions list --since 2030-01-01 --until 2030-02-01 --all -o csv > january.csv
    """
    filters = {
        k: v
        for k, v in {
            "chargestation": station,
            "active": "true" if active else None,
            "status": status.value if status else None,
            "since": when_option("--since", since),
            "until": when_option("--until", until),
        }.items()
        if v is not None
    }
    fmt = output.resolve_format(out.value if out else None, quiet)
    client = _client()

    def show() -> None:
        docs = list(client.list_sessions(filters, None if all_ else limit + 1))
        more = not all_ and len(docs) > limit
        docs = docs[:limit] if more else docs
        show_list(docs, fmt, no_headers)
        if more and sys.stderr.isatty():
            output.info(f"(showing the first {limit}; use --limit N or --all for more)")

    if not watch:
        show()
        return
    from edrvctl.cli import events

    params: dict = {"type": "session.*"}
    if station:
        params["chargestation"] = station
    events.watch(client, params, show)


# --- inspect ---------------------------------------------------------------------------------

DETAIL = (
    ("ID", "_id"),
    ("Station", "endpoint"),
    ("Station ID", "chargestation"),
    ("Transaction", "transactionId"),
    ("EVSE", "evseId"),
    ("Connector", "connectorId"),
    ("ID tag", "idTag"),
    ("Status", "status"),
    ("Charging state", "chargingState"),
    ("Started", "startedAt"),
    ("Stopped", "stoppedAt"),
    ("Meter start (Wh)", "meterStart"),
    ("Meter stop (Wh)", "meterStop"),
    ("Energy (kWh)", "energyKwh"),
    ("Stop reason", "stopReason"),
    ("Closed by", "closedBy"),
    ("Close reason", "closeReason"),
    ("Created", "createdAt"),
    ("Updated", "updatedAt"),
)
SERIES = ("TIME", "MEASURAND", "VALUE", "UNIT", "PHASE", "CONTEXT", "LOCATION")


def _series_row(v: dict) -> list:
    return [v.get(k) for k in ("timestamp", "measurand", "value", "unit", "phase", "context")] + [
        v.get("location")
    ]


def show_one(s: dict, values: list[dict], fmt: str) -> None:
    from edrvctl.textsafe import printable

    if fmt == "ids":
        print(printable(s["_id"]))
        return
    if fmt in ("json", "yaml"):
        output.dump({**s, "meterValues": values}, fmt)
        return
    rows = [[label, s.get(key)] for label, key in DETAIL]
    if fmt == "plain":
        output.plain(["FIELD", "VALUE"], rows, no_headers=True)
        if values:
            print()
            output.plain(list(SERIES), (_series_row(v) for v in values), no_headers=False)
        return
    color = output.use_color(sys.stdout)
    width = max(len(label) for label, _ in DETAIL) + 1
    lines = []
    for label, key in DETAIL:
        value = s.get(key)
        shown = "-" if value is None else printable(_kwh(value) if key == "energyKwh" else value)
        lines.append(f"{output._bold((label + ':').ljust(width), color)} {shown}")
    sys.stdout.write("".join(f"{x}\n" for x in lines))
    if values:
        sys.stdout.write("\n")
        output.table(
            list(SERIES),
            ([("-" if x is None else x) for x in _series_row(v)] for v in values),
            cuttable=[False, True, True, True, False, True, True],
            limits=[output.CELL_MAX] * len(SERIES),
            title=f"Meter values ({len(values)})",
        )
    else:
        output.info("no meter values")


@command()
def inspect(
    session: SessionArg,
    out: Annotated[
        DetailFormat | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FORMAT",
            help="table, plain, json or yaml [default: table on a terminal, plain otherwise]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show a session in full, with its meter values as a series (one row per sampled value:
    time, measurand, value, unit, phase, context, location).

    Examples:

    \b
      edrvctl sessions inspect 6650f1c2a1b2c3d4e5f60718
      edrvctl sessions inspect 6650f1c2a1b2c3d4e5f60718 -o json
    """
    client = _client()
    s = client.get_session(session)
    values = list(client.session_meter_values(session))
    fmt = output.resolve_format(out.value if out else None)
    show_one(s, values, "table" if fmt == "wide" else fmt)


# --- close -----------------------------------------------------------------------------------


@command()
def close(
    session: SessionArg,
    reason: Annotated[
        str,
        typer.Option("--reason", metavar="REASON", help="Why: kept in the session and its event"),
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Close it even if its 2.0.1 station says it is still going on (nothing is asked)",
        ),
    ] = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Close a session its station will never end (it was lost, or the station was
    replaced): it ends now, its meter stop the latest reading, recorded as closed by an admin
    with the reason (and a session.ended event). Nothing is sent to the station.

    A 2.0.1 station that is online is asked first (GetTransactionStatus): if it says the
    transaction is still going on, or still has messages about it queued, nothing is closed
    (exit 5) unless --force. To end a running session, use `sessions stop`.

    Examples:

    \b
      edrvctl sessions close 6650f1c2a1b2c3d4e5f60718 --reason "station replaced"
      edrvctl sessions close 6650f1c2a1b2c3d4e5f60718 --reason "lost" --force -o json
    """
    from edrvctl.textsafe import printable

    s = _client().close_session(session, reason, force, timeout)
    fmt = _fmt(out, quiet)
    if fmt in ("json", "yaml"):
        output.dump(s, fmt)
    elif fmt == "ids":
        print(printable(s["_id"]))
    else:
        energy = s.get("energyKwh")
        print(
            printable(f"session/{s['_id']} closed")
            + (f" ({_kwh(energy)} kWh)" if energy is not None else "")
        )


# --- remote start and stop: Actions (edrvctl.cli.actions) ------------------------------------


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

    With --wait, the command ends when the transaction has started; its transaction id and
    session _id are in the Action's progress (`-o json`).

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
    session: Annotated[
        str,
        typer.Argument(
            metavar="SESSION", help="The session's _id, or its transaction id with --station"
        ),
    ],
    station: Annotated[
        str | None,
        typer.Option(
            "--station",
            metavar="STATION",
            help="The station running it (_id or endpoint), when SESSION is a transaction id",
            autocompletion=_complete_station,
        ),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Stop a charging session remotely (1.6 RemoteStopTransaction, 2.0.1
    RequestStopTransaction).

    With --wait, the command ends when the transaction has ended.

    Examples:

    \b
      edrvctl sessions stop 6650f1c2a1b2c3d4e5f60718 --wait
      edrvctl sessions stop 1234 --station edrv01 --wait
    """
    from urllib.parse import quote

    from edrvctl.cli.actions import run

    if not session.strip():
        raise UsageError("a session _id or transaction id is required, not an empty string")
    path = f"/v1.1/sessions/{quote(session, safe='')}/stop"
    body = {"chargestation": station} if station is not None else None
    run(_client(), "POST", path, body, _fmt(out, quiet), timeout, wait)
