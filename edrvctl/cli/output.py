"""Rendering: data to stdout in the chosen format, everything else to stderr.

Formats: table (terminals; columns fitted to the width), wide (table with more columns), plain
(tab-separated, full values, no colour), json, yaml, and ids (-q). With no -o, a terminal gets a
table and a pipe gets plain text; JSON and YAML only when asked.

Every string that came from a station, a user or an API is shown as text: control characters
and the Unicode controls that reorder or hide text are made visible (`textsafe.printable`, in
every format but JSON/YAML, whose own escaping is completed below), and nothing is ever read as
Rich markup: this module writes plain strings itself; the only escape sequences it emits are its
own bold headers, when colour is on.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence

from edrvctl.constants import FORMATS as FORMATS  # (the commands' -o choices)
from edrvctl.textsafe import printable
from edrvctl.timefmt import ago

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: `cs list` does not)
if TYPE_CHECKING:
    from typing import Any, TextIO

color_mode = "auto"  # --color auto|always|never, set by the root callback

GAP = 2  # spaces between table columns
CELL_MAX = 64  # a cell of free text is cut here in tables, whatever the width (full in plain/json)
KEY_MAX = 256  # a configuration key is never cut for width, only past this (hostile stations)
MIN_CUT = 8  # free text is cut no narrower than this (or its header)


def resolve_format(output: str | None, quiet: bool = False) -> str:
    if quiet:
        return "ids"
    if output:
        return output
    return "table" if sys.stdout.isatty() else "plain"


def use_color(stream: TextIO) -> bool:
    """--color always|never; auto: a terminal, NO_COLOR unset or empty, TERM not dumb."""
    if color_mode != "auto":
        return color_mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def width_of(stream: TextIO) -> int | None:
    """Columns to fit a table in: COLUMNS when set, else the terminal's; None (no limit) for a
    pipe, which is never sent a table cut to a guessed width."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    try:
        if stream.isatty():
            import shutil  # (~3 ms of imports, for terminals only)

            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError):
        pass
    return None


def _bold(text: str, color: bool) -> str:
    return f"\x1b[1m{text}\x1b[0m" if color else text


def info(message: str) -> None:
    """A progress note or hint: stderr, so stdout stays data. Shown as text (station and user
    values inside it are made visible, not obeyed)."""
    print(printable(message), file=sys.stderr)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# What `textsafe` makes visible, less C0 controls (JSON escapes those itself); a test checks
# that the two agree.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _safe_json(text: str) -> str:
    """JSON escapes C0 controls, `"` and `\\`; the rest of what `textsafe` calls unsafe (DEL,
    C1, bidi and zero-width controls) is written as \\u escapes too: the same data, shown as
    text on a terminal."""
    if not _JSON_UNSAFE.search(text):
        return text
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _safe_json_bytes(data: bytes) -> bytes:
    """`_safe_json` of UTF-8 JSON; all it escapes is DEL or not ASCII, so most pages are
    passed as they are after two scans in C."""
    if data.isascii() and b"\x7f" not in data:
        return data
    return _safe_json(data.decode()).encode()


def dump_pages(pages: Iterable[list]) -> None:
    """The items of `pages` as one JSON array: the same bytes as `dump(every item, "json")`,
    without holding every item. Each page is dumped as it arrives and its brackets dropped
    (orjson's "[\n  ...\n]": the items keep their indent); the text is written once every page
    has come, so that a list that fails half-way prints nothing, as before."""
    import codecs

    import orjson

    parts: list[bytes | memoryview] = []
    for items in pages:
        if items:
            text = _safe_json_bytes(orjson.dumps(items, option=orjson.OPT_INDENT_2))
            parts += [b",\n" if parts else b"[\n", memoryview(text)[2:-2]]  # (a view: no copy)
        del items  # (let go before the next page is read: client._paged)
    parts.append(b"\n]\n" if parts else b"[]\n")
    out = sys.stdout
    try:  # bytes straight to the byte stream, when that is what writing text would give
        utf8 = codecs.lookup(out.encoding).name == "utf-8" and hasattr(out, "buffer")
    except (LookupError, TypeError):
        utf8 = False
    if utf8:
        out.flush()
        out.buffer.writelines(parts)
    else:
        out.write(b"".join(parts).decode())
    out.flush()


def dump(data: Any, fmt: str) -> None:
    import orjson

    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    if fmt == "json":
        sys.stdout.write(_safe_json(text) + "\n")
        sys.stdout.flush()
    else:
        import yaml

        # PyYAML escapes C0, DEL and C1 in double quotes but writes bidi and zero-width
        # controls as they are unless it keeps to ASCII: then it escapes them too.
        unsafe = _safe_json(text) != text
        yaml.safe_dump(data, sys.stdout, sort_keys=False, allow_unicode=not unsafe)


# --- tables ---


class Column:
    """A column of a table. (A plain class: a frozen dataclass costs ~1 ms to make, and `cs
    list` imports this module.)"""

    __slots__ = ("cell", "cut", "header", "limit", "raw")

    def __init__(
        self,
        header: str,
        cell: Callable[[dict], Any],  # the table's text
        raw: Callable[[dict], Any],  # the plain value (full, ISO times)
        cut: bool = False,  # free text: cut with "…" to fit; anything else is never cut
        limit: int | None = None,  # cut past this many characters whatever the width
    ):
        self.header, self.cell, self.raw, self.cut, self.limit = header, cell, raw, cut, limit


def _cell_len(text: str) -> int:
    from rich.cells import cell_len

    return cell_len(text)


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` cells, with an ellipsis when it was cut."""
    if _cell_len(text) <= width:
        return text
    from rich.cells import set_cell_size

    return set_cell_size(text, max(0, width - 1)) + "…"


def layout(
    headers: Sequence[str],
    rows: list[list[str]],
    cuttable: Sequence[bool],
    width: int | None,
    drop_order: Sequence[str] = (),
) -> tuple[list[int], list[int]]:
    """Which columns to show, and how wide. With no room for every column, whole columns are
    dropped first, in `drop_order`; then free text (`cuttable`) is cut, widest first, no
    narrower than MIN_CUT; nothing else (ids, endpoints, statuses, times) is ever cut. A table
    that fits is never cut."""
    natural = [max([_cell_len(h)] + [_cell_len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    kept = list(range(len(headers)))

    def total() -> int:
        return sum(natural[i] for i in kept) + GAP * (len(kept) - 1)

    widths = list(natural)
    if width is None or total() <= width:
        return kept, widths
    for name in drop_order:
        if name in headers and headers.index(name) in kept:
            kept.remove(headers.index(name))
            if total() <= width:
                return kept, widths
    excess = total() - width
    floors = {i: min(natural[i], max(MIN_CUT, _cell_len(headers[i]))) for i in kept if cuttable[i]}
    while excess > 0:
        candidates = [i for i in floors if widths[i] > floors[i]]
        if not candidates:
            break  # wider than the terminal even so: the terminal wraps; nothing else is cut
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return kept, widths


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    cuttable: Sequence[bool] | None = None,
    no_headers: bool = False,
    title: str | None = None,
    drop_order: Sequence[str] = (),
    limits: Sequence[int | None] | None = None,
) -> None:
    """A borderless, one-line-per-row table (kubectl style) on stdout, fitted to the width."""
    out = sys.stdout
    cuttable = cuttable or [False] * len(headers)
    limits = limits or [None] * len(headers)
    cells = [[printable(_text(v), limits[i]) for i, v in enumerate(row)] for row in rows]
    kept, widths = layout(headers, cells, cuttable, width_of(out), drop_order)
    color = use_color(out)
    lines = []
    if title:
        lines.append(_bold(printable(title), color))

    def line(values: Sequence[str], bold: bool = False) -> str:
        parts = []
        for n, i in enumerate(kept):
            text = _fit(values[i], widths[i])
            last = n == len(kept) - 1
            pad = "" if last else " " * (widths[i] - _cell_len(text) + GAP)
            parts.append((_bold(text, color) if bold else text) + pad)
        return "".join(parts)

    if not no_headers:
        lines.append(line(list(headers), bold=True))
    lines.extend(line(r) for r in cells)
    out.write("".join(f"{x}\n" for x in lines))
    out.flush()


def plain(headers: Sequence[str], rows: Iterable[Sequence[Any]], no_headers: bool) -> None:
    """Tab-separated, full values; tabs, newlines and other controls inside a value are
    escaped (\\t, \\n, \\x1b), so that a row is always one line of the right fields."""
    out = sys.stdout
    if not no_headers:
        out.write("\t".join(headers) + "\n")
    out.write("".join("\t".join(printable(_text(v)) for v in row) + "\n" for row in rows))
    out.flush()


# --- lists of stations ---


def _model(d: dict) -> str:
    return " ".join(str(x) for x in (d.get("manufacturer"), d.get("model")) if x)


def _firmware(d: dict) -> Any:
    return (d.get("bootInfo") or {}).get("firmwareVersion")


STATION_COLUMNS: list[Column] = [
    Column("ENDPOINT", lambda d: d["endpoint"], lambda d: d["endpoint"]),
    Column("ID", lambda d: d["_id"], lambda d: d["_id"]),
    Column("PROTOCOL", lambda d: d["protocol"], lambda d: d["protocol"]),
    Column("ONLINE", lambda d: "yes" if d["online"] else "no", lambda d: d["online"]),
    Column("ACTIVE", lambda d: "yes" if d["active"] else "no", lambda d: d["active"]),
    Column("STATUS", lambda d: d.get("status") or "-", lambda d: d.get("status")),
    Column("MODEL", lambda d: _model(d) or "-", _model, cut=True, limit=CELL_MAX),
    Column("LAST SEEN", lambda d: ago(d.get("lastMessageAt")), lambda d: d.get("lastMessageAt")),
]
WIDE_COLUMNS: list[Column] = [
    *STATION_COLUMNS,
    Column(
        "LOCATION",
        lambda d: d.get("location") or "-",
        lambda d: d.get("location"),
        cut=True,
        limit=CELL_MAX,
    ),
    Column(
        "ORGANIZATION",
        lambda d: d.get("organization") or "-",
        lambda d: d.get("organization"),
        cut=True,
        limit=CELL_MAX,
    ),
    Column(
        "CONNECTORS",
        lambda d: len(d.get("connectors") or []),
        lambda d: len(d.get("connectors") or []),
    ),
    Column("FIRMWARE", lambda d: _firmware(d) or "-", _firmware, cut=True, limit=CELL_MAX),
    Column("CREATED", lambda d: ago(d.get("createdAt")), lambda d: d.get("createdAt")),
]
# When the terminal is too narrow, whole columns go first, in this order (the 24-hex id first:
# the endpoint names the station as well); then free text is cut.
DROP_ORDER = ("ID", "PROTOCOL", "ACTIVE")
WIDE_DROP_ORDER = (
    "ID",
    "PROTOCOL",
    "ACTIVE",
    "CONNECTORS",
    "FIRMWARE",
    "ORGANIZATION",
    "CREATED",
    "LOCATION",
)


def station_pages(pages: Iterable[list[dict]], fmt: str, no_headers: bool = False) -> None:
    """`stations` of stations that arrive page by page: JSON is dumped as they arrive."""
    if fmt == "json":
        dump_pages(pages)
    else:
        stations([d for items in pages for d in items], fmt, no_headers)


def stations(docs: list[dict], fmt: str, no_headers: bool = False) -> None:
    if fmt == "ids":
        sys.stdout.write("".join(printable(d["_id"]) + "\n" for d in docs))
    elif fmt in ("json", "yaml"):
        dump(docs, fmt)
    else:
        cols = WIDE_COLUMNS if fmt == "wide" else STATION_COLUMNS
        headers = [c.header for c in cols]
        if fmt == "plain":
            plain(headers, ([c.raw(d) for c in cols] for d in docs), no_headers)
        else:
            table(
                headers,
                ([c.cell(d) for c in cols] for d in docs),
                cuttable=[c.cut for c in cols],
                limits=[c.limit for c in cols],
                no_headers=no_headers,
                drop_order=WIDE_DROP_ORDER if fmt == "wide" else DROP_ORDER,
            )
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
    ("Public", "public"),
    ("Connection URL", "connection_url"),
    ("Security", None),
    ("Authorize", "authorize"),  # who may charge; none: the server's --authorize
    ("Created", "createdAt"),
    ("Updated", "updatedAt"),
    ("Last connect", "lastConnectAt"),
    ("Last disconnect", "lastDisconnectAt"),
    ("Last message", "lastMessageAt"),
    ("Last refusal", "lastRefusal"),
    ("Config fetched", "csconfigFetchedAt"),
]


def _detail_value(doc: dict, key: str | None) -> Any:
    if key is None:
        return (doc.get("security") or {}).get("type")
    if key == "lastRefusal":  # {at, status, reason}: one line
        r = doc.get(key)
        return f"{r['status']} {r['reason']} ({ago(r['at'])}, {r['at']})" if r else None
    return doc.get(key)


def _meta_data(doc: dict) -> str:
    import orjson

    meta = doc.get("meta_data")
    return _safe_json(orjson.dumps(meta).decode()) if meta else ""


def station(doc: dict, fmt: str) -> None:
    if fmt == "ids":
        print(printable(doc["_id"]))
        return
    if fmt in ("json", "yaml"):
        dump(doc, fmt)
        return
    if fmt == "plain":
        rows = [[label, _text(_detail_value(doc, key))] for label, key in DETAIL_FIELDS]
        if doc.get("meta_data"):
            rows.append(["Meta data", _meta_data(doc)])
        rows += [[f"bootInfo.{k}", _text(v)] for k, v in (doc.get("bootInfo") or {}).items()]
        rows += [
            [f"connector.{c['evseId']}.{c['connectorId']}", _text(c.get("status"))]
            for c in doc.get("connectors") or []
        ]
        rows += [[f"csconfig.{e['key']}", _text(e.get("value"))] for e in doc.get("csconfig") or []]
        plain(["FIELD", "VALUE"], rows, no_headers=True)
        return
    out = sys.stdout
    color = use_color(out)
    width = max(len(label) for label, _ in DETAIL_FIELDS) + 1
    lines = []
    for label, key in DETAIL_FIELDS:
        value = _detail_value(doc, key)
        shown = printable(_text(value)) or "-"
        if key and key.endswith("At") and value:
            shown = f"{shown} ({ago(value)})"
        lines.append(f"{_bold((label + ':').ljust(width), color)} {shown}")
    if doc.get("meta_data"):
        lines.append(f"{_bold('Meta data:'.ljust(width), color)} {_meta_data(doc)}")
    boot = doc.get("bootInfo") or {}
    if boot:
        shown = ", ".join(f"{printable(k)}={printable(_text(v))}" for k, v in boot.items())
        lines.append(f"{_bold('Boot info:', color)} {shown}")
    out.write("".join(f"{x}\n" for x in lines))
    connectors = doc.get("connectors") or []
    if connectors:
        out.write("\n")
        table(
            ["EVSE", "CONNECTOR", "STATUS", "ERROR", "UPDATED"],
            (
                [
                    c["evseId"],
                    c["connectorId"],
                    c.get("status") or "-",
                    c.get("errorCode") or "-",
                    ago(c.get("updatedAt")),
                ]
                for c in connectors
            ),
            cuttable=[False, False, False, True, False],
            limits=[None, None, None, CELL_MAX, None],
            title="Connectors",
        )
    if doc.get("csconfig"):
        out.write("\n")
        config(
            doc["csconfig"],
            "table",
            title=f"csconfig (fetched {ago(doc.get('csconfigFetchedAt'))})",
        )


def config(
    entries: list[dict], fmt: str, title: str | None = None, no_headers: bool = False
) -> None:
    """Configuration entries; a key is printed exactly as `cs config -k` takes it back."""
    if fmt in ("json", "yaml"):
        dump(entries, fmt)
        return
    headers = ["KEY", "VALUE", "READONLY"]
    rows = [
        [e["key"], _text(e.get("value")), "" if e.get("readonly") is None else _text(e["readonly"])]
        for e in entries
    ]
    if fmt in ("plain", "ids"):
        plain(headers, rows, no_headers)
    else:
        table(
            headers,
            rows,
            cuttable=[False, True, False],
            limits=[KEY_MAX, None, None],
            no_headers=no_headers,
            title=title,
        )
