from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.exceptions import WebhookRejected
from gateway.signing import hmac_sha256_hex
from gateway.sources.base import SourceOptions, load_samples
from gateway.sources.moncreneau import Moncreneau

RECEIVED = datetime(2026, 1, 26, tzinfo=UTC)
CUSTOMER = {"name": "Jean Dupont", "phone": "+224621234567", "phone_raw": "+224621234567"}


def source(timezone: str = "Africa/Conakry", region: str | None = "GN", secrets: list[str] | None = None) -> Moncreneau:
    options = SourceOptions(type="moncreneau", secrets=secrets or ["s1"], timezone=timezone, default_region=region)
    return Moncreneau("moncreneau", options)


def canonical(body: dict[str, Any], mc: Moncreneau | None = None) -> dict[str, Any]:
    webhook = (mc or source()).parse(
        body,
        {"x-moncreneau-delivery": "dlv-1", "x-moncreneau-event": body["type"]},
        event_id="e-1",
        received_at=RECEIVED,
    )
    assert webhook.event is not None
    return webhook.event.model_dump(mode="json", by_alias=True, exclude_none=True)


def envelope(event_type: str, provider_id: str, occurred: str) -> dict[str, Any]:
    return {
        "id": "e-1",
        "type": event_type,
        "source": "moncreneau",
        "provider": "moncreneau",
        "provider_event_id": provider_id,
        "provider_event_type": event_type,
        "provider_delivery_id": "dlv-1",
        "occurred_at": occurred,
        "received_at": "2026-01-26T00:00:00Z",
        "changes": {},
    }


SEEDS = sorted(load_samples("moncreneau.json"))


def seed(event_type: str) -> dict[str, Any]:
    """A fresh copy of the sample body, safe to mutate."""
    return load_samples("moncreneau.json")[event_type]


EXPECTED = {
    "appointment.created": {
        **envelope("appointment.created", "evt_abc123", "2026-01-21T14:30:00Z"),
        "appointment": {
            "id": "12345",
            "status": "scheduled",
            "starts_at": "2026-01-25T14:30:00Z",
            "timezone": "Africa/Conakry",
            "department": {
                "id": "5",
                "name": "Passport Service",
                "organisation": {"id": "1", "name": "Ministry of Interior"},
            },
            "qr_code_url": "https://moncreneau.gn/qr/12345",
            "created_at": "2026-01-21T14:30:00Z",
            "credits_used": 1,
        },
        "customer": {**CUSTOMER, "email": "jean.dupont@example.gn"},
    },
    "appointment.updated": {
        **envelope("appointment.updated", "evt_def456", "2026-01-22T10:15:00Z"),
        "appointment": {
            "id": "12345",
            "status": "scheduled",
            "starts_at": "2026-01-26T10:00:00Z",
            "timezone": "Africa/Conakry",
            "department": {"id": "5"},
            "updated_at": "2026-01-22T10:15:00Z",
        },
        "customer": CUSTOMER,
        "changes": {"appointment.starts_at": {"from": "2026-01-25T14:30:00Z", "to": "2026-01-26T10:00:00Z"}},
    },
    "appointment.cancelled": {
        **envelope("appointment.cancelled", "evt_ghi789", "2026-01-23T16:45:00Z"),
        "appointment": {
            "id": "12345",
            "status": "cancelled",
            "starts_at": "2026-01-25T14:30:00Z",
            "timezone": "Africa/Conakry",
            "department": {"id": "5"},
        },
        "customer": CUSTOMER,
        "cancellation": {
            "at": "2026-01-23T16:45:00Z",
            "by": {"role": "user"},
            "reason": "Last minute impediment",
            "credits_refunded": 1,
        },
    },
    "appointment.validated": {
        **envelope("appointment.validated", "evt_jkl012", "2026-01-25T14:35:00Z"),
        "appointment": {
            "id": "12345",
            "status": "validated",
            "starts_at": "2026-01-25T14:30:00Z",
            "timezone": "Africa/Conakry",
            "department": {"id": "5"},
        },
        "customer": CUSTOMER,
        "validation": {"at": "2026-01-25T14:35:00Z", "by": {"id": "42", "name": "Agent Martin", "role": "staff"}},
    },
    "appointment.completed": {
        **envelope("appointment.completed", "evt_mno345", "2026-01-25T15:00:00Z"),
        "appointment": {
            "id": "12345",
            "status": "completed",
            "starts_at": "2026-01-25T14:30:00Z",
            "timezone": "Africa/Conakry",
            "department": {"id": "5"},
        },
        "customer": CUSTOMER,
        "completion": {"at": "2026-01-25T15:00:00Z", "duration_minutes": 30, "notes": "Document issued"},
    },
}


@pytest.mark.parametrize("event_type", SEEDS)
def test_every_seed_event_maps_exactly(event_type: str) -> None:
    assert canonical(seed(event_type)) == EXPECTED[event_type]


def test_naive_local_times_are_read_in_the_source_zone() -> None:
    event = canonical(seed("appointment.updated"), source(timezone="Europe/Paris"))
    assert event["appointment"]["starts_at"] == "2026-01-26T10:00:00+01:00"
    assert event["changes"]["appointment.starts_at"] == {
        "from": "2026-01-25T14:30:00+01:00",
        "to": "2026-01-26T10:00:00+01:00",
    }
    assert event["appointment"]["timezone"] == "Europe/Paris"
    assert event["appointment"]["updated_at"] == "2026-01-22T10:15:00Z"  # already aware: left as sent


def test_national_numbers_become_e164_with_the_default_region() -> None:
    body = seed("appointment.created")
    body["data"]["object"]["phone"] = "621 23 45 67"
    assert canonical(body)["customer"]["phone"] == "+224621234567"
    assert canonical(body)["customer"]["phone_raw"] == "621 23 45 67"


def test_an_unparseable_number_is_kept_raw_without_e164() -> None:
    body = seed("appointment.created")
    body["data"]["object"]["phone"] = "call me maybe"
    customer = canonical(body)["customer"]
    assert "phone" not in customer
    assert customer["phone_raw"] == "call me maybe"


def test_unknown_event_type_is_unmapped_but_parsed() -> None:
    body = {
        "id": "evt_new",
        "type": "appointment.rescheduled_by_robot",
        "created": "2026-01-21T14:30:00Z",
        "data": {"object": {"anything": True}},
    }
    webhook = source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert webhook.event is None
    assert (webhook.provider_event_id, webhook.provider_event_type) == ("evt_new", "appointment.rescheduled_by_robot")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda body: body.pop("id"), "id: Field required"),
        (lambda body: body.update(created="yesterday"), "created: expected an ISO 8601 date-time"),
        (lambda body: body["data"]["object"].pop("dateTime"), "data.object.dateTime: Field required"),
        (lambda body: body["data"]["object"].update(status=None), "data.object.status: Input should be a valid string"),
        (lambda body: body["data"].pop("object"), "data.object: Field required"),
        (
            lambda body: body["data"]["object"].update(changes={"dateTime": {"from": "[]", "to": None}}),
            "data.object.changes.dateTime.from: expected an ISO 8601 date-time",
        ),
        (
            lambda body: body["data"]["object"].update(changes={"dateTime": "tomorrow"}),
            "data.object.changes.dateTime: Input should be a valid dictionary",
        ),
    ],
)
def test_schema_failures_name_the_field(mutate: Any, field: str) -> None:
    body = seed("appointment.updated")
    mutate(body)
    with pytest.raises(WebhookRejected) as rejected:
        source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert rejected.value.status_code == 400
    assert field in rejected.value.detail


def appointment(**fields: Any) -> Any:
    return lambda body: body["data"]["object"].update(fields)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda body: body.update(created=20260125), "created: expected an ISO 8601 date-time"),
        (lambda body: body.update(created="20260125"), "created: expected an ISO 8601 date-time"),
        (appointment(dateTime=1769351400), "data.object.dateTime: expected an ISO 8601"),
        (appointment(createdAt="1769351400"), "data.object.createdAt: expected an ISO 8601"),
        (appointment(cancelledAt=0), "data.object.cancelledAt: expected an ISO 8601"),
        (appointment(validatedAt=1.5), "data.object.validatedAt: expected an ISO 8601"),
        (appointment(completedAt=True), "data.object.completedAt: expected an ISO 8601"),
        (appointment(updatedAt=[]), "data.object.updatedAt: expected an ISO 8601"),
        (appointment(creditsUsed="1"), "data.object.creditsUsed: Input should be a valid integer"),
        (appointment(duration=30.0), "data.object.duration: Input should be a valid integer"),
        (appointment(creditsRefunded=True), "data.object.creditsRefunded: Input should be a valid integer"),
        (appointment(id=12.5), "data.object.id"),
        (appointment(id="1\x002"), "data.object.id: expected an identifier"),
        (appointment(id="x" * 201), "data.object.id: expected an identifier"),
        (appointment(phone=224621234567), "data.object.phone: Input should be a valid string"),
        (appointment(changes={"bad key\r\n": {"from": 1, "to": 2}}), "data.object.changes.bad key"),
        (appointment(changes={"email": {"from": {"a": 1}, "to": "b@c.gn"}}), "data.object.changes.email"),
    ],
)
def test_lax_values_are_refused_naming_the_field(mutate: Any, field: str) -> None:
    body = seed("appointment.created")
    mutate(body)
    with pytest.raises(WebhookRejected) as rejected:
        source().parse(body, {}, event_id="e-1", received_at=RECEIVED)
    assert rejected.value.status_code == 400
    assert field in rejected.value.detail


def test_signature_is_checked_against_every_secret() -> None:
    body = b'{"id": "evt"}'
    mc = source(secrets=["new", "old"])
    mc.verify({"x-moncreneau-signature": "sha256=" + hmac_sha256_hex("old", body)}, body)
    mc.verify({"x-moncreneau-signature": "sha256=" + hmac_sha256_hex("new", body).upper()}, body)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("sha256=" + "0" * 64, "invalid_signature"),
        (hmac_sha256_hex("s1", b"{}"), "invalid_signature"),  # right digest, no sha256= prefix
        ("md5=" + hmac_sha256_hex("s1", b"{}"), "invalid_signature"),
    ],
)
def test_bad_signatures_are_refused(header: str | None, reason: str) -> None:
    headers = {} if header is None else {"x-moncreneau-signature": header}
    with pytest.raises(WebhookRejected) as rejected:
        source().verify(headers, b"{}")
    assert (rejected.value.status_code, rejected.value.reason) == (401, reason)


def test_test_events_are_signed_as_the_provider_signs() -> None:
    mc = source()
    body = mc.sample("appointment.cancelled", event_id="evt_t", occurred_at=RECEIVED)
    raw = repr(body).encode()
    headers = {name.lower(): value for name, value in mc.signed_headers(raw, "appointment.cancelled").items()}
    mc.verify(headers, raw)
    assert headers["x-moncreneau-event"] == "appointment.cancelled"
    assert body["id"] == "evt_t" and body["created"] == "2026-01-26T00:00:00Z"


def test_customer_typed_fields_lose_control_characters_raw_copies_and_changes_included() -> None:
    body = seed("appointment.updated")
    body["data"]["object"].update(
        name="Jean\r\nBcc: victim@evil.test",
        phone="+224621234567\r\nX-Injected: 1",
        email="jean@example.gn\r\nBcc: victim@evil.test",
        changes={
            "email": {"from": "old@example.gn\r\nBcc: x@evil.test", "to": "NEW@Example.GN"},
            "name": {"from": "A\nB", "to": "C"},
        },
    )
    event = canonical(body)
    customer = event["customer"]
    assert customer["name"] == "Jean Bcc: victim@evil.test"
    assert customer["phone_raw"] == "+224621234567 X-Injected: 1"
    assert "email" not in customer and customer["email_raw"] == "jean@example.gn Bcc: victim@evil.test"
    assert event["changes"]["customer.email"] == {"from": "old@example.gn Bcc: x@evil.test", "to": "NEW@example.gn"}
    assert event["changes"]["customer.name"] == {"from": "A B", "to": "C"}
    assert not any(character in json.dumps(event) for character in ("\\r", "\\n"))


@pytest.mark.parametrize(
    "email", ["a@example.gn, victim1@evil.test, victim2@evil.test", "a@example.gn;b@evil.test", "<a@b.gn>", "a@", ""]
)
def test_anything_but_one_valid_email_address_leaves_email_null(email: str) -> None:
    body = seed("appointment.created")
    body["data"]["object"]["email"] = email
    customer = canonical(body)["customer"]
    assert "email" not in customer
    assert customer.get("email_raw") == (email or None)


@pytest.mark.parametrize(
    "url", ["https://moncreneau.gn/qr/1\r\nX: y", "javascript:alert(1)", "https://moncreneau.gn/qr 1", "/relative"]
)
def test_a_qr_code_that_is_not_a_plain_http_url_is_dropped(url: str) -> None:
    body = seed("appointment.created")
    body["data"]["object"]["qrCode"] = url
    assert "qr_code_url" not in canonical(body)["appointment"]
