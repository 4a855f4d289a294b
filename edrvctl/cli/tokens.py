"""`edrvctl tokens`: the id tokens that may charge (list, create, inspect, update, block, unblock,
delete, import); and the station commands for local authorization lists (`cs send-local-list`,
`cs local-list-version`), registered on `edrvctl cs` from here."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.base import Command, Group, confirm, report
from edrvctl.cli.chargestations import (
    OutputOpt,
    QuietOpt,
    Station,
    YesOpt,
    _client,
    _fmt,
    _path,
)
from edrvctl.cli.chargestations import app as stations_app
from edrvctl.errors import Conflict, EdrvError, NotFound, UsageError
from edrvctl.textsafe import printable
from edrvctl.timefmt import ago

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

# edrvctl/fleet/tokens.py's; the CLI does not import the server's modules
TYPES = (
    "Central",
    "eMAID",
    "ISO14443",
    "ISO15693",
    "KeyCode",
    "Local",
    "MacAddress",
    "NoAuthorization",
)
MAX_IMPORT_BYTES = 16 << 20
PAGE = 1000

TypeName = Enum("TypeName", {t: t for t in TYPES}, type=str)  # type: ignore[misc]

Keys = Annotated[
    list[str],
    typer.Argument(metavar="TOKEN", help="The tokens' _ids or physicalIds (id tags)"),
]
TypeOpt = Annotated[
    TypeName | None,
    typer.Option(
        "--type",
        metavar="TYPE",
        help="The token's type, when several types have its physicalId: " + ", ".join(TYPES),
        show_default=False,
    ),
]


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


def _seg(key: str) -> str:
    from urllib.parse import quote

    if not key:
        raise UsageError("a token's _id or physicalId is required, not an empty string")
    return quote(key, safe="")


def _params(token_type: TypeName | None) -> dict | None:
    return {"type": token_type.value} if token_type else None


def _each(fn, keys: list[str]) -> tuple[list[dict], EdrvError | None]:
    """fn(key) for each token; a failure about one (not found, ambiguous) is reported and
    the others go on. Returns the results and the first failure."""
    docs, failed = [], None
    for key in keys:
        try:
            docs.append(fn(key))
        except (NotFound, Conflict, UsageError) as e:
            if len(keys) == 1:
                raise
            report(e)
            failed = failed or e
    return docs, failed


def _done(docs: list[dict], verb: str, fmt: str) -> None:
    if fmt in ("json", "yaml"):
        output.dump(docs[0] if len(docs) == 1 else docs, fmt)
        return
    for doc in docs:
        if fmt == "ids":
            print(printable(doc["_id"]))
        else:
            print(f"token/{printable(doc['physicalId'])} ({doc['type']}) {verb}")


def _meta_data(text: str | None) -> dict | None:
    if text is None:
        return None
    import json

    try:
        parsed = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--meta-data is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise UsageError('--meta-data must be a JSON object, such as \'{"driver": "ann"}\'')
    return parsed


# --- list and inspect ----------------------------------------------------------------------

COLUMNS = [
    output.Column("PHYSICAL ID", lambda d: d["physicalId"], lambda d: d["physicalId"]),
    output.Column("TYPE", lambda d: d["type"], lambda d: d["type"]),
    output.Column("ACTIVE", lambda d: "yes" if d["active"] else "no", lambda d: d["active"]),
    output.Column("EXPIRES", lambda d: d.get("expiryDate") or "-", lambda d: d.get("expiryDate")),
    output.Column("GROUP", lambda d: d.get("parentIdTag") or "-", lambda d: d.get("parentIdTag")),
    output.Column(
        "ORGANIZATION",
        lambda d: d.get("organization") or "-",
        lambda d: d.get("organization"),
        cut=True,
        limit=output.CELL_MAX,
    ),
    output.Column("ID", lambda d: d["_id"], lambda d: d["_id"]),
    output.Column("CREATED", lambda d: ago(d.get("createdAt")), lambda d: d.get("createdAt")),
]


def _pages(client, filters: dict, limit: int | None):
    size = PAGE if limit is None else max(1, min(PAGE, limit))
    page, seen = 1, 0
    while True:
        env = client.request(
            "GET",
            "/v1.1/tokens",
            params={**filters, "paginate_limit": size, "paginate_page": page},
        )
        for doc in env["result"]:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield doc
        if not env.get("hasNext") or (limit is not None and seen >= limit):
            return
        page += 1


@command("list")
def list_(
    physical_id: Annotated[
        str | None, typer.Option("--physical-id", metavar="ID_TAG", help="Only this id tag")
    ] = None,
    token_type: Annotated[
        TypeName | None,
        typer.Option("--type", metavar="TYPE", help="Only this type", show_default=False),
    ] = None,
    active: Annotated[
        bool | None,
        typer.Option(
            "--active/--blocked", help="Only tokens that are (not) active", show_default=False
        ),
    ] = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Only this organization")
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many tokens", min=1)] = 100,
    all_: Annotated[bool, typer.Option("--all", help="Every matching token (no limit)")] = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="Omit the header row")] = False,
) -> None:
    """List id tokens, newest first.

    Examples:

    \b
      edrvctl tokens list --blocked
      edrvctl tokens list --organization acme -o json
      edrvctl tokens list --all -q | wc -l
    """
    filters = {
        k: v
        for k, v in (
            ("physicalId", physical_id),
            ("type", token_type.value if token_type else None),
            ("active", None if active is None else str(active).lower()),
            ("organization", organization),
        )
        if v is not None
    }
    fmt = _fmt(out, quiet)
    docs = list(_pages(_client(), filters, None if all_ else limit))
    if fmt == "ids":
        sys.stdout.write("".join(printable(d["_id"]) + "\n" for d in docs))
    elif fmt in ("json", "yaml"):
        output.dump(docs, fmt)
    elif fmt == "plain":
        output.plain(
            [c.header for c in COLUMNS], ([c.raw(d) for c in COLUMNS] for d in docs), no_headers
        )
    else:
        output.table(
            [c.header for c in COLUMNS],
            ([c.cell(d) for c in COLUMNS] for d in docs),
            cuttable=[c.cut for c in COLUMNS],
            limits=[c.limit for c in COLUMNS],
            no_headers=no_headers,
            drop_order=("ID", "CREATED", "ORGANIZATION"),
        )
        if not docs:
            output.info("no tokens found")


DETAIL = [
    ("ID", "_id"),
    ("Physical ID", "physicalId"),
    ("Type", "type"),
    ("Active", "active"),
    ("Expires", "expiryDate"),
    ("Group", "parentIdTag"),
    ("Organization", "organization"),
    ("Created", "createdAt"),
    ("Updated", "updatedAt"),
]


def _detail(doc: dict, fmt: str) -> None:
    import orjson

    rows = [(label, doc.get(key)) for label, key in DETAIL]
    if doc.get("meta_data"):
        rows.append(("Meta data", orjson.dumps(doc["meta_data"]).decode()))
    if fmt == "plain":
        output.plain(["FIELD", "VALUE"], rows, no_headers=True)
        return
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        shown = printable("" if value is None else output._text(value)) or "-"
        if label in ("Created", "Updated") and value:
            shown = f"{shown} ({ago(value)})"
        print(f"{(label + ':').ljust(width)} {shown}")


@command()
def inspect(keys: Keys, token_type: TypeOpt = None, out: OutputOpt = None) -> None:
    """Show id tokens in full.

    A token is named by its _id or its physicalId (--type when several types have it).

    Examples:

    \b
      edrvctl tokens inspect 04A2B3C4D5E6F7
      edrvctl tokens inspect 04A2B3C4D5E6F7 --type ISO15693 -o json
    """
    client = _client()
    fmt = _fmt(out)
    docs, failed = _each(
        lambda k: client.request("GET", f"/v1.1/tokens/{_seg(k)}", params=_params(token_type))[
            "result"
        ],
        keys,
    )
    if fmt in ("json", "yaml"):
        output.dump(docs[0] if len(keys) == 1 else docs, fmt)
    elif fmt == "ids":
        sys.stdout.write("".join(printable(d["_id"]) + "\n" for d in docs))
    else:
        for n, doc in enumerate(docs):
            if n:
                print()
            _detail(doc, fmt)
    if failed:
        raise typer.Exit(failed.exit_code)


# --- changes -------------------------------------------------------------------------------


def _from_event(client, event_id: str) -> tuple[str, str | None]:
    """The id tag and type of a token.unknown (or token.refused) event."""
    if not event_id.isdigit() or int(event_id) < 1:
        raise UsageError(f"--from-event takes an event's _id (a number), not {event_id!r}")
    found = client.request("GET", "/v1.1/events", params={"after": int(event_id) - 1, "limit": 1})[
        "result"
    ]
    if not found or found[0]["_id"] != event_id:
        raise NotFound(
            f"event {event_id} not found",
            hint="list them with `edrvctl events --type 'token.*'`",
        )
    event = found[0]
    data = event.get("data") or {}
    if not event["type"].startswith("token.") or not isinstance(data.get("idTag"), str):
        raise UsageError(
            f"event {event_id} is {event['type']}, not about an id tag (token.unknown)",
            hint="list them with `edrvctl events --type 'token.*'`",
        )
    return data["idTag"], data.get("type")


@command()
def create(
    id_tag: Annotated[
        str | None,
        typer.Argument(
            metavar="ID_TAG",
            help="The OCPP id tag (1.6) or idToken (2.0.1): the token's physicalId",
            show_default=False,
        ),
    ] = None,
    from_event: Annotated[
        str | None,
        typer.Option(
            "--from-event",
            metavar="EVENT_ID",
            help="Take the id tag and type from a token.unknown event (`edrvctl events`)",
        ),
    ] = None,
    token_type: Annotated[
        TypeName | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="Its type: " + ", ".join(TYPES) + " [default: the event's, else ISO14443]",
            show_default=False,
        ),
    ] = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Organization id")
    ] = None,
    expiry: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="After this it is Expired (ISO-8601)"),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(metavar="GROUP_ID", help="Its group id (1.6 parentIdTag, 2.0.1 groupIdToken)"),
    ] = None,
    inactive: Annotated[bool, typer.Option("--blocked", help="Create it blocked")] = False,
    meta_data: Annotated[
        str | None, typer.Option("--meta-data", metavar="JSON", help="A JSON object")
    ] = None,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create an id token: who may charge when the server's policy is `known`.

    Examples:

    \b
      edrvctl tokens create 04A2B3C4D5E6F7 --group FLEET-1
      edrvctl tokens create TAG-7 --type KeyCode --expiry 2027-01-01T00:00:00Z
      edrvctl events --type token.unknown          # the cards seen but not known
      edrvctl tokens create --from-event 4711
    """
    client = _client()
    if (id_tag is None) == (from_event is None):
        raise UsageError("give the ID_TAG or --from-event EVENT_ID (one of them)")
    event_type = None
    if from_event is not None:
        id_tag, event_type = _from_event(client, from_event)
    body: dict[str, Any] = {"physicalId": id_tag, "active": not inactive}
    if token_type is not None:
        body["type"] = token_type.value
    elif event_type in TYPES:
        body["type"] = event_type
    for name, value in (
        ("organization", organization),
        ("expiryDate", expiry),
        ("parentIdTag", group),
        ("meta_data", _meta_data(meta_data)),
    ):
        if value is not None:
            body[name] = value
    doc = client.request("POST", "/v1.1/tokens", body=body)["result"]
    _done([doc], "created", _fmt(out, quiet))


@command()
def update(
    key: Annotated[str, typer.Argument(metavar="TOKEN", help="The token's _id or physicalId")],
    token_type: TypeOpt = None,
    organization: Annotated[
        str | None, typer.Option(metavar="ORGANIZATION", help="Organization id ('' removes it)")
    ] = None,
    expiry: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="After this it is Expired ('' removes it)"),
    ] = None,
    group: Annotated[
        str | None, typer.Option(metavar="GROUP_ID", help="Its group id ('' removes it)")
    ] = None,
    meta_data: Annotated[
        str | None,
        typer.Option("--meta-data", metavar="JSON", help="Replace meta_data ('{}' empties it)"),
    ] = None,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Change a token's organization, expiry, group or meta_data (block and unblock change
    whether it is active).

    Example:

    \b
      edrvctl tokens update 04A2B3C4D5E6F7 --expiry 2027-06-30T00:00:00Z --group FLEET-2
    """
    body: dict[str, Any] = {}
    for name, value in (
        ("organization", organization),
        ("expiryDate", expiry),
        ("parentIdTag", group),
    ):
        if value is not None:
            body[name] = value or None
    if meta_data is not None:
        body["meta_data"] = _meta_data(meta_data)
    if not body:
        raise UsageError("nothing to change: give --organization, --expiry, --group or --meta-data")
    doc = _client().request(
        "PATCH", f"/v1.1/tokens/{_seg(key)}", params=_params(token_type), body=body
    )["result"]
    _done([doc], "updated", _fmt(out, quiet))


def _set_active(keys: list[str], token_type: TypeName | None, active: bool, fmt: str) -> None:
    client = _client()
    docs, failed = _each(
        lambda k: client.request(
            "PATCH", f"/v1.1/tokens/{_seg(k)}", params=_params(token_type), body={"active": active}
        )["result"],
        keys,
    )
    _done(docs, "unblocked" if active else "blocked", fmt)
    if failed:
        raise typer.Exit(failed.exit_code)


@command()
def block(keys: Keys, token_type: TypeOpt = None, out: OutputOpt = None, quiet: QuietOpt = False):
    """Block tokens: under the `known` policy they are refused (Blocked) from now on.

    Stations that cached the token, or hold it in their local list, keep it until they ask
    again or get a new list (`edrvctl cs send-local-list STATION --diff`).

    Example:

    \b
      edrvctl tokens block 04A2B3C4D5E6F7
    """
    _set_active(keys, token_type, False, _fmt(out, quiet))


@command()
def unblock(
    keys: Keys, token_type: TypeOpt = None, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Unblock tokens: they are Accepted again (unless expired).

    Example:

    \b
      edrvctl tokens unblock 04A2B3C4D5E6F7
    """
    _set_active(keys, token_type, True, _fmt(out, quiet))


@command()
def delete(
    keys: Keys,
    token_type: TypeOpt = None,
    yes: YesOpt = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Delete tokens: under the `known` policy they are unknown from now on (Invalid).

    Asks first on a terminal; -y without one. (To refuse a token and keep its record, block
    it.)

    Example:

    \b
      edrvctl tokens delete 04A2B3C4D5E6F7 --yes
    """
    if not yes:
        what = f"token {keys[0]}" if len(keys) == 1 else f"{len(keys)} tokens ({', '.join(keys)})"
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to delete {what} without confirmation: stdin is not a terminal; "
                "pass --yes"
            )
        if not confirm(f"Delete {what}?"):
            output.info("nothing changed")
            raise typer.Exit(1)
    client = _client()
    docs, failed = _each(
        lambda k: client.request("DELETE", f"/v1.1/tokens/{_seg(k)}", params=_params(token_type))[
            "result"
        ],
        keys,
    )
    _done(docs, "deleted", _fmt(out, quiet))
    if failed:
        raise typer.Exit(failed.exit_code)


@command("import")
def import_(
    file: Annotated[str, typer.Argument(metavar="FILE", help="A CSV file ('-': standard input)")],
    out: OutputOpt = None,
) -> None:
    """Create or update tokens from a CSV file, all in one: every row, or none.

    The first line names the columns: physicalId,type,active,organization,expiryDate,
    parentIdTag (physicalId required, any order; an empty cell is the default: type
    ISO14443, active true). A row whose physicalId and type exist updates that token. A bad
    row is named by its line, and nothing is imported (exit 2). At most 16 MiB.

    Examples:

    \b
      edrvctl tokens import cards.csv
      printf 'physicalId,parentIdTag\\nTAG-1,FLEET\\nTAG-2,FLEET\\n' | edrvctl tokens import -
    """
    import httpx

    from edrvctl.errors import StationTimeout, Unavailable

    try:
        if file == "-":
            data = sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1)
        else:
            with open(file, "rb") as f:
                data = f.read(MAX_IMPORT_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read {file!r}: {e.strerror}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise UsageError(f"{file}: an import has at most {MAX_IMPORT_BYTES >> 20} MiB; split it")
    client = _client()
    try:
        r = client.http.post(
            "/v1.1/tokens/import",
            content=data,
            headers={"Content-Type": "text/csv"},
            timeout=300,
        )
    except httpx.TimeoutException:
        raise StationTimeout(f"the API at {client.api_url} did not answer in time") from None
    except httpx.TransportError as e:
        raise Unavailable(f"cannot reach the API at {client.api_url} ({e})") from None
    envelope = client._checked(r, "POST", "/v1.1/tokens/import")
    fmt = _fmt(out)
    if fmt in ("json", "yaml"):
        output.dump(envelope["result"], fmt)
    else:
        print(printable(envelope["message"]))


# --- local authorization lists (cs verbs) ----------------------------------------------------

TimeoutOpt = Annotated[
    float,
    typer.Option(
        metavar="SECONDS",
        help="Seconds to wait for the station's answer (the server waits at most 120)",
        min=1,
        max=120,
    ),
]


@stations_app.command("send-local-list", cls=Command)
def send_local_list(
    station: Station,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff/--full",
            help="Send only what changed since the list the station last accepted, or the "
            "whole list [default: --full]",
            show_default=False,
        ),
    ] = False,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Send a station its local authorization list: the tokens usable there (of no
    organization, or of the station's), each with its status and group.

    The station checks them itself, even offline. Each list has a version, one more than
    the last one the station accepted (`cs local-list-version`). An Action like every
    command: exit 5 if the station refuses it (VersionMismatch: send --full).

    Examples:

    \b
      edrvctl cs send-local-list edrv01
      edrvctl cs send-local-list edrv01 --diff
    """
    from edrvctl.cli.actions import run

    body = {"updateType": "Differential" if diff else "Full"}
    run(_client(), "POST", _path(station, "send_local_list"), body, _fmt(out, quiet), timeout)


@stations_app.command("local-list-version", cls=Command)
def local_list_version(
    station: Station,
    timeout: TimeoutOpt = 30.0,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Ask a station the version of its local authorization list (0: none), beside the
    version it was last sent from here.

    Examples:

    \b
      edrvctl cs local-list-version edrv01
      edrvctl cs local-list-version edrv01 -q
    """
    from edrvctl.cli.actions import failure, line

    client = _client()
    action, error = client.act("POST", _path(station, "get_local_list_version"), wait=timeout)
    error = error or failure(action)
    if error is not None:
        print(printable(line(action)))
        report(error)
        raise typer.Exit(error.exit_code)
    answer = action.get("response_data") or {}
    version = answer.get("listVersion", answer.get("versionNumber"))
    sent = client.request("GET", _path(station, "local_list"))["result"]
    result = {
        "chargestation": sent["chargestation"],
        "endpoint": sent["endpoint"],
        "listVersion": version,
        "sentVersion": sent["version"],
        "sentAt": sent["sentAt"],
        "action": action["_id"],
    }
    fmt = _fmt(out, quiet)
    if fmt in ("json", "yaml"):
        output.dump(result, fmt)
    elif fmt == "ids":
        print(version)
    else:
        when = f", {ago(sent['sentAt'])}" if sent["sentAt"] else ""
        print(
            printable(
                f"chargestation/{sent['endpoint']} local list version {version} "
                f"(last sent from here: {sent['version']}{when})"
            )
        )
