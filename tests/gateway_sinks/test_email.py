from __future__ import annotations

import pytest
from gateway_sinks._email import EmailOptions
from gateway_sinks.smtp_email import SmtpEmail, SmtpOptions

from gateway.exceptions import BadEventData, PermanentDeliveryError
from tests.samples import appointment_event


def sink(**options: object) -> SmtpEmail:
    return SmtpEmail(
        "mail", SmtpOptions.model_validate({"host": "h", "from_email": "rdv@example.gn", **options}), timeout=1
    )


def test_the_customers_one_address_or_the_fixed_ones() -> None:
    assert sink().recipients(appointment_event()) == ["jean.dupont@example.gn"]
    assert sink(to=["staff@example.gn"]).recipients(appointment_event()) == ["staff@example.gn"]


def test_no_address_or_not_one_address_is_permanent() -> None:
    event = appointment_event()
    assert event.customer is not None
    without = event.model_copy(update={"customer": event.customer.model_copy(update={"email": None})})
    with pytest.raises(PermanentDeliveryError) as missing:
        sink().recipients(without)
    assert missing.value.reason == "no recipient"
    several = event.model_copy(update={"customer": event.customer.model_copy(update={"email": "a@x.gn, b@y.gn"})})
    with pytest.raises(BadEventData):
        sink().recipients(several)


def test_fixed_addresses_and_senders_are_checked_when_configured() -> None:
    with pytest.raises(ValueError, match="not email addresses: staff"):
        EmailOptions.model_validate({"from_email": "rdv@example.gn", "to": ["staff"]})
