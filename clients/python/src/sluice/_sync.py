"""`stream()` and `map()`: the blocking twins, on httpx.Client."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource

from ._sessions import (
    DEFAULT_TIMEOUT,
    HttpRequest,
    MapOrder,
    MapSession,
    OtherContent,
    StreamSession,
    TimeoutTypes,
    is_event_stream,
)
from .errors import NotEventStream, error_from_response
from .events import Event, MapAccepted, MapResult, MapSummary

T = TypeVar("T")


class Closing(Iterator[T], Generic[T]):
    """An iterator that owns a connection: `close()` (or leaving a `with` block) ends it."""

    def __init__(self, items: Generator[T, None, None]) -> None:
        self._items = items

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._items.close()

    def __enter__(self) -> Closing[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class EventStream(Closing[Event]):
    """The events of one `stream()` call, as they arrive."""

    def __enter__(self) -> EventStream:
        return self


class MapStream(Closing[MapResult]):
    """The results of one `map()` call, each index once; `summary` is set once `done` arrived."""

    def __init__(self, session: MapSession, items: Generator[MapResult, None, None]) -> None:
        super().__init__(items)
        self._session = session

    def __enter__(self) -> MapStream:
        return self

    @property
    def accepted(self) -> MapAccepted | None:
        return self._session.accepted

    @property
    def summary(self) -> MapSummary | None:
        return self._session.summary


def stream(
    url: str | httpx.URL,
    json: Any = None,
    *,
    content: str | bytes | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str | None = None,
    timeout: TimeoutTypes = DEFAULT_TIMEOUT,
    max_reconnects: int = 5,
    retry: float = 1.0,
    raise_on_error: bool = False,
    other_content: OtherContent = "raise",
    client: httpx.Client | None = None,
) -> EventStream:
    """Streams the events of `url` as they arrive.

    `json` is sent as a JSON body (`content` as it is); a body makes the method POST. When
    the connection drops after the server sent event ids, it reconnects with `Last-Event-ID`
    (the server decides where to resume), at most `max_reconnects` times in a row, waiting
    `retry` seconds doubled each time (a server's `retry:` field replaces it). Without ids
    there is nothing to resume from and the drop raises ConnectionFailed. A non-2xx answer
    raises the ServerError subclass for its wire code; `raise_on_error=True` raises one for
    an `event: error` too. A response that is not an event stream raises NotEventStream,
    or with `other_content="chunks"` yields each piece of its body as a `chunk` event.
    """
    session = StreamSession(
        url,
        json=json,
        content=content,
        method=method,
        headers=headers,
        token=token,
        max_reconnects=max_reconnects,
        retry=retry,
        raise_on_error=raise_on_error,
        other_content=other_content,
    )
    return EventStream(_run_stream(session, client, timeout))


def map(
    url: str | httpx.URL,
    inputs: Iterable[Any],
    order: MapOrder = "input",
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    raise_on_error: bool = False,
    keep: bool = True,
    timeout: TimeoutTypes = DEFAULT_TIMEOUT,
    max_reconnects: int = 5,
    retry: float = 1.0,
    client: httpx.Client | None = None,
) -> MapStream:
    """Fans `inputs` out over the function's replicas (`POST <url>/_sluice/map`) and yields
    each input's MapResult once, as they come (`order="input"`, like Modal's `.map`, or
    `"completion"`). A failed input is a result with `ok=False` unless `raise_on_error=True`
    (then InputFailed). The map is kept (`keep=True`) so that after a broken connection it
    resumes from `GET <url>/_sluice/map/<requestId>` with `Last-Event-ID`; nothing is lost or
    repeated. With `keep=False` the proxy cancels the map when the first connection goes.
    """
    session = MapSession(
        url,
        inputs,
        order=order,
        keep=keep,
        headers=headers,
        token=token,
        max_reconnects=max_reconnects,
        retry=retry,
        raise_on_error=raise_on_error,
    )
    return MapStream(session, _run_map(session, client, timeout))


def _open(
    http: httpx.Client, request: HttpRequest, timeout: TimeoutTypes
) -> AbstractContextManager[httpx.Response]:
    return http.stream(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        timeout=timeout,
        follow_redirects=True,
    )


def _check(response: httpx.Response, url: str) -> None:
    if not response.is_success:
        body = response.read().decode("utf-8", errors="replace")
        raise error_from_response(
            url, response.status_code, body, response.headers.get("retry-after")
        )


def _run_stream(
    session: StreamSession, client: httpx.Client | None, timeout: TimeoutTypes
) -> Generator[Event, None, None]:
    http = client or httpx.Client()
    try:
        while True:
            request = session.request()
            try:
                with _open(http, request, timeout) as response:
                    _check(response, request.url)
                    content_type = response.headers.get("content-type", "")
                    if not is_event_stream(content_type):
                        if session.other_content != "chunks":
                            raise NotEventStream(request.url, content_type)
                        for text in response.iter_text():
                            if text:
                                yield session.chunk(text)
                        return
                    for sse in EventSource(response).iter_sse():
                        event = session.accept(sse)
                        if event is not None:
                            yield event
                    return
            except httpx.TransportError as cause:
                delay = session.broken(cause)
            time.sleep(delay)
    finally:
        if client is None:
            http.close()


def _run_map(
    session: MapSession, client: httpx.Client | None, timeout: TimeoutTypes
) -> Generator[MapResult, None, None]:
    http = client or httpx.Client()
    try:
        while True:
            request = session.request()
            cause: Exception
            try:
                with _open(http, request, timeout) as response:
                    _check(response, request.url)
                    content_type = response.headers.get("content-type", "")
                    if not is_event_stream(content_type):
                        raise NotEventStream(request.url, content_type)
                    for sse in EventSource(response).iter_sse():
                        result = session.accept(sse)
                        if result is not None:
                            yield result
                        if session.finished:
                            return
                cause = session.ended()
            except httpx.TransportError as err:
                cause = err
            time.sleep(session.broken(cause))
    finally:
        if client is None:
            http.close()
