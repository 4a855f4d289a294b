"""Text from stations and clients, made safe to show: the one rule for the CLI and the logs.

Every string a station or a network client chose (vendor, model, configuration values, error
descriptions, endpoints in URLs, subprotocols) is shown as text: control characters (C0, C1,
DEL) and the Unicode controls that reorder or hide text (bidi overrides and isolates, zero-width
marks) become visible escapes, so nothing can move the cursor, retitle a window, write the
clipboard or forge a log line. Markup is the renderer's business: the CLI prints these strings
with Rich markup off.
"""

from __future__ import annotations

import re

# C0 (but not ordinary space), DEL, C1; bidi embeddings/overrides/isolates; zero-width and
# line/paragraph separators; the byte-order mark
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    )


def printable(text: object, limit: int | None = None) -> str:
    """`text` with every unsafe character escaped, cut to `limit` characters (with '…')."""
    s = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(s):
        s = _UNSAFE.sub(_escape, s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s
