"""The stream and map protocols without I/O: which request to send next, what each event
means, and whether (and after how long) a broken connection is tried again. `_sync.py` and
`_async.py` drive them with httpx, so both twins behave the same by construction. The
semantics are the TypeScript client's (`client/index.ts`).
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent

from .errors import (
    ConnectionFailed,
    InputFailed,
    MapFailed,
    ProtocolError,
    UsageError,
    error_from_event,
)
from .events import Event, InputError, MapAccepted, MapResult, MapSummary

MapOrder = Literal["input", "completion"]
OtherContent = Literal["raise", "chunks"]
TimeoutTypes = float | httpx.Timeout | None

# Reads between two bytes may be long (a queued request, a silent function); the proxy's
# heartbeat (15 s by default) keeps event streams well inside this.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=30.0)
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None = None


def http_url(url: str | httpx.URL) -> httpx.URL:
    """`localhost:8080` parses with scheme `localhost`: only http(s) URLs with a host pass."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as err:
        raise UsageError(f"not a URL: {url!s} (expected http://host:port/...)") from err
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"not an http(s) URL: {url!s} (expected http://host:port/...)")
    return parsed


def function_base(url: str | httpx.URL) -> httpx.URL:
    """The function's base URL with a trailing slash: `_sluice/map` resolves under its path."""
    parsed = http_url(url)
    path = parsed.path
    for suffix in ("/_sluice/map/", "/_sluice/map"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not path.endswith("/"):
        path += "/"
    return parsed.copy_with(path=path, query=None, fragment=None)


def is_event_stream(content_type: str) -> bool:
    return content_type.strip().lower().startswith("text/event-stream")


def describe(cause: BaseException) -> str:
    text = str(cause)
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _headers(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    merged = {name.lower(): value for name, value in (headers or {}).items()}
    if token is not None:
        merged["authorization"] = f"Bearer {token}"
    merged["accept"] = "text/event-stream"
    return merged


class Reconnects:
    """Tries in a row without an event in between, and the wait before the next: `retry`
    seconds doubled each try (a server's `retry:` field replaces the base), at most 30 s."""

    def __init__(self, max_reconnects: int, retry: float) -> None:
        if max_reconnects < 0 or retry < 0:
            raise UsageError("max_reconnects and retry must not be negative")
        self.max_reconnects = max_reconnects
        self.retry = retry
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0

    def server_retry(self, ms: int) -> None:
        self.retry = ms / 1000

    def next_delay(self, what: str, cause: BaseException) -> float:
        if self.failures >= self.max_reconnects:
            raise ConnectionFailed(
                f"{what}: gave up after {self.failures} reconnections ({describe(cause)})"
            ) from cause
        self.failures += 1
        return float(min(self.retry * 2 ** (self.failures - 1), MAX_BACKOFF))


class StreamSession:
    """One `stream()` call: the request (again with `Last-Event-ID` after a drop) and its events."""

    def __init__(
        self,
        url: str | httpx.URL,
        *,
        json: Any = None,
        content: str | bytes | None = None,
        method: str | None,
        headers: Mapping[str, str] | None,
        token: str | None,
        max_reconnects: int,
        retry: float,
        raise_on_error: bool,
        other_content: OtherContent,
    ) -> None:
        self.url = str(http_url(url))
        if json is not None and content is not None:
            raise UsageError("pass json= or content=, not both")
        if other_content not in ("raise", "chunks"):
            raise UsageError(f'other_content must be "raise" or "chunks", got {other_content!r}')
        self._headers = _headers(headers, token)
        if json is not None:
            self._content: bytes | None = _encode_json(json, "json")
            self._headers.setdefault("content-type", "application/json")
        else:
            self._content = content.encode() if isinstance(content, str) else content
        self._method = method or ("GET" if self._content is None else "POST")
        self.raise_on_error = raise_on_error
        self.other_content = other_content
        self.last_event_id: str | None = None
        self._events_seen = False
        self._reconnects = Reconnects(max_reconnects, retry)

    def request(self) -> HttpRequest:
        headers = dict(self._headers)
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        return HttpRequest(self._method, self.url, headers, self._content)

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to yield for a parsed block, or None for a block that only sets retry/id."""
        if sse.retry is not None:
            self._reconnects.server_retry(sse.retry)
        if sse.id:
            self.last_event_id = sse.id
        # httpx-sse hands out blocks without data lines too; EventSource dispatches none of them.
        if sse.data == "" and sse.event == "message":
            return None
        self._events_seen = True
        self._reconnects.progressed()
        if self.raise_on_error and sse.event == "error":
            raise error_from_event(self.url, sse.data)
        return Event.of(sse.event, sse.data, sse.id or None)

    def chunk(self, text: str) -> Event:
        self._events_seen = True
        return Event(event="chunk", data=text, id=None, raw=text)

    def broken(self, cause: BaseException) -> float:
        """Seconds to wait before reconnecting; raises ConnectionFailed when it cannot resume."""
        if self.last_event_id is None:
            if not self._events_seen:
                raise ConnectionFailed(f"{self.url}: {describe(cause)}") from cause
            raise ConnectionFailed(
                f"{self.url}: connection lost and the server sent no event id to resume from "
                f"({describe(cause)})"
            ) from cause
        return self._reconnects.next_delay(self.url, cause)


class MapSession:
    """One `map()` call: `POST <fn>/_sluice/map` with `keep: true`, then after a drop
    `GET <fn>/_sluice/map/<requestId>` with `Last-Event-ID`; each index is handed out once."""

    def __init__(
        self,
        url: str | httpx.URL,
        inputs: Iterable[Any],
        *,
        order: MapOrder,
        keep: bool,
        headers: Mapping[str, str] | None,
        token: str | None,
        max_reconnects: int,
        retry: float,
        raise_on_error: bool,
    ) -> None:
        self._base = function_base(url)
        if isinstance(inputs, (str, bytes, bytearray, Mapping)) or not isinstance(inputs, Iterable):
            raise UsageError(
                "map inputs must be a list (or another iterable) of JSON values, "
                f"got {type(inputs).__name__}"
            )
        if order not in ("input", "completion"):
            raise UsageError(f'order must be "input" or "completion", got {order!r}')
        self._body = _encode_json({"inputs": list(inputs), "order": order, "keep": keep}, "inputs")
        self._headers = _headers(headers, token)
        self.raise_on_error = raise_on_error
        self.accepted: MapAccepted | None = None
        self.summary: MapSummary | None = None
        self.last_event_id: str | None = None
        self._seen: set[int] = set()
        self._reconnects = Reconnects(max_reconnects, retry)
        self.url = str(self._base.join("_sluice/map"))

    def request(self) -> HttpRequest:
        headers = dict(self._headers)
        if self.accepted is None:
            self.url = str(self._base.join("_sluice/map"))
            headers["content-type"] = "application/json"
            return HttpRequest("POST", self.url, headers, self._body)
        self.url = str(self._base.join(f"_sluice/map/{_quote(self.accepted.request_id)}"))
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        return HttpRequest("GET", self.url, headers)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def accept(self, sse: ServerSentEvent) -> MapResult | None:
        """The result to yield for an event, or None (accepted, done, a repeat, an unknown name)."""
        if sse.retry is not None:
            self._reconnects.server_retry(sse.retry)
        if sse.event == "accepted":
            data = _object(sse)
            request_id, count = data.get("requestId"), data.get("count")
            if not isinstance(request_id, str) or not _is_int(count):
                raise ProtocolError(f"accepted event without requestId and count: {sse.data[:200]}")
            if self.accepted is None:
                self.accepted = MapAccepted(request_id=request_id, count=count)
            return None
        if sse.event in ("result", "error"):
            data = _object(sse)
            if sse.event == "error" and "index" not in data:
                raise self._map_failed(data, sse.data)
            result = self._result(sse.event, data, sse.data)
            self._reconnects.progressed()
            if sse.id:
                self.last_event_id = sse.id
            if result.index in self._seen:
                return None
            self._seen.add(result.index)
            if not result.ok and self.raise_on_error:
                raise _input_failed(result)
            return result
        if sse.event == "done":
            data = _object(sse)
            request_id = data.get("requestId")
            self.summary = MapSummary(
                request_id=request_id
                if isinstance(request_id, str)
                else (self.accepted.request_id if self.accepted else ""),
                count=_int_or(data.get("count"), len(self._seen)),
                failed=_int_or(data.get("failed"), 0),
                cancelled=_int_or(data.get("cancelled"), 0),
            )
        # Other event names are left for later protocol versions.
        return None

    def ended(self) -> ConnectionFailed:
        return ConnectionFailed(f"{self.url}: map stream ended before its done event")

    def broken(self, cause: BaseException) -> float:
        """Seconds to wait before resuming; raises ConnectionFailed when it cannot resume."""
        if self.accepted is None:
            # Posting again could run every input twice, so a map that broke before
            # `accepted` is not retried.
            raise ConnectionFailed(
                f"{self.url}: map broke before the proxy accepted the inputs ({describe(cause)})"
            ) from cause
        return self._reconnects.next_delay(f"map {self.accepted.request_id}", cause)

    def _map_failed(self, data: dict[str, Any], raw: str) -> MapFailed:
        error = data.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        message = error.get("message")
        request_id = self.accepted.request_id if self.accepted else ""
        return MapFailed(
            code if isinstance(code, str) else "map_failed",
            f"map {request_id} failed: {message if isinstance(message, str) else raw[:200]}",
            url=self.url,
            body=raw,
        )

    def _result(self, name: str, data: dict[str, Any], raw: str) -> MapResult:
        index = data.get("index")
        count = self.accepted.count if self.accepted else None
        if not _is_int(index) or index < 0 or (count is not None and index >= count):
            raise ProtocolError(f"{name} event with a bad index: {raw[:200]}")
        if name == "result":
            return MapResult(
                index=index,
                ok=True,
                output=data.get("output"),
                replica=_str_or_none(data.get("replica")),
                ms=_number_or_none(data.get("ms")),
            )
        error = data.get("error")
        error = error if isinstance(error, dict) else {}
        status = error.get("status")
        return MapResult(
            index=index,
            ok=False,
            error=InputError(
                status=status if _is_int(status) else None,
                message=_str_or_none(error.get("message")),
                body=error.get("body"),
            ),
            attempts=data.get("attempts") if _is_int(data.get("attempts")) else None,
        )


def _input_failed(result: MapResult) -> InputFailed:
    error = result.error or InputError(status=None, message=None)
    detail = error.message if error.message is not None else jsonlib.dumps(error.body)
    return InputFailed(
        result.index,
        f"input {result.index} failed ({error.status}): {detail}",
        status=error.status,
        body=error.body,
        attempts=result.attempts,
    )


def _encode_json(value: Any, what: str) -> bytes:
    try:
        return jsonlib.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise UsageError(f"{what}: not JSON-serializable ({err})") from err


def _object(sse: ServerSentEvent) -> dict[str, Any]:
    try:
        value = jsonlib.loads(sse.data)
    except ValueError as err:
        raise ProtocolError(f"{sse.event} event data is not JSON: {sse.data[:200]}") from err
    if not isinstance(value, dict):
        raise ProtocolError(f"{sse.event} event data is not an object: {sse.data[:200]}")
    return value


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or(value: object, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
