"""Relative times for people ("3m ago", "--since 2h"); shared by the CLI and the server's
messages."""

from __future__ import annotations

from datetime import UTC

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: `cs list` does not)

if TYPE_CHECKING:
    from datetime import datetime


def ago(iso: str | None, never: str = "-") -> str:
    from datetime import datetime

    if not iso:
        return never
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    s = max(0, int((datetime.now(UTC) - t).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def when(text: str, now: datetime | None = None) -> str:
    """A time as people give it on a command line: ISO-8601 (naive: UTC), or a duration ago
    (`90s`, `30m`, `2h`, `7d`). ISO-8601 UTC with milliseconds and 'Z'; ValueError if it is
    neither."""
    import re
    from datetime import datetime, timedelta

    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", text)
    if m:
        size = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        try:
            t = (now or datetime.now(UTC)) - timedelta(seconds=int(m.group(1)) * size)
        except OverflowError:
            raise ValueError(f"{text!r} is too long ago") from None
    else:
        try:
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is neither an ISO-8601 time (2030-01-31T12:00:00Z) nor a duration "
                "ago (30m, 2h, 7d)"
            ) from None
        t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
