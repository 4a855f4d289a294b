"""`edrvctl events`: what happened to the fleet, from the store's event log, and as it happens
(`-f`, from the server's event stream)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.base import when_option
from edrvctl.textsafe import printable
from edrvctl.timefmt import ago

FORMATS = ("table", "plain", "json", "jsonl")
SUMMARY_MAX = 120  # characters of an event's summary in a table or a line


def summary(e: dict) -> str:
    """A short line of what an event says (its data is the station's: made printable)."""
    d = e.get("data") or {}
    kind = e["type"]
    if kind == "chargestation.connector_status.updated":
        text = f"EVSE {d.get('evseId')} connector {d.get('connectorId')}: {d.get('status')}"
        extra = [d[k] for k in ("errorCode", "info") if d.get(k)]
        text += f" ({', '.join(map(str, extra))})" if extra else ""
    elif kind in ("chargestation.connection_refused", "chargestation.unknown"):
        text = f"{d.get('status', '')} {d.get('reason', '')} from {d.get('address')}".strip()
    elif kind == "chargestation.online":
        text = f"{d.get('protocol') or ''} from {d.get('address')}".strip()
    elif kind == "chargestation.booted":
        text = " ".join(
            str(d[k])
            for k in ("chargePointVendor", "chargePointModel", "firmwareVersion")
            if d.get(k)
        )
    elif e.get("object") == "action":
        text = f"action/{d.get('_id')} {d.get('status')}, outcome {d.get('outcome')}"
        error = (d.get("error") or {}).get("description")
        text += f": {error}" if error else ""
    else:
        text = ", ".join(f"{k}={_short(v)}" for k, v in d.items() if not isinstance(v, dict | list))
    return printable(text, SUMMARY_MAX)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _station(e: dict) -> str:
    return e.get("endpoint") or e.get("chargestation") or "-"


def line(e: dict) -> str:
    """One event as one line: `TIME TYPE STATION SUMMARY`."""
    return printable(f"{e['createdAt']} {e['type']} {_station(e)} ") + summary(e)


def show(items: list[dict], fmt: str, no_headers: bool = False) -> None:
    if fmt == "json":
        output.dump(items, "json")
    elif fmt == "jsonl":
        import orjson

        sys.stdout.write("".join(orjson.dumps(e).decode() + "\n" for e in items))
    elif fmt == "plain":
        output.plain(
            ["ID", "TIME", "TYPE", "STATION", "SUMMARY"],
            ([e["_id"], e["createdAt"], e["type"], _station(e), summary(e)] for e in items),
            no_headers,
        )
    else:
        output.table(
            ["TIME", "TYPE", "STATION", "SUMMARY"],
            ([ago(e["createdAt"]), e["type"], _station(e), summary(e)] for e in items),
            cuttable=[False, False, True, True],
            no_headers=no_headers,
            drop_order=("STATION",),
        )
        if not items:
            output.info("no events found")


def events(
    station: Annotated[
        str | None,
        typer.Option("--station", metavar="STATION", help="One station's _id or endpoint"),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="GLOB",
            help="Event types to show, as globs (session.*, chargestation.online); repeatable",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="TIME", help="From this time: ISO-8601, or ago (30m, 2h, 7d)"
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="TIME", help="Up to this time: ISO-8601, or ago (30m, 2h)"),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="The latest N events", min=1, max=1000)
    ] = 50,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Then print events as they happen (Ctrl-C ends)")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FORMAT",
            help="table, plain, json or jsonl [default: table on a terminal, plain otherwise; "
            "with -f: one line each, or jsonl]",
            show_default=False,
        ),
    ] = None,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header row")] = False,
) -> None:
    """Show what happened: stations online and offline, boots, connector statuses, refused
    connections, commands and their ends, sessions. The latest --limit events, oldest first.

    Examples:

    \b
      edrvctl events --station edrv01
      edrvctl events --type 'chargestation.connection_refused' --since 2026-11-01T00:00:00Z
      edrvctl events -f --type 'session.*' -o jsonl
    """
    from edrvctl.cli.chargestations import _client
    from edrvctl.errors import UsageError

    if out is not None and out not in FORMATS:
        raise UsageError(f"--output must be one of {', '.join(FORMATS)}")
    if follow and until is not None:
        raise UsageError("--until and --follow contradict each other: give one")
    fmt = out or ("table" if sys.stdout.isatty() else "plain")
    params: dict[str, Any] = {"limit": limit}
    if station:
        params["chargestation"] = station
    if types:
        params["type"] = ",".join(types)
    if since:
        params["since"] = when_option("--since", since)
    if until:
        params["until"] = when_option("--until", until)
    client = _client()
    envelope = client.request("GET", "/v1.1/events", params=params)
    items = envelope["result"]
    if not follow:
        show(items, fmt, no_headers)
        return
    for e in items:
        _print_live(e, fmt)
    stream = {k: v for k, v in params.items() if k in ("chargestation", "type")}
    try:
        for item in client.stream("/v1.1/events/stream", stream, after=envelope.get("last") or 0):
            if item is not None:
                _print_live(item[2], fmt)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _print_live(e: dict, fmt: str) -> None:
    if fmt in ("json", "jsonl"):
        import orjson

        sys.stdout.write(orjson.dumps(e).decode() + "\n")
    else:
        sys.stdout.write(line(e) + "\n")
    sys.stdout.flush()


REDRAW_EVERY = 0.5  # s: a burst of events redraws once


def watch(client: Any, params: dict, redraw: Any) -> None:
    """Redraw (redraw() prints the view) whenever an event matching `params` arrives, from
    the event stream, not by polling: on a terminal in place, at most every REDRAW_EVERY s;
    otherwise one line per event. Ends with Ctrl-C."""
    import queue
    import threading
    import time

    tty = sys.stdout.isatty()

    def draw() -> None:
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: the view is drawn again in place
        redraw()
        sys.stdout.flush()

    arrived: queue.Queue = queue.Queue(maxsize=10_000)
    opened = threading.Event()

    def read() -> None:
        try:
            for item in client.stream("/v1.1/events/stream", params):
                if item is None:
                    opened.set()
                else:
                    arrived.put(item[2])
        except Exception as e:  # an error answer: the main thread reports it
            arrived.put(e)
            opened.set()

    threading.Thread(target=read, daemon=True).start()
    opened.wait(10)  # listening before the first view: no change falls in between
    draw()
    dirty, last = False, time.monotonic()
    try:
        while True:
            try:
                got = arrived.get(timeout=REDRAW_EVERY)
            except queue.Empty:
                got = None
            if isinstance(got, Exception):
                raise got
            if got is not None and not tty:
                sys.stdout.write(line(got) + "\n")
                sys.stdout.flush()
            dirty = dirty or got is not None
            if tty and dirty and time.monotonic() - last >= REDRAW_EVERY:
                draw()
                dirty, last = False, time.monotonic()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
