"""`http` sink: pushes the event to a CRM or any HTTP endpoint.

2xx is success; 408, 429, 5xx, timeouts and connection errors are retried (Retry-After honoured); any other status is
permanent. Every request carries `Idempotency-Key: <delivery id>`, the same on every retry, and optionally a
Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Literal

import aiohttp
from pydantic import AnyHttpUrl, Field, field_validator

from gateway import (
    AppointmentEvent,
    Delivery,
    PermanentDeliveryError,
    Receipt,
    RetryableDeliveryError,
    Sink,
    SinkOptions,
    check_syntax,
    event_context,
    hookimpl,
    parse_retry_after,
    render,
)

RETRYABLE_STATUSES = frozenset({408, 425, 429})
EXCERPT = 200


class HttpOptions(SinkOptions):
    url: AnyHttpUrl
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body_template: str | None = None
    """Jinja2 (sandboxed) rendering the body from `event` and `delivery`; the event as JSON when unset. With a JSON
    `content_type`, every `{{ value }}` is escaped to sit inside a JSON string (`| tojson` writes a JSON value), and
    a body that is not JSON is a permanent `template error`."""
    content_type: str = "application/json"
    signing_secret: str | None = None
    """Standard Webhooks secret (`whsec_` + base64); signs every request when set."""

    @field_validator("body_template")
    @classmethod
    def _template_compiles(cls, source: str | None) -> str | None:
        return None if source is None else check_syntax(source)

    @field_validator("signing_secret")
    @classmethod
    def _secret_is_base64(cls, secret: str | None) -> str | None:
        if not secret:
            return None  # `${VAR:-}` left empty: no signing
        else:
            try:
                _secret_key(secret)
            except (binascii.Error, ValueError):
                raise ValueError("not a Standard Webhooks secret; write whsec_ followed by base64") from None
        return secret


class HttpSink(Sink):
    type_name = "http"
    Options = HttpOptions
    options: HttpOptions

    async def open(self) -> None:
        # aiohttp rather than httpx: under load httpx's connection pool cost a third of the event loop (py-spy)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def aclose(self) -> None:
        await self._session.close()

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        options = self.options
        if options.body_template is None:
            body = event.model_dump_json(by_alias=True)
        else:
            body = render(
                options.body_template,
                f"sinks.{self.name}.options.body_template",
                event_context(event, delivery),
                json_body=is_json(options.content_type),
            )
        headers = {**options.headers, "Content-Type": options.content_type, "Idempotency-Key": delivery.id}
        if options.signing_secret is not None:
            headers.update(sign(options.signing_secret, delivery.id, int(time.time()), body.encode()))
        try:
            async with self._session.request(
                options.method, str(options.url), data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                text = "" if 200 <= status < 300 else (await response.read())[:EXCERPT].decode("utf-8", "replace")
                retry_after_header = response.headers.get("retry-after")
        except TimeoutError as error:
            raise RetryableDeliveryError(f"{options.url}: timed out ({type(error).__name__})") from None
        except aiohttp.ClientError as error:
            raise RetryableDeliveryError(f"{options.url}: {type(error).__name__}: {error}") from None
        if 200 <= status < 300:
            return Receipt(status_code=status)
        message = f"{options.url} answered {status}: {text}"
        if status in RETRYABLE_STATUSES or status >= 500:
            retry_after = parse_retry_after(retry_after_header, now=time.time())
            raise RetryableDeliveryError(message, status_code=status, retry_after=retry_after)
        raise PermanentDeliveryError(message, status_code=status)


def is_json(content_type: str) -> bool:
    """`application/json`, `application/vnd.crm+json; charset=utf-8`..."""
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers: v1 = base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def _secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [HttpSink]
