from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
from gateway_sinks.twilio_sms import TwilioOptions, TwilioSms

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError, RetryableDeliveryError
from gateway.sinks import Delivery, MemoryLedger, Receipt
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.samples import appointment_event, sample_event

pytestmark = pytest.mark.anyio
SID = "AC" + "0123456789abcdef" * 2
STARTS = appointment_event().appointment.starts_at.timestamp()  # type: ignore[union-attr]


@pytest.fixture
async def fault() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        endpoint.default = Answer(201, {"Content-Type": "application/json"}, json.dumps({"sid": "SMfake"}).encode())
        yield endpoint


async def deliver(
    api_url: str,
    event: AppointmentEvent | None = None,
    *,
    delivery: Delivery | None = None,
    sink_timeout: float = 5.0,
    **options: Any,
) -> Receipt | None:
    settings = {"account_sid": SID, "auth_token": "token", "from": "+15005550006", "api_url": api_url, **options}
    sink = TwilioSms("sms", TwilioOptions.model_validate(settings), timeout=sink_timeout)
    await sink.open()
    try:
        return await sink.deliver(
            event or appointment_event(), delivery or Delivery(id="dlv-1", sink="sms", attempt=1, attempted_at=0.0)
        )
    finally:
        await sink.aclose()


def twilio_error(status: int, code: int, message: str = "refused") -> Answer:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


@pytest.mark.parametrize(
    "event_type",
    [
        "appointment.created",
        "appointment.updated",
        "appointment.cancelled",
        "appointment.validated",
        "appointment.completed",
    ],
)
async def test_every_seed_event_is_a_valid_create_message_request(twilio_api: str, event_type: str) -> None:
    ledger = MemoryLedger()
    delivery = Delivery(id="dlv-1", sink="sms", attempt=1, attempted_at=0.0, ledger=ledger)
    receipt = await deliver(twilio_api, appointment_event(event_type), delivery=delivery)
    assert receipt is not None and receipt.detail is not None and receipt.detail.startswith("sent SM")
    assert list(ledger.messages) == ["+224621234567"]


async def test_a_messaging_service_and_fixed_staff_numbers_are_valid_requests(twilio_api: str) -> None:
    ledger = MemoryLedger()
    delivery = Delivery(id="dlv-1", sink="sms", attempt=1, attempted_at=0.0, ledger=ledger, locale="en")
    await deliver(
        twilio_api,
        delivery=delivery,
        **{"from": None, "messaging_service_sid": "MG" + "0" * 32, "to": ["+33612345678", "+224622000000"]},  # type: ignore[arg-type]
    )
    assert sorted(ledger.messages) == ["+224622000000", "+33612345678"]


async def test_the_request_carries_recipient_sender_body_and_credentials(fault: Receiver) -> None:
    await deliver(fault.url)
    (request,) = fault.requests
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
    assert form["To"] == "+224621234567" and form["From"] == "+15005550006"
    assert form["Body"].startswith("Bonjour Jean Dupont, votre rendez-vous (Passport Service) est confirmé pour le")
    assert request.headers["authorization"].startswith("Basic ")


async def test_a_retry_never_resends_to_a_recipient_already_served(fault: Receiver) -> None:
    ledger = MemoryLedger()
    fault.script(Answer(201, {"Content-Type": "application/json"}, b'{"sid": "SM1"}'), twilio_error(503, 20500))
    staff = ["+33612345678", "+224622000000"]
    first = Delivery(id="dlv-1", sink="sms", attempt=1, attempted_at=0.0, ledger=ledger)
    with pytest.raises(RetryableDeliveryError):
        await deliver(fault.url, delivery=first, to=staff)
    second = Delivery(id="dlv-1", sink="sms", attempt=2, attempted_at=60.0, ledger=ledger)
    receipt = await deliver(fault.url, delivery=second, to=staff)
    replay = Delivery(id="dlv-1", sink="sms", attempt=3, attempted_at=90.0, ledger=ledger)
    assert (await deliver(fault.url, delivery=replay, to=staff)).detail == "sent nothing; 2 already sent"  # type: ignore[union-attr]
    to = [parse_qs(r.body.decode())["To"][0] for r in fault.requests]
    assert to == ["+33612345678", "+224622000000", "+224622000000"]
    assert receipt is not None and receipt.detail == "sent SMfake; 1 already sent"
    assert ledger.messages == {"+33612345678": "SM1", "+224622000000": "SMfake"}


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (
            Answer(
                429,
                {"Retry-After": "30", "Content-Type": "application/json"},
                b'{"code": 20429, "message": "Too Many Requests", "status": 429}',
            ),
            30,
        ),
        (twilio_error(429, 20429), None),
        (twilio_error(503, 20500, "Service Unavailable"), None),
        (Answer(500, {}, b"<html>oops</html>"), None),
    ],
)
async def test_rate_limits_and_outages_are_retryable(
    fault: Receiver, answer: Answer, retry_after: float | None
) -> None:
    fault.script(answer)
    with pytest.raises(RetryableDeliveryError) as error:
        await deliver(fault.url)
    assert error.value.retry_after == retry_after and error.value.status_code == answer.status


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (21211, "bad recipient", "invalid 'To' number"),
        (21614, "bad recipient", "'To' is not a mobile number"),
        (21610, "unsubscribed", "unsubscribed"),
        (21212, "bad sender", "invalid .From. number"),
        (21602, "permanent error", "Twilio refused the message"),
    ],
)
async def test_refused_recipients_and_bad_requests_are_permanent(
    fault: Receiver, code: int, reason: str, message: str
) -> None:
    fault.script(twilio_error(400, code))
    with pytest.raises(PermanentDeliveryError, match=message) as error:
        await deliver(fault.url)
    assert (error.value.reason, error.value.status_code) == (reason, 400)


async def test_rejected_credentials_are_permanent_and_raise_an_alert(
    fault: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    fault.script(twilio_error(401, 20003, "Authenticate"))
    with caplog.at_level(logging.ERROR), pytest.raises(PermanentDeliveryError) as error:
        await deliver(fault.url)
    assert error.value.reason == "authentication failed"
    assert "ALERT sink sms: Twilio refused the credentials" in caplog.text
    assert "token" not in caplog.text


async def test_an_rfc9457_error_body_is_classified_too(fault: Receiver) -> None:
    body = {"type": "https://www.twilio.com/docs/errors/21211", "title": "Invalid To", "status": 400, "code": 21211}
    fault.script(Answer(400, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()))
    with pytest.raises(PermanentDeliveryError, match="invalid 'To' number") as error:
        await deliver(fault.url)
    assert error.value.reason == "bad recipient"


async def test_a_slow_api_times_out_as_retryable(fault: Receiver) -> None:
    hold = anyio.Event()
    fault.script(Answer(hold=hold))
    with anyio.fail_after(5), pytest.raises(RetryableDeliveryError, match="Twilio unreachable: TimeoutError"):
        await deliver(fault.url, sink_timeout=0.2)
    hold.set()


async def test_an_unreachable_api_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError, match="Twilio unreachable"):
        await deliver("http://127.0.0.1:9")


async def test_an_event_without_a_usable_phone_is_a_clear_permanent_failure(fault: Receiver) -> None:
    customer = sample_event("yappointment", "booking.created")  # yAppointment's sample has no phone
    with pytest.raises(PermanentDeliveryError, match="no customer phone number") as error:
        await deliver(fault.url, customer)
    assert error.value.reason == "no recipient" and fault.requests == []


async def test_a_message_that_would_arrive_too_late_expires_unsent(fault: Receiver) -> None:
    late = Delivery(id="dlv-1", sink="sms", attempt=3, attempted_at=STARTS - 1800)
    with pytest.raises(PermanentDeliveryError, match="expired") as error:
        await deliver(fault.url, delivery=late, expire_before_start="1h")
    assert error.value.reason == "expired" and fault.requests == []
    in_time = Delivery(id="dlv-1", sink="sms", attempt=1, attempted_at=STARTS - 7200)
    assert await deliver(fault.url, delivery=in_time, expire_before_start="1h") is not None
    after_start = Delivery(id="dlv-2", sink="sms", attempt=1, attempted_at=STARTS + 3600)
    await deliver(fault.url, appointment_event("appointment.completed"), delivery=after_start, expire_before_start="0s")
    assert len(fault.requests) == 2  # a completed appointment's message is about the past: it never expires


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"from": None}, "set exactly one of from"),
        ({"messaging_service_sid": "MG" + "0" * 32}, "set exactly one of from"),
        ({"to": ["0621234567"]}, "not an E.164 number"),
        ({"account_sid": "SK123"}, "String should match pattern"),
        ({"locale": "klingon"}, "not a locale"),
        ({"templates": {"booking.created": {"body": "x"}}}, "not an event type"),
    ],
)
def test_impossible_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TwilioOptions.model_validate({"account_sid": SID, "auth_token": "t", "from": "+15005550006", **settings})
