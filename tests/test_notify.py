"""Messaging sinks driven by the real worker and store: the sent ledger and expiry, end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs

import pytest

from gateway.config import Config
from gateway.exceptions import StorageError
from gateway.operations import DeadLetterFilter, EventFilter, OperationError, Pause, Replay
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, Receiver
from tests.conftest import TWILIO_SMS, running_gateway
from tests.helpers import Mailbox, metric

pytestmark = pytest.mark.anyio
SMS = """
sinks:
  sms:
    type: twilio_sms
    options:
      account_sid: AC0123456789abcdef0123456789abcdef
      auth_token: t
      from: "+15005550006"
      api_url: {url}
      to: ["+33612345678", "+224622000000"]
      expire_before_start: 1h
    retry: {{schedule: [1m]}}
routes:
  - sinks: [sms]
"""


async def test_a_retry_after_a_partial_failure_only_sends_what_was_not_sent(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    twilio.script(
        Answer(201, {"Content-Type": "application/json"}, b'{"sid": "SM1"}'),
        Answer(503, {"Content-Type": "application/json"}, b'{"code": 20500, "message": "busy", "status": 503}'),
        Answer(201, {"Content-Type": "application/json"}, b'{"sid": "SM2"}'),
    )
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        event_id = (await gateway.post_moncreneau(load_samples("moncreneau.json")["appointment.created"])).json()[
            "event_id"
        ]
        assert await gateway.worker.run_due() == 1
        gateway.clock.advance(60)
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
        sent = await gateway.store.sent_messages(delivery.id)
        attempts = await gateway.store.attempts(delivery.id)
    assert [parse_qs(r.body.decode())["To"][0] for r in twilio.requests] == [
        "+33612345678",
        "+224622000000",
        "+224622000000",
    ]
    assert sent == {"+33612345678": "SM1", "+224622000000": "SM2"}
    assert [(a.outcome, a.detail) for a in attempts] == [
        ("retryable", "Twilio error: HTTP 503, code 20500: Unable to create record: busy"),
        ("succeeded", "sent SM2; 1 already sent"),
    ]


def recipients(twilio: Receiver) -> list[str]:
    return [parse_qs(r.body.decode())["To"][0] for r in twilio.requests]


async def test_a_replay_of_a_sent_sms_delivery_sends_nothing_again(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        body = load_samples("moncreneau.json")["appointment.created"]
        event_id = (await gateway.post_moncreneau(body)).json()["event_id"]
        assert await gateway.worker.run_due() == 1
        assert (await gateway.app.state.operations.replay(event_id, Replay()))["requeued"]
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
        last = (await gateway.store.attempts(delivery.id))[-1]
    assert recipients(twilio) == ["+33612345678", "+224622000000"]
    assert (delivery.status, last.detail) == ("succeeded", "sent nothing; 2 already sent")


async def test_a_dead_letter_retried_sends_only_to_the_recipients_not_yet_served(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    refused = json.dumps({"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}).encode()
    twilio.script(
        Answer(201, {"Content-Type": "application/json"}, b'{"sid": "SM1"}'),
        Answer(400, {"Content-Type": "application/json"}, refused),
    )
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        body = load_samples("moncreneau.json")["appointment.created"]
        event_id = (await gateway.post_moncreneau(body)).json()["event_id"]
        assert await gateway.worker.run_due() == 1
        (dead,) = await gateway.store.deliveries(event_id)
        await gateway.app.state.operations.retry_dead_letter(dead.id)
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
    assert dead.status == "dead" and delivery.status == "succeeded"
    assert recipients(twilio) == ["+33612345678", "+224622000000", "+224622000000"]


async def test_refused_credentials_pause_the_sink_instead_of_dead_lettering_each_message(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    refused = json.dumps({"code": 20003, "message": "Authenticate", "status": 401}).encode()
    twilio.script(Answer(401, {"Content-Type": "application/json"}, refused))
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        operations = gateway.app.state.operations
        first = (await gateway.post_moncreneau(load_samples("moncreneau.json")["appointment.created"])).json()
        assert await gateway.worker.run_due() == 1
        cancelled = load_samples("moncreneau.json")["appointment.cancelled"]
        second = (await gateway.post_moncreneau(cancelled)).json()
        gateway.clock.advance(3600)
        assert await gateway.worker.run_due() == 0  # paused: nothing attempted, no retry spent
        (sms,) = (await operations.list_sinks())["sinks"]
        (waiting,) = await gateway.store.deliveries(first["event_id"])
        assert (sms["state"], sms["queue_depth"], sms["dead_letters"]) == ("paused", 1, 0)
        assert sms["paused_because"].startswith("authentication failed: Twilio refused the credentials: HTTP 401")
        # the confirmation still waiting is stale once the appointment is cancelled: withdrawn, not a dead letter
        assert (waiting.status, waiting.dead_reason, waiting.attempts) == (
            "superseded",
            "superseded by appointment.cancelled",
            1,
        )
        await operations.resume_sink("sms")  # the credentials were fixed
        assert await gateway.worker.run_due() == 1
        assert await gateway.worker.run_due() == 0
        statuses = [(await gateway.store.deliveries(e["event_id"]))[0].status for e in (first, second)]
    assert statuses == ["superseded", "succeeded"]
    assert len(twilio.requests) == 1 + 2  # the refused one, then both numbers for the cancellation


async def test_a_refused_login_the_store_cannot_record_still_stops_this_process(
    write_config: Callable[[str], Config], twilio: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = json.dumps({"code": 20003, "message": "Authenticate", "status": 401}).encode()
    twilio.script(Answer(401, {"Content-Type": "application/json"}, refused))
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:

        async def storage_down(*args: object, **kwargs: object) -> None:
            raise StorageError("database is locked")

        monkeypatch.setattr(gateway.store, "set_paused", storage_down)
        first = (await gateway.post_moncreneau(load_samples("moncreneau.json")["appointment.created"])).json()
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(first["event_id"])
        assert await gateway.worker.run_due() == 0  # paused in this process all the same
    assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("pending", 1, None)
    assert len(twilio.requests) == 1


async def test_a_paused_sink_is_attempted_by_no_process_and_resumes_in_order(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    every_message = SMS.replace("    retry:", "    supersede: false\n    retry:")
    async with running_gateway(write_config(every_message.format(url=twilio.url))) as gateway:
        operations = gateway.app.state.operations
        assert await operations.pause_sink("sms", Pause(reason="provider maintenance")) == {
            "sink": "sms",
            "state": "paused",
        }
        events = []
        for kind in ("created", "updated", "cancelled"):
            events.append(
                (await gateway.post_moncreneau(load_samples("moncreneau.json")[f"appointment.{kind}"])).json()
            )
        assert await gateway.worker.run_due() == 0 and twilio.requests == []
        (sms,) = (await operations.list_sinks())["sinks"]
        assert (sms["state"], sms["paused_because"], sms["queue_depth"]) == ("paused", "provider maintenance", 3)
        with pytest.raises(OperationError) as unknown:
            await operations.pause_sink("crm", Pause())
        assert unknown.value.status_code == 404
        await operations.resume_sink("sms")
        for _ in events:  # one at a time: each waits for the appointment's previous event
            assert await gateway.worker.run_due() == 1
    assert len(twilio.requests) == 6


async def test_a_message_kept_waiting_by_a_pause_still_expires_before_the_appointment(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        await gateway.app.state.operations.pause_sink("sms", Pause())
        event_id = (await gateway.post_moncreneau(load_samples("moncreneau.json")["appointment.created"])).json()[
            "event_id"
        ]
        gateway.clock.advance(24 * 86400 + 14 * 3600)  # paused until 30 minutes before the appointment
        assert await gateway.worker.run_due() == 0
        await gateway.app.state.operations.resume_sink("sms")
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
    assert (delivery.status, delivery.dead_reason, delivery.attempts) == ("skipped", "expired", 1)
    assert twilio.requests == []


async def test_a_message_that_would_arrive_too_late_is_skipped_as_expired(
    write_config: Callable[[str], Config], twilio: Receiver
) -> None:
    async with running_gateway(write_config(SMS.format(url=twilio.url))) as gateway:
        # the manual clock starts on 2026-01-01; the sample appointment is on 2026-01-25 at 14:30 UTC
        gateway.clock.advance(24 * 86400 + 14 * 3600)
        event_id = (await gateway.post_moncreneau(load_samples("moncreneau.json")["appointment.created"])).json()[
            "event_id"
        ]
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
    assert (delivery.status, delivery.dead_reason) == ("skipped", "expired")
    assert twilio.requests == []


FALLBACK = (
    """
sinks:
"""
    + TWILIO_SMS
    + """      api_url: {url}
    fallback: email
  email:
    type: smtp_email
    options: {{host: 127.0.0.1, port: {smtp_port}, security: none, from_email: rdv@example.gn}}
routes:
  - events: [appointment.created]
    sinks: [sms]
"""
)


@pytest.mark.parametrize("cause", ["no phone", "a number Twilio refuses"])
async def test_a_message_the_sms_cannot_reach_goes_by_email_instead(
    write_config: Callable[[str], Config], twilio: Receiver, mailbox: tuple[Mailbox, int], cause: str
) -> None:
    handler, smtp_port = mailbox
    body = load_samples("moncreneau.json")["appointment.created"]
    if cause == "no phone":
        del body["data"]["object"]["phone"]
    else:
        twilio.script(
            Answer(
                400,
                {"Content-Type": "application/json"},
                json.dumps({"code": 21211, "message": "Invalid 'To'", "status": 400}).encode(),
            )
        )
    async with running_gateway(write_config(FALLBACK.format(url=twilio.url, smtp_port=smtp_port))) as gateway:
        event_id = (await gateway.post_moncreneau(body)).json()["event_id"]
        assert await gateway.worker.run_due() == 1
        email, sms = await gateway.store.deliveries(event_id)  # the email queued with the failure, in one commit
        assert (email.sink, email.status) == ("email", "pending")
        reason = "no recipient" if cause == "no phone" else "bad recipient"
        assert (sms.status, sms.dead_reason) == ("skipped", f"{reason}; sent through email")
        assert await gateway.worker.run_due() == 1
        (recipients, message) = handler.received[0]
        assert recipients == ["jean.dupont@example.gn"] and "confirmé" in message["Subject"]
        assert [d.status for d in await gateway.store.deliveries(event_id)] == ["succeeded", "skipped"]
        assert (await gateway.app.state.operations.list_dead_letters(DeadLetterFilter()))["dead_letters"] == []


async def test_events_without_an_address_are_skipped_not_dead_letters_unless_configured(
    write_config: Callable[[str], Config], mailbox: tuple[Mailbox, int]
) -> None:
    """Four of the five moncreneau samples carry no email: on an email route that is a normal day."""
    handler, smtp_port = mailbox
    email = f"""
    sinks:
      email:
        type: smtp_email
        options: {{host: 127.0.0.1, port: {smtp_port}, security: none, from_email: rdv@example.gn}}
        supersede: false
    routes:
      - sinks: [email]
    """
    async with running_gateway(write_config(email)) as gateway:
        for body in load_samples("moncreneau.json").values():
            await gateway.post_moncreneau(body)
        while await gateway.worker.run_due():
            pass
        (events,) = [(await gateway.app.state.operations.list_events(EventFilter()))["events"]]
        statuses = sorted(event["deliveries"]["email"] for event in events)
        assert statuses == ["skipped", "skipped", "skipped", "skipped", "succeeded"] and len(handler.received) == 1
        assert (
            metric(gateway, "gateway_deliveries_withheld_total", sink="email", status="skipped", reason="no recipient")
            == 4
        )
    strict = email.replace("supersede: false", "supersede: false\n        on_no_recipient: dead_letter")
    async with running_gateway(write_config(strict)) as gateway:
        cancelled = load_samples("moncreneau.json")["appointment.cancelled"]
        cancelled["id"] = "evt_other"  # the same database: the sample itself is a duplicate now
        event_id = (await gateway.post_moncreneau(cancelled)).json()["event_id"]
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(event_id)
        assert (delivery.status, delivery.dead_reason) == ("dead", "no recipient")
