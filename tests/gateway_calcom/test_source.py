"""The Cal.com source, an outside plugin: signatures, mapping (reviewed golden files), hostile bodies, reschedules."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from gateway_calcom import CalCom
from hypothesis import given, settings

from gateway import SourceOptions, WebhookRejected, hmac_sha256_hex, load_samples
from gateway.config import Config
from gateway.testing import post_webhook
from tests.conftest import running_gateway
from tests.helpers import hostile_json, mapping_matches_golden

RECEIVED = datetime(2026, 3, 1, tzinfo=UTC)
SAMPLES = load_samples("calcom.json", package="gateway_calcom")


def source(**options: Any) -> CalCom:
    return CalCom("calcom", SourceOptions(type="calcom", secrets=["whsec-new", "whsec-old"], **options))


def mapped(body: dict[str, Any]) -> dict[str, Any] | None:
    event = source().parse(body, {}, event_id="evt-gateway", received_at=RECEIVED).event
    return None if event is None else event.model_dump(mode="json", by_alias=True)


@pytest.mark.parametrize("trigger", sorted(SAMPLES))
def test_every_sample_maps_as_reviewed(trigger: str) -> None:
    canonical = mapped(SAMPLES[trigger])
    assert canonical is not None
    mapping_matches_golden(canonical, f"calcom/{trigger}")


def test_a_reschedule_moves_the_booking_it_replaces() -> None:
    created, moved = mapped(SAMPLES["BOOKING_CREATED"]), mapped(SAMPLES["BOOKING_RESCHEDULED"])
    assert created is not None and moved is not None
    assert moved["type"] == "appointment.updated" and moved["appointment"]["id"] == created["appointment"]["id"]
    assert (created["appointment"]["starts_at"], moved["appointment"]["starts_at"]) == (
        "2026-03-09T10:00:00Z",
        "2026-03-10T14:00:00Z",
    )


@pytest.mark.parametrize("trigger", ["BOOKING_REQUESTED", "BOOKING_PAID", "MEETING_STARTED", "FORM_SUBMITTED"])
def test_other_triggers_are_kept_but_mapped_to_nothing(trigger: str) -> None:
    webhook = source().parse(
        {**SAMPLES["BOOKING_CREATED"], "triggerEvent": trigger}, {}, event_id="e", received_at=RECEIVED
    )
    assert (webhook.event, webhook.provider_event_type) == (None, trigger)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("0" * 64, "invalid_signature"),
        (hmac_sha256_hex("someone-else", b"{}"), "invalid_signature"),
    ],
)
def test_bad_signatures_are_refused(header: str | None, reason: str) -> None:
    headers = {} if header is None else {"x-cal-signature-256": header}
    with pytest.raises(WebhookRejected) as refused:
        source().verify(headers, b"{}")
    assert (refused.value.status_code, refused.value.reason) == (401, reason)


@pytest.mark.parametrize("secret", ["whsec-new", "whsec-old"])
def test_either_secret_of_a_rotation_is_accepted_with_or_without_a_prefix(secret: str) -> None:
    body = json.dumps(SAMPLES["BOOKING_CREATED"]).encode()
    source().verify({"x-cal-signature-256": hmac_sha256_hex(secret, body)}, body)
    source().verify({"x-cal-signature-256": "sha256=" + hmac_sha256_hex(secret, body)}, body)


@settings(max_examples=150, deadline=None)
@given(body=hostile_json())
def test_any_json_is_mapped_or_refused_with_a_400(body: Any) -> None:
    try:
        source().parse(body, {}, event_id="e", received_at=RECEIVED)
    except WebhookRejected as refused:
        assert refused.status_code == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.pop("startTime"), "payload.startTime"),
        (lambda p: p.update(startTime=1773050400), "payload.startTime"),
        (lambda p: p.update(uid=None), "payload.uid"),
        (lambda p: p["attendees"][0].update(timeZone="../../etc/passwd"), "payload.attendees.0.timeZone"),
    ],
)
def test_schema_failures_name_the_field(change: Callable[[dict[str, Any]], Any], field: str) -> None:
    body = json.loads(json.dumps(SAMPLES["BOOKING_CREATED"]))
    change(body["payload"])
    with pytest.raises(WebhookRejected, match=field.replace(".", r"\.")):
        source().parse(body, {}, event_id="e", received_at=RECEIVED)


def test_a_control_character_in_a_name_is_a_space() -> None:
    body = json.loads(json.dumps(SAMPLES["BOOKING_CREATED"]))
    body["payload"]["attendees"][0]["name"] = "Aissatou\r\nBcc: x@example.gn"
    canonical = mapped(body)
    assert canonical is not None and canonical["customer"]["name"] == "Aissatou Bcc: x@example.gn"


@pytest.mark.anyio
async def test_a_signed_booking_goes_through_the_real_app() -> None:
    options = "secrets: [whsec-new]"
    first = await post_webhook(CalCom, SAMPLES["BOOKING_CREATED"], options=options)
    assert (first.status_code, first.answer["status"]) == (202, "accepted")
    assert first.event is not None and first.event.customer is not None
    assert first.event.customer.phone == "+224622112233"


@pytest.mark.anyio
async def test_reminders_follow_a_cal_com_reschedule(write_config: Callable[..., Config]) -> None:
    config = write_config(
        """
        sources:
          calcom: {type: calcom, secrets: [whsec-new]}
        sinks:
          crm: {type: http, options: {url: "http://127.0.0.1:9/crm"}}
        routes:
          - events: [appointment.created, appointment.updated, appointment.cancelled]
            sinks: [crm]
            reminders: [24h]
        """,
        with_sources=False,
    )
    async with running_gateway(config) as gateway:
        ids = []
        for trigger in ("BOOKING_CREATED", "BOOKING_RESCHEDULED"):
            raw = json.dumps(SAMPLES[trigger]).encode()
            headers = {"X-Cal-Signature-256": hmac_sha256_hex("whsec-new", raw)}
            ids.append((await gateway.client.post("/webhooks/calcom", content=raw, headers=headers)).json()["event_id"])
        reminders = [d for event_id in ids for d in await gateway.store.deliveries(event_id) if d.reminder]
    assert sorted((d.status, d.due_at) for d in reminders) == [
        ("pending", datetime(2026, 3, 9, 14, tzinfo=UTC).timestamp()),
        ("superseded", datetime(2026, 3, 8, 10, tzinfo=UTC).timestamp()),
    ]


@pytest.mark.parametrize("trigger", sorted(SAMPLES))
def test_test_events_are_signed_as_cal_com_signs(trigger: str) -> None:
    assert sorted(source().sample_types()) == sorted(SAMPLES)
    body = json.dumps(source().sample(trigger, event_id="x", occurred_at=RECEIVED)).encode()
    headers = source().signed_headers(body, trigger)
    source().verify({name.lower(): value for name, value in headers.items()}, body)
    with pytest.raises(KeyError, match="no calcom sample of type 'BOOKING_PAID'; known: BOOKING_CANCELLED"):
        source().sample("BOOKING_PAID", event_id="x", occurred_at=RECEIVED)
