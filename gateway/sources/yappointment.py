"""yAppointment: `X-Webhook-Signature: <hex>` over the raw body; `booking.*` events in UTC."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway import hookimpl
from gateway.events import Appointment, AppointmentEvent, Cancellation, Customer, EventType, Service
from gateway.exceptions import WebhookRejected
from gateway.signing import hmac_sha256_hex, matches_any
from gateway.sources.base import (
    ProviderId,
    ProviderText,
    ProviderTime,
    ProviderZone,
    Source,
    Webhook,
    load_samples,
    sample_from,
    validated,
    zulu,
)

SIGNATURE_HEADER = "x-webhook-signature"
EVENT_TYPES: dict[str, EventType] = {
    "booking.created": "appointment.created",
    "booking.updated": "appointment.updated",
    "booking.rescheduled": "appointment.updated",
    "booking.cancelled": "appointment.cancelled",
    "booking.completed": "appointment.completed",
    "customer.updated": "customer.updated",
}


class _Payload(BaseModel):
    """Provider payloads: fields the gateway does not use are allowed, and kept in the raw body."""

    model_config = ConfigDict(extra="ignore")


class _Customer(_Payload):
    customerId: ProviderId
    customerName: StrictStr | None = None
    customerEmail: StrictStr | None = None
    customerPhone: StrictStr | None = None


class _Booking(_Customer):
    id: ProviderId
    customerId: ProviderId | None = None  # type: ignore[assignment]  # a booking may be a guest's
    serviceId: ProviderId | None = None
    serviceName: ProviderText | None = None
    start: ProviderTime
    end: ProviderTime | None = None
    timezone: ProviderZone | None = None
    status: ProviderText
    cancellationReason: StrictStr | None = None


class _Envelope(_Payload):
    id: ProviderId
    timestamp: ProviderTime
    event: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]


class YAppointment(Source):
    type_name = "yappointment"
    kept_headers: ClassVar[tuple[str, ...]] = ("user-agent", "content-type")

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        signature = headers.get(SIGNATURE_HEADER)
        if not signature:
            raise WebhookRejected(401, "missing_signature", "X-Webhook-Signature header is missing")
        if not matches_any(signature, body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "X-Webhook-Signature does not match the body")

    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        envelope = validated(_Envelope, body)
        occurred_at = self.local_time(envelope.timestamp)
        assert occurred_at is not None
        canonical_type = EVENT_TYPES.get(envelope.event)
        event = None
        if canonical_type == "customer.updated":
            customer = validated(_Customer, envelope.data, prefix="data")
            event = self._event(envelope, canonical_type, event_id, occurred_at, received_at, self._customer(customer))
        elif canonical_type is not None:
            booking = validated(_Booking, envelope.data, prefix="data")
            event = self._event(envelope, canonical_type, event_id, occurred_at, received_at, self._customer(booking))
            event = event.model_copy(
                update={
                    "appointment": self._appointment(booking),
                    "cancellation": Cancellation(at=occurred_at, reason=booking.cancellationReason)
                    if canonical_type == "appointment.cancelled"
                    else None,
                }
            )
        return Webhook(
            provider_event_id=envelope.id,
            provider_event_type=envelope.event,
            occurred_at=occurred_at,
            event=event,
            headers=self.kept(headers),
        )

    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Webhook-Signature": hmac_sha256_hex(self.options.secrets[0], body),
        }

    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        return sample_from("yappointment.json", event_type, id=event_id, timestamp=zulu(occurred_at))

    def sample_types(self) -> list[str]:
        return list(load_samples("yappointment.json"))

    def _event(
        self,
        envelope: _Envelope,
        canonical_type: EventType,
        event_id: str,
        occurred_at: datetime,
        received_at: datetime,
        customer: Customer,
    ) -> AppointmentEvent:
        return AppointmentEvent(
            id=event_id,
            type=canonical_type,
            source=self.name,
            provider=self.type_name,
            provider_event_id=envelope.id,
            provider_event_type=envelope.event,
            occurred_at=occurred_at,
            received_at=received_at,
            customer=customer,
        )

    def _customer(self, data: _Customer | _Booking) -> Customer:
        return Customer(
            id=data.customerId,
            name=data.customerName,
            email=data.customerEmail,
            phone=self.phone(data.customerPhone),
            phone_raw=data.customerPhone,
        )

    def _appointment(self, booking: _Booking) -> Appointment:
        return Appointment(
            id=booking.id,
            status=booking.status.lower(),
            starts_at=self.local_time(booking.start),
            ends_at=self.local_time(booking.end),
            timezone=booking.timezone or self.options.timezone,
            service=Service(id=booking.serviceId, name=booking.serviceName)
            if booking.serviceId or booking.serviceName
            else None,
        )


@hookimpl
def register_sources() -> list[type[Source]]:
    return [YAppointment]
