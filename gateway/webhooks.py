"""The webhook endpoint, `POST /webhooks/<source>`: plain ASGI, answered ahead of the Starlette application.

It is the hot path: without Starlette's middleware, router, request and response objects a process takes 8% more
webhooks (2,600 -> 2,820/s in one measurement, profiled with py-spy). Everything else goes through Starlette.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gateway.exceptions import StorageError, WebhookRejected
from gateway.ingest import Ingest
from gateway.ingress import Guard, RateLimited
from gateway.metrics import Metrics

logger = logging.getLogger(__name__)
PREFIX = "/webhooks/"


def webhook_source(scope: Scope) -> str | None:
    """The source a request to `/webhooks/<source>` is for, or None when it is not for the webhook endpoint."""
    path: str = scope.get("path", "")
    if scope["type"] != "http" or not path.startswith(PREFIX):
        return None
    source = path[len(PREFIX) :]
    return source if source and "/" not in source else None


class Webhooks:
    """Answers webhook posts."""

    def __init__(
        self,
        ingest: Ingest,
        guards: Mapping[str, Guard],
        metrics: Metrics,
        *,
        max_body_bytes: int,
        read_timeout: float,
    ) -> None:
        self.ingest = ingest
        self.guards = guards
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send, source: str) -> None:
        if scope["method"] != "POST":
            detail = f"webhooks are posted; {scope['method']} is not allowed here"
            await _respond(send, 405, {"error": "method_not_allowed", "detail": detail}, {"allow": "POST"})
            return
        status, body, headers = await self.answer(scope, receive, source)
        await _respond(send, status, body, headers)

    async def answer(self, scope: Scope, receive: Receive, source: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The status, JSON body and extra headers of the answer to one post."""
        if source not in self.guards:
            return 404, {"error": "unknown_source", "detail": f"no source named {source!r} is configured"}, {}
        headers = Headers(scope=scope)
        try:
            client = scope.get("client")
            self.guards[source].check(client[0] if client else None, headers.getlist("x-forwarded-for"))
            async with asyncio.timeout(self.read_timeout):  # cheaper than a cancel scope on this hot path
                body = await _read_body(receive, headers, self.max_body_bytes)
            ack = await self.ingest.receive(source, headers, body)
        except TimeoutError:
            self.metrics.answered(source, "", "request_timeout")
            detail = f"the body did not arrive within {self.read_timeout:g}s"
            return 408, {"error": "request_timeout", "detail": detail}, {"connection": "close"}
        except WebhookRejected as rejected:
            self.metrics.answered(source, "", rejected.reason)
            logger.info(
                "webhook rejected",
                extra={
                    "source": source,
                    "outcome": rejected.reason,
                    "status": rejected.status_code,
                    "detail": rejected.detail,
                },
            )
            retry_after = {"retry-after": str(rejected.retry_after)} if isinstance(rejected, RateLimited) else {}
            return rejected.status_code, {"error": rejected.reason, "detail": rejected.detail}, retry_after
        except StorageError as error:
            logger.error(
                "webhook not acknowledged: storage failed",
                extra={"source": source, "outcome": "storage_unavailable", "status": 503, "detail": str(error)},
            )
            self.metrics.answered(source, "", "storage_unavailable")
            detail = "the event could not be stored; retry later"
            return 503, {"error": "storage_unavailable", "detail": detail}, {"retry-after": "30"}
        return ack.status_code, ack.body, {}


async def _read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(413, "body_too_large", f"the body is larger than {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise WebhookRejected(400, "client_disconnected", "the client went away before sending the whole body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise WebhookRejected(413, "body_too_large", f"the body is larger than {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # as Starlette's JSONResponse


async def _respond(send: Send, status: int, body: dict[str, Any], headers: Mapping[str, str]) -> None:
    content = _JSON.encode(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    raw_headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})
