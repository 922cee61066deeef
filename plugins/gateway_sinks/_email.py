"""What the email sinks share: sender and recipient options, and who an event's message goes to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from gateway import (
    AppointmentEvent,
    BadEventData,
    Kind,
    NotificationSink,
    NotifyOptions,
    PermanentDeliveryError,
    email_address,
)

EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class EmailOptions(NotifyOptions):
    from_email: str = Field(pattern=EMAIL)
    from_name: str | None = None
    reply_to: str | None = Field(None, pattern=EMAIL)
    to: Literal["customer"] | list[str] = Field("customer", description="`customer`, or fixed addresses (staff)")

    @field_validator("to")
    @classmethod
    def _addresses(cls, to: str | list[str]) -> str | list[str]:
        if isinstance(to, list) and (bad := [address for address in to if "@" not in address]):
            raise ValueError(f"not email addresses: {', '.join(bad)}")
        return to


class EmailSink(NotificationSink):
    kind: ClassVar[Kind] = "email"
    options: EmailOptions

    def recipients(self, event: AppointmentEvent) -> Sequence[str]:
        """Fixed addresses, or the customer's; an event without one is a permanent, explained failure."""
        if isinstance(self.options.to, list):
            return self.options.to
        if event.customer is None or not event.customer.email:
            raise PermanentDeliveryError("the event has no customer email address to write to", reason="no recipient")
        address = email_address(event.customer.email)  # sources validate it; a plugin's might not have
        if address is None:
            raise BadEventData("customer.email", "not exactly one valid email address")
        return [address]
