"""uvicorn's HTTP protocol (httptools) with the limits a public endpoint needs and uvicorn lacks.

uvicorn arms no timer until a request's headers are complete, and bounds neither their size nor the connections a
process keeps: a client trickling its headers held its connection forever (1,500 of them exhausted a low file
limit and valid webhooks failed), and a 32 MiB header was read and processed. Here each request's headers must
arrive within `header_timeout` (else 408 and the connection closes), may take `max_header_bytes` (else 431), and a
process keeps at most `max_connections` (one more is closed at once, before it costs anything).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)
FILES_KEPT_FOR_THE_REST = 64
"""File descriptors left for the store, logs and outbound connections when connections are bounded by the limit."""


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    max_header_bytes: int = 16384
    max_connections: int = 1000


def open_files_limit() -> int:
    """Raise this process's open-file limit to its hard limit, and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connections_allowed(configured: int) -> int:
    """The configured bound, lowered so that connections alone can never exhaust the open-file limit."""
    return max(1, min(configured, open_files_limit() - FILES_KEPT_FOR_THE_REST))


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = Limits()
    """Set by `serve` in each serving process, before it accepts a connection."""

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning("connection refused: %d open, server.max_connections", len(self.connections) - 1)
            transport.abort()
            return
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and not self.transport.is_closing():  # headers still incomplete
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._expect_headers()

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()

    def _expect_headers(self) -> None:
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._refuse, 408, "Request Timeout")

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = 0

    def _refuse(self, status: int, phrase: str) -> None:
        """Answer and close: the request is not read any further."""
        self._headers_arrived()
        if self.transport.is_closing():
            return
        body = f"{phrase}\n".encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, phrase.encode(), len(body), body)
        )
        self.transport.close()
