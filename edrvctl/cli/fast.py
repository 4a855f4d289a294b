"""`edrvctl cs list` without Typer: the command that lists a whole fleet answers in about half
the time when it need not import Typer, pydantic and httpx (~0.2 s) first.

`main` reads the arguments of a `cs list` (or `chargestations list`) it is sure of: the
command's own options and the global ones, each spelt out (`--limit 5`, `--limit=5`), with a
value Typer would take as it is. Anything else (help, --watch, a bad value, combined short
flags, an option added to the command but not here) goes to the Typer app, which answers it
as always; a test checks that both know the same options. Both run `show` to list.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: ~3 ms)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

# The root callback's options (edrvctl/cli/main.py), which may follow a command too
# (base.hoist_global_options): name -> takes a value.
GLOBAL_OPTIONS = {"--api-url": True, "--context": True, "--color": True, "--debug": False}
# option -> (parameter, the value it sets; None: the next argument)
GLOBAL: dict[str, tuple[str, bool | None]] = {
    name: (name[2:].replace("-", "_"), None if value else True)
    for name, value in GLOBAL_OPTIONS.items()
}
LIST: dict[str, tuple[str, bool | None]] = {
    "--online": ("online", True),
    "--offline": ("online", False),
    "--active": ("active", True),
    "--inactive": ("active", False),
    "--status": ("status", None),
    "--protocol": ("protocol", None),
    "--location": ("location", None),
    "--organization": ("organization", None),
    "--limit": ("limit", None),
    "--all": ("all_", True),
    "-o": ("out", None),
    "--output": ("out", None),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--no-headers": ("no_headers", True),
}
# The Typer command's options that are always the Typer app's to answer.
TYPER_ONLY = ("--watch", "-h", "--help")
COMMANDS = (["cs", "list"], ["chargestations", "list"])


def parse(argv: list[str]) -> dict | None:
    """The parameters of `cs list` as the Typer app would pass them, or None when this is
    not a `cs list` to answer here."""
    from edrvctl.constants import FORMATS, PROTOCOLS, STATUSES

    given: dict[str, Any] = {}
    words: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-") or token == "-":
            words.append(token)
            continue
        name, eq, inline = token.partition("=")
        spec = GLOBAL.get(name) or (LIST.get(name) if len(words) == 2 else None)
        if spec is None or (eq and (spec[1] is not None or not name.startswith("--"))):
            return None
        param, flag = spec
        if flag is not None:
            given[param] = flag
            continue
        if eq:
            value = inline
        elif i < len(argv):
            value, i = argv[i], i + 1
        else:
            return None
        if value.startswith("-"):  # Typer takes it as the value; rare enough to leave it
            return None
        given[param] = value
    if words not in COMMANDS:
        return None

    def choice(name: str, choices: tuple[str, ...]) -> str | None:
        """A case-insensitive choice as the command names it (`--status faulted`)."""
        value = given.get(name)
        if value is None:
            return None
        found = [c for c in choices if c.lower() == value.lower()]
        if not found:
            raise ValueError(name)
        return found[0]

    try:
        status, protocol = choice("status", STATUSES), choice("protocol", PROTOCOLS)
    except ValueError:
        return None
    limit = given.get("limit", "100")
    out = given.get("out")
    color = given.get("color", "auto")
    if not (limit.isascii() and limit.isdigit() and int(limit) >= 1):
        return None
    if (out is not None and out not in FORMATS) or color not in ("auto", "always", "never"):
        return None
    return {
        # Typer reads these from the environment when the option is not given (an empty
        # variable is not given)
        "api_url": given.get("api_url", os.environ.get("EDRV_API_URL") or None),
        "context": given.get("context", os.environ.get("EDRVCTL_CONTEXT") or None),
        "color": color,
        "debug": given.get("debug", False),
        "filters": station_filters(
            given.get("online"),
            given.get("active"),
            status,
            protocol,
            given.get("location"),
            given.get("organization"),
        ),
        "limit": int(limit),
        "all_": given.get("all_", False),
        "out": out,
        "quiet": given.get("quiet", False),
        "no_headers": given.get("no_headers", False),
    }


def station_filters(
    online: bool | None,
    active: bool | None,
    status: str | None,
    protocol: str | None,
    location: str | None,
    organization: str | None,
) -> dict:
    """The API's query parameters for these filters (None: not filtered on)."""
    filters = {
        "online": None if online is None else str(online).lower(),
        "active": None if active is None else str(active).lower(),
        "status": status,
        "protocol": protocol,
        "location": location,
        "organization": organization,
    }
    return {k: v for k, v in filters.items() if v is not None}


def show(
    api_url: str | None,
    context: str | None,
    filters: dict,
    limit: int,
    all_: bool,
    fmt: str,
    no_headers: bool,
) -> None:
    """List the stations (what `cs list` prints, once), and remember them for completion."""
    shown(ask(api_url, context, filters, limit, all_), filters, limit, all_, fmt, no_headers)


def ask(
    api_url: str | None, context: str | None, filters: dict, limit: int, all_: bool
) -> tuple[str, Iterator[list]]:
    """The API's URL and the pages of its stations, the first of them asked for already: the
    caller imports what shows them while the API reads it."""
    from edrvctl.cli.settings import resolve
    from edrvctl.client import pages

    settings = resolve(api_url, context)
    return settings.api_url, pages(
        settings.api_url,
        settings.token,
        "/v1.1/chargestations",
        filters,
        None if all_ else limit + 1,
        settings.token_hint,
    )


def shown(
    asked: tuple[str, Iterator[list]],
    filters: dict,
    limit: int,
    all_: bool,
    fmt: str,
    no_headers: bool,
) -> None:
    """Show the stations `ask` asked for, and remember them for completion."""
    from edrvctl.cli import output
    from edrvctl.completion import cache_entries, remember_entries

    api_url, listed = asked
    cached: dict[str, list] = {}  # what completion keeps of each station
    more = False

    def items_shown():
        nonlocal more
        count = 0
        for items in listed:
            if not all_ and count + len(items) > limit:
                items, more = items[: limit - count], True
            count += len(items)
            cache_entries(items, cached)
            yield items
            del items  # (let go before the next page is read: client._paged)

    output.station_pages(items_shown(), fmt, no_headers)
    remember_entries(api_url.rstrip("/"), cached, replace=all_ and not filters)
    if more and sys.stderr.isatty():
        output.info(f"(showing the first {limit}; use --limit N or --all for more)")


def main(argv: list[str]) -> int | None:
    """Answer a `cs list` here: its exit code; None when the Typer app is to answer."""
    args = parse(argv)
    if args is None:
        return None
    import gc

    gc.disable()  # a short run that makes ~1 M objects and no cycles: ~30% of its time
    try:
        asked = ask(args["api_url"], args["context"], args["filters"], args["limit"], args["all_"])
        # The first page has been asked for: what shows the pages is imported while the API
        # reads it (orjson and what it imports: ~15 ms).
        import orjson  # noqa: F401

        from edrvctl.cli import output

        output.color_mode = args["color"]
        shown(
            asked,
            args["filters"],
            args["limit"],
            args["all_"],
            output.resolve_format(args["out"], args["quiet"]),
            args["no_headers"],
        )
    except (Exception, KeyboardInterrupt) as e:
        from edrvctl.cli import output
        from edrvctl.cli.base import failure, state

        output.color_mode = args["color"]
        state.debug = args["debug"]
        return failure(e)
    return 0
