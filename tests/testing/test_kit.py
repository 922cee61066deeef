"""The plugin author's kit, used as a plugin's tests use it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from gateway_sinks.http import HttpOptions, HttpSink

from gateway import AppointmentEvent, ConfigError, Delivery, Receipt, Sink, SinkOptions
from gateway.sources.base import load_samples
from gateway.sources.moncreneau import Moncreneau
from gateway.testing import options_from_yaml, post_webhook, run_sink, sample_event
from gateway.testing.receiver import Answer, Receiver, receiver

pytestmark = pytest.mark.anyio


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


def test_a_sample_event_has_the_parts_it_is_given_and_the_samples_others() -> None:
    event = sample_event("moncreneau", "appointment.created", customer={"phone": None}, changes={})
    assert event.customer is not None
    assert (event.customer.phone, event.customer.name) == (None, "Jean Dupont")
    assert event.type == "appointment.created" and event.appointment is not None
    assert sample_event("yappointment", "booking.cancelled").type == "appointment.cancelled"
    with pytest.raises(KeyError, match=r"no yappointment sample of type 'booking.paid'; known: booking.cancelled"):
        sample_event("yappointment", "booking.paid")


async def test_a_sinks_outcome_is_classified_as_the_core_would(crm: Receiver) -> None:
    sink = HttpSink("crm", options_from_yaml(HttpOptions, f"url: {crm.url}/hooks"), timeout=2.0)
    event = sample_event("moncreneau", "appointment.created")
    crm.script(Answer(503, {"Retry-After": "7"}), Answer(422))
    retried, refused, delivered = [await run_sink(sink, event) for _ in range(3)]
    assert (retried.status, retried.retry_after) == ("retryable", 7.0)
    assert (refused.status, refused.reason) == ("permanent", "permanent error")
    assert delivered.status == "succeeded" and delivered.receipt is not None
    assert [request.headers["idempotency-key"] for request in crm.requests] == ["dlv-test"] * 3


async def test_a_sink_that_raises_anything_else_or_hangs_is_retried() -> None:
    class Hangs(Sink):
        type_name = "hangs"

        async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
            if delivery.attempt == 1:
                raise ValueError("a hiccup")
            await anyio.sleep(5)
            return None

    sink = Hangs("hangs", SinkOptions(), timeout=0.05)
    event = sample_event("moncreneau", "appointment.created")
    hiccup = await run_sink(sink, event)
    hung = await run_sink(sink, event, Delivery(id="d", sink="hangs", attempt=2))
    assert (hiccup.status, type(hiccup.error)) == ("retryable", ValueError)
    assert (hung.status, type(hung.error)) == ("retryable", TimeoutError)


def test_options_read_from_yaml_fail_with_the_cores_message() -> None:
    with pytest.raises(ConfigError, match=r"sinks\.test\.options\.urll: unknown key; did you mean url\?"):
        options_from_yaml(HttpOptions, "urll: https://crm.example/hooks")


async def test_a_source_is_posted_to_through_the_real_app_and_read_back() -> None:
    options = "secrets: [s3cret]\ntimezone: Africa/Conakry\ndefault_region: GN"
    posted = await post_webhook(Moncreneau, load_samples("moncreneau.json")["appointment.created"], options=options)
    assert (posted.status_code, posted.answer["status"]) == (202, "accepted")
    assert posted.event is not None and posted.event.customer is not None
    assert posted.event.customer.phone == "+224621234567"
    unknown = load_samples("moncreneau.json")["appointment.created"] | {"type": "appointment.moved"}
    unmapped = await post_webhook(Moncreneau, unknown, options=options)
    assert (unmapped.status_code, unmapped.answer["status"], unmapped.event) == (202, "unmapped", None)
    broken = await post_webhook(Moncreneau, b"{", options=options)
    assert (broken.status_code, broken.answer["error"], broken.event) == (400, "invalid_json", None)
