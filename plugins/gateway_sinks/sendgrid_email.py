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
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import anyio.to_thread
from pydantic import AnyHttpUrl, Field, field_validator
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from gateway import hookimpl
from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError, RetryableDeliveryError
from gateway.messages import Message, check_event_types
from gateway.notify import NotificationSink, NotifyOptions
from gateway.sinks import Delivery, Sink, parse_retry_after
from gateway.templates import event_context

logger = logging.getLogger(__name__)
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class SendGridOptions(NotifyOptions):
    api_key: str = Field(min_length=1)
    from_email: str = Field(pattern=EMAIL)
    from_name: str | None = None
    reply_to: str | None = Field(None, pattern=EMAIL)
    to: Literal["customer"] | list[str] = Field("customer", description="`customer`, or fixed addresses (staff)")
    dynamic_templates: dict[str, str] = Field(
        default_factory=dict, description="Event type -> SendGrid dynamic template id (d-...), used instead of ours"
    )
    api_url: AnyHttpUrl = Field(AnyHttpUrl("https://api.sendgrid.com"), description="e.g. https://api.eu.sendgrid.com")

    @field_validator("to")
    @classmethod
    def _addresses(cls, to: str | list[str]) -> str | list[str]:
        if isinstance(to, list) and (bad := [a for a in to if "@" not in a]):
            raise ValueError(f"not email addresses: {', '.join(bad)}")
        return to

    @field_validator("dynamic_templates")
    @classmethod
    def _dynamic_template_event_types(cls, templates: dict[str, str]) -> dict[str, str]:
        check_event_types(templates)
        return templates


class SendGridEmail(NotificationSink):
    type_name = "sendgrid_email"
    kind = "email"
    Options = SendGridOptions
    options: SendGridOptions

    def recipients(self, event: AppointmentEvent) -> Sequence[str]:
        return email_recipients(self.options.to, event)

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


def email_recipients(to: str | list[str], event: AppointmentEvent) -> Sequence[str]:
    """Fixed addresses, or the customer's; an event without one is a permanent, explained failure."""
    if isinstance(to, list):
        return to
    if event.customer is None or not event.customer.email:
        raise PermanentDeliveryError("the event has no customer email address to write to", reason="no recipient")
    return [event.customer.email]


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
