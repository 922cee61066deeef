"""The canonical appointment event: the one shape every source maps into and every sink receives.

Field by field reference: docs/canonical-event.md.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from gateway.cleaning import email_address, single_line

EventType = Literal[
    "appointment.created",
    "appointment.updated",
    "appointment.cancelled",
    "appointment.validated",
    "appointment.completed",
    "appointment.reminder",
    "customer.updated",
    "gateway.sink.circuit_opened",
    "gateway.sink.circuit_closed",
    "gateway.sink.paused",
    "gateway.sink.resumed",
    "gateway.delivery.dead_lettered",
    "gateway.sink.backlog_late",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
REMINDER = "appointment.reminder"
"""Made by the gateway from a route's `reminders`, never received from a provider."""
STORED = {"stored": True}
"""Validation context for an event read back from the store, cleaned when it was received."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Customer(_Model):
    """Whoever booked; every text field is customer-typed, so control characters (CR, LF...) are replaced by a
    space, and `email` is one valid address or null (what was sent then stays in `email_raw`)."""

    id: str | None = None
    name: str | None = None
    phone: str | None = Field(None, description="E.164 (+224621234567) when the provider's number could be parsed")
    phone_raw: str | None = Field(None, description="The number as the provider sent it, control characters removed")
    email: str | None = Field(None, description="One valid address, or null")
    email_raw: str | None = Field(None, description="What the provider sent when it is not one valid address")

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or (info.context or {}).get("stored"):
            return data  # read back from the store: cleaned when it was received (email validation costs 34 us)
        data = {key: single_line(value) if isinstance(value, str) else value for key, value in data.items()}
        email = data.get("email")
        if isinstance(email, str):
            data["email"] = email_address(email) if email else None
            if data["email"] is None and email:
                data["email_raw"] = email
        return data


class Organisation(_Model):
    id: str
    name: str | None = None


class Department(_Model):
    id: str
    name: str | None = None
    organisation: Organisation | None = None


class Service(_Model):
    id: str | None = None
    name: str | None = None


class Actor(_Model):
    """Who did something: a staff member with an id, or a role such as `user` or `system`."""

    id: str | None = None
    name: str | None = None
    role: str | None = None


class Change(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    from_: Any = Field(None, alias="from")
    to: Any = None


class Cancellation(_Model):
    at: AwareDatetime | None = None
    by: Actor | None = None
    reason: str | None = None
    credits_refunded: int | None = None


class Validation(_Model):
    at: AwareDatetime | None = None
    by: Actor | None = None


class Completion(_Model):
    at: AwareDatetime | None = None
    duration_minutes: int | None = None
    notes: str | None = None


class Appointment(_Model):
    id: str
    status: str | None = Field(None, description="Lower-case provider status: scheduled, confirmed, cancelled...")
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    timezone: str | None = Field(None, description="IANA zone the appointment takes place in")
    department: Department | None = None
    service: Service | None = None
    qr_code_url: str | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    credits_used: int | None = None


class Alert(_Model):
    """What a `gateway.*` event (the gateway's own alert) is about."""

    sink: str = Field(description="The sink concerned")
    detail: str | None = Field(None, description="What happened: the provider's answer, the reason given...")
    delivery_id: str | None = Field(None, description="gateway.delivery.dead_lettered: the dead letter")
    event_id: str | None = Field(None, description="gateway.delivery.dead_lettered: its event")


class Reminder(_Model):
    """What an `appointment.reminder` is: a message due some time before the appointment, scheduled by a route."""

    before_seconds: float = Field(description="How long before the start it is due (the route's `reminders`)")
    due_at: AwareDatetime = Field(description="When it was due")
    event_id: str = Field(description="The event whose state of the appointment it carries: the latest")


class AppointmentEvent(_Model):
    """What happened to an appointment (or a customer), whichever platform reported it."""

    id: str = Field(description="The gateway's own id for this event")
    type: EventType
    source: str = Field(description="Name of the configured source that received it")
    provider: str = Field(description="Source type: moncreneau, yappointment, or a plugin's")
    provider_event_id: str
    provider_event_type: str
    provider_delivery_id: str | None = None
    occurred_at: AwareDatetime = Field(description="When the provider says it happened; orders deliveries")
    received_at: AwareDatetime
    appointment: Appointment | None = None
    customer: Customer | None = None
    changes: dict[str, Change] = Field(default_factory=dict)
    cancellation: Cancellation | None = None
    validation: Validation | None = None
    completion: Completion | None = None
    alert: Alert | None = Field(None, description="Set on the gateway's own events (gateway.*)")
    reminder: Reminder | None = Field(None, description="Set on appointment.reminder")

    @property
    def ordering_key(self) -> str | None:
        """Deliveries sharing this key go to a sink in `occurred_at` order."""
        if self.appointment is not None:
            return f"{self.source}:appointment:{self.appointment.id}"
        if self.customer is not None and self.customer.id is not None:
            return f"{self.source}:customer:{self.customer.id}"
        return None


def carried_forward(previous: dict[str, Any] | None, event: AppointmentEvent) -> AppointmentEvent:
    """The event, with what it leaves out (null) taken from `previous`, the JSON of the appointment's state before
    it: a provider's update may carry only what changed (moncreneau's has no department)."""
    if previous is None:
        return event
    return AppointmentEvent.model_validate(merged(previous, event.model_dump(mode="json", by_alias=True)))


def merged(previous: Any, current: Any) -> Any:
    """`current`, with its nulls (at any depth) filled from `previous`."""
    if isinstance(previous, dict) and isinstance(current, dict):
        return {key: merged(previous.get(key), current.get(key)) for key in previous.keys() | current.keys()}
    return previous if current is None else current
