"""OCPP-J: frames, schemas and an RPC endpoint over one websocket; knows nothing of fleets."""

from edrvctl.ocppj.frames import VERSIONS, Call, CallError, CallResult, FrameError, RpcError
from edrvctl.ocppj.rpc import (
    InvalidCall,
    QueueFull,
    RemoteError,
    Rpc,
    RpcClosed,
    TokenBucket,
    Trace,
    Tracer,
)

__all__ = [
    "VERSIONS",
    "Call",
    "CallError",
    "CallResult",
    "FrameError",
    "InvalidCall",
    "QueueFull",
    "RemoteError",
    "Rpc",
    "RpcClosed",
    "RpcError",
    "TokenBucket",
    "Trace",
    "Tracer",
]
