"""Wake-ups between processes sharing an SQLite file, which cannot notify anyone itself.

Each worker watching the file binds a Unix datagram socket in a directory beside it (`<database>-wake/`, or one
named after it in the temporary directory when that path is too long for a socket); a process that commits
deliveries sends every socket there the names of their sinks. Best effort by design: a lost datagram, a full socket
queue or an unusable directory costs at most one `worker.poll_interval`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio

logger = logging.getLogger(__name__)


SOCKET_PATH_MAX = 100
"""Unix socket paths are limited to 108 bytes on Linux (104 on macOS); the sockets' own names take 22."""


def directory_for(database: Path) -> Path:
    beside = Path(f"{database.absolute()}-wake")
    if len(str(beside).encode()) <= SOCKET_PATH_MAX - 22:
        return beside
    digest = hashlib.sha256(str(database.absolute()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"appointment-gateway-wake-{digest}"


class Doorbell:
    def __init__(self, database: Path) -> None:
        self.directory = directory_for(database)
        self._own: Path | None = None
        self._peers: list[Path] = []
        self._listed: int | None = None  # the directory's modification time when it was last listed
        self._sender: socket.socket | None = None
        self._due: set[str] | None = set()  # sinks rung since the last send; None: every sink
        self._sending = False

    async def listen(self, wake: Callable[[Iterable[str] | None], None]) -> None:
        """Until cancelled, call `wake(sinks)` for what other processes ring (None: every sink)."""
        path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.directory.mkdir(exist_ok=True, mode=0o700)
            receiver.bind(str(path))
        except OSError as error:
            receiver.close()
            logger.warning("no wake-ups from other processes (%s: %s); polling only", path, error)
            await anyio.sleep_forever()
        receiver.setblocking(False)
        self._own = path
        try:
            while True:
                await anyio.wait_readable(receiver)
                sinks: set[str] | None = set()
                while True:
                    try:
                        payload = receiver.recv(65536)
                    except BlockingIOError:
                        break
                    if sinks is not None:
                        sinks = sinks | set(payload.decode().split("\n")) if payload else None
                wake(sinks)
        finally:
            self._own = None
            receiver.close()
            path.unlink(missing_ok=True)

    def ring(self, sinks: Iterable[str] | None) -> None:
        """Tell every other listening process that deliveries for `sinks` (None: any sink) are due.

        Rings within one turn of the event loop (the writes of one group commit) go out as one datagram per peer.
        """
        self._due = None if sinks is None or self._due is None else self._due.union(sinks)
        if self._sending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send()
            return
        self._sending = True
        loop.call_soon(self._send)

    def _send(self) -> None:
        sinks, self._due, self._sending = self._due, set(), False
        if sinks is not None and not sinks:
            return
        try:
            modified = self.directory.stat().st_mtime_ns  # changes when a worker comes or goes
            if modified != self._listed:
                self._peers = [peer for peer in self.directory.glob("*.sock") if peer != self._own]
                self._listed = modified
        except OSError:
            self._peers, self._listed = [], None
        if not self._peers:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        payload = b"" if sinks is None else "\n".join(sinks).encode()
        for peer in list(self._peers):
            try:
                self._sender.sendto(payload, str(peer))
            except (FileNotFoundError, ConnectionRefusedError):  # its worker died without cleaning up
                self._peers.remove(peer)
                peer.unlink(missing_ok=True)
            except OSError:  # its queue is full (it has been rung already) or the path is unusable
                pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
