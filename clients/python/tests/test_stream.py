"""`stream()` / `stream_async()` against a real `sluice serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import sluice
from harness import Relay, Serve, request_header


@pytest.fixture
def relay_to_echo(echo: Serve) -> Iterator[Relay]:
    front = urlparse(echo.url)
    relay = Relay(front.hostname or "127.0.0.1", front.port or 80)
    yield relay
    relay.close()


def test_yields_each_event_parsed_with_its_id(echo: Serve) -> None:
    events = list(sluice.stream(f"{echo.url}?n=3&pause=0&text=hi"))
    assert [(e.event, e.id) for e in events] == [
        ("message", "0"),
        ("message", "1"),
        ("message", "2"),
        ("done", "2"),  # the last id the server set, as EventSource keeps it
    ]
    assert [(e.data["i"], e.data["of"], e.data["text"]) for e in events[:3]] == [
        (0, 3, "hi"),
        (1, 3, "hi"),
        (2, 3, "hi"),
    ]
    assert events[3].data == {} and events[3].raw == "{}"


def test_a_json_body_is_posted(echo: Serve) -> None:
    events = list(sluice.stream(echo.url, {"n": 2, "pause": 0, "text": "posted"}))
    assert [e.data["text"] for e in events if e.event == "message"] == ["posted", "posted"]


def test_text_data_stays_text(gated: Serve) -> None:
    events = list(sluice.stream(f"{gated.url}ticks?n=2&pause=0"))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", "tick 0", None),
        ("message", "tick 1", None),
    ]


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_reconnects_with_last_event_id_after_the_connection_is_cut(
    relay_to_echo: Relay, twin: str
) -> None:
    # A long stream (1000 events, 100 ms apart) that the test leaves after event 8.
    url = relay_to_echo.url("/?n=1000&pause=100")
    ids: list[str] = []

    def seen(event: sluice.Event) -> bool:
        ids.append(event.id or "")
        if event.id == "2":
            relay_to_echo.cut()
        return event.id == "8"

    if twin == "sync":
        with sluice.stream(url, retry=0.05) as events:
            for event in events:
                if seen(event):
                    break
    else:

        async def read() -> None:
            async with sluice.stream_async(url, retry=0.05) as events:
                async for event in events:
                    if seen(event):
                        break

        asyncio.run(read())

    assert ids == [str(i) for i in range(9)]  # each event once, none lost
    assert len(relay_to_echo.requests) == 2
    resumed_after = request_header(relay_to_echo.requests[1], "last-event-id")
    assert resumed_after is not None and 2 <= int(resumed_after) < 8


def test_a_cut_stream_without_ids_raises_connection_failed(gated: Serve) -> None:
    front = urlparse(gated.url)
    relay = Relay(front.hostname or "127.0.0.1", front.port or 80)
    try:
        seen: list[str] = []
        with pytest.raises(sluice.ConnectionFailed, match="no event id to resume from") as caught:
            for event in sluice.stream(relay.url("/ticks?pause=0.1"), retry=0):
                seen.append(event.data)
                if len(seen) == 2:
                    relay.cut()
        assert caught.value.code == "ERR_CONNECTION"
        assert isinstance(caught.value, ConnectionError)
        assert len(relay.requests) == 1  # not retried: there was nothing to resume from
    finally:
        relay.close()


def test_the_proxys_error_event_is_an_event_or_with_raise_on_error_an_exception(
    gated: Serve,
) -> None:
    url = f"{gated.url}ticks?n=2&pause=0&abort=1"
    events = list(sluice.stream(url))
    assert [e.data for e in events[:2]] == ["tick 0", "tick 1"]
    assert events[2].event == "error" and events[2].data["error"]["code"] == "upstream_closed"

    with pytest.raises(sluice.UpstreamError) as caught:
        for _ in sluice.stream(url, raise_on_error=True):
            pass
    assert (caught.value.code, caught.value.status) == ("upstream_closed", None)


def test_a_response_that_is_not_an_event_stream(echo: Serve) -> None:
    # The function's map path answers JSON, not an event stream.
    with pytest.raises(sluice.NotEventStream) as caught:
        list(sluice.stream(f"{echo.url}map", {"x": 1}))
    assert caught.value.content_type.startswith("application/json")

    chunks = list(sluice.stream(f"{echo.url}map", {"x": 1}, other_content="chunks"))
    assert {e.event for e in chunks} == {"chunk"}
    assert '"echo":{"x":1}' in "".join(e.data for e in chunks)


def test_stream_async_leaves_the_event_loop_free_while_it_waits(echo: Serve) -> None:
    async def run() -> tuple[list[str], list[int]]:
        other_ran = asyncio.Event()
        order: list[str] = []
        ids: list[int] = []

        async def other() -> None:
            order.append("other task")
            other_ran.set()

        task = asyncio.create_task(other())
        async for event in sluice.stream_async(f"{echo.url}?n=3&pause=50"):
            if event.event == "message":
                # A blocking client would not let `other` run before the stream is over.
                order.append("event" if other_ran.is_set() else "event before other")
                ids.append(event.data["i"])
        await task
        return order, ids

    order, ids = asyncio.run(run())
    assert ids == [0, 1, 2]
    assert order == ["other task", "event", "event", "event"]


def test_a_bad_url_is_a_usage_error_at_once() -> None:
    with pytest.raises(sluice.UsageError, match="not an http"):
        sluice.stream("localhost:8080")
    with pytest.raises(sluice.UsageError):
        sluice.stream_async("ftp://example.com/")
