"""`edrvctl webhooks`: receivers the server POSTs events to, signed, with a delivery log."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from edrvctl.cli import output
from edrvctl.cli.base import Command, Group, confirm
from edrvctl.cli.chargestations import (
    NoHeadersOpt,
    OutputOpt,
    QuietOpt,
    YesOpt,
    _client,
    _fmt,
)

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)

BASE = "/v1.1/webhooks"
DELIVERY_STATUSES = ("pending", "delivered", "failed")

WebhookId = Annotated[str, typer.Argument(metavar="ID", help="The webhook's _id")]
EventsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--events",
        metavar="GLOB",
        help="Event types to deliver, as globs (chargestation.*, session.ended, *); "
        "repeat it, or separate with commas",
        show_default=False,
    ),
]
DescriptionOpt = Annotated[
    str | None,
    typer.Option("--description", metavar="TEXT", help="A note for people", show_default=False),
]


def command(name: str | None = None, **kw):
    return app.command(name, cls=Command, **kw)


def _path(webhook_id: str, *rest: str) -> str:
    from urllib.parse import quote

    from edrvctl.errors import UsageError

    if not webhook_id.strip():
        raise UsageError("a webhook _id is required, not an empty string")
    return "/".join((BASE, quote(webhook_id, safe=""), *rest))


def _globs(given: list[str] | None) -> list[str]:
    return [g.strip() for text in given or [] for g in text.split(",") if g.strip()]


def _done(doc: dict, verb: str, fmt: str) -> None:
    from edrvctl.textsafe import printable

    if fmt in ("json", "yaml"):
        output.dump(doc, fmt)
    elif fmt == "ids":
        print(printable(doc["_id"]))
    else:
        print(printable(f"webhook/{doc['_id']} {verb}"))


def _show_secret(doc: dict, fmt: str) -> None:
    """A new secret is shown once: inside -o json/yaml output, else on stderr (never in -q
    id lists that scripts pipe on)."""
    if doc.get("secret") and fmt not in ("json", "yaml"):
        output.info(f"secret of webhook {doc['_id']} (shown once; keep it): {doc['secret']}")


@command("list")
def list_(out: OutputOpt = None, quiet: QuietOpt = False, no_headers: NoHeadersOpt = False) -> None:
    """List the webhooks and their pending deliveries (never their secrets).

    Example:

    \b
      edrvctl webhooks list -o json
    """
    fmt = _fmt(out, quiet)
    docs = _client().request("GET", BASE)["result"]
    if fmt == "ids":
        sys.stdout.write("".join(d["_id"] + "\n" for d in docs))
        return
    if fmt in ("json", "yaml"):
        output.dump(docs, fmt)
        return
    headers = ["ID", "URL", "EVENTS", "ACTIVE", "PENDING", "CREATED"]
    rows = [
        [d["_id"], d["url"], ",".join(d["events"]), d["active"], d["pending"], d["createdAt"]]
        for d in docs
    ]
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
        return
    output.table(
        headers,
        rows,
        cuttable=[False, True, True, False, False, False],
        no_headers=no_headers,
        drop_order=("CREATED", "EVENTS"),
    )
    if not docs:
        output.info("no webhooks; create one with `edrvctl webhooks create URL --events GLOB`")


@command()
def create(
    url: Annotated[str, typer.Argument(metavar="URL", help="http(s) URL the events are POSTed to")],
    events: EventsOpt = None,
    inactive: Annotated[
        bool, typer.Option("--inactive", help="Create it switched off (it takes no events)")
    ] = False,
    description: DescriptionOpt = None,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create a webhook: events matching a glob are POSTed to URL, signed.

    Each event committed from now on whose type matches a glob is POSTed to URL, signed with a
    secret that is shown this once (stderr, or `secret` with -o json).

    Receivers check `edrv-signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
    and deduplicate on `edrv-event-id`; see the README.

    Examples:

    \b
      edrvctl webhooks create https://example.com/hook --events 'chargestation.*'
      edrvctl webhooks create http://10.0.0.5:8080/ev --events session.ended,chargestation.offline -o json
    """
    from edrvctl.errors import UsageError

    globs = _globs(events)
    if not globs:
        raise UsageError("say which events to deliver: --events GLOB (e.g. 'chargestation.*')")
    body: dict = {"url": url, "events": globs, "active": not inactive}
    if description is not None:
        body["description"] = description
    doc = _client().request("POST", BASE, body=body)["result"]
    fmt = _fmt(out, quiet)
    _done(doc, "created", fmt)
    _show_secret(doc, fmt)


@command()
def inspect(
    webhook: WebhookId,
    out: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="FORMAT", help="yaml (default) or json", show_default=False
        ),
    ] = None,
) -> None:
    """Show one webhook (never its secret).

    Example:

    \b
      edrvctl webhooks inspect 6650f1c2a1b2c3d4e5f60718
    """
    doc = _client().request("GET", _path(webhook))["result"]
    output.dump(doc, "json" if out == "json" else "yaml")


@command()
def update(
    webhook: WebhookId,
    url: Annotated[
        str | None, typer.Option("--url", metavar="URL", help="A new URL", show_default=False)
    ] = None,
    events: EventsOpt = None,
    active: Annotated[
        bool | None,
        typer.Option(
            "--active/--inactive",
            help="Switch it on (it takes the events from then on) or off",
            show_default=False,
        ),
    ] = None,
    description: DescriptionOpt = None,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Change a webhook's URL, globs or description; switch it on or off.

    Examples:

    \b
      edrvctl webhooks update 6650f1c2a1b2c3d4e5f60718 --inactive
      edrvctl webhooks update 6650f1c2a1b2c3d4e5f60718 --events '*'
    """
    from edrvctl.errors import UsageError

    body: dict = {}
    if url is not None:
        body["url"] = url
    if events is not None:
        body["events"] = _globs(events)
    if active is not None:
        body["active"] = active
    if description is not None:
        body["description"] = description
    if not body:
        raise UsageError(
            "nothing to change: give --url, --events, --active/--inactive or --description"
        )
    doc = _client().request("PATCH", _path(webhook), body=body)["result"]
    _done(doc, "updated", _fmt(out, quiet))


@command()
def delete(
    webhooks: Annotated[list[str], typer.Argument(metavar="ID", help="The webhooks' _ids")],
    yes: YesOpt = False,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Delete webhooks; their pending deliveries are never sent.

    Example:

    \b
      edrvctl webhooks delete 6650f1c2a1b2c3d4e5f60718 --yes
    """
    from edrvctl.errors import UsageError

    what = webhooks[0] if len(webhooks) == 1 else f"{len(webhooks)} webhooks"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to delete {what} without confirmation: stdin is not a terminal; "
                "pass --yes"
            )
        if not confirm(f"Delete webhook {what}?" if len(webhooks) == 1 else f"Delete {what}?"):
            output.info("nothing changed")
            raise typer.Exit(1)
    client = _client()
    fmt = _fmt(out, quiet)
    docs = []
    for w in webhooks:
        doc = client.request("DELETE", _path(w))["result"]
        docs.append(doc)
        if fmt not in ("json", "yaml"):
            _done(doc, "deleted", fmt)
    if fmt in ("json", "yaml"):
        output.dump(docs if len(webhooks) > 1 else docs[0], fmt)


@command("rotate-secret")
def rotate_secret(
    webhook: WebhookId, yes: YesOpt = False, out: OutputOpt = None, quiet: QuietOpt = False
) -> None:
    """Give a webhook a new secret, shown this once.

    Deliveries are signed with it from the next attempt on; the old one signs nothing more.

    Example:

    \b
      edrvctl webhooks rotate-secret 6650f1c2a1b2c3d4e5f60718 --yes
    """
    from edrvctl.errors import UsageError

    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "refusing to rotate the secret without confirmation: stdin is not a terminal; "
                "pass --yes"
            )
        if not confirm(f"Rotate the secret of webhook {webhook}?"):
            output.info("nothing changed")
            raise typer.Exit(1)
    doc = _client().request("POST", _path(webhook, "rotate_secret"))["result"]
    fmt = _fmt(out, quiet)
    _done(doc, "has a new secret", fmt)
    _show_secret(doc, fmt)


@command()
def test(
    webhook: WebhookId,
    out: Annotated[
        str | None,
        typer.Option("-o", "--output", metavar="FORMAT", help="plain line (default), json or yaml"),
    ] = None,
) -> None:
    """Send a signed webhook.test event now (exit 5 if not answered 2xx).

    Example:

    \b
      edrvctl webhooks test 6650f1c2a1b2c3d4e5f60718
    """
    envelope = _client().request("POST", _path(webhook, "test"))  # not taken: exit 5
    if out in ("json", "yaml"):
        output.dump(envelope["result"], out)
    else:
        from edrvctl.textsafe import printable

        print(printable(envelope["message"]))


@command()
def deliveries(
    webhook: WebhookId,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", metavar="STATUS", help="pending, delivered or failed", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="At most N, newest first", min=1, max=1000)
    ] = 50,
    out: OutputOpt = None,
    quiet: QuietOpt = False,
    no_headers: NoHeadersOpt = False,
) -> None:
    """A webhook's delivery log, newest event first.

    Each row: the event, its station, status, attempts, the last HTTP status or error, the next
    attempt, and when it was delivered.

    Examples:

    \b
      edrvctl webhooks deliveries 6650f1c2a1b2c3d4e5f60718
      edrvctl webhooks deliveries 6650f1c2a1b2c3d4e5f60718 --status failed -o json
    """
    from edrvctl.errors import UsageError

    if status is not None and status not in DELIVERY_STATUSES:
        raise UsageError(f"--status must be one of {', '.join(DELIVERY_STATUSES)}")
    params: dict = {"limit": limit}
    if status is not None:
        params["status"] = status
    docs = _client().request("GET", _path(webhook, "deliveries"), params=params)["result"]
    fmt = _fmt(out, quiet)
    if fmt == "ids":
        sys.stdout.write("".join(d["_id"] + "\n" for d in docs))
        return
    if fmt in ("json", "yaml"):
        output.dump(docs, fmt)
        return
    headers = ["EVENT", "TYPE", "STATION", "STATUS", "ATTEMPTS", "LAST", "NEXT", "DELIVERED"]
    rows = [
        [
            d["event"],
            d["type"],
            d.get("chargestation") or d.get("endpoint"),
            d["status"],
            d["attempts"],
            d.get("lastError") or d.get("lastStatus"),
            d.get("nextAttemptAt"),
            d.get("deliveredAt"),
        ]
        for d in docs
    ]
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
        return
    output.table(
        headers,
        rows,
        cuttable=[False, False, False, False, False, True, False, False],
        no_headers=no_headers,
        drop_order=("DELIVERED", "NEXT", "STATION"),
    )
    if not docs:
        output.info("no deliveries")
