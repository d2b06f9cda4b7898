"""Typed exceptions for what the proxy refuses: auth and a queue timeout, from a real serve."""

from __future__ import annotations

import asyncio

import pytest
import sluice
from conftest import TOKEN
from harness import Serve


def test_without_a_token_the_stream_is_unauthorized(secured: Serve) -> None:
    with pytest.raises(sluice.Unauthorized) as caught:
        list(sluice.stream(f"{secured.url}?n=1&pause=0"))
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with pytest.raises(sluice.Unauthorized):
        list(sluice.stream(f"{secured.url}?n=1&pause=0", token="not-the-token"))


def test_with_the_token_stream_and_map_work(secured: Serve) -> None:
    events = list(sluice.stream(f"{secured.url}?n=2&pause=0", token=TOKEN))
    assert [e.event for e in events] == ["message", "message", "done"]
    assert [r.output["echo"] for r in sluice.map(secured.url, ["a", "b"], token=TOKEN)] == [
        "a",
        "b",
    ]

    async def both() -> None:
        with pytest.raises(sluice.Unauthorized):
            async for _ in sluice.map_async(secured.url, ["a"]):
                pass
        outputs = [
            r.output["echo"] async for r in sluice.map_async(secured.url, ["c"], token=TOKEN)
        ]
        assert outputs == ["c"]

    asyncio.run(both())


def test_a_request_that_waits_past_the_queue_timeout_is_queue_timeout(single_slot: Serve) -> None:
    # The only slot is held by a long stream while a second request waits in the queue.
    with sluice.stream(f"{single_slot.url}?n=1000&pause=1000") as holding:
        first = next(holding)
        assert first.id == "0"
        with pytest.raises(sluice.QueueTimeout) as caught:
            list(sluice.stream(f"{single_slot.url}?n=1&pause=0"))
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (503, "queue_timeout", 1.0)
    assert isinstance(error, sluice.Unavailable) and "slots stayed busy" in str(error)
