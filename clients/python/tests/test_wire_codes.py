"""The Python table of wire codes (`sluice.errors.WIRE_CODES`) against the codes the
TypeScript proxy and `sluice serve` can send, read from their sources, so the two cannot
drift apart silently. Today the codes are string literals at their call sites; when they move
into one typed TypeScript table, point TYPESCRIPT_SOURCES and the patterns at that table."""

from __future__ import annotations

import re
from pathlib import Path

from harness import REPO
from sluice.errors import WIRE_CODES

# Everything that answers HTTP clients of a function: the sidecar and serve's front port.
TYPESCRIPT_SOURCES = ["proxy", "cli/serve-front.ts", "cli/serve-run.ts"]

# Where a wire code is written as a literal.
CODE_LITERALS = [
    re.compile(r"sendJsonError\(\s*[\w.]+\s*,\s*\d{3}\s*,\s*'([a-z_]+)'"),  # JSON error answers
    re.compile(r"sendError\(\s*\w+\s*,\s*\d{3}\s*,\s*'([a-z_]+)'"),  # serve's front
    re.compile(r"new MapRequestError\(\s*\d{3}\s*,\s*'([a-z_]+)'"),  # refused map bodies
    re.compile(r"\bcode:\s*'([a-z_]+)'"),  # relay failures (JSON answer or `event: error`)
    re.compile(r"errorEvent\(\s*'([a-z_]+)'"),
    re.compile(r"super\(\s*'([a-z_]+)'"),  # SluiceError subclasses whose `code` is sent as is
    re.compile(r'\\?"code\\?"\s*:\s*\\?"([a-z_]+)'),  # JSON written by hand (CONNECT refusal)
]
# Call sites that send a code through a variable: only these forms are understood, so a new
# kind of indirection fails the test instead of hiding a code. Group 1 is the code argument.
SEND_SITES = [
    re.compile(r"\b(?:sendJsonError|sendError)\(\s*[\w.]+\s*,\s*[^,]+,\s*([^,)]+)"),
    re.compile(r"\berrorEvent\(\s*([^,)]+)"),
]
UNDERSTOOD_CODE_ARG = re.compile(r"^(?:'[a-z_]+'|SHUTDOWN\.code|failure\.code|err\.code)$")


def typescript_files() -> list[Path]:
    files: list[Path] = []
    for source in TYPESCRIPT_SOURCES:
        path = REPO / source
        files += sorted(path.rglob("*.ts")) if path.is_dir() else [path]
    return [f for f in files if not f.name.endswith(".test.ts")]


def codes_sent_by_typescript() -> set[str]:
    codes: set[str] = set()
    for file in typescript_files():
        text = file.read_text()
        for pattern in CODE_LITERALS:
            codes.update(pattern.findall(text))
    return codes


def test_every_code_the_proxy_sends_has_an_exception_class_and_no_other() -> None:
    sent = codes_sent_by_typescript()
    missing = sorted(sent - set(WIRE_CODES))
    stale = sorted(set(WIRE_CODES) - sent)
    assert not missing, f"codes the proxy sends that WIRE_CODES lacks: {missing}"
    assert not stale, f"codes in WIRE_CODES the proxy no longer sends: {stale}"


def test_every_send_site_names_its_code_in_a_form_this_test_reads() -> None:
    sites = 0
    unread: list[str] = []
    for file in typescript_files():
        text = file.read_text()
        for pattern in SEND_SITES:
            for call in pattern.finditer(text):
                if text[: call.start()].rstrip().endswith("function"):
                    continue  # the definition, not a call
                sites += 1
                if not UNDERSTOOD_CODE_ARG.match(call.group(1).strip()):
                    line = text.count("\n", 0, call.start()) + 1
                    unread.append(f"{file.relative_to(REPO)}:{line}: {call.group(1).strip()!r}")
    assert not unread, "send sites whose code this test cannot read: " + ", ".join(unread)
    assert sites >= len(WIRE_CODES) // 2, f"only {sites} send sites found: are the patterns stale?"
