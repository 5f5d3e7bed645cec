"""The cap on connections waiting for request headers closes only connections that owe a request
head (new, or part-way through one): a kept-alive client idle since its last response is never reset
by a slow-header flood. Deterministic: a cap of 4, a header timeout far beyond the test, and the
flood's evictions observed before the idle client sends again."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from chio_kernel import Kernel
from chio_kernel.sidecar import create_app, header_timeout_protocol
from chio_sidecar_harness import free_port

REQUEST = b"GET /chio/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CAP = 4
FLOOD = 20


def _serve(tmp_path: Path, http: str) -> Iterator[int]:
    kernel = Kernel(tmp_path / "kernel")
    port = free_port()
    protocol = header_timeout_protocol(600.0, CAP, http=http)  # the sweep never fires during the test
    config = uvicorn.Config(create_app(kernel), host="127.0.0.1", port=port, http=protocol, lifespan="off",
                            log_level="warning", loop="asyncio", timeout_keep_alive=600)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
        kernel.close()


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {data!r}")
        data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_idle_keep_alive_client_survives_a_slow_header_flood(tmp_path: Path, http: str) -> None:
    if http == "httptools":
        pytest.importorskip("httptools", reason="pip install 'chio-durable[fast]' for the httptools stack")
    serving = _serve(tmp_path, http)
    port = next(serving)
    try:
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        idle.sendall(REQUEST)
        assert b" 200 " in _response(idle).split(b"\r\n", 1)[0] + b" "
        flood = []
        for _ in range(FLOOD):  # a request line and part of a header, never the blank line
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /chio/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            flood.append(s)
        for s in flood:
            s.setblocking(False)
        deadline = time.monotonic() + 30
        while sum(_closed(s) for s in flood) < FLOOD - CAP:  # the cap closed the oldest slow ones
            assert time.monotonic() < deadline, "the cap closed fewer slow connections than expected"
            time.sleep(0.05)
        for _ in range(3):  # the idle keep-alive connection is still the client's: it is served
            idle.sendall(REQUEST)
            assert _response(idle).startswith(b"HTTP/1.1 200")
        for s in flood:
            s.close()
        idle.close()
    finally:
        next(serving, None)
