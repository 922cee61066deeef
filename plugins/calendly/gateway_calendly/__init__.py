"""`calendly` source: Calendly invitee webhooks, written as a third party writes a plugin (only `from gateway import`).

Calendly signs `<t>.<raw body>` with the webhook's signing key: `Calendly-Webhook-Signature: t=<unix
seconds>,v1=<hex HMAC-SHA256>`; a timestamp further than `tolerance` from now is refused (a replayed capture).
Calendly reports a reschedule as `invitee.canceled` (with `rescheduled: true`) plus a new `invitee.created` (with
`old_invitee`): the cancellation changes nothing (stored, routed nowhere), and the new invitee moves the original
appointment (`appointment.updated` under the old invitee's id), so its reminders and calendar entry follow. The
appointment id is the invitee's UUID; Calendly sends no event id, so (event, invitee) stands for one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    Appointment,
    AppointmentEvent,
    Cancellation,
    Customer,
    Duration,
    EventType,
    ProviderText,
    ProviderTime,
    ProviderUrl,
    ProviderZone,
    Service,
    Source,
    SourceOptions,
    Webhook,
    WebhookRejected,
    hmac_sha256_hex,
    hookimpl,
    load_samples,
    matches_any,
    sample_from,
    validated,
)

SIGNATURE = "calendly-webhook-signature"
MAX_PARTS = 8


class CalendlyOptions(SourceOptions):
    tolerance: Duration = Field(180.0, gt=0, description="How far a signature's timestamp may be from now (3 min)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Calendly adds fields over time


class _ScheduledEvent(_Model):
    uri: ProviderUrl | None = None
    name: ProviderText | None = None
    start_time: ProviderTime
    end_time: ProviderTime | None = None


class _Cancellation(_Model):
    reason: ProviderText | None = None
    canceled_by: ProviderText | None = None


class _Invitee(_Model):
    uri: ProviderUrl | None
    name: ProviderText | None = None
    email: ProviderText | None = None
    status: ProviderText | None = None
    timezone: ProviderZone | None = None
    text_reminder_number: ProviderText | None = None
    rescheduled: bool = False
    old_invitee: ProviderUrl | None = None
    cancellation: _Cancellation | None = None
    scheduled_event: _ScheduledEvent


class _Envelope(_Model):
    event: ProviderText
    created_at: ProviderTime
    payload: dict[str, Any]


def _invitee_id(uri: str) -> str:
    """The invitee's UUID, the last segment of its URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


class Calendly(Source):
    type_name = "calendly"
    Options = CalendlyOptions
    options: CalendlyOptions

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        header = headers.get(SIGNATURE)
        if not header:
            raise WebhookRejected(401, "missing_signature", "no Calendly-Webhook-Signature header")
        parts = dict(part.strip().partition("=")[::2] for part in header.split(",")[:MAX_PARTS])
        stamp, signature = parts.get("t", ""), parts.get("v1", "")
        if not stamp.isdigit() or not signature:
            raise WebhookRejected(401, "invalid_signature", "Calendly-Webhook-Signature needs t=<seconds>,v1=<hex>")
        if abs(time.time() - int(stamp)) > self.options.tolerance:
            raise WebhookRejected(
                401, "invalid_signature", f"the signature's timestamp is more than {self.options.tolerance:g}s away"
            )
        if not matches_any(signature, f"{stamp}.".encode() + body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "Calendly-Webhook-Signature does not match the body")

    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        envelope = validated(_Envelope, body)
        occurred_at = self.local_time(envelope.created_at) or received_at
        invitee = validated(_Invitee, envelope.payload, prefix="payload")
        uri = invitee.uri
        if uri is None:  # ProviderUrl drops what is not a plain http(s) URL; the invitee's is its id
            raise WebhookRejected(400, "invalid_payload", "payload.uri: expected the invitee's https URI")
        provider_id = f"{envelope.event}:{_invitee_id(uri)[:80]}:{envelope.created_at.isoformat()}"
        kind: EventType | None = None
        if envelope.event == "invitee.created":
            kind = "appointment.updated" if invitee.old_invitee else "appointment.created"
        elif envelope.event == "invitee.canceled" and not invitee.rescheduled:
            kind = "appointment.cancelled"  # a reschedule's cancellation: the new invitee moves the appointment
        event = None
        if kind is not None:
            event = AppointmentEvent(
                id=event_id,
                type=kind,
                source=self.name,
                provider=self.type_name,
                provider_event_id=provider_id,
                provider_event_type=envelope.event,
                occurred_at=occurred_at,
                received_at=received_at,
                appointment=self._appointment(invitee, uri),
                customer=Customer(
                    name=invitee.name,
                    email=invitee.email,
                    phone=self.phone(invitee.text_reminder_number),
                    phone_raw=invitee.text_reminder_number,
                ),
                cancellation=self._cancellation(invitee) if kind == "appointment.cancelled" else None,
            )
        return Webhook(provider_id, envelope.event, occurred_at, event)

    def _appointment(self, invitee: _Invitee, uri: str) -> Appointment:
        scheduled = invitee.scheduled_event
        return Appointment(
            id=_invitee_id(invitee.old_invitee or uri),  # a reschedule moves the invitee it replaces
            status=invitee.status.lower() if invitee.status else None,
            starts_at=self.local_time(scheduled.start_time),
            ends_at=self.local_time(scheduled.end_time),
            timezone=invitee.timezone,
            service=Service(name=scheduled.name),
        )

    def _cancellation(self, invitee: _Invitee) -> Cancellation:
        cancelled = invitee.cancellation
        return Cancellation(reason=cancelled.reason if cancelled else None)

    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        stamp = str(int(time.time()))
        signature = hmac_sha256_hex(self.options.secrets[0], f"{stamp}.".encode() + body)
        return {"Calendly-Webhook-Signature": f"t={stamp},v1={signature}"}

    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        return sample_from("calendly.json", event_type, package=__name__, created_at=occurred_at.isoformat())

    def sample_types(self) -> list[str]:
        return list(load_samples("calendly.json", package=__name__))


@hookimpl
def register_sources() -> list[type[Source]]:
    return [Calendly]
