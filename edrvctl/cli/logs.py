"""`edrvctl logs STATION`: a station's OCPP frames in and out (the server's frame log), and with
-f the ones that follow, as they happen."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from edrvctl.cli.chargestations import Station, _client
from edrvctl.errors import UsageError

PAGE = 1000  # the API's largest page
KEEPALIVE = 15.0  # s between the server's keep-alive comments: a stream silent for 3 is dead
RECONNECT = (0.5, 1, 2, 5)  # s before each new attempt after a stream dropped (then 5 s)
ARROWS = {"in": "←", "out": "→"}  # received from the station, sent to it
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Format = typer.Option(
    "-o",
    "--output",
    metavar="FORMAT",
    help="table (a line per frame) or jsonl (a JSON object per line, e.g. for a vendor)",
)


def since_time(value: str) -> str:
    """--since: ISO-8601 as it is, or a duration back from now (30s, 10m, 2h, 7d)."""
    m = _RELATIVE.match(value.strip())
    if not m:
        return value
    back = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    return (datetime.now(UTC) - back).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(f: dict, width: int | None = None) -> str:
    """One frame as a line: time, direction, type, action, message id, size, the latency of an
    answer, an error's code, then its text (made safe to show; cut to `width` if given)."""
    from edrvctl.textsafe import printable

    latency = f.get("latencyMs")
    parts = [
        f["createdAt"],
        ARROWS.get(f["direction"], "?"),
        f"{printable(f['type']):<10}",
        f"{printable(f.get('action') or '-', 40):<20}",
        printable(f["messageId"], 40),
        f"{f['size']:>6} B",
        f"{latency:>8.1f} ms" if latency is not None else " " * 11,
    ]
    if f.get("error"):
        parts.append(printable(f["error"], 40))
    head = " ".join(parts)
    text = printable(f.get("text") or "")
    if f.get("truncated"):
        text += f" …(cut: {f['size']} B in all)"
    if width is not None and len(head) + 2 + len(text) > width:
        text = printable(text, max(8, width - len(head) - 2))
    return f"{head}  {text}"


def show(frames: list[dict], fmt: str) -> None:
    from edrvctl.cli.output import _safe_json, width_of

    out = sys.stdout
    if fmt == "jsonl":
        import orjson

        out.write("".join(_safe_json(orjson.dumps(f).decode()) + "\n" for f in frames))
    else:
        width = width_of(out)
        out.write("".join(line(f, width) + "\n" for f in frames))
    out.flush()


def newest(client, path: str, params: dict, limit: int) -> list[dict]:
    """The newest `limit` frames that match, oldest first (paging back past PAGE)."""
    pages: list[list[dict]] = []
    before = None
    left = limit
    while left > 0:
        query = {**params, "limit": min(PAGE, left)}
        if before is not None:
            query["before"] = before
        env = client.request("GET", path, params=query)
        found = env["result"]
        if found:
            pages.append(found)
            before = found[0]["_id"]
        left -= len(found)
        if not env.get("hasMore") or not found:
            break
    return [f for page in reversed(pages) for f in page]


def stream(client, path: str, params: dict, after: str | None) -> Iterator[dict]:
    """Frames from the server-sent events stream, after the frame id `after`, for ever: a
    dropped connection is opened again (Last-Event-ID: the last frame seen), after a pause."""
    import httpx
    import orjson

    from edrvctl.cli.output import info

    attempt = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        try:
            with client.http.stream(
                "GET",
                path + "/stream",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(10.0, read=3 * KEEPALIVE),
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    client._checked(r, "GET", path + "/stream")
                attempt = 0
                event, data, seen = "", "", None
                for raw in r.iter_lines():
                    if raw.startswith(":"):
                        continue
                    if raw:
                        name, _, value = raw.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "id":
                            seen = value
                        elif name == "event":
                            event = value
                        elif name == "data":
                            data += value
                        continue
                    if event == "frame" and data:
                        yield orjson.loads(data)
                        after = seen or after
                    event, data = "", ""
        except (httpx.TransportError, httpx.StreamError) as e:
            pause = RECONNECT[min(attempt, len(RECONNECT) - 1)]
            attempt += 1
            info(f"the stream dropped ({type(e).__name__}); reconnecting in {pause:g} s")
            time.sleep(pause)


def logs(
    station: Station,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Then show the frames as they happen")
    ] = False,
    action: Annotated[
        list[str] | None,
        typer.Option(
            "--action",
            metavar="ACTION",
            help="Only frames of this OCPP action (an answer's is its CALL's); repeatable",
        ),
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="Only CALLERRORs and frames that are not OCPP-J")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="TIME", help="Only frames since TIME: ISO-8601, or 30s, 10m, 2h, 7d"
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", metavar="N", help="Show the newest N frames (before -f)", min=0),
    ] = 100,
    out: Annotated[str, Format] = "table",
) -> None:
    """Show a station's OCPP frames in and out, oldest first: time, ← received from the
    station or → sent to it, type (CALL, CALLRESULT, CALLERROR, INVALID), action, message id,
    size, the latency of an answer (since its CALL), an error's code, and the frame's text.

    The server keeps them (`serve --frame-log`, by default every frame: the newest 10,000 per
    station, at most 7 days); a text longer than 8 KiB is cut, and says so. With -f the command
    goes on showing frames as they happen, until Ctrl-C (it reconnects by itself).

    Examples:

    \b
      edrvctl logs edrv01
      edrvctl logs edrv01 -f --action MeterValues
      edrvctl logs edrv01 --errors --since 2h
      edrvctl logs edrv01 --since 2030-01-01T00:00:00Z -o jsonl > edrv01-trace.jsonl
    """
    from edrvctl.client import _seg

    if out not in ("table", "jsonl"):
        raise UsageError(f"-o {out}: use table or jsonl")
    client = _client()
    path = f"/v1.1/chargestations/{_seg(station)}/messages"
    params: dict = {}
    if action:
        params["action"] = ",".join(action)
    if errors:
        params["errors"] = "true"
    if since:
        params["since"] = since_time(since)
    try:
        shown = newest(client, path, params, limit) if limit else []
        show(shown, out)
        if not follow:
            return
        # after the last shown; none shown: after every one that matched (there were none), or
        # with --limit 0 from now on
        after = shown[-1]["_id"] if shown else ("0" if limit else None)
        for frame in stream(client, path, params, after):
            show([frame], out)
    finally:
        client.close()
