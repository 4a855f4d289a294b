"""Hostile stations and networks at full size: each flood against a real `edrvctl serve` of
its own, and what it cost the server and the stations that behave.

    python bench/abuse.py [FLOOD ...] [--quick] [--seconds S]

unknown       ~100,000 upgrades of distinct unknown 8,000-byte endpoints from one address, no
              credentials, 16 raw HTTP writers at once, for at most 40 s
subprotocol   a known profile-0 endpoint offered a different 7,000-byte subprotocol each time,
              8 writers, 10 s
pings         a station that stops reading and floods pings (it reconnects when dropped), 45 s
datatransfer  one station sending ~60 KB DataTransfer and MeterValues as fast as it can write,
              reconnecting every 100 messages, 10 s
connectors    StatusNotification with a new connector id every other message (the others
              rewrite connector 1), paced at 90% of --max-rate, 20 s
report        a 2.0.1 station answering GetBaseReport (POST .../get_variables, empty body)
              with 60 NotifyReport parts of ~0.9 MB each (paced at 90% of --max-rate), then
              20 StatusNotifications, in rounds, 20 s
passwords     150 concurrent wrong-password upgrades of one basic_auth station for 15 s, while
              another station connects with the right password every 0.5 s
halfopen      2,000 TCP connections that never upgrade, held 15 s, against
              --max-connections-per-address 20, while another station connects every 0.5 s

Each flood gets a fresh server (tests/conftest.py's start_server: loopback only, its stderr in a
log file) with serve's default limits unless the flood says otherwise, and is measured the same
way: server RSS idle / peak / after (/proc VmRSS, VmHWM), store growth (the .db plus its -wal),
log growth (bytes and lines of the server's log file), open descriptors, CPU; and, during the
flood, the latency of a well-behaved station (a process of its own, from another loopback
address, sending Heartbeat/StatusNotification at 20/s) and of the admin API (GET
/v1.1/chargestations?paginate_limit=20, 10/s). Attacks come from 127.0.0.1, the well-behaved
station from 127.0.0.2, the other stations of `passwords` and `halfopen` from 127.0.0.3.

Every loop is bounded in count and in time, and every flood stops by itself. `--quick` shrinks
each flood to ~1.2 s (tests/test_abuse_smoke.py); `--seconds S` sets every flood's duration.
The report (a Markdown section per flood, as bench/run.py prints) goes to stdout, progress to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import re
import resource
import select
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from conftest import Server, start_server  # noqa: E402  (tests/conftest.py)
from run import PY, Result, cpu_s, loadavg, log, pct, workdir  # noqa: E402  (bench/run.py)

ATTACKER, PROBE_ADDR, OTHER_ADDR = "127.0.0.1", "127.0.0.2", "127.0.0.3"
NOW = "2026-01-01T00:00:00.000Z"
P16, P201 = "ocpp1.6", "ocpp2.0.1"
BOOT16 = {"chargePointVendor": "Bench", "chargePointModel": "Abuse"}
BOOT201 = {"chargingStation": {"vendorName": "Bench", "model": "Abuse"}, "reason": "PowerUp"}

# serve's defaults, which the floods meet (edrvctl/cli/serve.py, edrvctl/fleet/__init__.py)
MAX_RATE, BURST = 50, 100  # --max-rate 50: messages a second per station, burst twice that
DAY_BUDGET = 50 << 20  # --max-stored-mb-per-day 50: bytes kept per station and UTC day
REPORT_BUDGET = 8 << 20  # --max-report-mb 8: bytes of one assembled 2.0.1 report
MAX_CONNECTORS = 128  # --max-connectors
PER_ADDRESS = 20  # --max-connections-per-address, as the halfopen flood sets it

# the targets of the issue "Hostile stations and networks: every resource bounded"
RSS_TARGET = 100_000_000  # bytes of server RSS over its idle level, at the flood's peak
P99_TARGET = 100.0  # ms, the well-behaved station's p99 during the flood
LOG_PER_MINUTE = 8_000  # bytes of server log per started minute of flood ("a few KB")
# The WAL: SQLite checkpoints it once it holds 1,000 pages (4 KiB each) and then reuses the file
# from its start without shrinking it; one commit may overshoot. The well-behaved station's own
# writes (a StatusNotification that changes its record every 100 ms) fill it during any flood.
WAL_ALLOWANCE = 1000 * 4096 + (1 << 20)

QUICK_S = 1.2  # each flood's duration with --quick
GUESSERS = 150  # wrong-password upgrades in flight at once
PROBE_RATE, API_RATE = 20, 10  # the well-behaved station's messages and API requests a second
CALL_TIMEOUT = 5.0  # s; an unanswered probe call counts as this latency


# --------------------------------------------------------------------------- sizes and figures


def size(n: float) -> str:
    """Bytes, in decimal units (the targets are 100 MB and a few KB)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{sign}{n / scale:.1f} {unit}"
    return f"{sign}{n:.0f} B"


def grew(n: float) -> str:
    return ("+" if n >= 0 else "") + size(n)


def ms(values: list[float], p: float) -> str:
    return f"{pct(values, p):.1f}" if values else "-"


def counts(c: Counter) -> str:
    """`404 × 1,000, TimeoutError × 2`, most common first."""
    return ", ".join(f"{k} × {n:,}" for k, n in c.most_common()) or "none"


# --------------------------------------------------------------------------- the server


@dataclass
class Snapshot:
    rss: int  # bytes
    hwm: int  # bytes, the peak RSS so far (VmHWM)
    db: int  # bytes of the store file
    wal: int  # bytes of its -wal
    log: int  # bytes of the server's log file
    fds: int  # open descriptors
    cpu: float  # s, utime + stime
    at: float  # time.monotonic()

    @classmethod
    def take(cls, srv: Server) -> Snapshot | None:
        """None once the server is gone."""
        try:
            status = proc_status(srv.proc.pid)
            return cls(
                status["VmRSS"],
                status["VmHWM"],
                *store_sizes(srv.store),
                srv.log.stat().st_size,
                fds(srv.proc.pid),
                cpu_s(srv.proc.pid),
                time.monotonic(),
            )
        except (OSError, KeyError, ValueError):
            return None


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def own_cpu() -> float:
    """CPU seconds this process (the attacker) has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def store_sizes(store: Path) -> tuple[int, int]:
    wal = store.with_name(store.name + "-wal")
    return store.stat().st_size, wal.stat().st_size if wal.exists() else 0


@dataclass
class Peaks:
    rss: int = 0
    fds: int = 0
    store: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), RSS)

    def rss_at(self, fractions: tuple[float, ...]) -> list[int]:
        """RSS at these fractions of the sampled time (the last sample before each)."""
        if not self.samples:
            return []
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        return [
            next(r for t, r in reversed(self.samples) if t <= t0 + f * (t1 - t0)) for f in fractions
        ]


async def sample(srv: Server, peaks: Peaks, every: float = 0.1) -> None:
    """The server's RSS, descriptors and store size, ten times a second, until cancelled."""
    while True:
        with contextlib.suppress(OSError, KeyError, ValueError):
            rss = proc_status(srv.proc.pid)["VmRSS"]
            peaks.rss = max(peaks.rss, rss)
            peaks.samples.append((time.monotonic(), rss))
            peaks.fds = max(peaks.fds, fds(srv.proc.pid))
            peaks.store = max(peaks.store, sum(store_sizes(srv.store)))
        await asyncio.sleep(every)


def stored(store: Path) -> dict:
    """What the store keeps: events and meter values (rows, bytes of JSON), the largest
    station record (endpoint, bytes)."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        ev = db.execute("SELECT count(*), coalesce(sum(length(doc)), 0) FROM event_log").fetchone()
        mv = db.execute(
            "SELECT count(*), coalesce(sum(length(doc)), 0) FROM meter_values"
        ).fetchone()
        big = db.execute(
            "SELECT endpoint, length(doc) FROM chargestations ORDER BY length(doc) DESC LIMIT 1"
        ).fetchone() or ("-", 0)
    return {
        "events": ev[0],
        "event_bytes": ev[1],
        "meter_values": mv[0],
        "mv_bytes": mv[1],
        "largest": big[0],
        "largest_bytes": big[1],
    }


def record_of(store: Path, endpoint: str) -> dict:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT doc FROM chargestations WHERE endpoint = ?", (endpoint,)
        ).fetchone()
    return {"doc": json.loads(row[0]), "bytes": len(row[0])} if row else {"doc": {}, "bytes": 0}


def events_of(store: Path, endpoint: str, kind: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return db.execute(
            "SELECT count(*) FROM event_log WHERE endpoint = ? AND type = ?",
            (endpoint, kind),
        ).fetchone()[0]


def log_lines(path: Path, start: int, limit: int = 1 << 30) -> tuple[Counter, int]:
    """The server log's lines from byte `start` (at most `limit` bytes read): lines per level
    (text format: `date time LEVEL logger: message`), and tracebacks."""
    levels: Counter = Counter()
    tracebacks = read = 0
    with open(path, "rb") as f:
        f.seek(start)
        for line in f:
            read += len(line)
            if read > limit:
                break
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[2] in (
                b"DEBUG",
                b"INFO",
                b"WARNING",
                b"ERROR",
                b"CRITICAL",
            ):
                levels[parts[2].decode()] += 1
            elif line.startswith(b"Traceback"):
                tracebacks += 1
    return levels, tracebacks


# --------------------------------------------------------------------------- the well-behaved probe


class Probe:
    """The well-behaved station and the admin API client, in a process of their own
    (`abuse.py --probe`): started before the server so that its imports overlap the server's,
    told its configuration on stdin, then `phase NAME` and `stop`; it answers with one JSON
    line of latencies per phase."""

    def __init__(self, root: Path):
        self.err = root / "probe.log"
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [PY, str(Path(__file__).resolve()), "--probe"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def _say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the probe did not answer: {self.err.read_text()[-2000:]}")
        return line.strip()

    def start(self, srv: Server, endpoint: str, max_s: float) -> None:
        self._say(
            json.dumps(
                {
                    "ocpp_url": srv.ocpp_url,
                    "api_url": srv.api_url,
                    "token": srv.token,
                    "endpoint": endpoint,
                    "local": PROBE_ADDR,
                    "rate": PROBE_RATE,
                    "api_rate": API_RATE,
                    "max_s": max_s,
                }
            )
        )
        if self._line(30) != "ready":
            raise RuntimeError(f"the probe did not start: {self.err.read_text()[-2000:]}")

    def phase(self, name: str) -> None:
        self._say(f"phase {name}")

    def stop(self) -> dict:
        self._say("stop")
        return json.loads(self._line(30))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class ProbeState:
    def __init__(self) -> None:
        self.phase = "start"
        self.stopped = False
        self.ready = asyncio.Event()
        self.phases: dict[str, dict] = {}
        self.last_error = ""

    def bucket(self) -> dict:
        return self.phases.setdefault(
            self.phase,
            {
                "station_ms": [],
                "unanswered": 0,
                "errors": 0,
                "disconnects": 0,
                "api_ms": [],
                "api_errors": 0,
            },
        )

    def summary(self) -> dict:
        out = {}
        for name, b in self.phases.items():
            s, a = b.pop("station_ms"), b.pop("api_ms")
            out[name] = {
                **b,
                "calls": len(s),
                "p50": pct(s, 0.5) if s else None,
                "p99": pct(s, 0.99) if s else None,
                "max": max(s, default=None),
                "api_requests": len(a),
                "api_p50": pct(a, 0.5) if a else None,
                "api_p99": pct(a, 0.99) if a else None,
                "api_max": max(a, default=None),
            }
        return {"phases": out, "last_error": self.last_error}


PROBE_MESSAGES = [  # a station that heartbeats and reports a connector changing status
    ("Heartbeat", {}),
    (
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": NOW},
    ),
    ("Heartbeat", {}),
    (
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": NOW},
    ),
]


async def reply_to(ws: ClientConnection, mid: str) -> list:
    """The server's reply to our CALL `mid`; its own CALLs meanwhile get a CALLERROR."""
    while True:
        msg = json.loads(await ws.recv())
        if msg[0] == 2:
            await ws.send(json.dumps([4, msg[1], "NotImplemented", "", {}]))
        elif msg[1] == mid:
            return msg


def paced(period: float) -> Callable[[], Awaitable[None]]:
    """A ticker: each await returns at the next tick; a late caller is not given a burst."""
    next_at = time.monotonic()

    async def tick() -> None:
        nonlocal next_at
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at + period, time.monotonic() - period)

    return tick


async def probe_station(cfg: dict, st: ProbeState) -> None:
    url = f"{cfg['ocpp_url']}/{cfg['endpoint']}"
    n = 0
    for _ in range(200):  # connections, a new one only after the last was lost
        if st.stopped:
            return
        try:
            async with connect(
                url,
                subprotocols=[P16],
                local_addr=(cfg["local"], 0),
                open_timeout=10,
                ping_interval=None,
                close_timeout=1,
                compression=None,
                proxy=None,
            ) as ws:
                await ws.send(json.dumps([2, "boot", "BootNotification", BOOT16]))
                await asyncio.wait_for(reply_to(ws, "boot"), 10)
                st.ready.set()
                tick = paced(1 / cfg["rate"])
                while not st.stopped:
                    await tick()
                    n += 1
                    action, payload = PROBE_MESSAGES[n % len(PROBE_MESSAGES)]
                    mid = f"p{n}"
                    t0 = time.perf_counter()
                    await ws.send(json.dumps([2, mid, action, payload]))
                    b = st.bucket()
                    try:
                        reply = await asyncio.wait_for(reply_to(ws, mid), CALL_TIMEOUT)
                    except TimeoutError:
                        b["unanswered"] += 1
                        b["station_ms"].append(CALL_TIMEOUT * 1000)
                        continue
                    b["station_ms"].append((time.perf_counter() - t0) * 1000)
                    if reply[0] != 3:
                        b["errors"] += 1
                        st.last_error = json.dumps(reply)[:200]
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
            if st.stopped:
                return
            st.bucket()["disconnects"] += 1
            st.last_error = repr(e)[:200]
            await asyncio.sleep(0.2)


async def probe_api(cfg: dict, st: ProbeState) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=cfg["local"])
    async with httpx.AsyncClient(
        base_url=cfg["api_url"],
        transport=transport,
        timeout=10,
        trust_env=False,
        headers={"Authorization": f"Bearer {cfg['token']}"},
    ) as api:
        tick = paced(1 / cfg["api_rate"])
        while not st.stopped:
            await tick()
            t0 = time.perf_counter()
            try:
                r = await api.get("/v1.1/chargestations", params={"paginate_limit": 20})
                ok = r.status_code == 200
            except httpx.HTTPError as e:
                ok = False
                st.last_error = repr(e)[:200]
            b = st.bucket()
            b["api_ms"].append((time.perf_counter() - t0) * 1000)
            b["api_errors"] += not ok


async def probe_main() -> None:
    loop = asyncio.get_running_loop()

    def read() -> Awaitable[str]:
        return loop.run_in_executor(None, sys.stdin.readline)

    cfg = json.loads(await read())
    st = ProbeState()
    tasks = [asyncio.create_task(probe_station(cfg, st)), asyncio.create_task(probe_api(cfg, st))]
    try:
        await asyncio.wait_for(st.ready.wait(), 30)
    except TimeoutError:
        print(f"not ready: {st.last_error}", flush=True)
        os._exit(1)
    print("ready", flush=True)
    deadline = loop.time() + cfg["max_s"]  # it stops by itself, whatever the caller does
    with contextlib.suppress(TimeoutError):
        while True:
            line = await asyncio.wait_for(read(), max(0.1, deadline - loop.time()))
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "phase":
                st.phase = arg
            else:  # "stop", or the caller is gone
                break
    st.stopped = True
    for t in tasks:
        t.cancel()
    print(json.dumps(st.summary()), flush=True)
    os._exit(0)  # the stdin reader thread may still wait on a line


# --------------------------------------------------------------------------- attackers' tools


def upgrade(path: str, *headers: str, protocol: str = P16) -> bytes:
    """A websocket upgrade request, as raw bytes."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {protocol}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Upgrade(asyncio.Protocol):
    """One raw upgrade request: the status line of the answer, once the server has closed."""

    def __init__(self, request: bytes, done: asyncio.Future):
        self.request, self.done, self.head = request, done, b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if len(self.head) < 64:
            self.head += data[:64]
        if self.head.startswith(b"HTTP/1.1 101") and not self.done.done():
            self.done.set_result("101")  # upgraded: nobody waits for the server to close it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(
                self.head.split(b" ")[1].decode()
                if self.head.startswith(b"HTTP/1.1 ")
                else type(exc).__name__
                if exc
                else "closed, nothing said"
            )


async def raw_upgrade(host: str, port: int, request: bytes, timeout: float = 10) -> str:
    """One upgrade request from the attacker's address, on a socket of its own: the HTTP
    status it got ("404", ...) or the name of what went wrong. The connection is read to its
    end (the server closes a refused one), so no TIME_WAIT is left on the attacker's side."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: _Upgrade(request, done), host, port)
            return await done
    except (OSError, TimeoutError) as e:
        return type(e).__name__
    finally:
        if transport is not None:
            transport.abort()


async def station_connect(
    url: str, endpoint: str, local: str, password: str | None = None
) -> tuple[str, float]:
    """A well-behaved station's visit: connect, BootNotification, close. ("ok", ms until the
    boot was answered), or (the refusal's status or the error's name, ms until then)."""
    headers = {"Authorization": basic(endpoint, password)} if password else {}
    t0 = time.perf_counter()
    try:
        async with connect(
            f"{url}/{endpoint}",
            subprotocols=[P16],
            additional_headers=headers,
            local_addr=(local, 0),
            open_timeout=10,
            ping_interval=None,
            close_timeout=2,
            compression=None,
            proxy=None,
        ) as ws:
            await ws.send(json.dumps([2, "boot", "BootNotification", BOOT16]))
            await asyncio.wait_for(reply_to(ws, "boot"), 10)
            return "ok", (time.perf_counter() - t0) * 1000
    except InvalidStatus as e:
        return str(e.response.status_code), (time.perf_counter() - t0) * 1000
    except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
        return type(e).__name__, (time.perf_counter() - t0) * 1000


async def visits(
    url: str,
    endpoint: str,
    local: str,
    password: str | None,
    every: float,
    deadline: float,
    limit: int = 1000,
) -> list[tuple[str, float]]:
    """station_connect every `every` s until the deadline."""
    out: list[tuple[str, float]] = []
    while time.monotonic() < deadline and len(out) < limit:
        t = time.monotonic()
        out.append(await station_connect(url, endpoint, local, password))
        await asyncio.sleep(max(0.0, every - (time.monotonic() - t)))
    return out


class Peer:
    """A station's end of OCPP-J over a websockets client connection: our CALLs are answered
    by id, the server's CALLs by `on_call` (a CALLERROR without one)."""

    def __init__(
        self, ws: ClientConnection, on_call: Callable[[list], Awaitable[list]] | None = None
    ):
        self.ws, self.on_call = ws, on_call
        self.pending: dict[str, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    reply = (
                        await self.on_call(msg)
                        if self.on_call
                        else [4, msg[1], "NotImplemented", "", {}]
                    )
                    await self.ws.send(json.dumps(reply))
                else:
                    fut = self.pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    async def call(self, action: str, payload: dict, timeout: float = 30) -> tuple[list, float]:
        mid = f"c{next(self.ids)}"
        return await self.send(mid, json.dumps([2, mid, action, payload]), timeout)

    async def send(self, mid: str, frame: str, timeout: float = 30) -> tuple[list, float]:
        """Send a CALL already encoded with id `mid`: (the reply, ms until it came)."""
        fut = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        t0 = time.perf_counter()
        await self.ws.send(frame)
        reply = await asyncio.wait_for(fut, timeout)
        return reply, (time.perf_counter() - t0) * 1000


def outcome(reply: list) -> str:
    """'CALLRESULT' or the CALLERROR's code."""
    return "CALLRESULT" if reply[0] == 3 else str(reply[2])


# --------------------------------------------------------------------------- one flood


@dataclass
class Ctx:
    """What a flood gets, and where it puts its own rows, checks and notes."""

    srv: Server
    seconds: float
    quick: bool
    stations: dict[str, dict] = field(default_factory=dict)  # endpoint -> record as created
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    kept_budget: int = 0  # bytes the flood may make the store keep (besides the WAL)
    kept_why: str = ""

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.srv.ocpp_url.removeprefix("ws://").rsplit(":", 1)
        return host, int(port)

    def deadline(self) -> float:
        return time.monotonic() + self.seconds


async def refused_upgrades(
    ctx: Ctx, request: Callable[[int], bytes], writers: int, limit: int
) -> tuple[Counter, int, float]:
    """`writers` raw writers sending request(i) for i = 0, 1, ... until `limit` or the
    flood's deadline: (statuses, sent, seconds)."""
    host, port = ctx.host_port
    got: Counter = Counter()
    seq = itertools.count()
    t0, deadline = time.monotonic(), ctx.deadline()

    async def writer() -> None:
        while time.monotonic() < deadline and (i := next(seq)) < limit:
            got[await raw_upgrade(host, port, request(i))] += 1

    await asyncio.gather(*(writer() for _ in range(writers)))
    took = time.monotonic() - t0
    return got, sum(got.values()), took


async def flood_unknown(ctx: Ctx) -> None:
    fill = "x" * 8000

    def request(i: int) -> bytes:  # /u0000042xxx...: 8,000 bytes, a new endpoint each time
        return upgrade("/" + (f"u{i:07d}" + fill)[:8000])

    got, n, took = await refused_upgrades(ctx, request, writers=16, limit=100_000)
    ctx.figures.update(sent=n, seconds=took, answers=dict(got))
    ctx.rows += [
        (
            "upgrades sent: distinct unknown 8,000-byte endpoints, no credentials, 16 writers",
            f"{n:,} in {took:.1f} s ({n / took:,.0f}/s)",
        ),
        ("answers", counts(got)),
    ]
    ctx.kept_why = "unknown endpoints keep nothing"


async def flood_subprotocol(ctx: Ctx) -> None:
    ep = "SUBPROTO"

    def request(i: int) -> bytes:
        return upgrade(f"/{ep}", protocol=(f"bogus{i:07d}-" + "p" * 7000)[:7000])

    got, n, took = await refused_upgrades(ctx, request, writers=8, limit=100_000)
    kept = events_of(ctx.srv.store, ep, "chargestation.connection_refused")
    minutes = math.ceil(took / 60)
    ctx.figures.update(sent=n, seconds=took, answers=dict(got), refusals_kept=kept)
    ctx.rows += [
        (
            (
                "upgrades sent: known profile-0 endpoint, a new 7,000-byte subprotocol each, "
                "8 writers"
            ),
            f"{n:,} in {took:.1f} s ({n / took:,.0f}/s)",
        ),
        ("answers", counts(got)),
        ("ConnectionRefused events kept for the station", f"{kept}"),
    ]
    ctx.checks.append(
        (
            (
                f"(flood) one ConnectionRefused event kept per started minute: {kept} "
                f"for {minutes} minute(s)"
            ),
            kept <= minutes,
        )
    )
    ctx.kept_budget, ctx.kept_why = (
        1000 * minutes,
        ("one ConnectionRefused event (< 1 kB) per started minute"),
    )


def ping_frames(count: int) -> bytes:
    """`count` masked client ping frames of 125 bytes each, back to back."""
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"p" * 125))
    return (bytes([0x89, 0x80 | 125]) + mask + payload) * count


async def flood_pings(ctx: Ctx) -> None:
    """A known station that reads nothing after its upgrade (a 4 KB receive buffer, reading
    paused) and writes pings as fast as the server takes them; when dropped, it comes back."""
    ep = "PINGER"
    host, port = ctx.host_port
    batch = ping_frames(1000)
    deadline = ctx.deadline()
    conns, frames, drops, refused = 0, 0, [], Counter()
    while time.monotonic() < deadline and conns < 1000:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 5)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as e:
            sock.close()
            refused[type(e).__name__] += 1
            await asyncio.sleep(0.1)
            continue
        opened = None
        try:
            writer.write(upgrade(f"/{ep}"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 101"):
                refused[head.split(b" ")[1].decode()] += 1
                await asyncio.sleep(0.1)
                continue
            writer.transport.pause_reading()  # from now on, nothing is read
            conns += 1
            opened = time.monotonic()
            while (left := deadline - time.monotonic()) > 0:
                writer.write(batch)
                frames += 1000
                await asyncio.wait_for(writer.drain(), left)
        except TimeoutError:
            pass  # the deadline, with the server not taking more
        except (OSError, asyncio.IncompleteReadError) as e:
            if opened is not None and isinstance(e, OSError):  # the server dropped it
                drops.append(time.monotonic() - opened)
            else:
                refused[type(e).__name__] += 1
        finally:
            writer.transport.abort()
    took = ctx.seconds
    waiting = [
        int(b)
        for b in re.findall(
            rb"it does not read what it is sent \((\d+) bytes "
            rb"waiting\)",
            ctx.srv.log.read_bytes()[-(1 << 20) :],
        )
    ]
    ctx.figures.update(
        connections=conns,
        pings=frames,
        drops=len(drops),
        refused=dict(refused),
        unread_at_drop=waiting,
    )
    ctx.rows += [
        (
            "pings written (125-byte payload; nothing read back)",
            f"{frames:,} ({size(frames * 131)}) in {took:.0f} s, over {conns} connection(s)",
        ),
        (
            "dropped by the server",
            f"{len(drops)} time(s), after "
            + (
                ", ".join(f"{d:.1f}" for d in drops[:8]) + (" ..." if len(drops) > 8 else "") + " s"
                if drops
                else "-"
            ),
        ),
    ]
    if waiting:
        ctx.rows.append(
            (
                "bytes it had not read when dropped (the server's log)",
                ", ".join(size(b) for b in waiting[:8]) + (" ..." if len(waiting) > 8 else ""),
            )
        )
    if refused:
        ctx.rows.append(("connections refused or failed", counts(refused)))
    if not ctx.quick:
        ctx.checks.append(
            (
                (f"(flood) the station that does not read is dropped: {len(drops)} drop(s)"),
                len(drops) > 0,
            )
        )
    ctx.kept_why = "pings keep nothing"


def data_frames() -> list[str]:
    """A DataTransfer and a MeterValues of ~60 KB each (under the 64 KiB a kept message may
    have, so each one admitted is kept), with MID where the message id goes."""
    dt = [
        2,
        "MID",
        "DataTransfer",
        {"vendorId": "bench.abuse", "messageId": "flood", "data": "d" * 60_000},
    ]
    values = [
        {"value": f"{k}.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        for k in range(1000)
    ]
    mv = [
        2,
        "MID",
        "MeterValues",
        {"connectorId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": values[:800]}]},
    ]
    return [json.dumps(dt), json.dumps(mv)]


async def flood_datatransfer(ctx: Ctx) -> None:
    ep = "DATAFLOOD"
    url = f"{ctx.srv.ocpp_url}/{ep}"
    frames = data_frames()
    deadline = ctx.deadline()
    log0 = ctx.srv.log.stat().st_size
    t0 = time.monotonic()
    sent, conns, answers, failed = 0, 0, Counter(), Counter()
    while time.monotonic() < deadline and conns < 10_000:
        try:
            async with connect(
                url,
                subprotocols=[P16],
                ping_interval=None,
                close_timeout=1,
                compression=None,
                max_size=None,
                open_timeout=10,
                proxy=None,
            ) as ws:
                conns += 1
                got = 0

                async def read(ws: ClientConnection = ws) -> None:
                    nonlocal got
                    async for raw in ws:
                        answers[outcome(json.loads(raw))] += 1
                        got += 1

                reader = asyncio.create_task(read())
                n = 0
                while n < 100 and time.monotonic() < deadline:  # then it reconnects
                    n += 1
                    await ws.send(frames[n % 2].replace('"MID"', f'"{conns}-{n}"', 1))
                    sent += 1
                with contextlib.suppress(TimeoutError):  # its answers, briefly
                    async with asyncio.timeout(2):
                        while got < n:
                            await asyncio.sleep(0.005)
                reader.cancel()
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
            failed[type(e).__name__] += 1
            await asyncio.sleep(0.05)
    took = time.monotonic() - t0
    logged = ctx.srv.log.stat().st_size - log0
    accepted = answers["CALLRESULT"]
    admitted = sum(answers.values()) - answers["GenericError"]  # GenericError: the rate limit
    allowed = BURST + MAX_RATE * took
    mine = stored_by(ctx.srv.store, ep)
    ctx.figures.update(
        sent=sent,
        connections=conns,
        answers=dict(answers),
        admitted_per_s=admitted / took,
        kept_bytes=mine,
    )
    ctx.rows += [
        (
            "messages sent (~60 KB DataTransfer / MeterValues, alternately)",
            (
                f"{sent:,} in {took:.1f} s ({sent / took:,.0f}/s, {size(sent * 60_000)}), "
                f"over {conns:,} connections"
            ),
        ),
        (
            "answers",
            counts(answers) + (f"; failed connections: {counts(failed)}" if failed else ""),
        ),
        (
            "admitted past the rate limit (not GenericError) per second",
            f"{admitted / took:.1f} (--max-rate {MAX_RATE}, burst {BURST}); {accepted:,} kept",
        ),
        ("kept for the station (events + meter values)", size(mine)),
        (
            "server log per connection",
            f"{size(logged / max(1, conns))} ({grew(logged)} for {conns:,} connections)",
        ),
    ]
    text = (
        f"(flood) the rate limit holds across reconnects: {admitted:,} admitted <= "
        f"{allowed:,.0f} (burst {BURST} + {MAX_RATE}/s × {took:.1f} s)"
    )
    ctx.checks.append((text, admitted <= allowed + 1))
    ctx.kept_budget = DAY_BUDGET
    ctx.kept_why = "one station's daily budget (--max-stored-mb-per-day 50)"


def stored_by(store: Path, endpoint: str) -> int:
    """Bytes of events and meter values kept for one station."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        sid = db.execute(
            "SELECT id FROM chargestations WHERE endpoint = ?", (endpoint,)
        ).fetchone()[0]
        return sum(
            db.execute(
                f"SELECT coalesce(sum(length(doc)), 0) FROM {t} WHERE station_id = ?", (sid,)
            ).fetchone()[0]
            for t in ("event_log", "meter_values")
        )


async def flood_connectors(ctx: Ctx) -> None:
    ep = "CONNECTORS"
    period = 1 / (0.9 * MAX_RATE)
    deadline = ctx.deadline()
    new: Counter = Counter()
    rewrites: list[tuple[str, float]] = []
    next_id = 1
    async with connect(
        f"{ctx.srv.ocpp_url}/{ep}",
        subprotocols=[P16],
        ping_interval=None,
        close_timeout=1,
        compression=None,
        proxy=None,
    ) as ws:
        peer = Peer(ws)
        await peer.call("BootNotification", BOOT16)
        t0 = time.monotonic()
        for k in itertools.count():
            if time.monotonic() >= deadline or k >= 10_000:
                break
            tick = t0 + k * period
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            if k % 2 == 0:  # a connector it never mentioned before
                next_id += 1
                reply, _ = await peer.call(
                    "StatusNotification",
                    {
                        "connectorId": next_id,
                        "errorCode": "NoError",
                        "status": "Available",
                        "timestamp": NOW,
                    },
                    timeout=CALL_TIMEOUT * 2,
                )
                new[outcome(reply)] += 1
            else:  # connector 1 changes status: the whole record is written again
                reply, took = await peer.call(
                    "StatusNotification",
                    {
                        "connectorId": 1,
                        "errorCode": "NoError",
                        "status": ("Available", "Charging")[k // 2 % 2],
                        "timestamp": NOW,
                    },
                    timeout=CALL_TIMEOUT * 2,
                )
                rewrites.append((outcome(reply), took))
    rec = record_of(ctx.srv.store, ep)
    held = len(rec["doc"].get("connectors") or [])
    lat = [t for _, t in rewrites]
    early, late = lat[:50], lat[-50:]
    ctx.figures.update(
        new_ids=next_id - 1,
        new=dict(new),
        connectors=held,
        record_bytes=rec["bytes"],
        rewrite_p50_late=pct(late, 0.5) if late else 0,
    )
    ctx.rows += [
        (
            f"new connector ids sent (paced at {0.9 * MAX_RATE:g}/s with the rewrites)",
            f"{next_id - 1:,}: {counts(new)}",
        ),
        ("connectors in the stored record / record size", f"{held} / {size(rec['bytes'])}"),
        (
            "connector 1 status changes (a record write each): answers",
            counts(Counter(o for o, _ in rewrites)),
        ),
        (
            "their latency, first 50 / last 50: p50 (max)",
            (
                f"{ms(early, 0.5)} ({max(early, default=0):.1f}) / {ms(late, 0.5)} "
                f"({max(late, default=0):.1f}) ms"
            ),
        ),
    ]
    ctx.checks.append(
        (
            (
                f"(flood) the record holds at most --max-connectors {MAX_CONNECTORS}: "
                f"{held} connectors, {size(rec['bytes'])}"
            ),
            held <= MAX_CONNECTORS,
        )
    )
    ctx.kept_why = "status changes rewrite one record; nothing is appended"


RID = 987_654_321  # the request id in report_parts' frames, replaced by the server's


def report_parts(parts: int, part_bytes: int) -> list[str]:
    """NotifyReport frames of ~part_bytes each, tbc on all but the last, with MID where the
    message id goes and RID for the request id."""
    item = {
        "component": {"name": "BenchAbuseCtrlr", "instance": "I"},
        "variable": {"name": "V"},
        "variableAttribute": [{"value": "v" * 2500, "mutability": "ReadWrite"}],
        "variableCharacteristics": {"dataType": "string", "supportsMonitoring": False},
    }
    per_part = max(1, part_bytes // len(json.dumps(item)))
    out = []
    for seq in range(parts):
        data = [{**item, "variable": {"name": f"V{seq}x{k}"}} for k in range(per_part)]
        out.append(
            json.dumps(
                [
                    2,
                    "MID",
                    "NotifyReport",
                    {
                        "requestId": RID,
                        "generatedAt": NOW,
                        "seqNo": seq,
                        "tbc": seq < parts - 1,
                        "reportData": data,
                    },
                ]
            )
        )
    return out


async def flood_report(ctx: Ctx) -> None:
    ep = "REPORT201"
    parts_n, part_bytes = 60, 900_000
    deadline = ctx.deadline()
    asked: asyncio.Queue[int] = asyncio.Queue()

    async def on_call(msg: list) -> list:
        if msg[2] == "GetBaseReport":
            asked.put_nowait(msg[3]["requestId"])
            return [3, msg[1], {"status": "Accepted"}]
        return [4, msg[1], "NotSupported", "", {}]

    parts_got: Counter = Counter()
    api_got: list[tuple[int, float, str]] = []  # (status, s, message)
    later: list[float] = []
    later_got: Counter = Counter()
    rounds, sent_bytes = 0, 0
    frames = report_parts(parts_n, part_bytes)
    # every message of its under the rate limit (--quick: its one round fits the burst)
    rate = 0.9 * MAX_RATE if not ctx.quick else 2 * MAX_RATE
    tick = paced(1 / rate)
    async with (
        connect(
            f"{ctx.srv.ocpp_url}/{ep}",
            subprotocols=[P201],
            ping_interval=None,
            close_timeout=1,
            compression=None,
            proxy=None,
            max_size=None,
        ) as ws,
        httpx.AsyncClient(
            base_url=ctx.srv.api_url,
            timeout=60,
            trust_env=False,
            headers={"Authorization": f"Bearer {ctx.srv.token}"},
        ) as api,
    ):
        peer = Peer(ws, on_call)
        await peer.call("BootNotification", BOOT201)
        while rounds < (1 if ctx.quick else 20) and (rounds == 0 or time.monotonic() < deadline):
            rounds += 1
            t0 = time.monotonic()
            fetch = asyncio.create_task(api.post(f"/v1.1/chargestations/{ep}/get_variables"))
            request_id = await asyncio.wait_for(asked.get(), 30)
            for seq, frame in enumerate(frames):
                await tick()
                mid = f"r{rounds}-{seq}"
                reply, _ = await peer.send(
                    mid,
                    frame.replace('"MID"', f'"{mid}"', 1).replace(
                        f'"requestId": {RID}', f'"requestId": {request_id}', 1
                    ),
                    60,
                )
                parts_got[outcome(reply)] += 1
                sent_bytes += len(frame)
            r = await fetch
            api_got.append((r.status_code, time.monotonic() - t0, r.json().get("message", "")))
            for k in range(20):  # what its later messages cost
                await tick()
                reply, took = await peer.call(
                    "StatusNotification",
                    {
                        "timestamp": NOW,
                        "connectorStatus": ("Available", "Occupied")[k % 2],
                        "evseId": 1,
                        "connectorId": 1,
                    },
                    timeout=30,
                )
                later.append(took)
                later_got[outcome(reply)] += 1
    rec = record_of(ctx.srv.store, ep)
    ctx.figures.update(
        rounds=rounds,
        parts=dict(parts_got),
        api=[a[:2] for a in api_got],
        record_bytes=rec["bytes"],
        later_p99=pct(later, 0.99),
    )
    statuses = Counter(str(s) for s, _, _ in api_got)
    ctx.rows += [
        (
            (
                f"rounds: POST get_variables (empty body), the station answers {parts_n} "
                f"NotifyReport parts of ~{size(part_bytes)}, at {rate:g}/s"
            ),
            f"{rounds}, {size(sent_bytes)} sent",
        ),
        ("answers to the parts", counts(parts_got)),
        ("API answers (time)", "; ".join(f"{s} ({t:.1f} s)" for s, t, _ in api_got)),
        ("API message (first round)", api_got[0][2][:160] if api_got else "-"),
        ("the station's record afterwards", size(rec["bytes"])),
        (
            "its later messages (20 StatusNotification per round): p50 / p99 / max",
            (
                f"{ms(later, 0.5)} / {ms(later, 0.99)} / {max(later, default=0):.1f} ms; "
                f"{counts(later_got)}"
            ),
        ),
    ]
    ctx.checks += [
        (
            (
                f"(flood) the record stays under the report budget (--max-report-mb 8): "
                f"{size(rec['bytes'])}"
            ),
            rec["bytes"] <= REPORT_BUDGET,
        ),
        (
            (
                f"(flood) its later messages are answered within {P99_TARGET:g} ms (p99): "
                f"{ms(later, 0.99)} ms"
            ),
            bool(later) and pct(later, 0.99) < P99_TARGET,
        ),
        (
            (
                f"(flood) every round's API request answered (201, or 502 with the station's "
                f"refusal), none timed out: {counts(statuses)}"
            ),
            len(api_got) == rounds and all(s in (201, 502) for s, _, _ in api_got),
        ),
    ]
    ctx.notes.append(f"API statuses: {counts(statuses)}")
    ctx.kept_budget = REPORT_BUDGET
    ctx.kept_why = "one report's budget (--max-report-mb 8), the most a csconfig may hold"


async def flood_passwords(ctx: Ctx) -> None:
    victim, good, neighbour = "VICTIM", "GOODPW", "NEIGHBOURPW"
    password = ctx.stations[good]["password"]
    host, port = ctx.host_port
    got: Counter = Counter()
    seq = itertools.count()
    t0, deadline = time.monotonic(), ctx.deadline()

    async def guesser() -> None:
        while time.monotonic() < deadline and (i := next(seq)) < 200_000:
            req = upgrade(f"/{victim}", f"Authorization: {basic(victim, f'guess{i}')}")
            got[await raw_upgrade(host, port, req)] += 1

    async def guessers() -> None:
        await asyncio.gather(*(guesser() for _ in range(GUESSERS)))

    _, other, same = await asyncio.gather(
        guessers(),
        visits(ctx.srv.ocpp_url, good, OTHER_ADDR, password, 0.5, deadline),
        visits(
            ctx.srv.ocpp_url,
            neighbour,
            ATTACKER,
            ctx.stations[neighbour]["password"],
            1.0,
            deadline,
        ),
    )
    took = time.monotonic() - t0
    n = sum(got.values())
    ok = [t for s, t in other if s == "ok"]
    ctx.figures.update(
        guesses=n,
        answers=dict(got),
        good_ok=len(ok),
        good=len(other),
        good_p99=pct(ok, 0.99) if ok else None,
        same_address=dict(Counter(s for s, _ in same)),
    )
    ctx.rows += [
        (
            f"wrong-password upgrades of one basic_auth station, {GUESSERS} at a time",
            f"{n:,} in {took:.1f} s ({n / took:,.0f}/s)",
        ),
        ("answers", counts(got)),
        (
            "right password from another address, every 0.5 s: succeeded",
            f"{len(ok)} of {len(other)}"
            + (
                f"; others: {counts(Counter(s for s, _ in other if s != 'ok'))}"
                if len(ok) < len(other)
                else ""
            ),
        ),
        (
            "its connect + boot latency: first / p50 / p99 / max",
            f"{other[0][1]:.0f} / {ms(ok, 0.5)} / {ms(ok, 0.99)} / {max(ok, default=0):.1f} ms"
            if other
            else "-",
        ),
        (
            "another station, right password, from the attacker's address, every 1 s",
            counts(Counter(s for s, _ in same)),
        ),
    ]
    ctx.checks.append(
        (
            (
                f"(flood) every right-password connect from another address succeeded: "
                f"{len(ok)} of {len(other)}"
            ),
            bool(other) and len(ok) == len(other),
        )
    )
    ctx.notes.append(
        "Wrong passwords are paused per client address (5 free, then 1 s more per "
        "wrong one) and at most 8 slow checks run at once (503 past that): a "
        "station behind the attacker's address waits out the pause too."
    )
    ctx.kept_budget, ctx.kept_why = (
        2000 * math.ceil(took / 60),
        ("ConnectionRefused events, once a minute per kind (< 1 kB each)"),
    )


async def flood_halfopen(ctx: Ctx) -> None:
    good = "GOODHO"
    host, port = ctx.host_port
    n = 2000
    deadline = ctx.deadline()
    closed: list[float] = []  # when the server closed each of ours
    got: Counter = Counter()
    writers: list[asyncio.StreamWriter] = []
    opening = asyncio.Semaphore(100)
    t0 = time.monotonic()

    async def hold() -> None:
        try:
            async with opening:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as e:
            got[f"connect: {type(e).__name__}"] += 1
            return
        writers.append(writer)
        try:
            first = await asyncio.wait_for(reader.read(4096), max(0.1, deadline - time.monotonic()))
            got[
                first.split(b" ")[1].decode()
                if first.startswith(b"HTTP/1.1 ")
                else "closed, nothing said"
                if not first
                else "other"
            ] += 1
            await asyncio.wait_for(reader.read(), max(0.1, deadline - time.monotonic()))
            closed.append(time.monotonic() - t0)
        except TimeoutError:
            got["held to the end"] += 1
        except OSError as e:
            got[type(e).__name__] += 1
            closed.append(time.monotonic() - t0)

    async def held_after(s: float) -> int:
        await asyncio.sleep(max(0.0, t0 + s - time.monotonic()))
        return len(writers) - len(closed)

    holders = [asyncio.create_task(hold()) for _ in range(n)]
    opened_s: list[float] = []

    async def all_open() -> None:
        while (
            len(writers) + sum(v for k, v in got.items() if k.startswith("connect:")) < n
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        opened_s.append(time.monotonic() - t0)

    async def neighbour() -> list[tuple[str, float]]:  # once the attacker's are all open
        await all_open()
        return await visits(ctx.srv.ocpp_url, "NEIGHBOURHO", ATTACKER, None, 1.0, deadline)

    settle = min(1.0, ctx.seconds / 3)
    other, same, held_1 = await asyncio.gather(
        visits(ctx.srv.ocpp_url, good, OTHER_ADDR, None, 0.5, deadline),
        neighbour(),
        held_after(settle),
    )
    await asyncio.gather(*holders)
    held_end = len(writers) - len(closed)
    for w in writers:
        w.transport.abort()
    ok = [t for s, t in other if s == "ok"]
    ctx.figures.update(
        opened=len(writers),
        held_1s=held_1,
        held_end=held_end,
        answers=dict(got),
        good_ok=len(ok),
        good=len(other),
    )
    ctx.rows += [
        (
            "TCP connections opened, never upgraded (100 connecting at a time)",
            f"{len(writers):,} of {n:,} in {opened_s[0] if opened_s else 0:.1f} s",
        ),
        ("what each got", counts(got)),
        (
            (
                f"still held by the server {settle:g} s after the first / at the end "
                f"({ctx.seconds:g} s)"
            ),
            f"{held_1} / {held_end}",
        ),
        (
            "a station from another address, every 0.5 s: succeeded",
            f"{len(ok)} of {len(other)}, connect + boot p50 {ms(ok, 0.5)} / p99 {ms(ok, 0.99)} ms",
        ),
        (
            "another station from the attacker's address, every 1 s, once all are open",
            counts(Counter(s for s, _ in same)),
        ),
    ]
    ctx.checks += [
        (
            (
                f"(flood) the server held at most --max-connections-per-address {PER_ADDRESS} of "
                f"them: {held_1} after {settle:g} s"
            ),
            held_1 <= PER_ADDRESS,
        ),
        (
            f"(flood) every connect from another address succeeded: {len(ok)} of {len(other)}",
            bool(other) and len(ok) == len(other),
        ),
    ]
    ctx.notes.append(
        "The half-open connections the server accepted (up to the limit) are "
        "closed once --handshake-timeout (10 s) passes without an upgrade."
    )
    ctx.kept_why = "half-open connections keep nothing"


@dataclass(frozen=True)
class Flood:
    name: str
    title: str
    seconds: float  # full size
    run: Callable[[Ctx], Awaitable[None]]
    stations: tuple[tuple[str, dict], ...] = ()  # (endpoint, create body) made before
    flags: tuple[str, ...] = ()  # for `edrvctl serve`, besides its defaults


FLOODS = {
    f.name: f
    for f in (
        Flood("unknown", "refused upgrades of unique unknown endpoints", 40, flood_unknown),
        Flood(
            "subprotocol",
            "a known endpoint offered a new 7 KB subprotocol each time",
            10,
            flood_subprotocol,
            (("SUBPROTO", {}),),
        ),
        Flood(
            "pings",
            "a station that stops reading and floods pings",
            45,
            flood_pings,
            (("PINGER", {}),),
        ),
        Flood(
            "datatransfer",
            "DataTransfer and MeterValues at full speed, reconnecting every 100 messages",
            10,
            flood_datatransfer,
            (("DATAFLOOD", {}),),
        ),
        Flood(
            "connectors",
            "StatusNotification with ever-new connector ids",
            20,
            flood_connectors,
            (("CONNECTORS", {}),),
        ),
        Flood(
            "report",
            "a 2.0.1 GetBaseReport answered with 60 parts of 0.9 MB",
            20,
            flood_report,
            (("REPORT201", {"protocol": P201}),),
        ),
        Flood(
            "passwords",
            "150 concurrent wrong-password upgrades, one station connecting with the right one",
            15,
            flood_passwords,
            (
                ("VICTIM", {"security": {"type": "basic_auth"}}),
                ("GOODPW", {"security": {"type": "basic_auth"}}),
                ("NEIGHBOURPW", {"security": {"type": "basic_auth"}}),
            ),
        ),
        Flood(
            "halfopen",
            f"2,000 half-open TCP connections against --max-connections-per-address {PER_ADDRESS}",
            15,
            flood_halfopen,
            (("GOODHO", {}), ("NEIGHBOURHO", {})),
            ("--max-connections-per-address", str(PER_ADDRESS)),
        ),
    )
}
PROBE_ENDPOINT = "WELLBEHAVED"


def command(names: str, quick: bool) -> str:
    return f"python bench/abuse.py {names}" + (" --quick" if quick else "")


async def during(flood: Awaitable[None], srv: Server, limit: float) -> Peaks:
    peaks = Peaks()
    sampler = asyncio.create_task(sample(srv, peaks))
    try:
        await asyncio.wait_for(flood, limit)
    finally:
        sampler.cancel()
    return peaks


def run_flood(number: int, f: Flood, quick: bool, seconds: float | None) -> Result:
    duration = seconds or (QUICK_S if quick else f.seconds)
    idle_s, settle_s = (0.2, 0.2) if quick else (3.0, 3.0)
    res = Result(
        f.name, f"Hostile input {number}: {f.title}", command(f.name, quick), load=loadavg()
    )
    with workdir(f"abuse-{f.name}") as root:
        probe = Probe(root)
        srv = None
        try:
            srv = start_server(root, *f.flags)
            ctx = Ctx(srv, duration, quick)
            for ep, body in ((PROBE_ENDPOINT, {}), *f.stations):
                ctx.stations[ep] = srv.create(ep, **body)
            probe.start(srv, PROBE_ENDPOINT, max_s=duration + 300)
            probe.phase("idle")
            time.sleep(idle_s)
            before, kept0 = Snapshot.take(srv), stored(srv.store)
            mine0 = own_cpu()
            probe.phase("flood")
            log(f"{f.name}: idle RSS {size(before.rss)}; flooding for {duration:g} s")
            failure = None
            try:
                peaks = asyncio.run(during(f.run(ctx), srv, duration + 180))
            except Exception as e:
                failure, peaks = f"{type(e).__name__}: {e}"[:300], Peaks()
                log(f"{f.name}: the flood failed: {failure}")
            flood_end = Snapshot.take(srv)
            ctx.figures["attacker_cpu"] = (own_cpu() - mine0) / (time.monotonic() - before.at)
            lat = probe.stop()
            time.sleep(settle_s)
            after = Snapshot.take(srv)
            alive, api_status = srv.proc.poll() is None, None
            if alive:
                with contextlib.suppress(httpx.HTTPError), srv.api() as api:
                    api_status = api.get(
                        "/v1.1/chargestations", params={"paginate_limit": 1}
                    ).status_code
            kept1 = stored(srv.store)
        finally:
            probe.close()
            exit_code = None
            if srv is not None:
                try:
                    exit_code = srv.stop(timeout=60)
                except subprocess.TimeoutExpired:
                    srv.proc.kill()
                    exit_code = "killed after 60 s"
        levels, tracebacks = log_lines(srv.log, before.log)
    report(
        res,
        ctx,
        duration,
        before,
        flood_end,
        after,
        peaks,
        lat,
        kept0,
        kept1,
        alive,
        api_status,
        exit_code,
        levels,
        tracebacks,
        failure,
    )
    missed = [text[:70] for text, ok in res.checks if not ok]
    log(f"{f.name}: " + ("MISSED: " + "; ".join(missed) if missed else "every target met"))
    return res


def report(
    res: Result,
    ctx: Ctx,
    duration: float,
    before: Snapshot,
    end: Snapshot | None,
    after: Snapshot | None,
    peaks: Peaks,
    lat: dict,
    kept0: dict,
    kept1: dict,
    alive: bool,
    api_status: int | None,
    exit_code,
    levels: Counter,
    tracebacks: int,
    failure: str | None,
) -> None:
    last = after or end or before
    quarters = peaks.rss_at((0.25, 0.5, 0.75, 1.0))
    peak_rss = max(peaks.rss, last.hwm if last.hwm > before.hwm else 0, before.rss)
    store0, store1 = before.db + before.wal, last.db + last.wal
    store_budget = ctx.kept_budget + WAL_ALLOWANCE
    log_budget = LOG_PER_MINUTE * max(1, math.ceil(duration / 60))
    log_growth = last.log - before.log
    idle, flood = lat["phases"].get("idle", {}), lat["phases"].get("flood", {})
    cpu = (end.cpu - before.cpu) / (end.at - before.at) if end else None
    res.figures.update(ctx.figures)
    res.figures.update(
        rss_idle=before.rss,
        rss_peak=peak_rss,
        rss_after=last.rss,
        rss_quarters=quarters,
        store_before=store0,
        store_after=store1,
        store_peak=max(peaks.store, store1),
        log_growth=log_growth,
        tracebacks=tracebacks,
        alive=alive,
        api_status=api_status,
        exit_code=exit_code,
        probe=flood,
        probe_idle=idle,
        failure=failure,
    )

    def lat_cell(p: dict, prefix: str = "") -> str:
        if not p or not p.get(f"{prefix}p50"):
            return "-"
        return f"{p[f'{prefix}p50']:.1f} / {p[f'{prefix}p99']:.1f} / {p[f'{prefix}max']:.1f} ms"

    res.rows = [
        *list(ctx.rows),
        (
            "server RSS idle / peak / after",
            f"{size(before.rss)} / {size(peak_rss)} / "
            f"{size(last.rss)} (peak {grew(peak_rss - before.rss)})",
        ),
        (
            "server RSS at 1/4, 1/2, 3/4 and the end of the flood",
            " / ".join(size(r) for r in quarters) or "-",
        ),
        (
            "store (.db + -wal) before -> after",
            f"{size(store0)} -> {size(store1)} "
            f"({grew(store1 - store0)}: .db {grew(last.db - before.db)}, -wal "
            f"{grew(last.wal - before.wal)}; peak {size(max(peaks.store, store1))})",
        ),
        (
            "kept: events / meter values / largest record",
            f"+{kept1['events'] - kept0['events']:,} "
            f"({grew(kept1['event_bytes'] - kept0['event_bytes'])}) / "
            f"+{kept1['meter_values'] - kept0['meter_values']:,} "
            f"({grew(kept1['mv_bytes'] - kept0['mv_bytes'])}) / {kept1['largest']} "
            f"{size(kept1['largest_bytes'])}",
        ),
        (
            "server log",
            f"{grew(log_growth)}, {sum(levels.values()):,} lines ("
            + (", ".join(f"{k} {v:,}" for k, v in sorted(levels.items())) or "none")
            + f"), {tracebacks} traceback(s)",
        ),
        (
            "server open descriptors idle / peak / after",
            f"{before.fds} / {max(peaks.fds, last.fds)} / {last.fds}",
        ),
        (
            "server CPU during the flood (the attacker's, this process)",
            (f"{100 * cpu:.0f}%" if cpu is not None else "-")
            + f" ({100 * ctx.figures.get('attacker_cpu', 0):.0f}%) of one core",
        ),
        (f"well-behaved station ({PROBE_RATE}/s) idle: p50 / p99 / max", lat_cell(idle)),
        ("well-behaved station during the flood: p50 / p99 / max", lat_cell(flood)),
        (
            "well-behaved station during the flood: calls / unanswered / errors / reconnects",
            f"{flood.get('calls', 0):,} / {flood.get('unanswered', 0)} / "
            f"{flood.get('errors', 0)} / {flood.get('disconnects', 0)}",
        ),
        (
            f"admin API GET ?paginate_limit=20 ({API_RATE}/s) idle: p50 / p99 / max",
            lat_cell(idle, "api_"),
        ),
        (
            "admin API during the flood: p50 / p99 / max (requests, errors)",
            f"{lat_cell(flood, 'api_')} ({flood.get('api_requests', 0)}, "
            f"{flood.get('api_errors', 0)})",
        ),
        (
            "server after the flood",
            "running, API " + str(api_status) if alive else f"EXITED ({exit_code})",
        ),
    ]
    p99 = flood.get("p99")
    clean = not flood.get("disconnects") and not flood.get("unanswered")
    survived = alive and api_status == 200 and not tracebacks and exit_code == 0
    res.checks = [
        (
            (
                f"server RSS within 100 MB of idle: peak {grew(peak_rss - before.rss)} "
                f"({size(before.rss)} -> {size(peak_rss)})"
            ),
            peak_rss - before.rss <= RSS_TARGET,
        ),
        (
            (
                f"store growth within budget: {grew(store1 - store0)}, budget {size(store_budget)} "
                f"= {ctx.kept_why} ({size(ctx.kept_budget)}) + the WAL's "
                f"{size(WAL_ALLOWANCE)}"
            ),
            store1 - store0 <= store_budget,
        ),
        (
            (
                f"log growth within budget: {grew(log_growth)}, budget {size(log_budget)} "
                f"({size(LOG_PER_MINUTE)} per started minute of flood)"
            ),
            log_growth <= log_budget,
        ),
        (
            f"well-behaved station p99 under {P99_TARGET:g} ms during the flood, every call "
            "answered, never dropped: "
            + (f"p99 {p99:.1f} ms" if p99 is not None else "no calls")
            + (
                ""
                if clean
                else f", {flood.get('unanswered', 0)} unanswered, "
                f"{flood.get('disconnects', 0)} reconnect(s)"
            ),
            p99 is not None and p99 < P99_TARGET and clean,
        ),
        (
            "server survived: "
            + (
                "running, API 200, no traceback in its log, clean exit (0)"
                if survived
                else f"alive {alive}, API {api_status}, {tracebacks} traceback(s), exit {exit_code}"
            ),
            survived,
        ),
        *ctx.checks,
    ]
    if failure:
        res.checks.append((f"the flood ran to its end: {failure}", False))
    res.notes = [
        f"Flood {duration:g} s; the server: `edrvctl serve` with its defaults"
        + (f" and {' '.join(FLOODS[res.name].flags)}" if FLOODS[res.name].flags else "")
        + "; attacker 127.0.0.1, well-behaved station 127.0.0.2"
        + (", other stations 127.0.0.3" if res.name in ("passwords", "halfopen") else "")
        + ". RSS peak: max of VmHWM and 10 samples a second; after: 3 s after the flood"
        + (" (0.2 s with --quick)" if ctx.quick else "")
        + ".",
        *ctx.notes,
    ]
    if lat.get("last_error") and (not clean or flood.get("errors")):
        res.notes.append(f"probe's last error: {lat['last_error']}")
    res.load += f" -> {loadavg()}"


def main(argv: list[str] | None = None) -> list[Result]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        asyncio.run(probe_main())
        return []
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "which",
        nargs="*",
        default="all",
        choices=[*FLOODS, "all"],
        help="floods to run (default: all)",
    )
    ap.add_argument("--quick", action="store_true", help=f"each flood {QUICK_S:g} s")
    ap.add_argument("--seconds", type=float, help="every flood's duration, seconds")
    a = ap.parse_args(argv)
    which = [a.which] if isinstance(a.which, str) else a.which
    names = list(FLOODS) if "all" in which else list(dict.fromkeys(which))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server
    results = []
    for name in names:
        number = list(FLOODS).index(name) + 1
        log(f"{name} ...")
        t0 = time.monotonic()
        results.append(run_flood(number, FLOODS[name], a.quick, a.seconds))
        print(results[-1].markdown(), flush=True)
        log(f"{name} done in {time.monotonic() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
