"""`sendgrid_email` sink: email through SendGrid's v3 Mail Send, with the sendgrid SDK.

The SDK is synchronous (urllib): each send runs in a worker thread with a socket timeout, and the core's timeout
bounds the whole attempt. Messages are rendered from the gateway's templates, or by a SendGrid dynamic template
per event type (its data: the canonical event plus `when`, `previous_when` and `place`).

Errors: 429 (retried after X-RateLimit-Reset or Retry-After), 5xx, timeouts and connection errors are retryable;
401/403 (also logged as an alert), 400 and other 4xx are permanent.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
from functools import partial
from typing import Any

import anyio.to_thread
from pydantic import AnyHttpUrl, Field, field_validator
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from gateway import (
    AppointmentEvent,
    Delivery,
    Message,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Sink,
    check_event_types,
    event_context,
    hookimpl,
    parse_retry_after,
)
from gateway_sinks._email import EmailOptions, EmailSink

logger = logging.getLogger(__name__)


class SendGridOptions(EmailOptions):
    api_key: str = Field(min_length=1)
    dynamic_templates: dict[str, str] = Field(
        default_factory=dict, description="Event type -> SendGrid dynamic template id (d-...), used instead of ours"
    )
    api_url: AnyHttpUrl = Field(AnyHttpUrl("https://api.sendgrid.com"), description="e.g. https://api.eu.sendgrid.com")

    @field_validator("dynamic_templates")
    @classmethod
    def _dynamic_template_event_types(cls, templates: dict[str, str]) -> dict[str, str]:
        check_event_types(templates)
        return templates


class SendGridEmail(EmailSink):
    type_name = "sendgrid_email"
    Options = SendGridOptions
    options: SendGridOptions

    async def send(self, recipient: str, message: Message, event: AppointmentEvent, delivery: Delivery) -> str:
        body = self._mail(recipient, message, event, delivery)
        try:
            return await anyio.to_thread.run_sync(partial(self._post, body), abandon_on_cancel=True)
        except HTTPError as error:
            raise self._classify(error) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise RetryableDeliveryError(f"SendGrid unreachable: {type(error).__name__}: {error}") from None

    def _post(self, body: dict[str, Any]) -> str:
        """Blocking: one client per call, because the SDK keeps per-request headers on the client."""
        client = SendGridAPIClient(api_key=self.options.api_key, host=str(self.options.api_url).rstrip("/"))
        client.client.timeout = self.timeout
        response = client.client.mail.send.post(request_body=body)
        return str(response.headers.get("X-Message-Id") or f"accepted {response.status_code}")

    def _mail(self, recipient: str, message: Message, event: AppointmentEvent, delivery: Delivery) -> dict[str, Any]:
        options = self.options
        sender: dict[str, str] = {"email": options.from_email}
        if options.from_name:
            sender["name"] = options.from_name
        personalization: dict[str, Any] = {
            "to": [{"email": recipient}],
            "custom_args": {"delivery_id": delivery.id, "event_id": event.id},  # the spec types only this level
        }
        body: dict[str, Any] = {"from": sender, "personalizations": [personalization]}
        if options.reply_to:
            body["reply_to"] = {"email": options.reply_to}
        template_id = options.dynamic_templates.get(event.type)
        if template_id is not None:
            body["template_id"] = template_id
            context = event_context(event, delivery, delivery.locale or options.locale)
            personalization["dynamic_template_data"] = {
                **context["event"],
                **{key: context[key] for key in ("when", "previous_when", "place", "locale")},
            }
        else:
            body["subject"] = message.subject
            body["content"] = [{"type": "text/plain", "value": message.body}]
        return body

    def _classify(self, error: HTTPError) -> PermanentDeliveryError | RetryableDeliveryError:
        status = int(error.status_code)
        text = f"SendGrid answered {status}: {_excerpt(error.body)}"
        if status == 429:
            return RetryableDeliveryError(text, status_code=status, retry_after=_rate_limit_wait(error.headers))
        if status >= 500:
            return RetryableDeliveryError(text, status_code=status)
        if status in (401, 403):
            logger.error("ALERT sink %s: SendGrid refused the API key: %s", self.name, text)
            return PermanentDeliveryError(text, status_code=status, reason="authentication failed")
        return PermanentDeliveryError(text, status_code=status)


def _rate_limit_wait(headers: Any) -> float | None:
    """SendGrid says when its limit resets (X-RateLimit-Reset, epoch seconds); Retry-After when present wins."""
    get = headers.get if headers is not None else (lambda name: None)
    if (retry_after := parse_retry_after(get("Retry-After"), now=time.time())) is not None:
        return retry_after
    reset = get("X-RateLimit-Reset")
    if reset and str(reset).isdigit():
        return max(0.0, float(reset) - time.time())
    return None


def _excerpt(body: bytes | str | None) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        errors = json.loads(text).get("errors", [])
        return "; ".join(f"{e.get('field') or ''} {e.get('message')}".strip() for e in errors)[:300] or text[:300]
    except (ValueError, AttributeError):
        return text[:300]


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [SendGridEmail]
