"""Python client for Sluice streaming functions (SPEC §2): stream a function's events and fan
`map` calls out over its replicas, resuming broken connections, with blocking and asyncio twins.

    import sluice
    for event in sluice.stream("http://127.0.0.1:8080/", {"n": 3}):
        print(event.data)
    for r in sluice.map("http://127.0.0.1:8080/", [1, 2, 3], order="completion"):
        print(r.index, r.output if r.ok else r.error)
"""

from ._async import AsyncEventStream, AsyncMapStream, map_async, stream_async
from ._sessions import DEFAULT_TIMEOUT, MapOrder, function_base
from ._sync import EventStream, MapStream, map, stream
from .errors import (
    WIRE_CODES,
    BadRequest,
    ConnectionFailed,
    InputFailed,
    InternalError,
    MapFailed,
    MapNotFound,
    MapUnavailable,
    MethodNotAllowed,
    NoReplica,
    NotEventStream,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    QueueTimeout,
    ServerError,
    ShuttingDown,
    SluiceError,
    StreamTimeout,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UsageError,
)
from .events import Event, InputError, MapAccepted, MapResult, MapSummary

__all__ = [
    "DEFAULT_TIMEOUT",
    "WIRE_CODES",
    "AsyncEventStream",
    "AsyncMapStream",
    "BadRequest",
    "ConnectionFailed",
    "Event",
    "EventStream",
    "InputError",
    "InputFailed",
    "InternalError",
    "MapAccepted",
    "MapFailed",
    "MapNotFound",
    "MapOrder",
    "MapResult",
    "MapStream",
    "MapSummary",
    "MapUnavailable",
    "MethodNotAllowed",
    "NoReplica",
    "NotEventStream",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueTimeout",
    "ServerError",
    "ShuttingDown",
    "SluiceError",
    "StreamTimeout",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UsageError",
    "function_base",
    "map",
    "map_async",
    "stream",
    "stream_async",
]
