"""Logging for `serve`: to stderr, as text or one JSON object per line.

Every record, ours and the libraries' (uvicorn, websockets, asyncio), goes through one handler
and one of the two formatters below. Times are ISO-8601 UTC with milliseconds and a `Z`, like
every timestamp the API returns. Messages often quote what a station or a client sent (a URL
path, a subprotocol, an error description): the formatters escape control characters with
`textsafe.printable`, so no one can forge a log line (`%0A` in a URL path) or send escape
sequences to the terminal that shows the log. A traceback keeps its lines, each indented and
escaped the same way, so it cannot pass for a record of its own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

from edrvctl.textsafe import printable


def _utc(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _extra_lines(formatter: logging.Formatter, record: logging.LogRecord) -> list[str]:
    """The record's traceback and stack, one escaped line each."""
    text = ""
    if record.exc_info:
        text = formatter.formatException(record.exc_info)
    elif record.exc_text:
        text = record.exc_text
    if record.stack_info:
        text = (
            f"{text}\n{formatter.formatStack(record.stack_info)}"
            if text
            else (formatter.formatStack(record.stack_info))
        )
    return [printable(line) for line in text.split("\n")] if text else []


class TextFormatter(logging.Formatter):
    """`2024-05-04T08:09:18.816Z INFO    edrvctl.ocpp: message`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc(record)} {record.levelname:<7} {printable(record.name)}: "
            f"{printable(record.getMessage())}"
        )
        extra = _extra_lines(self, record)
        return "\n".join([line, *("    " + x for x in extra)])


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"[, "exc"]}`, one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        extra = _extra_lines(self, record)
        if extra:
            entry["exc"] = "\n".join(extra)
        return json.dumps(entry)


class Throttle:
    """Which repeats of a log line to write: the first per key and minute at the given level,
    the rest at DEBUG and counted in the next one written. Bounded: cleared past a million
    keys (keys come from stations that passed authentication, or from client addresses)."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.seen: dict[str, tuple[float, int]] = {}  # key -> (last written, repeats since)

    def level(self, key: str, level: int = logging.INFO) -> tuple[int, int]:
        """(level to log at, repeats not written since the last line for this key)."""
        now = time.monotonic()
        last, repeats = self.seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self.seen[key] = (last, repeats + 1)
            return logging.DEBUG, 0
        if len(self.seen) >= 1_000_000:
            self.seen.clear()
        self.seen[key] = (now, 0)
        return level, repeats


def _not_lost_socket_writes(record: logging.LogRecord) -> bool:
    return record.msg != "socket.send() raised exception."


class _OncePerMinute(logging.Filter):
    """uvicorn warns once per malformed HTTP request on the admin port, which anyone who can
    reach it can send in a loop: one such line a minute is written, the rest dropped."""

    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__()
        self.messages = messages
        self.throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.messages:
            return True
        return self.throttle.level(str(record.msg), record.levelno)[0] == record.levelno


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # `warnings` go through the same handler, in the same format
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
    # asyncio logs this once per write to a socket already lost (a peer that vanished while
    # answers to its flood were being written): a line per write, and nothing to act on
    logging.getLogger("asyncio").addFilter(_not_lost_socket_writes)
    logging.getLogger("uvicorn.error").addFilter(
        _OncePerMinute(("Invalid HTTP request received.", "Unsupported upgrade request."))
    )
    # uvicorn's loggers keep no handler of their own (serve passes log_config=None): their
    # records propagate here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
    logging.getLogger("uvicorn").setLevel(max(logging.WARNING, root.level))
