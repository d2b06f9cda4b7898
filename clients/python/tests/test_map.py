"""`map()` / `map_async()` against a real `sluice serve` with NATS JetStream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import sluice
from harness import Relay, Serve, request_header


def test_input_order_yields_results_by_index_whatever_finishes_first(echo: Serve) -> None:
    # Later inputs finish first; input order still hands them out 0, 1, 2, ...
    inputs = [{"n": i, "sleepMs": (6 - i) * 40} for i in range(6)]
    run = sluice.map(echo.url, inputs)
    results = list(run)
    assert [r.index for r in results] == list(range(6))
    assert [r.output["echo"] for r in results] == inputs
    assert all(r.ok and isinstance(r.replica, str) and r.ms is not None for r in results)
    assert run.summary is not None and run.accepted is not None
    assert (run.summary.count, run.summary.failed) == (6, 0)
    assert run.summary.request_id == run.accepted.request_id


def test_completion_order_yields_results_as_they_finish(gated: Serve, tmp_path: Path) -> None:
    # Input 0 waits on a gate that opens only once the other five results have arrived.
    gate = tmp_path / "open"
    inputs: list[dict[str, Any]] = [{"value": 0, "gate": str(gate)}] + [
        {"value": i} for i in range(1, 6)
    ]
    indices: list[int] = []
    for result in sluice.map(gated.url, inputs, order="completion"):
        indices.append(result.index)
        assert result.ok and result.output == {"value": result.index}
        if len(indices) == 5:
            gate.touch()
    assert sorted(indices[:5]) == [1, 2, 3, 4, 5]
    assert indices[5] == 0


def test_a_failed_input_is_a_value_unless_raise_on_error(echo: Serve) -> None:
    results = list(sluice.map(echo.url, [1, {"fail": "on purpose"}, 3]))
    assert [(r.index, r.ok) for r in results] == [(0, True), (1, False), (2, True)]
    failed = results[1].error
    assert failed is not None and failed.status == 500
    assert failed.message is not None and "on purpose" in failed.message
    assert results[1].attempts == 3  # a 5xx is retried up to maxDeliver

    with pytest.raises(sluice.InputFailed) as caught:
        for _ in sluice.map(echo.url, [1, {"fail": "on purpose"}], raise_on_error=True):
            pass
    assert (caught.value.index, caught.value.status, caught.value.attempts) == (1, 500, 3)


def test_map_async_fans_out_from_inside_a_running_loop(echo: Serve) -> None:
    async def run() -> tuple[list[int], sluice.MapSummary | None]:
        async with sluice.map_async(echo.url, list(range(8)), order="completion") as results:
            indices = [r.index async for r in results]
            return indices, results.summary

    indices, summary = asyncio.run(run())
    assert sorted(indices) == list(range(8))
    assert summary is not None and (summary.count, summary.failed) == (8, 0)


@pytest.mark.parametrize("order", ["input", "completion"])
@pytest.mark.parametrize("twin", ["sync", "async"])
def test_resumes_after_the_connection_is_cut_mid_map(
    gated: Serve, tmp_path: Path, order: sluice.MapOrder, twin: str
) -> None:
    """Inputs 4..9 wait on a gate: the test cuts the connection after results 0..3, then opens
    the gate; the client resumes from GET /_sluice/map/<id> and sees every index exactly once."""
    front = urlparse(gated.url)
    relay = Relay(front.hostname or "127.0.0.1", front.port or 80)
    gate = tmp_path / "open"
    inputs = [{"value": i, **({"gate": str(gate)} if i >= 4 else {})} for i in range(10)]
    indices: list[int] = []
    ids_before_cut: list[int] = []

    def seen(result: sluice.MapResult) -> None:
        assert result.ok and result.output == {"value": result.index}
        indices.append(result.index)
        if len(indices) == 4:
            ids_before_cut.extend(indices)
            relay.cut()
            gate.touch()

    try:
        if twin == "sync":
            run = sluice.map(relay.url("/"), inputs, order=order, retry=0.05)
            for result in run:
                seen(result)
            summary, accepted = run.summary, run.accepted
        else:

            async def read() -> tuple[sluice.MapSummary | None, sluice.MapAccepted | None]:
                async with sluice.map_async(relay.url("/"), inputs, order=order, retry=0.05) as run:
                    async for result in run:
                        seen(result)
                    return run.summary, run.accepted

            summary, accepted = asyncio.run(read())
    finally:
        relay.close()

    assert sorted(indices) == list(range(10))  # each index exactly once
    assert sorted(ids_before_cut) == [0, 1, 2, 3]
    if order == "input":
        assert indices == list(range(10))
    assert summary is not None and accepted is not None
    assert (summary.count, summary.failed) == (10, 0)
    # The first connection posted the inputs; the second resumed that map after the last result.
    assert [head.split(" ", 2)[:2] for head in relay.requests] == [
        ["POST", "/_sluice/map"],
        ["GET", f"/_sluice/map/{accepted.request_id}"],
    ]
    assert request_header(relay.requests[1], "last-event-id") == str(ids_before_cut[-1])


def test_resuming_an_unknown_map_is_map_not_found(echo: Serve) -> None:
    with pytest.raises(sluice.MapNotFound) as caught:
        list(sluice.stream(f"{echo.url}_sluice/map/{uuid.uuid4()}"))
    assert (caught.value.status, caught.value.code) == (404, "map_not_found")


def test_map_on_a_function_without_map_is_map_unavailable(single_slot: Serve) -> None:
    with pytest.raises(sluice.MapUnavailable) as caught:
        list(sluice.map(single_slot.url, [1]))
    assert (caught.value.status, caught.value.code) == (503, "map_disabled")


def test_bad_arguments_are_usage_errors_at_once() -> None:
    url = "http://127.0.0.1:9/"
    with pytest.raises(sluice.UsageError, match="inputs must be a list"):
        sluice.map(url, "abc")
    with pytest.raises(sluice.UsageError, match="order must be"):
        sluice.map(url, [1], order="fastest")  # type: ignore[arg-type]
    with pytest.raises(sluice.UsageError, match="not JSON-serializable"):
        sluice.map_async(url, [object()])
