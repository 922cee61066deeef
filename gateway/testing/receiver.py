"""A real HTTP server on a loopback port for tests, standing in for a CRM, a chat or an SMS API: it records the
requests and answers as scripted."""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import uvicorn
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hold: anyio.Event | None = None
    """When set, the answer waits for this event first (a slow endpoint)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float = field(default_factory=time.monotonic)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: deque[Answer] = deque()
        self.default = Answer()
        self.url = ""
        self._arrived = anyio.Event()

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, then with `default`."""
        self.answers.extend(answers)

    async def wait_for(self, count: int) -> list[Request]:
        """Wait until `count` requests have arrived (bound the wait with anyio.fail_after)."""
        while len(self.requests) < count:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-request (e.g. killed): nothing was delivered
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        self.requests.append(Request(scope["method"], scope["path"], headers, body))
        self._arrived.set()
        answer = self.answers.popleft() if self.answers else self.default
        if answer.hold is not None:
            await answer.hold.wait()
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body})


@asynccontextmanager
async def serving(app: object, port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a loopback port (a free one by default) for the block; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="auto", log_level="warning"))  # type: ignore[arg-type]
    with sock:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110  uvicorn offers a flag, not an event
                    await anyio.sleep(0.005)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
                server.force_exit = True


@asynccontextmanager
async def receiver(port: int = 0) -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    async with serving(endpoint, port) as url:
        endpoint.url = url
        yield endpoint
