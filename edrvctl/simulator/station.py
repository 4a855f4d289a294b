"""One simulated chargestation: its connection, boot/heartbeat/status lifecycle, reconnects with
backoff, transactions and availability, on `ocppj.Rpc`.

What differs per OCPP version (the payloads it sends, its answers to the central system) is in
ocpp16.py and ocpp201.py: one shared adapter class and handler table per version, so a station
costs no per-station handlers, loggers or bound methods. Thousands run in one process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol

from edrvctl.ocppj import Call, FrameError, InvalidCall, QueueFull, RemoteError, Rpc
from edrvctl.ocppj.frames import parse
from edrvctl.simulator import device
from edrvctl.simulator.ocpp16 import V16
from edrvctl.simulator.ocpp201 import V201

PROTOCOLS = ("ocpp1.6", "ocpp2.0.1")

log = logging.getLogger("edrvctl.simulator")

BACKOFF_START = 0.5
RESET_GRACE = 0.25  # a resetting station takes a moment to shut down; lets the CSMS read our reply
MAX_QUEUED = 100  # our own CALLs waiting behind the one in flight
# A CALL of ours that failed without the connection closing (RpcClosed is a ConnectionError).
CALL_FAILED = (RemoteError, TimeoutError, QueueFull, InvalidCall)

Version = type[V16] | type[V201]


class Stats:
    """Per-station counters (plain ints, cheap to sum over a fleet).

    sent: our CALLs (and raw frames) on the wire; received: frames from the central system;
    answered: replies we sent (CALLRESULT or CALLERROR); errors: CALLERRORs we sent (malformed
    frames, unknown actions, handler failures), CALLs of ours that failed, tasks that failed;
    reconnects, connect_failures, reboots."""

    FIELDS = ("sent", "received", "answered", "errors", "reconnects", "connect_failures", "reboots")
    __slots__ = (
        "answered",
        "connect_failures",
        "errors",
        "reboots",
        "received",
        "reconnects",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = self.received = self.answered = self.errors = 0
        self.reconnects = self.connect_failures = self.reboots = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        return f"Stats({self.as_dict()})"


class Tx:
    """One charging transaction on one connector (1.6) / EVSE (2.0.1)."""

    __slots__ = (
        "connector",
        "deadline",
        "done",
        "id_tag",
        "id_type",
        "last_t",
        "power_w",
        "remote_start_id",
        "seq",
        "started",
        "stop_evt",
        "stop_reason",
        "tx_id",
    )

    def __init__(
        self,
        connector: int,
        id_tag: str,
        id_type: str,
        remote_start_id: int | None,
        duration: float,
    ):
        self.connector = connector
        self.id_tag = id_tag
        self.id_type = id_type
        self.remote_start_id = remote_start_id
        self.tx_id: Any = None  # int (1.6, given by the CSMS) or str (2.0.1, ours)
        self.started = False
        self.power_w = random.uniform(7000, 11000)
        self.deadline = time.monotonic() + duration
        self.last_t = time.monotonic()
        self.seq = 0
        self.stop_reason: str | None = None
        self.stop_evt = asyncio.Event()
        self.done = asyncio.Event()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1


class _Wire:
    """The websocket as the station's Rpc sees it: counts frames, hides CALLs from a silent
    station, ends quietly on close, and starts a handler's follow-ups once its CALLRESULT is
    on the wire."""

    __slots__ = ("st", "ws")

    def __init__(self, st: SimStation, ws: ClientConnection) -> None:
        self.st, self.ws = st, ws

    def __aiter__(self) -> _Wire:
        return self

    async def __anext__(self) -> str | bytes:
        st = self.st
        while True:
            try:
                raw = await self.ws.recv()
            except ConnectionClosed:
                raise StopAsyncIteration from None
            st.stats.received += 1
            if st.silent and _is_call(raw):
                continue  # results still reach our own pending CALLs
            return raw

    async def send(self, message: Any, text: bool | None = None) -> None:
        kind = message[1:2]  # ocppj encodes without spaces: b'[2,' / b'[3,' / b'[4,'
        await self.ws.send(message, text=text)
        st = self.st
        if kind in (b"2", "2"):
            st.stats.sent += 1
            return
        st.stats.answered += 1
        later, st._after = st._after, None
        if kind in (b"3", "3"):
            for fn, args in later or ():
                st._spawn(fn(*args))
        else:  # a CALLERROR: the request was not carried out, so neither are its follow-ups
            st.stats.errors += 1


def _is_call(raw: str | bytes) -> bool:
    try:
        return type(parse(raw, "2.0.1")) is Call
    except FrameError:
        return True  # a silent station does not answer malformed frames either


async def _cancel_and_wait(tasks: set[asyncio.Task]) -> None:
    """Cancel tasks and wait until they are really gone (re-cancelling any that shrug it off)."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


class SimStation:
    """One simulated chargestation. See the package docstring for the API."""

    __slots__ = (
        "_after",
        "_boot_reason",
        "_had_connection",
        "_layout",
        "_meter_wh",
        "_pending_availability",
        "_rebooting",
        "_reset_when_idle",
        "_rpc",
        "_runner",
        "_stopping",
        "_tasks",
        "_txs",
        "_v",
        "_ws",
        "availability",
        "backoff_max",
        "booted",
        "config",
        "connect_limiter",
        "connected",
        "connectors",
        "endpoint",
        "firmware",
        "heartbeat_interval_override",
        "id_tag",
        "last_error",
        "last_status_code",
        "local_list",
        "local_list_version",
        "meter_interval",
        "model",
        "open_timeout",
        "password",
        "protocol",
        "reboot_delay",
        "reconnect",
        "registration_status",
        "response_timeout",
        "serial",
        "session_duration",
        "session_interval",
        "sessions",
        "silent",
        "ssl",
        "stats",
        "transfer_step",
        "url",
        "validate",
        "vendor",
    )

    def __init__(
        self,
        endpoint: str,
        url: str,
        protocol: str = "ocpp1.6",
        *,
        connectors: int = 2,
        vendor: str = "edrvctl",
        model: str = "SimCharger",
        serial: str | None = None,
        firmware: str = "1.0.0",
        password: str | None = None,
        ssl: Any = None,
        sessions: bool = False,
        meter_interval: float = 10,
        session_interval: float = 60,
        session_duration: float = 120,
        id_tag: str = "SIMTAG0001",
        reconnect: bool = True,
        backoff_max: float = 30,
        silent: bool = False,
        heartbeat_interval_override: float | None = None,
        response_timeout: float = 30,
        open_timeout: float = 10,
        reboot_delay: float = 1.0,
        transfer_step: float = 0.1,
        validate: bool = True,
        connect_limiter: asyncio.Semaphore | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if connectors < 1:
            raise ValueError("connectors must be >= 1")
        self.endpoint = endpoint
        self.url = f"{url.rstrip('/')}/{quote(endpoint, safe='')}"
        self.protocol = protocol
        self.connectors = connectors
        self.vendor, self.model, self.firmware = vendor, model, firmware
        self.serial = serial or f"SN-{endpoint}"[:25]  # 1.6 serial numbers are CiString25
        self.password = password
        self.ssl = ssl
        self.sessions = sessions
        self.meter_interval = float(meter_interval)
        self.session_interval = session_interval
        self.session_duration = session_duration
        self.id_tag = id_tag
        self.reconnect = reconnect
        self.backoff_max = backoff_max
        self.silent = silent
        self.heartbeat_interval_override = heartbeat_interval_override
        self.response_timeout = response_timeout
        self.open_timeout = open_timeout
        self.reboot_delay = reboot_delay
        self.transfer_step = transfer_step  # seconds between firmware/log status messages
        # Kept for compatibility: every payload is validated both ways now (compiled schemas
        # take about a microsecond), so an invalid one is never sent whatever this says.
        self.validate = validate
        self.connect_limiter = connect_limiter

        # Observable state.
        self.connected = asyncio.Event()
        self.booted = asyncio.Event()
        self.registration_status: str | None = None
        self.availability: dict[int, str] = {c: "Operative" for c in range(connectors + 1)}
        self.stats = Stats()
        self.last_error: str | None = None
        self.last_status_code: int | None = None
        # the local authorization list: (id tag, 2.0.1 type or None) -> its idTagInfo /
        # idTokenInfo, as the central system sent it; version 0: none
        self.local_list: dict[tuple[str, str | None], dict] = {}
        self.local_list_version = 0

        self._v: Version = V16 if protocol == "ocpp1.6" else V201
        self._layout = device.layout(protocol, connectors)
        self.config: dict[str, str] = dict(self._layout.defaults)
        self.config[self._v.METER_KEY] = device.num(self.meter_interval)
        self._v.init_config(self)

        self._rpc: Rpc | None = None
        self._ws: ClientConnection | None = None
        self._tasks: set[asyncio.Task] = set()  # tasks of the current connection
        self._runner: asyncio.Task | None = None
        self._stopping = False
        self._rebooting = False
        self._boot_reason = "PowerUp"
        self._had_connection = False
        self._txs: dict[int, Tx] = {}
        self._pending_availability: dict[int, str] = {}
        self._reset_when_idle = False
        self._meter_wh = [float(random.randint(1_000, 500_000)) for _ in range(connectors + 1)]
        # follow-ups of the CALL being answered: (coroutine function, args)
        self._after: list[tuple[Callable, tuple]] | None = None

    def __repr__(self) -> str:
        state = (
            "booted"
            if self.booted.is_set()
            else "connected"
            if self.connected.is_set()
            else "offline"
        )
        return f"<SimStation {self.endpoint} {self.protocol} {state}>"

    @property
    def transactions(self) -> dict[int, int | str]:
        """Running transactions: connector/EVSE id -> transaction id."""
        return {c: tx.tx_id for c, tx in self._txs.items() if tx.started}

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and behave like a chargestation until stop() is called."""
        if self._runner is not None:
            raise RuntimeError(f"{self.endpoint} is already running")
        runner = self._runner = asyncio.current_task()
        self._stopping = False
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self._stopping or runner is None:
                raise
            runner.uncancel()  # stop() cancelled us: a normal end
        finally:
            self._runner = None

    async def stop(self) -> None:
        """Close the connection cleanly and cancel everything the station runs."""
        self._stopping = True
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()  # the connection's finally-block closes the socket with a close frame
            await asyncio.wait({runner})

    async def _run(self) -> None:
        delay = BACKOFF_START
        while not self._stopping:
            ws = await self._open()
            if ws is not None:
                await self._serve(ws)
                if self.registration_status == "Accepted":
                    delay = BACKOFF_START  # a healthy connection resets the backoff
            if self._stopping:
                break
            if self._rebooting:  # Reset: back after a short "boot time", even without reconnect
                self._rebooting = False
                self.stats.reboots += 1
                await asyncio.sleep(self.reboot_delay)
                continue
            if not self.reconnect:
                break
            await asyncio.sleep(min(delay, self.backoff_max) * random.uniform(0.5, 1.0))  # jitter
            delay = min(delay * 2, self.backoff_max)

    async def _open(self) -> ClientConnection | None:
        headers = None
        if self.password is not None:
            token = base64.b64encode(f"{self.endpoint}:{self.password}".encode()).decode()
            headers = {"Authorization": f"Basic {token}"}
        ping = float(self.config.get(self._v.PING_KEY) or 0) or None
        kwargs: dict[str, Any] = {} if self.ssl is None else {"ssl": self.ssl}
        async with self.connect_limiter or contextlib.nullcontext():
            try:
                ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol(self.protocol)],
                    additional_headers=headers,
                    compression=None,  # ~14 KiB instead of ~64 KiB per connection
                    proxy=None,  # straight to the target, whatever HTTP_PROXY says
                    open_timeout=self.open_timeout,
                    ping_interval=ping,
                    ping_timeout=ping,
                    user_agent_header="edrvctl-simulator",
                    **kwargs,
                )
            except InvalidStatus as e:
                self.last_status_code = e.response.status_code
                self.last_error = f"HTTP {e.response.status_code}"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            else:
                self.last_error = None
                return ws
        self.stats.connect_failures += 1
        return None

    async def _serve(self, ws: ClientConnection) -> None:
        """Run one connection: the reader plus the station's own flow, until the socket closes."""
        rpc = Rpc(
            _Wire(self, ws),
            self._v.VERSION,
            self._v.HANDLERS,
            self,
            name=self.endpoint,
            max_queued=MAX_QUEUED,
        )
        self._rpc, self._ws = rpc, ws
        if self._had_connection:
            self.stats.reconnects += 1
        self._had_connection = True
        self.connected.set()
        self._spawn(self._lifecycle())
        try:
            try:
                await rpc.run()  # ends when the socket closes
            except ConnectionClosed:  # a reply could not be sent
                pass
            if not self._stopping and not self._rebooting:
                self.last_error = f"connection closed (code {ws.close_code})"
        finally:
            self.connected.clear()
            self.booted.clear()
            self._rpc = None
            self._after = None
            rpc.close()  # pending CALLs fail now, not after their timeout
            try:
                await _cancel_and_wait(self._tasks)
            finally:  # even if stop() cancels us right here
                self._ws = None
                await ws.close()

    def _spawn(self, coro: Any) -> asyncio.Task:
        """Start a task that belongs to the current connection (cancelled when it closes)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, (ConnectionError, *CALL_FAILED)):
            self.stats.errors += 1
            log.error("%s: task failed", self.endpoint, exc_info=exc)

    def _later(self, fn: Callable, *args: Any) -> None:
        """Run `fn(*args)` as a task once the CALLRESULT being prepared is on the wire (a
        handler must not await a CALL itself: the reader would wait on itself)."""
        if self._after is None:
            self._after = []
        self._after.append((fn, args))

    # --- sending --------------------------------------------------------------------------------

    async def _call(self, action: str, payload: dict, timeout: float | None = None) -> dict:
        """Send a CALL on the current connection and return the answer's payload."""
        rpc = self._rpc
        if rpc is None:
            raise ConnectionError(f"{self.endpoint} is not connected")
        try:
            return await rpc.call(action, payload, timeout or self.response_timeout)
        except CALL_FAILED as e:
            self.stats.errors += 1
            log.warning("%s: %s failed: %r", self.endpoint, action, e)
            raise

    async def send(self, action: str, payload: dict, timeout: float | None = None) -> dict:
        """Send any CALL (payload as on the wire, camelCase) and return the answer's payload.

        Raises ocppj's RemoteError for a CALLERROR or an invalid answer, InvalidCall (nothing
        sent) for a payload that breaks the schema, TimeoutError after `timeout` (default
        response_timeout) seconds, and ConnectionError (RpcClosed) at once if the socket
        closes or is not open."""
        return await self._call(action, payload, timeout)

    async def send_raw(self, text: str) -> None:
        """Send one raw websocket frame (for malformed-frame tests)."""
        if self._ws is None:
            raise ConnectionError(f"{self.endpoint} is not connected")
        self.stats.sent += 1
        await self._ws.send(text)

    async def _send_each(self, action: str, payloads: list[dict]) -> None:
        for p in payloads:
            await self._call(action, p)

    # --- boot, heartbeat, status ----------------------------------------------------------------

    def _heartbeat_interval(self) -> float:
        if self.heartbeat_interval_override:
            return self.heartbeat_interval_override
        try:
            return max(float(self.config[self._v.HEARTBEAT_KEY]), 1.0)
        except ValueError:
            return 300.0

    async def _boot(self, reason: str) -> dict:
        res = await self._call("BootNotification", self._v.boot(self, reason))
        self.registration_status = res["status"]
        if res["status"] == "Accepted" and res["interval"] > 0:
            self.config[self._v.HEARTBEAT_KEY] = str(res["interval"])
        return res

    async def _lifecycle(self) -> None:
        while True:  # BootNotification until Accepted
            try:
                res = await self._boot(self._boot_reason)
            except CALL_FAILED:
                await asyncio.sleep(random.uniform(1, 5))
                continue
            if res["status"] == "Accepted":
                break
            await asyncio.sleep(max(res["interval"], 1))  # Pending/Rejected: retry after `interval`
        self._boot_reason = "PowerUp"
        self.booted.set()
        await self._send_statuses(range(self.connectors + 1))
        for tx in list(self._txs.values()):  # charging went on while offline
            if tx.started:
                self._spawn(self._charge(tx))
        if self.sessions:
            self._spawn(self._session_loop())
        while True:
            await asyncio.sleep(self._heartbeat_interval())
            with contextlib.suppress(*CALL_FAILED):
                await self._call("Heartbeat", {})

    async def _triggered_boot(self) -> None:
        if self._rpc is not None:
            await self._boot("Triggered")

    def _status_of(self, c: int) -> str:
        if c in self._txs and self._txs[c].started:
            return "Charging"
        if self.availability.get(c) == "Inoperative" or self.availability[0] == "Inoperative":
            return "Unavailable"
        return "Available"

    async def _send_statuses(self, connectors: Iterable[int]) -> None:
        for c in connectors:
            payload = self._v.status(c, self._status_of(c))
            if payload is not None and self._rpc is not None:
                await self._call("StatusNotification", payload)

    # --- availability and configuration ---------------------------------------------------------

    def _change_availability(self, target: int, operative: bool) -> str:
        if not 0 <= target <= self.connectors:
            return "Rejected"
        value = "Operative" if operative else "Inoperative"
        affected = list(range(self.connectors + 1)) if target == 0 else [target]
        busy = {c for c in affected if c in self._txs}
        if target == 0 and busy:
            busy.add(0)
        changed = []
        for c in affected:
            if c in busy and not operative:
                self._pending_availability[c] = value  # applied when the transaction ends
            else:
                self._pending_availability.pop(c, None)
                if self.availability[c] != value:
                    self.availability[c] = value
                    changed.append(c)
        if self._rpc is not None and changed:
            # station-wide changes also change every connector's effective status
            self._later(self._send_statuses, affected if target == 0 else changed)
        return "Scheduled" if busy and not operative else "Accepted"

    def _operative(self, c: int) -> bool:
        return self.availability[0] == "Operative" and self.availability[c] == "Operative"

    def _set_config(self, key: str, value: str, not_found: str) -> str:
        status = device.set_value(self._layout.meta, self.config, key, value, not_found)
        if status == "Accepted" and key == self._v.METER_KEY:
            self.meter_interval = float(value)
        return status

    # --- transactions ---------------------------------------------------------------------------

    def _sample(self, c: int) -> tuple[float, float | None]:
        """Advance connector c's energy register; return (Wh, W or None when idle)."""
        tx = self._txs.get(c)
        if tx is None or not tx.started:
            return self._meter_wh[c], None
        now = time.monotonic()
        self._meter_wh[c] += tx.power_w * (now - tx.last_t) / 3600
        tx.last_t = now
        return self._meter_wh[c], tx.power_w * random.uniform(0.95, 1.05)

    def _reserve(
        self, connector: int | None, id_tag: str, id_type: str, remote_start_id: int | None
    ) -> Tx | None:
        """Claim a free, operative connector for a new transaction (synchronously, so two
        remote starts can't both get it)."""
        if connector is None:
            connector = next(
                (
                    c
                    for c in range(1, self.connectors + 1)
                    if c not in self._txs and self._operative(c)
                ),
                None,
            )
        if connector is None or not 1 <= connector <= self.connectors:
            return None
        if connector in self._txs or not self._operative(connector):
            return None
        tx = Tx(connector, id_tag, id_type, remote_start_id, self.session_duration)
        self._txs[connector] = tx
        return tx

    def _update_local_list(
        self,
        full: bool,
        version: int,
        entries: Sequence[tuple[tuple[str, str | None], dict | None]],
    ) -> str:
        """SendLocalList: replace the list (full) or apply the changes (an entry without
        info is taken off); a differential update must bring a newer version."""
        if not full and version <= self.local_list_version:
            return "VersionMismatch"
        if full:
            self.local_list = {}
        for key, info in entries:
            if info is None:
                self.local_list.pop(key, None)
            else:
                self.local_list[key] = info
        self.local_list_version = version
        return "Accepted"

    def _find_tx(self, tx_id: int | str) -> Tx | None:
        return next((tx for tx in self._txs.values() if tx.started and tx.tx_id == tx_id), None)

    def _request_stop(self, tx: Tx, reason: str) -> None:
        tx.stop_reason = tx.stop_reason or reason
        tx.stop_evt.set()

    async def _begin_tx(self, tx: Tx, authorize: bool = True) -> bool:
        """Authorize (optionally) and start a reserved transaction; on success meter it in a
        task."""
        try:
            if authorize and not await self._v.authorize(self, tx):
                return False
            if not await self._v.start_tx(self, tx):
                return False
            tx.started = True
            tx.last_t = time.monotonic()
        except CALL_FAILED:
            return False
        finally:
            if not tx.started:  # refused, failed or cancelled: free the connector
                self._txs.pop(tx.connector, None)
                tx.done.set()
        await self._send_statuses([tx.connector])
        self._spawn(self._charge(tx))
        return True

    async def _charge(self, tx: Tx) -> None:
        """Meter a running transaction until its deadline or a stop request, then end it."""
        while not tx.stop_evt.is_set():
            remaining = tx.deadline - time.monotonic()
            if remaining <= 0:
                break
            step = min(self.meter_interval, remaining) if self.meter_interval > 0 else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tx.stop_evt.wait(), step)
            if tx.stop_evt.is_set() or self.meter_interval <= 0 or time.monotonic() >= tx.deadline:
                continue
            with contextlib.suppress(*CALL_FAILED):
                await self._v.meter_tx(self, tx)
        await self._end_tx(tx)

    async def _end_tx(self, tx: Tx) -> None:
        with contextlib.suppress(*CALL_FAILED):  # a real charger would queue and retry; we give up
            await self._v.stop_tx(self, tx)
        self._txs.pop(tx.connector, None)
        tx.done.set()
        changed = [tx.connector]
        for c in (tx.connector, 0):  # scheduled ChangeAvailability takes effect now
            if c in self._pending_availability and (c != 0 or not self._txs):
                self.availability[c] = self._pending_availability.pop(c)
                changed = list(range(self.connectors + 1)) if c == 0 else changed
        await self._send_statuses(changed)
        if self._reset_when_idle and not self._txs:
            self._reset_when_idle = False
            self._spawn(self._reboot("HardReset"))

    async def _session_loop(self) -> None:
        """sessions=True: a driver comes by connector 1 now and then and charges."""
        while True:
            await asyncio.sleep(self.session_interval * random.uniform(0.5, 1.5))
            tx = self._reserve(1, self.id_tag, "ISO14443", remote_start_id=None)
            if tx is None:
                continue
            if await self._begin_tx(tx, authorize=True):
                await tx.done.wait()

    # --- firmware and diagnostics ---------------------------------------------------------------

    async def _update_firmware(self, location: str, status: Callable[[str], dict]) -> None:
        """Download (an http(s) URL is fetched: DownloadFailed if that fails), install, then
        reboot and boot with the next firmware version. `status(s)` is the version's
        FirmwareStatusNotification payload."""
        await asyncio.sleep(self.transfer_step)
        await self._call("FirmwareStatusNotification", status("Downloading"))
        web = location.startswith(("http://", "https://"))
        if web and await _http("GET", location) is None:
            await self._call("FirmwareStatusNotification", status("DownloadFailed"))
            return
        for step in ("Downloaded", "Installing", "Installed"):
            await asyncio.sleep(self.transfer_step)
            await self._call("FirmwareStatusNotification", status(step))
        self.firmware = next_version(self.firmware)
        await self._reboot("HardReset", boot_reason="FirmwareUpdate")

    def _log_file(self) -> bytes:
        lines = [
            f"{utc()} {self.endpoint} {self.protocol} {self.vendor} {self.model} "
            f"firmware {self.firmware}",
            *(f"{k}={v}" for k, v in sorted(self.config.items())),
        ]
        return ("\n".join(lines) + "\n").encode()

    async def _upload_log(
        self, location: str, name: str, action: str, status: Callable[[str], dict], failed: str
    ) -> None:
        """Uploading, an HTTP PUT of a small generated file to `location`/`name`, then
        Uploaded, or `failed` if the PUT did not succeed. `action`: the version's status
        notification; `status(s)` its payload."""
        await asyncio.sleep(self.transfer_step)
        await self._call(action, status("Uploading"))
        url = f"{location.rstrip('/')}/{quote(name)}"
        put = await _http("PUT", url, self._log_file())
        await self._call(action, status("Uploaded" if put is not None else failed))

    async def _reboot(self, reason: str, boot_reason: str = "RemoteReset") -> None:
        """Reset: end transactions, close the socket; _run() reconnects after reboot_delay."""
        running = [tx for tx in self._txs.values() if tx.started]
        for tx in running:
            self._request_stop(tx, reason)  # its _charge() task sends the stop
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(tx.done.wait() for tx in running)), self.response_timeout
                )
        self._rebooting = True
        self._boot_reason = boot_reason
        await asyncio.sleep(RESET_GRACE)
        if self._ws is not None:
            await self._ws.close(1000, "reset")


def next_version(version: str) -> str:
    """The firmware an update installs: 1.0.0 -> 1.0.1 (`.1` added if it ends in no number)."""
    m = re.search(r"(\d+)(\D*)$", version)
    if m is None:
        return f"{version}.1"[:50]
    return f"{version[: m.start(1)]}{int(m.group(1)) + 1}{m.group(2)}"[:50]


def utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _http(method: str, url: str, content: bytes | None = None) -> bytes | None:
    """The body of a successful (2xx) request, or None if it failed in any way."""
    import httpx  # only stations that transfer files pay for it

    try:
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
            r = await client.request(method, url, content=content)
    except (httpx.HTTPError, ValueError) as e:
        log.warning("%s %s failed: %s", method, url, e)
        return None
    if not r.is_success:
        log.warning("%s %s: HTTP %d", method, url, r.status_code)
        return None
    return r.content
