"""Every error the client raises on purpose, and the one table from the proxy's wire codes
(`{"error": {"code": ...}}` bodies and `event: error` data) to exception classes.

The wire codes are the proxy's and `sluice serve`'s, one typed table in the TypeScript
sources (`WIRE_ERRORS` in common/wire-errors.ts); `tests/test_wire_codes.py` reads that table, so
this one cannot drift from it (codes and the status each class stands for).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final


class SluiceError(Exception):
    """Base of every error the client raises on purpose; `code` is stable, callers branch on it."""

    code: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ServerError(SluiceError):
    """The proxy (or the function) reported an error: a non-2xx answer or an `event: error`.

    `code` is the wire code (`queue_timeout`, ...) when the server sent one, `ERR_HTTP_STATUS`
    for a non-2xx answer without one, `ERR_ERROR_EVENT` for an error event without one.
    `status` is the HTTP status, or None when the error arrived as an event mid-stream.
    """

    status: int | None
    body: str
    url: str
    retry_after: float | None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        url: str,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.url = url
        self.status = status
        self.body = body
        self.retry_after = retry_after


class BadRequest(ServerError):
    """400: the request was malformed (bad map body, bad Last-Event-ID, an absolute-form target)."""


class Unauthorized(ServerError):
    """401: the function requires an accepted `Authorization: Bearer` token (pass `token=`)."""


class NotFound(ServerError):
    """404: no such path under `/_sluice/`."""


class MapNotFound(NotFound):
    """404: the map to resume is unknown or older than its retention (`--map-retention`)."""


class MethodNotAllowed(ServerError):
    """405: the path does not take this method."""


class PayloadTooLarge(ServerError):
    """413: the body, the number of map inputs, or one input is over the proxy's limits."""


class Unavailable(ServerError):
    """503: try again later; `retry_after` says when, if the server said."""


class QueueTimeout(Unavailable):
    """503: every concurrency slot stayed busy for the queue timeout."""


class ShuttingDown(Unavailable):
    """The replica is shutting down: refused new work (503) or ended a stream at its drain."""


class NoReplica(Unavailable):
    """503 from `sluice serve`: no replica of the function is running or became ready."""


class MapUnavailable(Unavailable):
    """503: map is off (no NATS configured) or NATS is unreachable."""


class UpstreamError(ServerError):
    """The function (under `sluice serve`, a replica) could not be reached or failed before
    answering (502), or broke off mid-stream (`event: error`)."""


class StreamTimeout(ServerError):
    """The proxy ended a stream: silent longer than the idle timeout, or over its max duration."""


class InternalError(ServerError):
    """500: the proxy failed itself."""


class MapFailed(ServerError):
    """The whole map ended with an error naming no input (NATS gone too long, cancelled)."""


class InputFailed(SluiceError):
    """One map input failed (only raised with `raise_on_error=True`; otherwise it is a value)."""

    index: int
    status: int | None
    body: Any
    attempts: int | None

    def __init__(
        self, index: int, message: str, *, status: int | None, body: Any, attempts: int | None
    ) -> None:
        super().__init__("ERR_INPUT_FAILED", message)
        self.index = index
        self.status = status
        self.body = body
        self.attempts = attempts


class ConnectionFailed(SluiceError, builtins.ConnectionError):
    """The connection could not be made, or broke and could not be resumed."""

    def __init__(self, message: str) -> None:
        super().__init__("ERR_CONNECTION", message)


class NotEventStream(SluiceError):
    """Expected `text/event-stream` and got another content type."""

    content_type: str

    def __init__(self, url: str, content_type: str) -> None:
        super().__init__(
            "ERR_NOT_EVENT_STREAM",
            f"{url} answered {content_type or 'no content type'}, not text/event-stream",
        )
        self.content_type = content_type


class ProtocolError(SluiceError):
    """A map stream broke the wire format (data not JSON, an index out of range, no requestId)."""

    def __init__(self, message: str) -> None:
        super().__init__("ERR_MAP_PROTOCOL", message)


class UsageError(SluiceError, ValueError):
    """Bad arguments: not an http(s) URL, inputs that are not a sequence, an unknown order."""

    def __init__(self, message: str) -> None:
        super().__init__("ERR_CLIENT_USAGE", message)


# The one table: every code the proxy or `sluice serve` can send -> the class raised for it.
WIRE_CODES: Final[Mapping[str, type[ServerError]]] = MappingProxyType(
    {
        "bad_request_target": BadRequest,
        "invalid_json": BadRequest,
        "invalid_map_body": BadRequest,
        "invalid_last_event_id": BadRequest,
        "unauthorized": Unauthorized,
        "not_found": NotFound,
        "map_not_found": MapNotFound,
        "method_not_allowed": MethodNotAllowed,
        "body_too_large": PayloadTooLarge,
        "too_many_inputs": PayloadTooLarge,
        "input_too_large": PayloadTooLarge,
        "queue_timeout": QueueTimeout,
        "shutting_down": ShuttingDown,
        "shutdown": ShuttingDown,
        "no_replica": NoReplica,
        "map_disabled": MapUnavailable,
        "map_unavailable": MapUnavailable,
        "nats_unavailable": MapUnavailable,
        "upstream_unavailable": UpstreamError,
        "upstream_failed": UpstreamError,
        "upstream_closed": UpstreamError,
        "replica_unavailable": UpstreamError,
        "idle_timeout": StreamTimeout,
        "max_duration": StreamTimeout,
        "internal": InternalError,
        "map_failed": MapFailed,
    }
)


def error_from_response(
    url: str, status: int, body: str, retry_after_header: str | None = None
) -> ServerError:
    """The exception for a non-2xx answer: its class from the body's `error.code`."""
    code, message = _code_and_message(_parse_json(body))
    detail = message or body[:200]
    cls = WIRE_CODES.get(code, ServerError) if code else ServerError
    return cls(
        code or "ERR_HTTP_STATUS",
        f"{url} answered {status}{f': {detail}' if detail else ''}",
        url=url,
        status=status,
        body=body,
        retry_after=_retry_after(retry_after_header),
    )


def error_from_event(url: str, data: str) -> ServerError:
    """The exception for an `event: error` ending a stream: `{"error": {"code", "message"}}`."""
    code, message = _code_and_message(_parse_json(data))
    cls = WIRE_CODES.get(code, ServerError) if code else ServerError
    return cls(
        code or "ERR_ERROR_EVENT",
        f"{url}: stream ended with an error: {message or data[:200]}",
        url=url,
        body=data,
    )


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _code_and_message(parsed: Any) -> tuple[str | None, str | None]:
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


def _retry_after(header: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is not used by Sluice and reads as None."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
