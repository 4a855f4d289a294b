"""Many stations at once: the options every station command shares (several ids, `-l`
selector, `--all`, `--dry-run`, `--max-in-flight`, `--max-failures`) and the one function
that runs a command on them as a batch (`POST /v1.1/actions/batch`, fleet/batch.py)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from edrvctl.cli import output
from edrvctl.cli.base import report
from edrvctl.errors import EdrvError, StationRejected, StationTimeout, Unavailable, UsageError

POLL = 0.5  # s between two reads of a running batch

SelectorOpt = Annotated[
    str | None,
    typer.Option(
        "-l",
        "--selector",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="Stations whose fields match: location, organization, manufacturer, model, "
        "firmware, protocol, status, online, active",
        show_default=False,
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every station")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="List the stations that would be targeted; send nothing")
]
MaxInFlightOpt = Annotated[
    int,
    typer.Option(
        "--max-in-flight", metavar="N", min=1, max=1000, help="At most N stations at once"
    ),
]
MaxFailuresOpt = Annotated[
    int | None,
    typer.Option(
        "--max-failures",
        metavar="N",
        min=1,
        help="Start no more stations once N have failed [default: no limit]",
        show_default=False,
    ),
]


def is_bulk(stations: list[str], selector: str | None, all_: bool, dry_run: bool) -> bool:
    return len(stations) != 1 or bool(selector) or all_ or dry_run


def selector_of(stations: list[str], selector: str | None, all_: bool) -> dict:
    from edrvctl.fleet.batch import parse_selector

    if all_ and (stations or selector):
        raise UsageError("--all targets every station: give no STATION and no -l with it")
    chosen: dict[str, Any] = parse_selector(selector) if selector else {}
    if stations:
        chosen["ids"] = list(stations)
    if all_:
        chosen["all"] = True
    if not chosen:
        raise UsageError("say which stations: STATION..., -l KEY=VALUE or --all")
    return chosen


def _rows(record: dict) -> list[list[Any]]:
    return [
        [
            r["endpoint"],
            r.get("protocol") or "",
            r["outcome"],
            ",".join(r["actions"]),
            _detail(r),
        ]
        for r in record["stations"]
    ]


def _detail(row: dict) -> str:
    if row.get("error"):
        e = row["error"]
        return str(e.get("description") or e.get("code") or "")
    if row["outcome"] == "planned" and row.get("data") is not None:
        if "current" in row:
            return ", ".join(
                f"{k}: {row['current'].get(k)!s} -> {v}" for k, v in (row["data"] or {}).items()
            )
        return "" if not row.get("online") else "online"
    if row["outcome"] == "planned":
        return "" if row.get("online") else "offline"
    return ""


def summary(record: dict) -> str:
    c = record["counts"]
    if record["dryRun"]:
        text = f"dry run: {c['requested']} chargestation(s) would get {record['type']}"
        if c.get("unchanged"):
            text += f", {c['unchanged']} already match"
        return text + "; nothing sent"
    text = (
        f"{record['matched']} chargestation(s): {c['completed']} succeeded, "
        f"{c['failed']} failed, {c['skipped']} skipped"
    )
    if c.get("unchanged"):
        text += f", {c['unchanged']} unchanged"
    return text


def worst(record: dict) -> EdrvError | None:
    """The error standing for the worst station outcome (7 timed out, 6 offline, 5 failed)."""
    errors: list[EdrvError] = []
    for r in record["stations"]:
        if r["outcome"] != "failed":
            continue
        code = (r.get("error") or {}).get("code")
        text = f"chargestation {r['endpoint']}: {_detail(r) or 'failed'}"
        if code in ("Timeout", "StationTimeout"):
            errors.append(StationTimeout(text))
        elif code in ("Offline", "Unavailable"):
            errors.append(Unavailable(text))
        else:
            errors.append(StationRejected(text))
    if not errors:
        return None
    top = max(errors, key=lambda e: e.exit_code)
    failed = len(errors)
    return type(top)(f"{failed} chargestation(s) failed; {top.message}")


def run_batch(
    client,
    type_: str,
    data: Any,
    stations: list[str],
    selector: str | None,
    all_: bool,
    dry_run: bool,
    max_in_flight: int,
    max_failures: int | None,
    fmt: str,
    wait: bool = False,
    confirm_verb: str | None = None,
    yes: bool = False,
    only_differences: bool = False,
) -> dict:
    """Run one command on the chosen stations as a batch; print one row per station and a
    summary; exit with the worst code when any failed. `confirm_verb`: ask first (the
    stations a dry run found are named), unless `yes`."""
    body: dict[str, Any] = {
        "selector": selector_of(stations, selector, all_),
        "type": type_,
        "data": data,
        "max_in_flight": max_in_flight,
        "max_failures": max_failures,
        "only_differences": only_differences,
        "follow": wait,
    }
    if confirm_verb and not dry_run and not yes:
        from edrvctl.cli.chargestations import _confirm

        planned = client.create_batch({**body, "dry_run": True})
        names = [r["endpoint"] for r in planned["stations"] if r["outcome"] == "planned"]
        if not names:
            output.info("no chargestation matches")
            return planned
        _confirm(confirm_verb, names, yes)
    record = client.create_batch({**body, "dry_run": dry_run})
    while record["status"] != "finished":
        time.sleep(POLL)
        record = client.get_batch(record["_id"])
    show(record, fmt)
    error = worst(record)
    if error is not None:
        report(error)
        raise typer.Exit(error.exit_code)
    return record


def show(record: dict, fmt: str, no_headers: bool = False) -> None:
    if fmt in ("json", "yaml"):
        output.dump(record, fmt)
        return
    if fmt == "ids":
        ids = record["actions"] or [r["chargestation"] for r in record["stations"]]
        sys.stdout.write("".join(i + "\n" for i in ids))
        return
    headers = ["STATION", "PROTOCOL", "OUTCOME", "ACTIONS", "DETAIL"]
    rows = _rows(record)
    if fmt == "plain":
        output.plain(headers, rows, no_headers)
    else:
        output.table(headers, rows, no_headers=no_headers, drop_order=("ACTIONS", "PROTOCOL"))
    from edrvctl.textsafe import printable

    print(printable(summary(record)))
