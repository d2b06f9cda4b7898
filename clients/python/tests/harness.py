"""Real parts for the tests: `sluice serve` from this checkout, and a TCP relay the tests cut
to break connections for real. No mocks of the server."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Polls `check` until it returns something truthy (the waitFor of common/net.ts)."""
    deadline = time.monotonic() + timeout
    woken = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        woken.wait(0.02)


def node() -> str:
    """The project's Node 24 (its devDependency), which runs the TypeScript by type stripping."""
    local = REPO / "node_modules" / ".bin" / "node"
    if local.exists():
        return str(local)
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node not found: run `npm ci` in the repository first")
    return found


class Serve:
    """`node bin/sluice.js serve <manifest> --port 0`, its output captured; `url` once ready."""

    running: list[Serve] = []  # for the failure report (conftest.py)

    def __init__(
        self, manifest: Path, *, replicas: int = 1, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = manifest.name
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [
                node(),
                str(REPO / "bin" / "sluice.js"),
                "serve",
                str(manifest),
                "--replicas",
                str(replicas),
                "--port",
                "0",
                "--host",
                "127.0.0.1",
            ],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        Serve.running.append(self)
        try:
            ready = wait_for(
                lambda: re.search(r" ready with \d+ replica\(s\) on (http://\S+)", self.output()),
                f"sluice serve {manifest.name} to be ready",
                timeout=90,
            )
        except TimeoutError as err:
            self.stop()
            raise TimeoutError(f"{err}:\n{self.output()}") from None
        assert ready is not None
        self.url = ready.group(1) + "/"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def stop(self) -> None:
        """SIGTERM (serve stops everything it started), SIGKILL if it lingers."""
        if self in Serve.running:
            Serve.running.remove(self)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Relay:
    """A TCP relay on loopback in front of `target`. `cut()` resets every connection it
    carries (the client gets a real RST mid-response); new connections are relayed as before.
    `requests` holds the head of each request that went through, in order. One thread moves
    the bytes (selectors), so a cut closes sockets no other thread is reading: a real RST."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._peers: dict[socket.socket, socket.socket] = {}
        self._heads: set[socket.socket] = (
            set()
        )  # client sockets whose request head is still to come
        self._cut_done = threading.Event()
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        """Resets every open connection (SO_LINGER 0, then close: an RST) and returns once done."""
        self._command(b"c")

    def close(self) -> None:
        """Resets every open connection and stops relaying."""
        self._command(b"q")
        self._thread.join(10)

    def _command(self, command: bytes) -> None:
        self._cut_done.clear()
        self._wake_w.send(command)
        if not self._cut_done.wait(10):
            raise TimeoutError("the relay did not cut its connections")

    def _loop(self) -> None:
        running = True
        while running:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    running = b"q" not in sock.recv(64)
                    self._reset_all()
                    self._cut_done.set()
                elif sock in self._peers:  # not dropped earlier in this batch
                    self._move(sock)
        self._selector.close()
        for sock in (self._server, self._wake_r, self._wake_w):
            sock.close()

    def _accept(self) -> None:
        client, _ = self._server.accept()
        upstream = socket.create_connection(self._target)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(sock, selectors.EVENT_READ, "data")
        self._peers[client], self._peers[upstream] = upstream, client
        self._heads.add(client)

    def _move(self, source: socket.socket) -> None:
        sink = self._peers[source]
        try:
            data = source.recv(65536)
            if data:
                if source in self._heads:
                    self._heads.discard(source)
                    self.requests.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                sink.sendall(data)
                return
        except OSError:
            pass
        self._drop(source, reset=False)

    def _drop(self, sock: socket.socket, *, reset: bool) -> None:
        peer = self._peers.pop(sock, None)
        if peer is not None:
            self._peers.pop(peer, None)
        for each in (sock, peer):
            if each is None:
                continue
            self._heads.discard(each)
            self._selector.unregister(each)
            if reset:
                each.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            each.close()

    def _reset_all(self) -> None:
        while self._peers:
            self._drop(next(iter(self._peers)), reset=True)


def request_header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
