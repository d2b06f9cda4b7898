"""One `sluice serve` per kind of function for the whole run (each starts its own nats-server
when map is on); the tests talk to them over real sockets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, Serve, node

TOKEN = "py-client-token"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the recent output of every serve still running."""
    report = yield
    if report.failed:
        for served in Serve.running:
            tail = "".join(served.output().splitlines(keepends=True)[-80:])
            report.sections.append((f"sluice serve {served.name}", tail))
    return report


def manifest(directory: Path, name: str, spec: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        "apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\n"
        f"metadata:\n  name: {name}\nspec:\n  image: sluice-tests:dev\n{spec}"
    )
    return path


@pytest.fixture(scope="session")
def echo() -> Iterator[Serve]:
    """examples/echo.yaml, two replicas: streams with ids, map over NATS."""
    served = Serve(REPO / "examples" / "echo.yaml", replicas=2)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """tests/functions/gated.py, two replicas: map inputs that wait on a gate file."""
    script = Path(__file__).parent / "functions" / "gated.py"
    path = manifest(
        tmp_path_factory.mktemp("gated"),
        "gated",
        f"  command: [{sys.executable}, {script}]\n"
        "  scaling: {concurrency: 16}\n"
        "  map: {enabled: true, path: /}\n",
    )
    served = Serve(path, replicas=2)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """examples/echo.yaml behind `--auth-tokens-file` (its SLUICE_AUTH_TOKENS_FILE twin)."""
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# accepted bearer tokens\n{TOKEN}\n")
    served = Serve(REPO / "examples" / "echo.yaml", env={"SLUICE_AUTH_TOKENS_FILE": str(tokens)})
    yield served
    served.stop()


@pytest.fixture(scope="session")
def single_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """The echo function with one slot and a one-second queue timeout."""
    path = manifest(
        tmp_path_factory.mktemp("queue"),
        "single-slot",
        f"  command: [{node()}, {REPO / 'examples' / 'echo' / 'server.js'}]\n"
        "  scaling: {concurrency: 1, queueTimeoutSeconds: 1}\n"
        "  map: {enabled: false}\n",
    )
    served = Serve(path)
    yield served
    served.stop()
