"""Relative times for people ("3m ago"); shared by the CLI and the server's messages."""

from __future__ import annotations

from datetime import UTC


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
