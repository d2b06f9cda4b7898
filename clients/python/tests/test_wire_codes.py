"""The Python table of wire codes (`sluice.errors.WIRE_CODES`) against the proxy's one typed
table, `WIRE_ERRORS` in common/wire-errors.ts (every code the proxy and `sluice serve` can
send; test/wire-errors.test.ts keeps string codes from living anywhere else), read from the
TypeScript source so the two cannot drift apart silently."""

from __future__ import annotations

import re

import sluice
from harness import REPO
from sluice.errors import WIRE_CODES, ServerError

WIRE_TABLE = REPO / "common" / "wire-errors.ts"
# `  code: { status: 503, ...` or `  code: {\n    status: 503,`; `undefined`: only ever an event.
ENTRY = re.compile(r"^ {2}([a-z_]+):\s*\{\s*status:\s*(\d{3}|undefined)\s*,", re.M)

# The status each class stands for, so a code that moves to another status is noticed too.
CLASS_STATUS: dict[type[ServerError], int | None] = {
    sluice.BadRequest: 400,
    sluice.Unauthorized: 401,
    sluice.NotFound: 404,
    sluice.MapNotFound: 404,
    sluice.MethodNotAllowed: 405,
    sluice.PayloadTooLarge: 413,
    sluice.InternalError: 500,
    sluice.UpstreamError: 502,
    sluice.QueueTimeout: 503,
    sluice.ShuttingDown: 503,
    sluice.NoReplica: 503,
    sluice.MapUnavailable: 503,
    sluice.StreamTimeout: 504,
    sluice.MapFailed: None,
}


def typescript_wire_errors() -> dict[str, int | None]:
    text = WIRE_TABLE.read_text()
    start = text.index("export const WIRE_ERRORS = {")
    block = text[start : text.index("} as const", start)]
    return {
        code: None if status == "undefined" else int(status)
        for code, status in ENTRY.findall(block)
    }


def test_every_code_the_proxy_sends_has_an_exception_class_and_no_other() -> None:
    sent = typescript_wire_errors()
    missing = sorted(set(sent) - set(WIRE_CODES))
    stale = sorted(set(WIRE_CODES) - set(sent))
    assert not missing, f"codes in {WIRE_TABLE.name} that WIRE_CODES lacks: {missing}"
    assert not stale, f"codes in WIRE_CODES that {WIRE_TABLE.name} no longer has: {stale}"


def test_each_code_maps_to_the_class_of_its_status() -> None:
    sent = typescript_wire_errors()
    wrong = {
        code: (sent[code], cls.__name__)
        for code, cls in WIRE_CODES.items()
        if code in sent and CLASS_STATUS[cls] != sent[code]
    }
    assert not wrong, f"code: (status in {WIRE_TABLE.name}, Python class): {wrong}"
