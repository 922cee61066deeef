"""`calcom` source: Cal.com booking webhooks, written as a third party writes a plugin (only `from gateway import`).

Cal.com signs the raw body with the webhook's secret: `X-Cal-Signature-256` is its HMAC-SHA256 in hex. A
reschedule is a new booking (a new `uid`) whose `rescheduleUid` names the one it replaces: it is mapped onto that
appointment, so that its reminders and calendar entry move rather than a second appointment appearing. Cal.com
sends no event id: (trigger, booking uid, createdAt) stands for one, so a retried delivery is a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    Appointment,
    AppointmentEvent,
    Cancellation,
    Change,
    Completion,
    Customer,
    EventType,
    ProviderId,
    ProviderText,
    ProviderTime,
    ProviderZone,
    Service,
    Source,
    Webhook,
    WebhookRejected,
    hmac_sha256_hex,
    hookimpl,
    load_samples,
    matches_any,
    sample_from,
    validated,
)

SIGNATURE = "x-cal-signature-256"
TYPES: dict[str, EventType] = {
    "BOOKING_CREATED": "appointment.created",
    "BOOKING_RESCHEDULED": "appointment.updated",
    "BOOKING_CANCELLED": "appointment.cancelled",
    "BOOKING_REJECTED": "appointment.cancelled",
    "MEETING_ENDED": "appointment.completed",
}
"""Cal.com's triggers the gateway maps; the others (BOOKING_REQUESTED, BOOKING_PAID, MEETING_STARTED,
RECORDING_READY, FORM_SUBMITTED...) are stored and acknowledged, routed nowhere."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # Cal.com adds fields over time


class _Person(_Model):
    name: ProviderText | None = None
    email: ProviderText | None = None
    time_zone: ProviderZone | None = Field(None, alias="timeZone")
    phone_number: ProviderText | None = Field(None, alias="phoneNumber")


class _Answer(_Model):
    value: Any = None


class _Booking(_Model):
    uid: ProviderId
    reschedule_uid: ProviderId | None = Field(None, alias="rescheduleUid")
    reschedule_start_time: ProviderTime | None = Field(None, alias="rescheduleStartTime")
    title: ProviderText | None = None
    event_type_id: ProviderId | None = Field(None, alias="eventTypeId")
    start_time: ProviderTime = Field(alias="startTime")
    end_time: ProviderTime | None = Field(None, alias="endTime")
    status: ProviderText | None = None
    cancellation_reason: ProviderText | None = Field(None, alias="cancellationReason")
    rejection_reason: ProviderText | None = Field(None, alias="rejectionReason")
    organizer: _Person | None = None
    attendees: list[_Person] = Field(default_factory=list)
    responses: dict[str, _Answer] = Field(default_factory=dict)


class _Envelope(_Model):
    trigger_event: ProviderText = Field(alias="triggerEvent")
    created_at: ProviderTime = Field(alias="createdAt")
    payload: dict[str, Any]


class CalCom(Source):
    type_name = "calcom"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        signature = headers.get(SIGNATURE)
        if not signature:
            raise WebhookRejected(401, "missing_signature", "no X-Cal-Signature-256 header")
        if not matches_any(signature.removeprefix("sha256="), body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "X-Cal-Signature-256 does not match the body")

    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        envelope = validated(_Envelope, body)
        occurred_at = self.local_time(envelope.created_at) or received_at
        kind = TYPES.get(envelope.trigger_event)
        booking = validated(_Booking, envelope.payload, prefix="payload") if kind else None
        uid = str(envelope.payload.get("uid"))[:100]
        provider_id = f"{envelope.trigger_event}:{uid}:{envelope.created_at.isoformat()}"
        event = None
        if kind is not None and booking is not None:
            event = AppointmentEvent(
                id=event_id,
                type=kind,
                source=self.name,
                provider=self.type_name,
                provider_event_id=provider_id,
                provider_event_type=envelope.trigger_event,
                occurred_at=occurred_at,
                received_at=received_at,
                appointment=self._appointment(booking),
                customer=self._customer(booking),
                changes=self._changes(booking),
                cancellation=self._cancellation(booking) if kind == "appointment.cancelled" else None,
                completion=Completion(at=occurred_at) if kind == "appointment.completed" else None,
            )
        return Webhook(provider_id, envelope.trigger_event, occurred_at, event)

    def _appointment(self, booking: _Booking) -> Appointment:
        zone = booking.organizer.time_zone if booking.organizer else None
        return Appointment(
            id=booking.reschedule_uid or booking.uid,  # a reschedule moves the booking it replaces
            status=booking.status.lower() if booking.status else None,
            starts_at=self.local_time(booking.start_time),
            ends_at=self.local_time(booking.end_time),
            timezone=(booking.attendees[0].time_zone if booking.attendees else None) or zone,
            service=Service(id=booking.event_type_id, name=booking.title),
        )

    def _customer(self, booking: _Booking) -> Customer | None:
        if not booking.attendees:
            return None
        booker = booking.attendees[0]
        answered = booking.responses.get("attendeePhoneNumber")
        raw_phone = booker.phone_number or (answered.value if answered and isinstance(answered.value, str) else None)
        return Customer(name=booker.name, email=booker.email, phone=self.phone(raw_phone), phone_raw=raw_phone)

    def _changes(self, booking: _Booking) -> dict[str, Change]:
        """A reschedule says where it moved from: templates say "moved to ... (instead of ...)"."""
        before = self.local_time(booking.reschedule_start_time)
        if booking.reschedule_uid is None or before is None:
            return {}
        return {"appointment.starts_at": Change(from_=before, to=self.local_time(booking.start_time))}

    def _cancellation(self, booking: _Booking) -> Cancellation:
        return Cancellation(reason=booking.cancellation_reason or booking.rejection_reason)

    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        return {"X-Cal-Signature-256": hmac_sha256_hex(self.options.secrets[0], body)}

    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        return sample_from("calcom.json", event_type, package=__name__, createdAt=occurred_at.isoformat())

    def sample_types(self) -> list[str]:
        return list(load_samples("calcom.json", package=__name__))


@hookimpl
def register_sources() -> list[type[Source]]:
    return [CalCom]
