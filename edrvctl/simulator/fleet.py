"""Many simulated stations in one event loop: run_fleet(), Fleet and its FleetSummary."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edrvctl.simulator.station import PROTOCOLS, SimStation


@dataclass
class FleetSummary:
    """A snapshot of a fleet for a live CLI display."""

    total: int
    connected: int
    booted: int
    sent: int
    received: int
    answered: int
    errors: int
    reconnects: int
    msgs_per_s: float  # frames sent (CALLs + answers) per second since the previous summary()
    elapsed: float
    last_errors: dict[str, int] = field(default_factory=dict)  # offline stations by last error


class Fleet:
    """Many SimStations in one event loop. Create with run_fleet()."""

    def __init__(self, stations: list[SimStation]):
        self.stations = stations
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.monotonic()
        self._last = (self.started_at, 0)

    def __len__(self) -> int:
        return len(self.stations)

    def __iter__(self) -> Iterator[SimStation]:
        return iter(self.stations)

    def __getitem__(self, i: int) -> SimStation:
        return self.stations[i]

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._last = (self.started_at, 0)
        self._tasks = [
            asyncio.create_task(s.start(), name=f"sim-{s.endpoint}") for s in self.stations
        ]

    def summary(self) -> FleetSummary:
        connected = booted = sent = received = answered = errors = reconnects = 0
        last_errors: Counter[str] = Counter()
        for s in self.stations:
            st = s.stats
            connected += s.connected.is_set()
            booted += s.booted.is_set()
            sent += st.sent
            received += st.received
            answered += st.answered
            errors += st.errors
            reconnects += st.reconnects
            if s.last_error and not s.connected.is_set():
                last_errors[s.last_error] += 1
        now = time.monotonic()
        then, frames_then = self._last
        frames = sent + answered
        rate = (frames - frames_then) / (now - then) if now > then else 0.0
        self._last = (now, frames)
        return FleetSummary(
            len(self.stations),
            connected,
            booted,
            sent,
            received,
            answered,
            errors,
            reconnects,
            rate,
            now - self.started_at,
            dict(last_errors.most_common(5)),
        )

    async def wait_booted(self, n: int | None = None, timeout: float | None = None) -> bool:
        """Wait until n (default: all) stations are booted; False on timeout."""
        n = len(self.stations) if n is None else n
        deadline = None if timeout is None else time.monotonic() + timeout
        while sum(s.booted.is_set() for s in self.stations) < n:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stations), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)


def raise_nofile_limit(wanted: int) -> None:
    """Each station is one socket; the default soft limit (often 1024) is too low for big
    fleets."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass


async def run_fleet(
    url: str,
    count: int,
    protocol: str = "ocpp1.6",
    prefix: str = "SIM",
    start_index: int = 1,
    concurrency_of_connects: int = 200,
    **station_kwargs: Any,
) -> Fleet:
    """Start `count` stations named f"{prefix}{i:05d}" and return the running Fleet at once.

    protocol "mixed" alternates 1.6 and 2.0.1. At most `concurrency_of_connects` websocket
    handshakes run at the same time (also when the fleet reconnects after a server restart).
    """
    if protocol not in (*PROTOCOLS, "mixed"):
        raise ValueError(f"protocol must be one of {(*PROTOCOLS, 'mixed')}, not {protocol!r}")
    raise_nofile_limit(count + 256)
    limiter = asyncio.Semaphore(max(1, concurrency_of_connects))
    stations = []
    for n in range(count):
        proto = PROTOCOLS[n % 2] if protocol == "mixed" else protocol
        stations.append(
            SimStation(
                f"{prefix}{start_index + n:05d}",
                url,
                proto,
                connect_limiter=limiter,
                **station_kwargs,
            )
        )
    fleet = Fleet(stations)
    fleet.start()
    return fleet
