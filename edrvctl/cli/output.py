"""Rendering: data to stdout in the chosen format, everything else to stderr.

Formats: table (Rich, terminals only), wide (table with more columns), plain (tab-separated,
full values, no colour), json, yaml, and ids (-q). With no -o, a terminal gets a table and a
pipe gets plain text; JSON and YAML only when asked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from edrvctl.timefmt import ago

FORMATS = ("table", "wide", "plain", "json", "yaml")

color_mode = "auto"  # --color auto|always|never, set by the root callback


def resolve_format(output: str | None, quiet: bool = False) -> str:
    if quiet:
        return "ids"
    if output:
        return output
    return "table" if sys.stdout.isatty() else "plain"


def _console(stderr: bool = False):
    from rich.console import Console

    force = {"always": True, "never": False}.get(color_mode)
    no_color = color_mode == "never" or (color_mode == "auto" and "NO_COLOR" in os.environ)
    stream = sys.stderr if stderr else sys.stdout
    # A pipe gets the full table, never one cut to Rich's 80-column fallback.
    width = None if stream.isatty() else 10_000
    return Console(
        stderr=stderr, force_terminal=force, no_color=no_color, highlight=False, width=width
    )


def info(message: str) -> None:
    """A progress note or hint: stderr, so stdout stays data."""
    print(message, file=sys.stderr)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def dump(data: Any, fmt: str) -> None:
    if fmt == "json":
        import orjson

        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        import yaml

        yaml.safe_dump(data, sys.stdout, sort_keys=False, allow_unicode=True)


# --- lists of stations ---

Column = tuple[str, Callable[[dict], Any], Callable[[dict], Any]]  # header, table value, plain

STATION_COLUMNS: list[Column] = [
    ("ENDPOINT", lambda d: d["endpoint"], lambda d: d["endpoint"]),
    ("ID", lambda d: d["_id"], lambda d: d["_id"]),
    ("PROTOCOL", lambda d: d["protocol"], lambda d: d["protocol"]),
    ("ONLINE", lambda d: "yes" if d["online"] else "no", lambda d: d["online"]),
    ("ACTIVE", lambda d: "yes" if d["active"] else "no", lambda d: d["active"]),
    ("STATUS", lambda d: d.get("status") or "-", lambda d: d.get("status")),
    (
        "MODEL",
        lambda d: " ".join(filter(None, (d.get("manufacturer"), d.get("model")))) or "-",
        lambda d: " ".join(filter(None, (d.get("manufacturer"), d.get("model")))),
    ),
    ("LAST SEEN", lambda d: ago(d.get("lastMessageAt")), lambda d: d.get("lastMessageAt")),
]
WIDE_COLUMNS: list[Column] = [
    *STATION_COLUMNS,
    ("LOCATION", lambda d: d.get("location") or "-", lambda d: d.get("location")),
    ("ORGANIZATION", lambda d: d.get("organization") or "-", lambda d: d.get("organization")),
    (
        "CONNECTORS",
        lambda d: len(d.get("connectors") or []),
        lambda d: len(d.get("connectors") or []),
    ),
    (
        "FIRMWARE",
        lambda d: (d.get("bootInfo") or {}).get("firmwareVersion") or "-",
        lambda d: (d.get("bootInfo") or {}).get("firmwareVersion"),
    ),
    ("CREATED", lambda d: ago(d.get("createdAt")), lambda d: d.get("createdAt")),
]


FREE_TEXT = {"MODEL", "LOCATION", "ORGANIZATION", "FIRMWARE", "VALUE", "ERROR"}


def _table(
    columns: list[str],
    rows: Iterable[list[str]],
    no_headers: bool = False,
    title: str | None = None,
) -> None:
    from rich.table import Table

    rows = list(rows)
    # kubectl-like: no borders, one line per row. When the terminal is narrow, only free-text
    # columns (model, location, ...) are cut, with an ellipsis; ids, endpoints, statuses and
    # times never are.
    console = _console()
    table = Table(
        box=None,
        show_header=not no_headers,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        header_style="bold",
        title=title,
        title_justify="left",
    )
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(columns)]
    free = [i for i, h in enumerate(columns) if h in FREE_TEXT]
    fixed = sum(w + 2 for i, w in enumerate(widths) if i not in free)
    share = max(5, (console.width - fixed) // len(free) - 2) if free else 0
    for i, header in enumerate(columns):
        if i in free:
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=share)
        else:
            table.add_column(header, no_wrap=True, min_width=widths[i])
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _plain(headers: list[str], rows: Iterable[list[str]], no_headers: bool) -> None:
    out = sys.stdout
    if not no_headers:
        out.write("\t".join(headers) + "\n")
    for row in rows:
        out.write("\t".join(r.replace("\t", " ").replace("\n", " ") for r in row) + "\n")


def stations(docs: list[dict], fmt: str, no_headers: bool = False) -> None:
    if fmt == "ids":
        sys.stdout.write("".join(d["_id"] + "\n" for d in docs))
    elif fmt in ("json", "yaml"):
        dump(docs, fmt)
    else:
        cols = WIDE_COLUMNS if fmt == "wide" else STATION_COLUMNS
        headers = [c[0] for c in cols]
        if fmt == "plain":
            _plain(headers, ([_text(f(d)) for _, _, f in cols] for d in docs), no_headers)
        else:
            _table(headers, ([_text(f(d)) for _, f, _ in cols] for d in docs), no_headers)
            if not docs:
                info("no chargestations found")


# --- one station ---

DETAIL_FIELDS = [
    ("ID", "_id"),
    ("Endpoint", "endpoint"),
    ("Protocol", "protocol"),
    ("Online", "online"),
    ("Active", "active"),
    ("Status", "status"),
    ("Manufacturer", "manufacturer"),
    ("Model", "model"),
    ("Location", "location"),
    ("Organization", "organization"),
    ("Connection URL", "connection_url"),
    ("Security", None),
    ("Created", "createdAt"),
    ("Updated", "updatedAt"),
    ("Last connect", "lastConnectAt"),
    ("Last disconnect", "lastDisconnectAt"),
    ("Last message", "lastMessageAt"),
    ("Config fetched", "csconfigFetchedAt"),
]


def _detail_value(doc: dict, key: str | None) -> Any:
    if key is None:
        return (doc.get("security") or {}).get("type")
    return doc.get(key)


def station(doc: dict, fmt: str) -> None:
    if fmt == "ids":
        print(doc["_id"])
        return
    if fmt in ("json", "yaml"):
        dump(doc, fmt)
        return
    if fmt == "plain":
        rows = [[label, _text(_detail_value(doc, key))] for label, key in DETAIL_FIELDS]
        rows += [[f"bootInfo.{k}", _text(v)] for k, v in (doc.get("bootInfo") or {}).items()]
        rows += [
            [f"connector.{c['evseId']}.{c['connectorId']}", _text(c.get("status"))]
            for c in doc.get("connectors") or []
        ]
        rows += [[f"csconfig.{e['key']}", _text(e.get("value"))] for e in doc.get("csconfig") or []]
        _plain(["FIELD", "VALUE"], rows, no_headers=True)
        return
    console = _console()
    width = max(len(label) for label, _ in DETAIL_FIELDS) + 1
    for label, key in DETAIL_FIELDS:
        value = _detail_value(doc, key)
        shown = _text(value) or "-"
        if key and key.endswith("At") and value:
            shown = f"{value} ({ago(value)})"
        console.print(f"[bold]{label + ':':<{width}}[/bold] {shown}", markup=True, highlight=False)
    boot = doc.get("bootInfo") or {}
    if boot:
        console.print(
            "[bold]Boot info:[/bold] " + ", ".join(f"{k}={v}" for k, v in boot.items()), markup=True
        )
    connectors = doc.get("connectors") or []
    if connectors:
        _table(
            ["EVSE", "CONNECTOR", "STATUS", "ERROR", "UPDATED"],
            (
                [
                    str(c["evseId"]),
                    str(c["connectorId"]),
                    c.get("status") or "-",
                    c.get("errorCode") or "-",
                    ago(c.get("updatedAt")),
                ]
                for c in connectors
            ),
            title="Connectors",
        )
    if doc.get("csconfig"):
        config(
            doc["csconfig"],
            "table",
            title=f"csconfig (fetched {ago(doc.get('csconfigFetchedAt'))})",
        )


def config(
    entries: list[dict], fmt: str, title: str | None = None, no_headers: bool = False
) -> None:
    if fmt in ("json", "yaml"):
        dump(entries, fmt)
        return
    headers = ["KEY", "VALUE", "READONLY"]
    rows = (
        [e["key"], _text(e.get("value")), "" if e.get("readonly") is None else _text(e["readonly"])]
        for e in entries
    )
    if fmt in ("plain", "ids"):
        _plain(headers, rows, no_headers)
    else:
        _table(headers, rows, no_headers, title=title)
