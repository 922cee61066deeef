"""The Calendly source, an outside plugin: timestamped signatures, mapping (reviewed golden files), hostile bodies,
and a reschedule (a cancellation plus a new invitee) as one appointment's move."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from gateway_calendly import Calendly, CalendlyOptions
from hypothesis import given, settings

from gateway import WebhookRejected, hmac_sha256_hex, load_samples
from gateway.config import Config
from tests.conftest import running_gateway
from tests.helpers import hostile_json, mapping_matches_golden

RECEIVED = datetime(2026, 3, 1, tzinfo=UTC)
SAMPLES = load_samples("calendly.json", package="gateway_calendly")
KEY = "calendly-signing-key"


def source(**options: Any) -> Calendly:
    return Calendly("calendly", CalendlyOptions(type="calendly", secrets=[KEY, "previous-key"], **options))


def mapped(body: dict[str, Any]) -> dict[str, Any] | None:
    event = source().parse(body, {}, event_id="evt-gateway", received_at=RECEIVED).event
    return None if event is None else event.model_dump(mode="json", by_alias=True)


def signature(body: bytes, *, at: float | None = None, key: str = KEY) -> str:
    stamp = str(int(time.time() if at is None else at))
    return f"t={stamp},v1={hmac_sha256_hex(key, f'{stamp}.'.encode() + body)}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_maps_as_reviewed(name: str) -> None:
    mapping_matches_golden(mapped(SAMPLES[name]) or {"mapped": None}, f"calendly/{name}")


def test_a_reschedule_is_one_appointment_moving_not_a_cancellation_and_a_new_booking() -> None:
    booked = mapped(SAMPLES["invitee.created"])
    withdrawn = mapped(SAMPLES["invitee.canceled (rescheduled)"])
    moved = mapped(SAMPLES["invitee.created (rescheduled)"])
    assert booked is not None and moved is not None
    assert withdrawn is None  # stored and acknowledged, routed nowhere: no cancellation notice
    assert (moved["type"], moved["appointment"]["id"]) == ("appointment.updated", booked["appointment"]["id"])
    assert moved["appointment"]["starts_at"] == "2026-03-10T14:00:00Z"
    cancelled = mapped(SAMPLES["invitee.canceled"])
    assert cancelled is not None and cancelled["type"] == "appointment.cancelled"
    assert cancelled["cancellation"]["reason"] == "Empêchement"


@pytest.mark.parametrize("event", ["invitee_no_show.created", "routing_form_submission.created"])
def test_other_events_are_kept_but_mapped_to_nothing(event: str) -> None:
    webhook = source().parse({**SAMPLES["invitee.created"], "event": event}, {}, event_id="e", received_at=RECEIVED)
    assert (webhook.event, webhook.provider_event_type) == (None, event)


def test_a_signature_within_the_tolerance_of_either_key_is_accepted() -> None:
    body = json.dumps(SAMPLES["invitee.created"]).encode()
    source().verify({"calendly-webhook-signature": signature(body)}, body)
    source().verify({"calendly-webhook-signature": signature(body, at=time.time() - 170)}, body)
    source().verify({"calendly-webhook-signature": signature(body, key="previous-key")}, body)
    source(tolerance="20m").verify({"calendly-webhook-signature": signature(body, at=time.time() - 900)}, body)


@pytest.mark.parametrize(
    ("header", "reason", "detail"),
    [
        (None, "missing_signature", "no Calendly-Webhook-Signature header"),
        ("v1=abc", "invalid_signature", "needs t=<seconds>,v1=<hex>"),
        ("t=soon,v1=abc", "invalid_signature", "needs t=<seconds>,v1=<hex>"),
        ("t=1", "invalid_signature", "needs t=<seconds>,v1=<hex>"),
        ("OLD", "invalid_signature", "more than 180s away"),
        ("FUTURE", "invalid_signature", "more than 180s away"),
        ("OTHER KEY", "invalid_signature", "does not match the body"),
        ("OTHER BODY", "invalid_signature", "does not match the body"),
    ],
)
def test_bad_signatures_are_refused(header: str | None, reason: str, detail: str) -> None:
    body = json.dumps(SAMPLES["invitee.created"]).encode()
    given_header = {
        "OLD": signature(body, at=time.time() - 200),
        "FUTURE": signature(body, at=time.time() + 200),
        "OTHER KEY": signature(body, key="someone-else"),
        "OTHER BODY": signature(body + b" "),
    }.get(header or "", header)
    headers = {} if given_header is None else {"calendly-webhook-signature": given_header}
    with pytest.raises(WebhookRejected, match=detail.replace("<", ".").replace(">", ".")) as refused:
        source().verify(headers, body)
    assert (refused.value.status_code, refused.value.reason) == (401, reason)


def test_test_events_are_signed_as_calendly_signs() -> None:
    body = json.dumps(source().sample("invitee.created", event_id="x", occurred_at=RECEIVED)).encode()
    source().verify(
        {key.lower(): value for key, value in source().signed_headers(body, "invitee.created").items()}, body
    )


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
        (lambda p: p.pop("scheduled_event"), "payload.scheduled_event"),
        (lambda p: p["scheduled_event"].update(start_time=1773050400), "payload.scheduled_event.start_time"),
        (lambda p: p.update(uri="javascript:alert(1)"), "payload.uri"),
        (lambda p: p.update(timezone="../../etc/passwd"), "payload.timezone"),
    ],
)
def test_schema_failures_name_the_field(change: Callable[[dict[str, Any]], Any], field: str) -> None:
    body = json.loads(json.dumps(SAMPLES["invitee.created"]))
    change(body["payload"])
    with pytest.raises(WebhookRejected, match=field.replace(".", r"\.")):
        source().parse(body, {}, event_id="e", received_at=RECEIVED)


@pytest.mark.anyio
@pytest.mark.parametrize("order", ["as sent", "new invitee first"])
async def test_reminders_follow_a_calendly_reschedule(write_config: Callable[..., Config], order: str) -> None:
    config = write_config(
        f"""
        sources:
          calendly: {{type: calendly, secrets: [{KEY}]}}
        sinks:
          crm: {{type: http, options: {{url: "http://127.0.0.1:9/crm"}}}}
        routes:
          - events: [appointment.created, appointment.updated, appointment.cancelled]
            sinks: [crm]
            reminders: [24h]
        """,
        with_sources=False,
    )
    names = ["invitee.created", "invitee.canceled (rescheduled)", "invitee.created (rescheduled)"]
    if order == "new invitee first":
        names[1], names[2] = names[2], names[1]
    async with running_gateway(config) as gateway:
        answers = []
        for name in names:
            raw = json.dumps(SAMPLES[name]).encode()
            headers = {"Calendly-Webhook-Signature": signature(raw)}
            answers.append((await gateway.client.post("/webhooks/calendly", content=raw, headers=headers)).json())
        reminders = [d for a in answers for d in await gateway.store.deliveries(a["event_id"]) if d.reminder]
    assert sorted(answer["status"] for answer in answers) == ["accepted", "accepted", "unmapped"]
    assert sorted((d.status, d.due_at) for d in reminders) == [
        ("pending", datetime(2026, 3, 9, 14, tzinfo=UTC).timestamp()),
        ("superseded", datetime(2026, 3, 8, 10, tzinfo=UTC).timestamp()),
    ]
