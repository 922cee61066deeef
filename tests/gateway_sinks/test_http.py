from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from gateway_sinks.http import HttpOptions, HttpSink, sign

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError, RetryableDeliveryError
from gateway.sinks import Delivery
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.samples import appointment_event

pytestmark = pytest.mark.anyio
SECRET = "whsec_" + base64.b64encode(b"a very secret key").decode()


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


async def deliver(
    url: str, attempt: int = 1, sink_timeout: float = 5.0, event: AppointmentEvent | None = None, **options: Any
) -> Any:
    sink = HttpSink("crm", HttpOptions.model_validate({"url": url, **options}), timeout=sink_timeout)
    await sink.open()
    try:
        delivery = Delivery(id="dlv-42", sink="crm", attempt=attempt)
        return await sink.deliver(event or appointment_event(), delivery)
    finally:
        await sink.aclose()


async def test_the_canonical_event_is_posted_with_an_idempotency_key(crm: Receiver) -> None:
    receipt = await deliver(crm.url + "/hooks", headers={"Authorization": "Bearer t0k"})
    await deliver(crm.url + "/hooks", attempt=2)
    first, retry = crm.requests
    assert receipt.status_code == 200
    assert (first.method, first.path) == ("POST", "/hooks")
    assert first.headers["authorization"] == "Bearer t0k" and first.headers["content-type"] == "application/json"
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"] == "dlv-42"
    assert json.loads(first.body) == WIRE_FORMAT


WIRE_FORMAT = {  # the documented canonical event, written out by hand so that a change of the model shows here
    "id": "evt-appointment.created",
    "type": "appointment.created",
    "source": "moncreneau",
    "provider": "moncreneau",
    "provider_event_id": "evt_abc123",
    "provider_event_type": "appointment.created",
    "provider_delivery_id": None,
    "occurred_at": "2026-01-21T14:30:00Z",
    "received_at": "2026-01-20T00:00:00Z",
    "appointment": {
        "id": "12345",
        "status": "scheduled",
        "starts_at": "2026-01-25T14:30:00Z",
        "ends_at": None,
        "timezone": "Africa/Conakry",
        "department": {
            "id": "5",
            "name": "Passport Service",
            "organisation": {"id": "1", "name": "Ministry of Interior"},
        },
        "service": None,
        "qr_code_url": "https://moncreneau.gn/qr/12345",
        "created_at": "2026-01-21T14:30:00Z",
        "updated_at": None,
        "credits_used": 1,
    },
    "customer": {
        "id": None,
        "name": "Jean Dupont",
        "phone": "+224621234567",
        "phone_raw": "+224621234567",
        "email": "jean.dupont@example.gn",
        "email_raw": None,
    },
    "changes": {},
    "cancellation": None,
    "validation": None,
    "completion": None,
    "alert": None,
    "reminder": None,
}


async def test_requests_can_be_signed_the_standard_webhooks_way(crm: Receiver) -> None:
    await deliver(crm.url, signing_secret=SECRET)
    (request,) = crm.requests
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
    expected = base64.b64encode(hmac.new(b"a very secret key", signed, hashlib.sha256).digest()).decode()
    assert request.headers["webhook-id"] == "dlv-42"
    assert request.headers["webhook-signature"] == f"v1,{expected}"


def test_signatures_match_the_standard_webhooks_published_test_vector() -> None:
    headers = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


async def test_a_template_shapes_the_body(crm: Receiver) -> None:
    template = (
        '{"ref": "{{ event.appointment.id }}", "who": {{ event.customer.name | tojson }}, '
        '"try": {{ delivery.attempt }}}'
    )
    await deliver(crm.url, attempt=3, body_template=template, method="PUT")
    (request,) = crm.requests
    assert request.method == "PUT"
    assert json.loads(request.body) == {"ref": "12345", "who": "Jean Dupont", "try": 3}


def hostile_event(name: str) -> AppointmentEvent:
    event = appointment_event()
    assert event.customer is not None
    return event.model_copy(update={"customer": event.customer.model_copy(update={"name": name})})


@pytest.mark.parametrize("name", ['", "role": "admin", "x": "', 'a\\", "role": "admin', "line\nbreak", "{{ 7*7 }}"])
async def test_values_in_a_json_template_stay_inside_their_strings(crm: Receiver, name: str) -> None:
    template = '{"ref": "{{ appointment.id }}", "name": "{{ customer.name }}", "who": {{ customer.name | tojson }}}'
    await deliver(crm.url, body_template=template, event=hostile_event(name))
    (request,) = crm.requests
    assert json.loads(request.body) == {"ref": "12345", "name": name, "who": name}


async def test_a_json_template_rendering_something_else_than_json_is_permanent(crm: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError, match="body_template failed") as error:
        await deliver(crm.url, body_template='{"name": {{ customer.name }}}')  # unquoted: not JSON
    assert error.value.reason == "template error" and crm.requests == []


async def test_other_content_types_are_rendered_as_written(crm: Receiver) -> None:
    await deliver(
        crm.url, body_template="name={{ customer.name }}", content_type="text/plain", event=hostile_event('a"b')
    )
    assert crm.requests[0].body == b'name=a"b'


async def test_a_template_that_fails_at_render_time_is_permanent_and_named(crm: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"template sinks.crm.options.body_template failed: .*no_such"):
        await deliver(crm.url, body_template="{{ event.no_such.field }}")
    assert crm.requests == []


async def test_the_sandbox_keeps_templates_out_of_python(crm: Receiver) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"unsafe|not safely callable|access to attribute"):
        await deliver(crm.url, body_template="{{ event.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}")


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_server_errors_and_rate_limits_are_retryable(crm: Receiver, status: int) -> None:
    crm.script(Answer(status, {"Retry-After": "120"}, b"busy"))
    with pytest.raises(RetryableDeliveryError) as error:
        await deliver(crm.url)
    assert (error.value.status_code, error.value.retry_after) == (status, 120)
    assert f"answered {status}: busy" in str(error.value)


async def test_retry_after_may_be_an_http_date(crm: Receiver) -> None:
    crm.script(Answer(503, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    with pytest.raises(RetryableDeliveryError) as error:
        await deliver(crm.url)
    assert error.value.retry_after is not None and error.value.retry_after > 86400


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
async def test_other_statuses_are_permanent(crm: Receiver, status: int) -> None:
    crm.script(Answer(status, {"Location": "http://elsewhere.test/"}))
    with pytest.raises(PermanentDeliveryError) as error:
        await deliver(crm.url)
    assert error.value.status_code == status


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, and is not listened on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableDeliveryError, match="Connect"):
        await deliver(f"http://127.0.0.1:{port}/")


async def test_a_slow_answer_times_out_as_retryable(crm: Receiver) -> None:
    hold = anyio.Event()
    crm.script(Answer(hold=hold))
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await deliver(crm.url, sink_timeout=0.2)
    hold.set()
