"""Reference servers for the throughput benchmark, run in the same session as edrvctl:

    python bench/baselines.py bare  PORT   # websockets only: a canned CALLRESULT, no OCPP work
    python bench/baselines.py ocpp  PORT   # the ocpp library with its defaults, no persistence

`bare` is the ceiling of this machine for the same frames; `ocpp` is what a central system built
straight on the library reaches. Both print 'ready' once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def bare(port: int) -> None:
    from websockets.asyncio.server import serve

    async def handle(ws):
        async for raw in ws:
            mid = json.loads(raw)[1]
            await ws.send(
                f'[3,"{mid}",{{"currentTime":"{now()}","interval":300,"status":"Accepted"}}]'
            )

    async with serve(
        handle, "127.0.0.1", port, subprotocols=["ocpp1.6"], compression=None, ping_interval=None
    ):
        print("ready", flush=True)
        await asyncio.Future()


async def ocpp_default(port: int) -> None:
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from websockets.asyncio.server import serve

    class CP(ChargePoint):
        @on("BootNotification")
        def boot(self, **kw):
            return call_result.BootNotification(current_time=now(), interval=300, status="Accepted")

        @on("Heartbeat")
        def heartbeat(self, **kw):
            return call_result.Heartbeat(current_time=now())

        @on("StatusNotification")
        def status(self, **kw):
            return call_result.StatusNotification()

        @on("MeterValues")
        def meter_values(self, **kw):
            return call_result.MeterValues()

    async def handle(ws):
        with contextlib.suppress(Exception):  # the station went away
            await CP(ws.request.path.strip("/"), ws).start()

    async with serve(
        handle, "127.0.0.1", port, subprotocols=["ocpp1.6"], compression=None, ping_interval=None
    ):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    asyncio.run({"bare": bare, "ocpp": ocpp_default}[kind](port))
