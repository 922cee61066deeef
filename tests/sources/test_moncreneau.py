from __future__ import annotations

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
        (lambda body: body.update(created="yesterday"), "created: Input should be a valid datetime"),
        (lambda body: body["data"]["object"].pop("dateTime"), "data.object.dateTime: Field required"),
        (lambda body: body["data"]["object"].update(status=None), "data.object.status: Input should be a valid string"),
        (lambda body: body["data"].pop("object"), "data.object: Field required"),
        (
            lambda body: body["data"]["object"].update(changes={"dateTime": {"from": "[]", "to": None}}),
            "data.object.changes.dateTime.from: Input should be a valid datetime",
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
