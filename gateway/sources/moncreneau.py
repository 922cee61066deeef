"""moncreneau: `X-Moncreneau-Signature: sha256=<hex>` over the raw body; naive local appointment times."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints

from gateway import hookimpl
from gateway.cleaning import email_address, single_line
from gateway.events import (
    Actor,
    Appointment,
    AppointmentEvent,
    Cancellation,
    Change,
    Completion,
    Customer,
    Department,
    Organisation,
    Validation,
)
from gateway.exceptions import WebhookRejected
from gateway.signing import hmac_sha256_hex, matches_any
from gateway.sources.base import (
    ProviderId,
    ProviderInt,
    ProviderText,
    ProviderTime,
    ProviderUrl,
    Source,
    Webhook,
    load_samples,
    sample_from,
    validated,
    zulu,
)

SIGNATURE_HEADER = "x-moncreneau-signature"
EVENT_TYPES = frozenset(
    {
        "appointment.created",
        "appointment.updated",
        "appointment.cancelled",
        "appointment.validated",
        "appointment.completed",
    }
)
CHANGE_KEY = r"^[A-Za-z][A-Za-z0-9_.]{0,63}$"
CUSTOMER_TYPED = frozenset({"name", "phone", "email", "status", "departmentId"})
"""Changed fields whose values are cleaned as the fields themselves are."""


class _Payload(BaseModel):
    """Provider payloads: fields the gateway does not use are allowed, and kept in the raw body."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Organization(_Payload):
    id: ProviderId
    name: ProviderText | None = None


class _Department(_Payload):
    id: ProviderId
    name: ProviderText | None = None
    organization: _Organization | None = None


class _Staff(_Payload):
    id: ProviderId | None = None
    name: ProviderText | None = None


class _Change(_Payload):
    from_: Any = Field(None, alias="from")
    to: Any = None


class _TimeChange(_Payload):
    from_: ProviderTime | None = Field(None, alias="from")
    to: ProviderTime | None = None


class _Appointment(_Payload):
    id: ProviderId
    departmentId: ProviderId
    department: _Department | None = None
    dateTime: ProviderTime
    status: ProviderText
    name: StrictStr | None = None
    phone: StrictStr | None = None
    email: StrictStr | None = None
    qrCode: ProviderUrl | None = None
    createdAt: ProviderTime | None = None
    updatedAt: ProviderTime | None = None
    creditsUsed: ProviderInt | None = None
    changes: dict[Annotated[str, StringConstraints(pattern=CHANGE_KEY)], _Change] = {}
    cancelledAt: ProviderTime | None = None
    cancelledBy: ProviderText | _Staff | None = None
    cancelReason: StrictStr | None = None
    creditsRefunded: ProviderInt | None = None
    validatedAt: ProviderTime | None = None
    validatedBy: _Staff | None = None
    completedAt: ProviderTime | None = None
    duration: ProviderInt | None = None
    notes: StrictStr | None = None


class _Data(_Payload):
    object: dict[str, Any]


class _Envelope(_Payload):
    id: ProviderId
    type: str = Field(min_length=1, max_length=100)
    created: ProviderTime
    data: _Data


class Moncreneau(Source):
    type_name = "moncreneau"
    kept_headers: ClassVar[tuple[str, ...]] = (
        "x-moncreneau-event",
        "x-moncreneau-delivery",
        "user-agent",
        "content-type",
    )

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            raise WebhookRejected(401, "missing_signature", "X-Moncreneau-Signature header is missing")
        scheme, _, digest = header.partition("=")
        if scheme.strip().lower() != "sha256" or not matches_any(digest, body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "X-Moncreneau-Signature does not match the body")

    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        envelope = validated(_Envelope, body)
        occurred_at = self.local_time(envelope.created)
        assert occurred_at is not None
        kept = self.kept(headers)
        webhook = Webhook(
            provider_event_id=envelope.id,
            provider_event_type=envelope.type,
            occurred_at=occurred_at,
            event=None,
            provider_delivery_id=kept.get("x-moncreneau-delivery"),
            headers=kept,
        )
        if envelope.type not in EVENT_TYPES:
            return webhook
        data = validated(_Appointment, envelope.data.object, prefix="data.object")
        event = AppointmentEvent(
            id=event_id,
            type=envelope.type,  # checked against EVENT_TYPES above
            source=self.name,
            provider=self.type_name,
            provider_event_id=envelope.id,
            provider_event_type=envelope.type,
            provider_delivery_id=webhook.provider_delivery_id,
            occurred_at=occurred_at,
            received_at=received_at,
            appointment=self._appointment(data),
            customer=Customer(name=data.name, phone=self.phone(data.phone), phone_raw=data.phone, email=data.email),
            changes={self._change_key(key): self._change(key, change) for key, change in data.changes.items()},
            cancellation=self._cancellation(data),
            validation=self._validation(data),
            completion=self._completion(data),
        )
        return replace(webhook, event=event)

    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": "Moncreneau-Webhooks/1.0",
            "X-Moncreneau-Event": event_type,
            "X-Moncreneau-Delivery": str(uuid.uuid4()),
            "X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(self.options.secrets[0], body),
        }

    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        return sample_from("moncreneau.json", event_type, id=event_id, created=zulu(occurred_at))

    def sample_types(self) -> list[str]:
        return list(load_samples("moncreneau.json"))

    def _appointment(self, data: _Appointment) -> Appointment:
        department = data.department
        organisation = department.organization if department else None
        return Appointment(
            id=str(data.id),
            status=data.status.lower(),
            starts_at=self.local_time(data.dateTime),
            timezone=self.options.timezone,
            department=Department(
                id=str(data.departmentId),
                name=department.name if department else None,
                organisation=Organisation(id=str(organisation.id), name=organisation.name) if organisation else None,
            ),
            qr_code_url=data.qrCode,
            created_at=self.local_time(data.createdAt),
            updated_at=self.local_time(data.updatedAt),
            credits_used=data.creditsUsed,
        )

    _CHANGE_KEYS: ClassVar[dict[str, str]] = {
        "dateTime": "appointment.starts_at",
        "status": "appointment.status",
        "departmentId": "appointment.department.id",
        "name": "customer.name",
        "phone": "customer.phone",
        "email": "customer.email",
    }

    def _change_key(self, key: str) -> str:
        return self._CHANGE_KEYS.get(key, key)

    def _change(self, key: str, change: _Change) -> Change:
        if key == "dateTime":
            times = validated(_TimeChange, change.model_dump(by_alias=True), prefix="data.object.changes.dateTime")
            return Change(from_=self.local_time(times.from_), to=self.local_time(times.to))
        if key not in CUSTOMER_TYPED:
            return Change(from_=change.from_, to=change.to)
        if not _scalar(change):
            raise WebhookRejected(400, "invalid_payload", f"data.object.changes.{key}: expected text or a number")

        def convert(value: Any) -> Any:
            if value is None:
                return None
            text = single_line(str(value))  # as the fields they change
            if key == "email":
                return email_address(text) or text
            if key == "phone":
                return self.phone(text) or text
            return text.lower() if key == "status" else text

        return Change(from_=convert(change.from_), to=convert(change.to))

    def _cancellation(self, data: _Appointment) -> Cancellation | None:
        if data.cancelledAt is None and data.cancelledBy is None and data.cancelReason is None:
            return None
        by = data.cancelledBy
        actor = Actor(role=by) if isinstance(by, str) else Actor(id=_str(by.id), name=by.name) if by else None
        return Cancellation(
            at=self.local_time(data.cancelledAt),
            by=actor,
            reason=data.cancelReason,
            credits_refunded=data.creditsRefunded,
        )

    def _validation(self, data: _Appointment) -> Validation | None:
        if data.validatedAt is None and data.validatedBy is None:
            return None
        by = data.validatedBy
        return Validation(
            at=self.local_time(data.validatedAt),
            by=Actor(id=_str(by.id), name=by.name, role="staff") if by else None,
        )

    def _completion(self, data: _Appointment) -> Completion | None:
        if data.completedAt is None and data.duration is None and data.notes is None:
            return None
        return Completion(at=self.local_time(data.completedAt), duration_minutes=data.duration, notes=data.notes)


def _scalar(change: _Change) -> bool:
    return all(value is None or isinstance(value, str | int | float) for value in (change.from_, change.to))


def _str(value: int | str | None) -> str | None:
    return None if value is None else str(value)


@hookimpl
def register_sources() -> list[type[Source]]:
    return [Moncreneau]
