from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.exceptions import WebhookRejected
from gateway.signing import hmac_sha256_hex
from gateway.sources.base import SourceOptions, load_samples
from gateway.sources.yappointment import YAppointment

RECEIVED = datetime(2025, 4, 20, tzinfo=UTC)
SEEDS = sorted(load_samples("yappointment.json"))


def seed(event_type: str) -> dict[str, Any]:
    """A fresh copy of the sample body, safe to mutate."""
    return load_samples("yappointment.json")[event_type]


CUSTOMER = {"id": "cust_123", "name": "John Doe", "email": "john@example.com"}
BOOKING = {
    "id": "bkg_987654321",
    "starts_at": "2025-04-20T10:00:00Z",
    "ends_at": "2025-04-20T11:00:00Z",
    "timezone": "America/New_York",
    "service": {"id": "srv_456", "name": "Hair Consultation"},
}


def source(secrets: list[str] | None = None) -> YAppointment:
    return YAppointment("yapp", SourceOptions(type="yappointment", secrets=secrets or ["s1"], default_region="US"))


def canonical(body: dict[str, Any]) -> dict[str, Any]:
    webhook = source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert webhook.event is not None
    return webhook.event.model_dump(mode="json", by_alias=True, exclude_none=True)


def envelope(canonical_type: str, provider_type: str, provider_id: str, occurred: str) -> dict[str, Any]:
    return {
        "id": "e-1",
        "type": canonical_type,
        "source": "yapp",
        "provider": "yappointment",
        "provider_event_id": provider_id,
        "provider_event_type": provider_type,
        "occurred_at": occurred,
        "received_at": "2025-04-20T00:00:00Z",
        "changes": {},
    }


EXPECTED = {
    "booking.created": {
        **envelope("appointment.created", "booking.created", "evt_1234567890", "2025-04-19T14:30:00Z"),
        "appointment": {**BOOKING, "status": "confirmed"},
        "customer": CUSTOMER,
    },
    "booking.cancelled": {
        **envelope("appointment.cancelled", "booking.cancelled", "evt_1234567891", "2025-04-19T16:05:00Z"),
        "appointment": {**BOOKING, "status": "cancelled"},
        "customer": CUSTOMER,
        "cancellation": {"at": "2025-04-19T16:05:00Z"},
    },
    "customer.updated": {
        **envelope("customer.updated", "customer.updated", "evt_1234567892", "2025-04-19T17:20:00Z"),
        "customer": {**CUSTOMER, "email": "john.doe@example.com"},
    },
}


@pytest.mark.parametrize("event_type", SEEDS)
def test_every_seed_event_maps_exactly(event_type: str) -> None:
    assert canonical(seed(event_type)) == EXPECTED[event_type]


def test_customer_updates_order_by_customer_and_bookings_by_appointment() -> None:
    booking = source().parse(seed("booking.created"), {}, event_id="e", received_at=RECEIVED).event
    customer = source().parse(seed("customer.updated"), {}, event_id="e", received_at=RECEIVED).event
    assert booking is not None and customer is not None
    assert booking.ordering_key == "yapp:appointment:bkg_987654321"
    assert customer.ordering_key == "yapp:customer:cust_123"


def test_phone_and_cancellation_reason_are_read_when_sent() -> None:
    body = seed("booking.cancelled")
    body["data"].update(customerPhone="(415) 555-0132", cancellationReason="Sick")
    event = canonical(body)
    assert event["customer"]["phone"] == "+14155550132"
    assert event["cancellation"] == {"at": "2025-04-19T16:05:00Z", "reason": "Sick"}


def test_customer_typed_fields_lose_control_characters_and_a_list_of_emails_is_no_email() -> None:
    body = seed("booking.created")
    body["data"].update(
        customerName="Ann\r\nX-Injected: 1",
        customerPhone="(415) 555-0132\r\nX-Injected: 1",
        customerEmail="a@example.gn, victim1@evil.test, victim2@evil.test",
        serviceName="Cut\u2028and colour",
    )
    event = canonical(body)
    assert event["customer"]["name"] == "Ann X-Injected: 1"
    assert event["customer"]["phone_raw"] == "(415) 555-0132 X-Injected: 1"
    assert "email" not in event["customer"]  # excluded as None
    assert event["customer"]["email_raw"] == "a@example.gn, victim1@evil.test, victim2@evil.test"
    assert event["appointment"]["service"]["name"] == "Cut and colour"


def test_unknown_event_type_is_unmapped() -> None:
    body = {"id": "evt_x", "timestamp": "2025-04-19T14:30:00Z", "event": "invoice.paid", "data": {"amount": 3}}
    webhook = source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert webhook.event is None and webhook.provider_event_type == "invoice.paid"


@pytest.mark.parametrize(
    ("event_type", "mutate", "field"),
    [
        ("booking.created", lambda body: body["data"].pop("start"), "data.start: Field required"),
        (
            "booking.created",
            lambda body: body["data"].update(id=""),
            "data.id: expected an identifier of 1 to 200 characters",
        ),
        ("booking.created", lambda body: body.update(timestamp=1745073000), "timestamp: expected an ISO 8601"),
        ("booking.created", lambda body: body["data"].update(start="20250420"), "data.start: expected an ISO 8601"),
        ("booking.created", lambda body: body["data"].update(end=1745073000), "data.end: expected an ISO 8601"),
        ("booking.created", lambda body: body["data"].update(id="b\r\n1"), "data.id: expected an identifier"),
        ("booking.created", lambda body: body["data"].update(id=True), "data.id"),
        (
            "booking.created",
            lambda body: body["data"].update(timezone="../../etc/passwd"),
            "data.timezone: '../../etc/passwd' is not an IANA time zone",
        ),
        ("booking.created", lambda body: body["data"].update(timezone="Mars/Olympus"), "data.timezone"),
        ("customer.updated", lambda body: body["data"].pop("customerId"), "data.customerId: Field required"),
        ("booking.created", lambda body: body.update(data=[]), "data: Input should be a valid dictionary"),
        ("booking.created", lambda body: body.pop("event"), "event: Field required"),
    ],
)
def test_schema_failures_name_the_field(event_type: str, mutate: Any, field: str) -> None:
    body = seed(event_type)
    mutate(body)
    with pytest.raises(WebhookRejected) as rejected:
        source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert rejected.value.status_code == 400
    assert field in rejected.value.detail


def test_signature_is_bare_hex_and_rotation_accepts_both_secrets() -> None:
    body = b'{"id": "evt"}'
    yapp = source(secrets=["new", "old"])
    for secret in ("new", "old"):
        yapp.verify({"x-webhook-signature": hmac_sha256_hex(secret, body)}, body)
    for header in ({}, {"x-webhook-signature": "sha256=" + hmac_sha256_hex("new", body)}):
        with pytest.raises(WebhookRejected) as rejected:
            yapp.verify(header, body)
        assert rejected.value.status_code == 401
