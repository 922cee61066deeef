from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from gateway_sinks.sendgrid_email import SendGridEmail, SendGridOptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError, RetryableDeliveryError
from gateway.sinks import Delivery, MemoryLedger, Receipt
from gateway.testing.receiver import Answer, Receiver, receiver, serving
from tests.samples import ALL_SAMPLES, appointment_event, sample_event

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fault() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        endpoint.default = Answer(202, {"X-Message-Id": "msg-1"}, b"")
        yield endpoint


async def deliver(
    api_url: str,
    event: AppointmentEvent | None = None,
    *,
    delivery: Delivery | None = None,
    sink_timeout: float = 5.0,
    **options: Any,
) -> Receipt | None:
    settings = {"api_key": "SG.secret-key", "from_email": "rdv@example.gn", "api_url": api_url, **options}
    sink = SendGridEmail("email", SendGridOptions.model_validate(settings), timeout=sink_timeout)
    return await sink.deliver(
        event or appointment_event(), delivery or Delivery(id="dlv-1", sink="email", attempt=1, attempted_at=0.0)
    )


def errors(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"errors": [{"field": "personalizations.0.to", "message": message}]}).encode()
    return Answer(status, {"Content-Type": "application/json", **(headers or {})}, body)


WITH_EMAIL = [
    (provider, kind)
    for provider, kind in ALL_SAMPLES
    if kind != "customer.updated" and (customer := sample_event(provider, kind).customer) and customer.email
]


@pytest.mark.parametrize(("provider", "event_type"), WITH_EMAIL)
async def test_seed_events_with_an_email_are_valid_mail_send_requests(
    sendgrid_api: str, provider: str, event_type: str
) -> None:
    event = sample_event(provider, event_type)
    assert event.customer is not None and event.customer.email is not None
    ledger = MemoryLedger()
    delivery = Delivery(id="dlv-1", sink="email", attempt=1, attempted_at=0.0, ledger=ledger, locale="en")
    assert await deliver(sendgrid_api, event, delivery=delivery, from_name="Prefecture", reply_to="help@example.gn")
    assert list(ledger.messages) == [event.customer.email]


@pytest.mark.parametrize("event_type", ["appointment.updated", "appointment.cancelled", "appointment.completed"])
async def test_staff_notifications_and_dynamic_templates_are_valid_requests(sendgrid_api: str, event_type: str) -> None:
    ledger = MemoryLedger()
    delivery = Delivery(id="dlv-1", sink="email", attempt=1, attempted_at=0.0, ledger=ledger)
    templates = {event_type: "d-0123456789abcdef0123456789abcdef"}
    await deliver(
        sendgrid_api,
        appointment_event(event_type),
        delivery=delivery,
        to=["desk@example.gn"],
        dynamic_templates=templates,
    )
    assert list(ledger.messages) == ["desk@example.gn"]


async def test_the_request_carries_message_and_key(fault: Receiver) -> None:
    receipt = await deliver(fault.url)
    (request,) = fault.requests
    body = json.loads(request.body)
    assert request.path == "/v3/mail/send" and request.headers["authorization"] == "Bearer SG.secret-key"
    (personalization,) = body["personalizations"]
    assert personalization["to"] == [{"email": "jean.dupont@example.gn"}]
    assert personalization["custom_args"] == {"delivery_id": "dlv-1", "event_id": "evt-appointment.created"}
    assert body["subject"].startswith("Rendez-vous confirmé : dimanche 25 janvier 2026 à 14:30")
    assert body["content"][0]["type"] == "text/plain" and "Passport Service" in body["content"][0]["value"]
    assert receipt is not None and receipt.detail == "sent msg-1"


async def test_dynamic_templates_get_the_event_and_its_phrases(fault: Receiver) -> None:
    await deliver(fault.url, dynamic_templates={"appointment.created": "d-123"}, locale="en")
    body = json.loads(fault.requests[0].body)
    data = body["personalizations"][0]["dynamic_template_data"]
    assert body["template_id"] == "d-123" and "content" not in body and "subject" not in body
    assert data["when"] == "Sunday, January 25, 2026 at 2:30 PM"
    assert data["customer"]["name"] == "Jean Dupont" and data["place"] == "Passport Service"


async def test_a_rate_limit_waits_for_the_reset(fault: Receiver) -> None:
    fault.script(errors(429, "too many requests", {"X-RateLimit-Reset": str(int(time.time()) + 120)}))
    with pytest.raises(RetryableDeliveryError) as error:
        await deliver(fault.url)
    assert error.value.status_code == 429 and error.value.retry_after is not None
    assert 100 < error.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_outages_are_retryable(fault: Receiver, status: int) -> None:
    fault.script(errors(status, "unavailable"))
    with pytest.raises(RetryableDeliveryError, match=f"SendGrid answered {status}"):
        await deliver(fault.url)


async def test_bad_requests_are_permanent_and_name_the_field(fault: Receiver) -> None:
    fault.script(errors(400, "Does not contain a valid address."))
    with pytest.raises(PermanentDeliveryError, match=r"400: personalizations.0.to Does not contain a valid address"):
        await deliver(fault.url)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_permanent_and_raises_an_alert(
    fault: Receiver, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    fault.script(errors(status, "The provided authorization grant is invalid"))
    with caplog.at_level(logging.ERROR), pytest.raises(PermanentDeliveryError) as error:
        await deliver(fault.url)
    assert error.value.reason == "authentication failed"
    assert "ALERT sink email: SendGrid refused the API key" in caplog.text and "SG.secret-key" not in caplog.text


async def test_a_slow_api_times_out_as_retryable(fault: Receiver) -> None:
    hold = anyio.Event()
    fault.script(Answer(hold=hold))
    with anyio.fail_after(5), pytest.raises(RetryableDeliveryError, match="SendGrid unreachable"):
        await deliver(fault.url, sink_timeout=0.2)
    hold.set()


async def test_an_unreachable_api_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError, match="SendGrid unreachable"):
        await deliver("http://127.0.0.1:9")


async def test_an_event_without_an_email_is_a_clear_permanent_failure(fault: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError, match="no customer email address") as error:
        await deliver(fault.url, appointment_event("appointment.updated"))
    assert error.value.reason == "no recipient" and fault.requests == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"from_email": "nobody"}, "String should match pattern"),
        ({"to": ["desk"]}, "not email addresses: desk"),
        ({"dynamic_templates": {"booking.created": "d-1"}}, "not an event type"),
    ],
)
def test_impossible_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SendGridOptions.model_validate({"api_key": "k", "from_email": "rdv@example.gn", **settings})


@pytest.mark.parametrize("status", [401, 403])
async def test_the_official_specs_refusals_of_the_key_are_authentication_failures(
    sendgrid_api: str, status: int
) -> None:
    """Prism answers with the spec's own 401 or 403 when asked to (`Prefer: code=...`); a proxy on the way asks."""
    async with httpx.AsyncClient(base_url=sendgrid_api) as prism:

        async def asking_for_a_refusal(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive)
            headers = {**request.headers, "prefer": f"code={status}"}
            answer = await prism.request(
                request.method, request.url.path, content=await request.body(), headers=headers
            )
            await Response(answer.content, answer.status_code, {"content-type": answer.headers["content-type"]})(
                scope, receive, send
            )

        async with serving(asking_for_a_refusal) as url:
            with anyio.fail_after(20), pytest.raises(PermanentDeliveryError) as error:
                await deliver(url)
    assert (error.value.reason, error.value.status_code) == ("authentication failed", status)
