"""`stream_async()` and `map_async()`: the twins for asyncio code (FastAPI endpoints that fan
out from inside a request), on httpx.AsyncClient; they never block the event loop. Same
protocol code as the blocking twins (`_sessions.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
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


class AsyncClosing(AsyncIterator[T], Generic[T]):
    """An async iterator that owns a connection: `aclose()` (or leaving `async with`) ends it.
    Leaving an `async for` early closes it only when it is garbage-collected, so code that may
    stop early should use `async with`."""

    def __init__(self, items: AsyncGenerator[T, None]) -> None:
        self._items = items

    async def __anext__(self) -> T:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> AsyncClosing[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncEventStream(AsyncClosing[Event]):
    """The events of one `stream_async()` call, as they arrive."""

    async def __aenter__(self) -> AsyncEventStream:
        return self


class AsyncMapStream(AsyncClosing[MapResult]):
    """The results of one `map_async()` call, each index once; `summary` is set at `done`."""

    def __init__(self, session: MapSession, items: AsyncGenerator[MapResult, None]) -> None:
        super().__init__(items)
        self._session = session

    async def __aenter__(self) -> AsyncMapStream:
        return self

    @property
    def accepted(self) -> MapAccepted | None:
        return self._session.accepted

    @property
    def summary(self) -> MapSummary | None:
        return self._session.summary


def stream_async(
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
    client: httpx.AsyncClient | None = None,
) -> AsyncEventStream:
    """`stream()` for asyncio: `async for event in stream_async(url): ...` (same arguments)."""
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
    return AsyncEventStream(_run_stream(session, client, timeout))


def map_async(
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
    client: httpx.AsyncClient | None = None,
) -> AsyncMapStream:
    """`map()` for asyncio, like Modal's `.map.aio`: `async for r in map_async(url, xs): ...`."""
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
    return AsyncMapStream(session, _run_map(session, client, timeout))


def _open(
    http: httpx.AsyncClient, request: HttpRequest, timeout: TimeoutTypes
) -> AbstractAsyncContextManager[httpx.Response]:
    return http.stream(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        timeout=timeout,
        follow_redirects=True,
    )


async def _check(response: httpx.Response, url: str) -> None:
    if not response.is_success:
        body = (await response.aread()).decode("utf-8", errors="replace")
        raise error_from_response(
            url, response.status_code, body, response.headers.get("retry-after")
        )


async def _run_stream(
    session: StreamSession, client: httpx.AsyncClient | None, timeout: TimeoutTypes
) -> AsyncGenerator[Event, None]:
    http = client or httpx.AsyncClient()
    try:
        while True:
            request = session.request()
            try:
                async with _open(http, request, timeout) as response:
                    await _check(response, request.url)
                    content_type = response.headers.get("content-type", "")
                    if not is_event_stream(content_type):
                        if session.other_content != "chunks":
                            raise NotEventStream(request.url, content_type)
                        async for text in response.aiter_text():
                            if text:
                                yield session.chunk(text)
                        return
                    async with aclosing(EventSource(response).aiter_sse()) as events:
                        async for sse in events:
                            event = session.accept(sse)
                            if event is not None:
                                yield event
                    return
            except httpx.TransportError as cause:
                delay = session.broken(cause)
            await asyncio.sleep(delay)
    finally:
        if client is None:
            await http.aclose()


async def _run_map(
    session: MapSession, client: httpx.AsyncClient | None, timeout: TimeoutTypes
) -> AsyncGenerator[MapResult, None]:
    http = client or httpx.AsyncClient()
    try:
        while True:
            request = session.request()
            cause: Exception
            try:
                async with _open(http, request, timeout) as response:
                    await _check(response, request.url)
                    content_type = response.headers.get("content-type", "")
                    if not is_event_stream(content_type):
                        raise NotEventStream(request.url, content_type)
                    async with aclosing(EventSource(response).aiter_sse()) as events:
                        async for sse in events:
                            result = session.accept(sse)
                            if result is not None:
                                yield result
                            if session.finished:
                                return
                cause = session.ended()
            except httpx.TransportError as err:
                cause = err
            await asyncio.sleep(session.broken(cause))
    finally:
        if client is None:
            await http.aclose()
