"""Sinks that message people (SMS, email): the shared part.

For each delivery: refuse it if it would arrive too close to (or after) the appointment's start, find the
recipients, render the message in the delivery's locale, and send it to every recipient the delivery's ledger does
not already list, recording each confirmed send at once. A retry after a partial failure, or a replay after a
success, therefore never sends the same message to the same recipient twice. An attempt that times out after the
provider accepted the message but before it answered leaves the outcome unknown: it is retried, and the recipient
may receive the message twice (neither Twilio Messages nor SendGrid Mail Send has an idempotency key).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from pydantic import Field, field_validator

from gateway.durations import Duration
from gateway.events import REMINDER, AppointmentEvent
from gateway.exceptions import PermanentDeliveryError
from gateway.messages import Kind, Message, Messages, TemplateText, check_event_types
from gateway.routing import known_locale
from gateway.sinks import Delivery, Receipt, Sink, SinkOptions

logger = logging.getLogger(__name__)
BEFORE_THE_APPOINTMENT = frozenset(
    {"appointment.created", "appointment.updated", "appointment.cancelled", "appointment.reminder"}
)


class NotifyOptions(SinkOptions):
    locale: str = Field("fr", description="Language of messages when the route sets none (fr, en, fr_GN...)")
    templates: dict[str, TemplateText] = Field(
        default_factory=dict, description="Per event type templates replacing the defaults"
    )
    expire_before_start: Duration | None = Field(
        None,
        description="Skip (reason 'expired') a created/updated/cancelled message or a reminder that would be sent "
        "later than this before the appointment starts; 0s = at the start",
    )

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, locale: str) -> str:
        return known_locale(locale)

    @field_validator("templates")
    @classmethod
    def _event_types(cls, templates: dict[str, TemplateText]) -> dict[str, TemplateText]:
        check_event_types(templates)
        return templates


class NotificationSink(Sink):
    kind: ClassVar[Kind]
    options: NotifyOptions
    withdraws_stale = True

    def __init__(self, name: str, options: NotifyOptions, *, timeout: float) -> None:
        super().__init__(name, options, timeout=timeout)
        self.messages = Messages(self.kind, name, options.locale, options.templates)

    @abstractmethod
    def recipients(self, event: AppointmentEvent) -> Sequence[str]:
        """Where this event's message goes; raise PermanentDeliveryError when the event has no address."""

    async def send(self, recipient: str, message: Message, event: AppointmentEvent, delivery: Delivery) -> str:
        """Send to one recipient and return the provider's message id; raise the delivery errors."""
        raise NotImplementedError(f"{type(self).__name__} implements neither send nor send_all")

    async def send_all(
        self, recipients: Sequence[str], message: Message, event: AppointmentEvent, delivery: Delivery
    ) -> None:
        """Send to every recipient, recording each confirmed send in the delivery's ledger before the next; one
        message per recipient unless a sink sends them together."""
        for recipient in recipients:
            await delivery.ledger.record(recipient, await self.send(recipient, message, event, delivery))

    def check_message(self, event: AppointmentEvent, message: Message) -> list[str]:
        """Warnings about a sample rendering (check-config); none by default."""
        return []

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        self._refuse_if_expired(event, delivery)
        recipients = self.recipients(event)
        message = self.messages.render(event, delivery)
        already = await delivery.ledger.sent()
        await self.send_all([r for r in recipients if r not in already], message, event, delivery)
        sent = [
            message_id for recipient, message_id in (await delivery.ledger.sent()).items() if recipient not in already
        ]
        skipped = len(recipients) - len(sent)
        return Receipt(detail=f"sent {', '.join(sent) or 'nothing'}" + (f"; {skipped} already sent" if skipped else ""))

    def check(self, samples: Sequence[tuple[AppointmentEvent, str | None]]) -> list[str]:
        """Render every sample as it would be sent; report missing or failing templates and message warnings."""
        problems = []
        for event, route_locale in samples:
            locale = route_locale or self.options.locale
            kind = event.type if event.type == REMINDER else event.provider_event_type
            where = f"{event.provider} {kind} ({locale})"
            try:
                message = self.messages.render(event, Delivery(id="check", sink=self.name, attempt=1, locale=locale))
            except PermanentDeliveryError as error:
                problems.append(f"{where}: {error}")
                continue
            problems += [f"{where}: {warning}" for warning in self.check_message(event, message)]
        return problems

    def send_by(self, event: AppointmentEvent) -> datetime | None:
        """A message before the appointment is worth sending until it starts, less expire_before_start."""
        starts_at = event.appointment.starts_at if event.appointment else None
        if starts_at is None or event.type not in BEFORE_THE_APPOINTMENT:
            return None
        return starts_at - timedelta(seconds=self.options.expire_before_start or 0)

    def _refuse_if_expired(self, event: AppointmentEvent, delivery: Delivery) -> None:
        """Skip (reason `expired`) a message later than send_by: with expire_before_start set, and for reminders
        (one after the start is no reminder) always."""
        latest = self.send_by(event)
        if latest is None or (self.options.expire_before_start is None and event.type != REMINDER):
            return
        if delivery.attempted_at > latest.timestamp():
            when = datetime.fromtimestamp(delivery.attempted_at, latest.tzinfo).isoformat(timespec="seconds")
            raise PermanentDeliveryError(
                f"expired: sending at {when} is later than {latest.isoformat()}, "
                f"{self.options.expire_before_start or 0:g}s before the appointment starts (expire_before_start)",
                reason="expired",
            )
