"""The protocol logic without I/O (`_sessions.py`, `errors.py`, `events.py`), table by table."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sluice
from httpx_sse import ServerSentEvent
from sluice._sessions import MapSession, StreamSession, function_base
from sluice.errors import error_from_event, error_from_response


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://h:8080", "http://h:8080/"),
        ("http://h:8080/", "http://h:8080/"),
        ("http://h/echo", "http://h/echo/"),
        ("http://h/echo/", "http://h/echo/"),
        ("http://h/echo/_sluice/map", "http://h/echo/"),
        ("http://h/echo/_sluice/map/", "http://h/echo/"),
        ("https://h/a/b?x=1#frag", "https://h/a/b/"),
    ],
)
def test_function_base(url: str, base: str) -> None:
    assert str(function_base(url)) == base


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://h/", "nope", "http://", ""])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(sluice.UsageError):
        function_base(url)


@pytest.mark.parametrize(
    ("raw", "data"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("42", 42),
        ('"quoted"', "quoted"),
        ("null", None),
        ("hello", "hello"),
        ("", ""),
        ("{not json", "{not json"),
    ],
)
def test_event_data_is_decoded_when_it_is_json(raw: str, data: Any) -> None:
    event = sluice.Event.of("message", raw, None)
    assert (event.data, event.raw) == (data, raw)


def body(code: str, message: str = "why") -> str:
    return json.dumps({"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("status", "text", "retry_after", "cls", "code", "seconds"),
    [
        (401, body("unauthorized"), None, sluice.Unauthorized, "unauthorized", None),
        (503, body("queue_timeout"), "3", sluice.QueueTimeout, "queue_timeout", 3.0),
        (503, body("shutting_down"), None, sluice.ShuttingDown, "shutting_down", None),
        (503, body("nats_unavailable"), "1", sluice.MapUnavailable, "nats_unavailable", 1.0),
        (503, body("no_replica"), None, sluice.NoReplica, "no_replica", None),
        (404, body("map_not_found"), None, sluice.MapNotFound, "map_not_found", None),
        (413, body("too_many_inputs"), None, sluice.PayloadTooLarge, "too_many_inputs", None),
        (
            502,
            body("upstream_unavailable"),
            None,
            sluice.UpstreamError,
            "upstream_unavailable",
            None,
        ),
        (504, body("idle_timeout"), None, sluice.StreamTimeout, "idle_timeout", None),
        (418, body("something_new"), None, sluice.ServerError, "something_new", None),
        (500, "plain text from the function", None, sluice.ServerError, "ERR_HTTP_STATUS", None),
        (503, "", "Wed, 21 Oct 2015 07:28:00 GMT", sluice.ServerError, "ERR_HTTP_STATUS", None),
    ],
)
def test_error_from_response_picks_the_class_by_wire_code(
    status: int, text: str, retry_after: str | None, cls: type, code: str, seconds: float | None
) -> None:
    error = error_from_response("http://h/", status, text, retry_after)
    assert type(error) is cls
    assert (error.status, error.code, error.retry_after, error.body) == (
        status,
        code,
        seconds,
        text,
    )


def test_error_from_event() -> None:
    error = error_from_event("http://h/", body("max_duration", "over an hour"))
    assert type(error) is sluice.StreamTimeout
    assert (error.status, error.code) == (None, "max_duration")
    assert "over an hour" in str(error)
    other = error_from_event("http://h/", "the function's own words")
    assert (type(other), other.code) == (sluice.ServerError, "ERR_ERROR_EVENT")


def stream_session(**overrides: Any) -> StreamSession:
    options: dict[str, Any] = {
        "method": None,
        "headers": None,
        "token": None,
        "max_reconnects": 5,
        "retry": 1.0,
        "raise_on_error": False,
        "other_content": "raise",
    }
    return StreamSession("http://h/fn", **{**options, **overrides})


def sse(event: str = "", data: str = "", id: str = "", retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


def test_stream_request_carries_the_body_token_and_last_event_id() -> None:
    session = stream_session(json={"n": 3}, token="t", headers={"X-Trace": "1"})
    first = session.request()
    assert (first.method, first.content) == ("POST", b'{"n":3}')
    assert first.headers == {
        "x-trace": "1",
        "authorization": "Bearer t",
        "accept": "text/event-stream",
        "content-type": "application/json",
    }
    session.accept(sse(data="x", id="7"))
    assert session.request().headers["last-event-id"] == "7"
    assert stream_session().request().method == "GET"
    assert stream_session(content="raw").request().content == b"raw"


def test_blocks_without_data_set_retry_and_id_but_are_not_events() -> None:
    session = stream_session()
    assert session.accept(sse(retry=250)) is None
    assert session.accept(sse(id="4")) is None
    assert session.last_event_id == "4"
    assert session.broken(OSError()) == 0.25


def test_stream_reconnect_policy() -> None:
    cause = httpx.ReadError("reset")
    with pytest.raises(sluice.ConnectionFailed, match="ReadError: reset"):
        stream_session().broken(cause)

    no_ids = stream_session()
    no_ids.accept(sse(data="x"))
    with pytest.raises(sluice.ConnectionFailed, match="no event id to resume from"):
        no_ids.broken(cause)

    session = stream_session(retry=1.0)
    session.accept(sse(data="x", id="1"))
    assert [session.broken(cause) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    with pytest.raises(sluice.ConnectionFailed, match="gave up after 5 reconnections") as caught:
        session.broken(cause)
    assert caught.value.__cause__ is cause

    resets = stream_session(retry=20.0)
    resets.accept(sse(data="x", id="1"))
    assert [resets.broken(cause) for _ in range(2)] == [20.0, 30.0]  # at most 30 s
    resets.accept(sse(data="y", id="2"))  # an event in between starts the count again
    assert resets.broken(cause) == 20.0


def test_raise_on_error_turns_an_error_event_into_its_exception() -> None:
    event = sse(event="error", data=body("upstream_closed"))
    assert stream_session().accept(event) is not None
    with pytest.raises(sluice.UpstreamError):
        stream_session(raise_on_error=True).accept(event)


def map_session(
    order: sluice.MapOrder = "input", inputs: Any = (1, {"a": 2}, 3), **overrides: Any
) -> MapSession:
    options: dict[str, Any] = {
        "keep": True,
        "headers": None,
        "token": None,
        "max_reconnects": 5,
        "retry": 1.0,
        "raise_on_error": False,
    }
    return MapSession("http://h/echo", inputs, order=order, **{**options, **overrides})


def accepted(count: int = 3) -> ServerSentEvent:
    return sse(event="accepted", data=json.dumps({"requestId": "r-1", "count": count}))


def result(index: int, output: Any = "out") -> ServerSentEvent:
    return sse(
        event="result",
        id=str(index),
        data=json.dumps({"index": index, "output": output, "replica": "p-0", "ms": 3}),
    )


def test_map_posts_the_inputs_then_resumes_by_request_id() -> None:
    session = map_session(order="completion", token="t")
    first = session.request()
    assert (first.method, first.url) == ("POST", "http://h/echo/_sluice/map")
    assert json.loads(first.content or b"") == {
        "inputs": [1, {"a": 2}, 3],
        "order": "completion",
        "keep": True,
    }
    assert first.headers["authorization"] == "Bearer t"
    assert session.accept(accepted()) is None
    assert session.accepted == sluice.MapAccepted(request_id="r-1", count=3)
    resumed = session.request()
    assert (resumed.method, resumed.url, resumed.content) == (
        "GET",
        "http://h/echo/_sluice/map/r-1",
        None,
    )
    assert "last-event-id" not in resumed.headers
    session.accept(result(1))
    assert session.request().headers["last-event-id"] == "1"


def test_map_hands_each_index_out_once_and_keeps_failures_as_values() -> None:
    session = map_session()
    session.accept(accepted())
    first = session.accept(result(0, {"x": 1}))
    assert first == sluice.MapResult(index=0, ok=True, output={"x": 1}, replica="p-0", ms=3.0)
    assert session.accept(result(0)) is None  # a repeat after a resume
    failed = session.accept(
        sse(
            event="error",
            id="1",
            data=json.dumps(
                {"index": 1, "error": {"status": 500, "message": "boom"}, "attempts": 3}
            ),
        )
    )
    assert failed == sluice.MapResult(
        index=1, ok=False, error=sluice.InputError(status=500, message="boom"), attempts=3
    )
    assert session.accept(sse(event="something-later", data="{}")) is None
    assert not session.finished
    session.accept(
        sse(event="done", data=json.dumps({"requestId": "r-1", "count": 3, "failed": 1}))
    )
    assert session.summary == sluice.MapSummary(request_id="r-1", count=3, failed=1)


def test_map_raise_on_error() -> None:
    session = map_session(raise_on_error=True)
    session.accept(accepted())
    with pytest.raises(sluice.InputFailed, match="input 2 failed") as caught:
        session.accept(sse(event="error", data=json.dumps({"index": 2, "error": {"status": 400}})))
    assert (caught.value.index, caught.value.status) == (2, 400)


@pytest.mark.parametrize(
    ("event", "raised"),
    [
        (sse(event="error", data=body("map_failed", "NATS gone")), sluice.MapFailed),
        (sse(event="result", data="not json"), sluice.ProtocolError),
        (sse(event="result", data="[1]"), sluice.ProtocolError),
        (sse(event="result", data='{"index": 3}'), sluice.ProtocolError),
        (sse(event="result", data='{"index": -1}'), sluice.ProtocolError),
        (sse(event="result", data='{"index": true}'), sluice.ProtocolError),
        (sse(event="accepted", data='{"count": 3}'), sluice.ProtocolError),
    ],
)
def test_map_stream_errors(event: ServerSentEvent, raised: type[Exception]) -> None:
    session = map_session()
    session.accept(accepted())
    with pytest.raises(raised):
        session.accept(event)


def test_map_resume_policy() -> None:
    cause = httpx.RemoteProtocolError("peer closed")
    with pytest.raises(sluice.ConnectionFailed, match="before the proxy accepted"):
        map_session().broken(cause)  # posting again could run every input twice
    session = map_session(retry=0.5)
    session.accept(accepted())
    assert session.broken(cause) == 0.5
    assert session.broken(session.ended()) == 1.0
    session.accept(result(0))
    assert session.broken(cause) == 0.5


@pytest.mark.parametrize(
    ("inputs", "order", "match"),
    [
        ("abc", "input", "inputs must be a list"),
        ({"a": 1}, "input", "inputs must be a list"),
        (42, "input", "inputs must be a list"),
        ([1], "fastest", "order must be"),
        ([float("nan")], "input", "not JSON-serializable"),
    ],
)
def test_map_usage_errors(inputs: Any, order: Any, match: str) -> None:
    with pytest.raises(sluice.UsageError, match=match):
        map_session(order=order, inputs=inputs)


def test_map_takes_any_iterable_of_inputs() -> None:
    session = map_session(inputs=(i * i for i in range(3)), keep=False)
    assert json.loads(session.request().content or b"") == {
        "inputs": [0, 1, 4],
        "order": "input",
        "keep": False,
    }
