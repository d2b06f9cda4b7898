"""What the client yields: stream events and map results (SPEC §2's map protocol)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event.

    `event` is `message` when the server named none (as EventSource does); `data` is the data
    decoded from JSON when it is JSON, else the text itself (`raw` always holds the text); `id`
    is the last event id the server set on this connection, None before any.
    """

    event: str
    data: Any
    id: str | None
    raw: str

    @classmethod
    def of(cls, event: str, raw: str, id: str | None) -> Event:
        return cls(event=event, data=decode_data(raw), id=id, raw=raw)


def decode_data(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass(frozen=True, slots=True)
class InputError:
    """Why one map input failed: the function's status, its text `message` or JSON `body`."""

    status: int | None
    message: str | None
    body: Any = None


@dataclass(frozen=True, slots=True)
class MapResult:
    """One input's outcome, yielded once per index. `ok` tells `output` from `error`."""

    index: int
    ok: bool
    output: Any = None
    error: InputError | None = None
    replica: str | None = None
    ms: float | None = None
    attempts: int | None = None


@dataclass(frozen=True, slots=True)
class MapAccepted:
    """The proxy queued the inputs; `request_id` is what a resume asks for."""

    request_id: str
    count: int


@dataclass(frozen=True, slots=True)
class MapSummary:
    """The `done` event: how many inputs, how many failed, how many were cancelled."""

    request_id: str
    count: int
    failed: int
    cancelled: int = 0
