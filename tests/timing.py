"""One scaled unit of time for every timing in the suite.

Set EDRV_TEST_TIME_SCALE (default 1) on a slow or loaded machine: every timeout, deadline and
deliberate wait in the tests is a multiple of `UNIT` seconds. Waiting for something to happen is
done by polling a condition (`until`, `until_async`), never by a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")

UNIT = float(os.environ.get("EDRV_TEST_TIME_SCALE", "1") or 1)


def scaled(seconds: float) -> float:
    """`seconds` on a machine of ordinary speed, scaled by EDRV_TEST_TIME_SCALE."""
    return seconds * UNIT


def until(
    condition: Callable[[], T], timeout: float = 10, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `condition` until it returns something truthy; return that. Fails the test after
    `timeout` (scaled) seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):g} s waiting for {what}")
        time.sleep(interval)


async def until_async(
    condition: Callable[[], Awaitable[T] | T],
    timeout: float = 10,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """`until` for coroutines: `condition` may be sync or async."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):g} s waiting for {what}")
        await asyncio.sleep(interval)


def until_past(stamp: str, timeout: float = 5) -> None:
    """Wait until the wall clock is past the millisecond of `stamp` (the server's ISO-8601
    `...T10:00:00.123Z`), so that the next timestamp the server writes is later than it. Records
    are stamped with millisecond resolution; this is what orders two of them, not a sleep."""
    after = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(milliseconds=1)
    until(
        lambda: datetime.now(UTC) >= after,
        timeout,
        interval=0.001,
        what=f"the clock to pass {stamp}",
    )
