"""The HTTP limits uvicorn lacks, against a real `serve` process: header timeout, header size, connections."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MONCRENEAU_SECRET
from tests.helpers import free_port, gateway_process, signed

pytestmark = pytest.mark.fault


def configure(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
server: {{port: {port}, header_timeout: 500ms, max_header_bytes: 8192}}
storage: {{url: "sqlite:///{tmp_path}/gateway.db"}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}]}}
"""
    )
    return config


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with gateway_process(configure(tmp_path, port), port, tmp_path / "gateway.log"):
        yield port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def answer(sock: socket.socket) -> bytes:
    """What the server says before it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_headers_trickled_slower_than_the_header_timeout_get_408_and_the_connection_closes(served: int) -> None:
    with connect(served) as sock:
        began = time.monotonic()
        sock.sendall(b"POST /webhooks/moncreneau HTTP/1.1\r\nHost: gateway\r\n")
        with pytest.raises(OSError):  # the server hangs up while the client still trickles
            for n in range(50):
                sock.sendall(b"X-Slow-%d: 1\r\n" % n)
                time.sleep(0.1)
        took = time.monotonic() - began
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and took < 3


def test_a_connection_that_never_sends_is_closed_after_the_header_timeout(served: int) -> None:
    with connect(served) as sock:
        began = time.monotonic()
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and 0.4 < time.monotonic() - began < 3


def test_oversized_headers_get_431_without_being_read(served: int) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):
            while sent < 32 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert sent < 4 * 1024 * 1024, f"the server read {sent} bytes of headers before refusing"
    assert httpx.get(f"http://127.0.0.1:{served}/healthz").status_code == 200


def test_a_kept_alive_connection_gets_the_header_timeout_again_for_its_next_request(served: int) -> None:
    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        first = sock.recv(65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: g")  # the next request stalls
        replies = first + answer(sock)
    assert replies.startswith(b"HTTP/1.1 200 ")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", replies) == [b"200", b"408"]


def test_thousands_of_stalled_connections_under_a_low_file_limit_do_not_stop_valid_webhooks(tmp_path: Path) -> None:
    port = free_port()
    stalled: list[socket.socket] = []
    with gateway_process(configure(tmp_path, port), port, tmp_path / "gateway.log", open_files=256):
        try:
            for _ in range(1500):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                    sock.sendall(b"POST /webhooks/moncreneau HTTP/1.1\r\nHost: g\r\n")
                    stalled.append(sock)
                except OSError:
                    break  # the client ran out of descriptors or the server's backlog is full: enough
            raw, headers = signed(1)
            statuses: list[int | str] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # retried as a provider would, for a bounded time
                try:
                    statuses.append(
                        httpx.post(
                            f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers, timeout=2
                        ).status_code
                    )
                except httpx.HTTPError as error:
                    statuses.append(type(error).__name__)
                if statuses[-1] == 202:
                    break
                time.sleep(0.2)
            print(f"{len(stalled)} stalled connections opened; the webhook's tries: {statuses}")
            assert statuses[-1] == 202
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        finally:
            for sock in stalled:
                sock.close()
