from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import httpx
import pytest

from gateway import delivery
from gateway.app import create_app
from gateway.clock import SystemClock
from gateway.config import Config
from gateway.events import AppointmentEvent
from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.sinks import Delivery, Receipt, Sink
from gateway.sources.base import load_samples
from gateway.store.base import ClaimedDelivery, Ingested, Recorded
from gateway.store.sqlite import SQLiteStore
from gateway.testing.receiver import Answer, Receiver, receiver
from tests import helpers
from tests.conftest import Running, moncreneau_request, running_gateway
from tests.helpers import dead_owner, metric, until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


def http_sinks(**sinks: tuple[str, str]) -> str:
    """YAML for http sinks given as name=(url, extra YAML inline settings), all routed every event."""
    lines = ["worker: {poll_interval: 0.05, shutdown_grace: 0.2}", "sinks:"]
    for name, (url, extra) in sinks.items():
        lines.append(f"  {name}: {{type: http, options: {{url: '{url}'}}, {extra}}}")
    lines += ["routes:", f"  - sinks: [{', '.join(sinks)}]"]
    return "\n".join(lines) + "\n"


def event(
    event_type: str = "appointment.created",
    *,
    event_id: str | None = None,
    appointment: int = 12345,
    created: str | None = None,
) -> dict[str, Any]:
    body = load_samples("moncreneau.json")[event_type]
    body["data"]["object"]["id"] = appointment
    if event_id:
        body["id"] = event_id
    if created:
        body["created"] = created
    return body


async def accepted(gateway: Running, body: dict[str, Any]) -> str:
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


async def only_delivery(gateway: Running, event_id: str) -> Any:
    (delivery,) = await gateway.store.deliveries(event_id)
    return delivery


class Hanging(Sink):
    """A plugin sink that never answers and ignores its own timeout."""

    type_name = "hanging"

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        await anyio.sleep_forever()
        return None


class ChokesOnData(Sink):
    """A plugin sink that fails on the event's data without saying so (year 9999 plus a duration, a CR LF...)."""

    type_name = "chokes"

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        if event.type == "appointment.created":
            raise OverflowError("date value out of range")
        return None


async def test_a_sink_failing_on_the_events_data_dead_letters_it_as_bad_data_and_the_next_event_goes_on(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1m]}")))
    async with running_gateway(config) as gateway:
        lane = gateway.worker.lanes["crm"]
        gateway.worker.lanes["crm"] = replace(lane, sink=ChokesOnData("crm", lane.sink.options, timeout=lane.timeout))
        created = await accepted(gateway, event())
        cancelled = await accepted(gateway, event("appointment.cancelled"))
        assert await gateway.worker.run_due() == 1
        assert await gateway.worker.run_due() == 1  # not waiting 24 h of retries behind the first
        first, second = await only_delivery(gateway, created), await only_delivery(gateway, cancelled)
        (attempt,) = await gateway.store.attempts(first.id)
    assert (first.status, first.dead_reason) == ("dead", "bad data")
    assert attempt.outcome == "permanent" and attempt.detail == "bad data: OverflowError: date value out of range"
    assert second.status == "succeeded"


async def test_a_sink_that_never_answers_is_cut_off_at_its_timeout_and_retried(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 50ms, retry: {schedule: [1m]}")))
    async with running_gateway(config) as gateway:
        lane = gateway.worker.lanes["crm"]
        gateway.worker.lanes["crm"] = replace(lane, sink=Hanging("crm", lane.sink.options, timeout=lane.timeout))
        event_id = await accepted(gateway, event())
        with anyio.fail_after(5):
            assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
        (attempt,) = await gateway.store.attempts(delivery.id)
    assert (attempt.outcome, attempt.detail) == ("retryable", "timed out after 0.05s")
    assert delivery.status == "pending" and delivery.next_attempt_at == attempt.started_at + 60


async def test_retries_follow_the_schedule_on_the_injected_clock(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1m, 5m], give_up_after: 1d}")))
    crm.script(Answer(503), Answer(503), Answer(502))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        start = gateway.clock.now()
        made = []
        for step in (0, 59, 1, 299, 1, 299, 1):
            gateway.clock.advance(step)
            made.append(await gateway.worker.run_due())
        assert made == [1, 0, 1, 0, 1, 0, 1]
        delivery = await only_delivery(gateway, event_id)
        attempts = await gateway.store.attempts(delivery.id)
    assert delivery.status == "succeeded" and delivery.attempts == 4 and delivery.last_error is None
    assert [a.started_at - start for a in attempts] == [0, 60, 360, 660]
    assert [(a.outcome, a.status_code) for a in attempts] == [
        ("retryable", 503),
        ("retryable", 503),
        ("retryable", 502),
        ("succeeded", 200),
    ]
    assert "answered 503" in (attempts[0].detail or "")
    assert all(a.duration_ms >= 0 for a in attempts)


async def test_retry_after_from_the_sink_is_honoured(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1m]}")))
    crm.script(Answer(429, {"Retry-After": "600"}))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        assert await gateway.worker.run_due() == 1
        gateway.clock.advance(599)
        assert await gateway.worker.run_due() == 0
        gateway.clock.advance(1)
        assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
    assert delivery.status == "succeeded" and delivery.attempts == 2


async def test_a_permanent_error_dead_letters_at_once(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1s]}")))
    crm.script(Answer(422, body=b'{"error": "unknown customer"}'))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        assert await gateway.worker.run_due() == 1
        gateway.clock.advance(3600)
        assert await gateway.worker.run_due() == 0
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.attempts, delivery.dead_reason) == ("dead", 1, "permanent error")
    assert "answered 422" in delivery.last_error and "unknown customer" in delivery.last_error


async def test_exhausted_retries_dead_letter(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [10s], max_attempts: 3}")))
    crm.default = Answer(500)
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        for _ in range(5):
            await gateway.worker.run_due()
            gateway.clock.advance(10)
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.attempts) == ("dead", 3)
    assert delivery.dead_reason.startswith("max_attempts")
    assert len(crm.requests) == 3


async def test_too_old_a_delivery_dead_letters(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1h], give_up_after: 90m}")))
    crm.default = Answer(503)
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        await gateway.worker.run_due()
        gateway.clock.advance(3600)
        await gateway.worker.run_due()
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.attempts) == ("dead", 2)
    assert delivery.dead_reason.startswith("give_up_after")


async def test_a_timeout_is_retried(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 200ms, retry: {schedule: [1s]}")))
    never = anyio.Event()
    crm.script(Answer(hold=never))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        with anyio.fail_after(5):
            assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
        (attempt,) = await gateway.store.attempts(delivery.id)
        never.set()
    assert delivery.status == "pending" and attempt.outcome == "retryable"
    assert "timed out" in (attempt.detail or "")


async def test_a_crashed_workers_leases_come_back(write_config: Callable[[str], Config], crm: Receiver) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 10s")))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        now = gateway.clock.now()
        (claimed,) = await gateway.store.claim("crm", limit=10, now=now, owner="crashed", lease_until=now + 40)
        assert await gateway.worker.run_due() == 0  # still leased by the worker that died
        gateway.clock.advance(40)
        assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
    assert claimed.id == delivery.id and delivery.status == "succeeded"
    assert len(crm.requests) == 1


async def test_a_restarted_worker_takes_back_at_once_what_its_crashed_predecessor_held(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 10s")))
    async with running_gateway(config) as gateway:
        crashed, elsewhere = dead_owner(), "worker:another-host:1:1:abc"
        first = await accepted(gateway, event(event_id="evt_1", appointment=1))
        second = await accepted(gateway, event(event_id="evt_2", appointment=2))
        now = gateway.clock.now()
        await gateway.store.claim("crm", limit=1, now=now, owner=crashed, lease_until=now + 40)
        await gateway.store.claim("crm", limit=1, now=now, owner=elsewhere, lease_until=now + 40)
        assert await gateway.worker.run_due() == 0
        assert await gateway.worker.take_back_orphans() == 1  # not the other host's: it cannot be checked
        assert await gateway.worker.run_due() == 1
        statuses = {(await only_delivery(gateway, event_id)).status for event_id in (first, second)}
    assert statuses == {"succeeded", "pending"} and len(crm.requests) == 1


async def test_a_clock_jumping_forward_never_makes_the_worker_claim_its_own_attempt_again(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    release = anyio.Event()
    crm.script(Answer(hold=release))
    config = write_config(http_sinks(crm=(crm.url, "timeout: 10s")))
    async with running_gateway(config, run_worker=True) as gateway:
        event_id = await accepted(gateway, event())
        with anyio.fail_after(5):
            await crm.wait_for(1)
            gateway.clock.advance(3600)  # every lease now looks expired
            gateway.worker.wake()
            claims_before = len(crm.requests)
            for _ in range(20):  # give the lane every chance to claim it again
                await anyio.sleep(0.01)
            release.set()

            async def recorded() -> bool:
                return bool((await only_delivery(gateway, event_id)).status != "pending")

            await until(recorded, "the attempt to be recorded", 5)
    assert claims_before == 1 and len(crm.requests) == 1


async def test_a_worker_renews_the_lease_of_an_attempt_that_outlasts_it(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    release = anyio.Event()
    crm.script(Answer(hold=release))
    config = write_config(http_sinks(crm=(crm.url, "timeout: 10s")).replace("worker: {", "worker: {lease: 300ms, "))
    async with running_gateway(config, run_worker=True) as gateway:
        await accepted(gateway, event())
        began = gateway.clock.now()
        with anyio.fail_after(5):
            await crm.wait_for(1)
            gateway.clock.advance(0.2)
            await anyio.sleep(0.3)  # a renewal (every 0.1 s) extends the lease to 0.5 s past the claim
            taken = await gateway.store.claim("crm", limit=1, now=began + 0.4, owner="other", lease_until=began + 9)
            release.set()
    assert taken == []


@pytest.mark.fault
async def test_a_slow_sink_delays_neither_a_fast_sink_nor_acknowledgements(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    async with receiver() as slow:
        release = anyio.Event()
        slow.default = Answer(hold=release)
        config = write_config(
            http_sinks(slow=(slow.url, "timeout: 30s, concurrency: 1"), fast=(crm.url, "concurrency: 2"))
        )
        async with running_gateway(config, run_worker=True) as gateway:
            with anyio.fail_after(10):
                for n in range(6):
                    await accepted(gateway, event(event_id=f"evt_{n}", appointment=n))
                await crm.wait_for(6)
                await slow.wait_for(1)
            assert len(slow.requests) == 1  # its one slot is still held by the first request
            release.set()
            with anyio.fail_after(10):
                await slow.wait_for(6)
    assert sorted(json.loads(r.body)["provider_event_id"] for r in crm.requests) == [f"evt_{n}" for n in range(6)]


async def test_a_lane_claims_ahead_of_its_slots_but_never_sends_more_than_its_concurrency(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    """While the sink holds the first request, the next delivery is already claimed (its claim's commit is not
    waited for once the slot frees); it is sent only after the first is answered."""
    release = anyio.Event()
    crm.default = Answer(hold=release)
    config = write_config(http_sinks(crm=(crm.url, "concurrency: 1")))
    async with running_gateway(config, run_worker=True) as gateway:
        ids = [await accepted(gateway, event(event_id=f"evt_{n}", appointment=n)) for n in range(3)]

        async def one_sent_one_claimed_ahead_one_in_the_store() -> bool:
            leased = [(await only_delivery(gateway, event_id)).lease_owner is not None for event_id in ids]
            return leased == [True, True, False]

        with anyio.fail_after(10):
            await crm.wait_for(1)
        await until(one_sent_one_claimed_ahead_one_in_the_store, "the second delivery claimed", 10)
        assert len(crm.requests) == 1
        release.set()
        with anyio.fail_after(10):
            await crm.wait_for(3)
    assert [json.loads(r.body)["provider_event_id"] for r in crm.requests] == ["evt_0", "evt_1", "evt_2"]


async def test_deliveries_of_one_appointment_keep_the_providers_order(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "concurrency: 8, retry: {schedule: [1m]}")))
    crm.script(Answer(503))  # the first delivery (created) fails once
    async with running_gateway(config) as gateway:
        await accepted(gateway, event("appointment.created", event_id="created", created="2026-01-21T14:30:00Z"))
        # arrives before `updated` but happened after it: provider order, not arrival order, decides
        await accepted(gateway, event("appointment.cancelled", event_id="cancelled", created="2026-01-23T16:45:00Z"))
        await accepted(gateway, event("appointment.updated", event_id="updated", created="2026-01-22T10:15:00Z"))
        await accepted(gateway, event("appointment.created", event_id="other", appointment=777))
        assert await gateway.worker.run_due() == 2  # `created` (fails) and the other appointment's event
        assert await gateway.worker.run_due() == 0  # `updated` and `cancelled` wait behind the retrying `created`
        gateway.clock.advance(60)
        for expected in (1, 1, 1, 0):
            assert await gateway.worker.run_due() == expected
    order = [json.loads(r.body)["provider_event_id"] for r in crm.requests]
    assert sorted(order[:2]) == ["created", "other"]
    assert order[2:] == ["created", "updated", "cancelled"]


async def test_a_dead_letter_does_not_block_later_events_of_its_appointment(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "")))
    crm.script(Answer(400))
    async with running_gateway(config) as gateway:
        await accepted(gateway, event("appointment.created", event_id="created", created="2026-01-21T14:30:00Z"))
        await accepted(gateway, event("appointment.updated", event_id="updated", created="2026-01-22T10:15:00Z"))
        assert [await gateway.worker.run_due() for _ in range(3)] == [1, 1, 0]
    assert [json.loads(r.body)["provider_event_id"] for r in crm.requests] == ["created", "updated"]


@pytest.mark.parametrize("answered_within_grace", [True, False])
async def test_shutdown_lets_in_flight_attempts_finish_or_releases_their_leases(
    write_config: Callable[[str], Config], crm: Receiver, answered_within_grace: bool
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 30s")))  # the grace is 0.2 s
    release = anyio.Event()
    crm.script(Answer(hold=release))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gateway.worker.run)
            with anyio.fail_after(5):
                await crm.wait_for(1)
            gateway.worker.stop()
            if answered_within_grace:
                release.set()
        delivery = await only_delivery(gateway, event_id)
        if answered_within_grace:
            assert (delivery.status, delivery.attempts) == ("succeeded", 1)
            return
        assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("pending", 0, None)
        release.set()
        assert await gateway.worker.run_due() == 1  # at once: no lease to wait out
        assert (await only_delivery(gateway, event_id)).status == "succeeded"


class ForgetfulStore(SQLiteStore):
    """Fails to record the next `failures` attempts, as a store that went away mid-delivery would."""

    failures = 0

    async def record_attempt(self, *args: Any, **kwargs: Any) -> Recorded:
        if self.failures:
            self.failures -= 1
            raise StorageError("disk I/O error")
        return await super().record_attempt(*args, **kwargs)


@pytest.mark.fault
async def test_an_attempt_that_cannot_be_recorded_is_delivered_again_never_lost(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "timeout: 10s")))
    store = ForgetfulStore.from_url(config.settings.storage.url)
    store.failures = 1
    async with running_gateway(config, store=store) as gateway:
        event_id = await accepted(gateway, event())
        assert await gateway.worker.run_due() == 1  # delivered, but the success could not be recorded
        assert (await only_delivery(gateway, event_id)).status == "pending"
        gateway.clock.advance(50)  # the lease (twice the timeout, plus the margin) runs out
        assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.attempts) == ("succeeded", 1)
    first, second = crm.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == delivery.id


async def test_claims_failing_while_storage_is_down_resume_when_it_returns(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "")))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        connection = gateway.store.engine.writer
        assert connection is not None
        connection.execute("PRAGMA query_only = 1")
        assert await gateway.worker.run_due() == 0  # logged, not raised
        connection.execute("PRAGMA query_only = 0")
        assert await gateway.worker.run_due() == 1
        assert (await only_delivery(gateway, event_id)).status == "succeeded"


async def test_a_stored_event_that_cannot_be_read_is_dead_lettered_at_once(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "")))
    async with running_gateway(config) as gateway:
        event_id = await accepted(gateway, event())
        connection = gateway.store.engine.writer
        assert connection is not None
        connection.execute('UPDATE events SET canonical = \'{"written": "by another version"}\'')
        assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.dead_reason) == ("dead", "unreadable event")
    assert delivery.last_error.startswith("the stored event cannot be read") and crm.requests == []


async def test_a_retry_is_attempted_within_a_tenth_of_a_second_of_its_due_time(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    crm.script(Answer(503), Answer(503))
    config = write_config(
        f"""
        worker: {{poll_interval: 5s}}
        sinks:
          crm: {{type: http, options: {{url: "{crm.url}"}}, retry: {{schedule: [400ms, 700ms]}}}}
        routes:
          - sinks: [crm]
        """
    )
    store = SQLiteStore.from_url(config.settings.storage.url)
    app = create_app(config, store=store, clock=SystemClock(), run_worker=True)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client,
    ):
        raw, headers = moncreneau_request(event())
        assert (await client.post("/webhooks/moncreneau", content=raw, headers=headers)).status_code == 202
        with anyio.fail_after(10):
            first, second, third = await crm.wait_for(3)
    waits = (second.arrived_at - first.arrived_at, third.arrived_at - second.arrived_at)
    print(f"retries after {waits[0]:.3f}s and {waits[1]:.3f}s (due after 0.4 and 0.7 s)")
    assert 0.4 <= waits[0] < 0.5 and 0.7 <= waits[1] < 0.8


async def test_a_failing_sink_opens_its_circuit_is_probed_and_closes_on_the_first_success(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    crm.default = Answer(503)
    circuit = "circuit: {failures: 3, within: 1m, probe_every: 30s}, concurrency: 1, retry: {schedule: [1s]}"
    async with running_gateway(write_config(http_sinks(crm=(crm.url, circuit)))) as gateway:
        ids = [await accepted(gateway, event(event_id=f"evt_{n}", appointment=n)) for n in range(5)]
        for _ in range(3):
            assert await gateway.worker.run_due() == 1
            gateway.clock.advance(1)
        assert metric(gateway, "gateway_sink_circuit_open", sink="crm") == 1
        gateway.clock.advance(5)  # everything is due, but the circuit is open
        assert await gateway.worker.run_due() == 0
        spent = [(await only_delivery(gateway, event_id)).attempts for event_id in ids]
        assert sum(spent) == 3 and len(crm.requests) == 3
        gateway.clock.advance(30)
        assert await gateway.worker.run_due() == 1  # one probe; it fails
        assert await gateway.worker.run_due() == 0
        crm.default = Answer(200)
        gateway.clock.advance(30)
        assert await gateway.worker.run_due() == 1  # the probe succeeds: closed
        assert metric(gateway, "gateway_sink_circuit_open", sink="crm") == 0
        while await gateway.worker.run_due():
            pass
        statuses = {(await only_delivery(gateway, event_id)).status for event_id in ids}
    assert statuses == {"succeeded"}
    assert len(crm.requests) == 3 + 1 + 5  # three failures, a failed probe, then each once


async def test_deliveries_claimed_ahead_wait_unspent_when_the_circuit_opens(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    answered = anyio.Event()
    crm.script(Answer(503, hold=answered), Answer(503, hold=answered))
    circuit = "circuit: {failures: 2, within: 1m, probe_every: 1h}, concurrency: 2, retry: {schedule: [1h]}"
    async with running_gateway(write_config(http_sinks(crm=(crm.url, circuit))), run_worker=True) as gateway:
        ids = [await accepted(gateway, event(event_id=f"evt_{n}", appointment=n)) for n in range(4)]
        with anyio.fail_after(5):
            await crm.wait_for(2)  # two in flight, two more claimed ahead, waiting for a slot
        answered.set()

        async def held_back() -> bool:
            rows = [await only_delivery(gateway, event_id) for event_id in ids]
            return sum(row.attempts for row in rows) == 2 and all(row.lease_owner is None for row in rows)

        await until(held_back, "the two claimed ahead to be given back unattempted", 5)
    assert len(crm.requests) == 2


async def test_a_sinks_rate_limit_holds_claims_and_a_retry_after_holds_the_whole_sink(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    crm.script(Answer(200), Answer(200), Answer(429, {"Retry-After": "10"}))
    limit = "rate_limit: {per_second: 1, burst: 2}, concurrency: 4, retry: {schedule: [1s]}"
    async with running_gateway(write_config(http_sinks(crm=(crm.url, limit)))) as gateway:
        ids = [await accepted(gateway, event(event_id=f"evt_{n}", appointment=n)) for n in range(5)]
        assert await gateway.worker.run_due() == 2  # the burst; the other claims were given back
        assert await gateway.worker.run_due() == 0
        gateway.clock.advance(1)
        assert await gateway.worker.run_due() == 1  # answered 429, Retry-After: 10
        gateway.clock.advance(5)  # tokens refilled, but the 429 said: not before 10 s
        assert await gateway.worker.run_due() == 0
        gateway.clock.advance(5)
        assert await gateway.worker.run_due() == 2
        waits = metric(gateway, "gateway_rate_limit_waits_total", sink="crm")
        leased = [(await only_delivery(gateway, event_id)).lease_owner for event_id in ids]
    assert waits >= 3 and leased == [None] * 5 and len(crm.requests) == 5


async def test_an_attempt_is_recorded_even_when_the_store_cannot_hold_the_sink_back(
    write_config: Callable[[str], Config], crm: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm.script(Answer(429, {"Retry-After": "10"}))
    limit = "rate_limit: {per_second: 1, burst: 2}, retry: {schedule: [1s]}"
    async with running_gateway(write_config(http_sinks(crm=(crm.url, limit)))) as gateway:

        async def storage_down(*args: object, **kwargs: object) -> None:
            raise StorageError("database is locked")

        monkeypatch.setattr(gateway.store, "block_tokens", storage_down)
        event_id = await accepted(gateway, event())
        assert await gateway.worker.run_due() == 1
        delivery = await only_delivery(gateway, event_id)
    assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("pending", 1, None)


async def test_the_lane_sleeps_until_the_next_due_delivery_and_polls_when_the_store_cannot_say(
    write_config: Callable[[str], Config],
    crm: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "retry: {schedule: [1m]}")))
    crm.script(Answer(503))
    async with running_gateway(config) as gateway:
        await accepted(gateway, event())
        assert await gateway.worker.run_due() == 1  # failed: due again in a minute
        assert await gateway.worker.run_due() == 0  # nothing due: the lane learns when the retry is
        assert gateway.worker._until_next_look("crm") == pytest.approx(0.05)  # capped by the poll...
        gateway.worker.poll_interval = 3600.0
        assert gateway.worker._until_next_look("crm") == pytest.approx(60.0)  # ...else until the retry

        async def storage_down(*args: object, **kwargs: object) -> None:
            raise StorageError("database is locked")

        monkeypatch.setattr(gateway.store, "next_due", storage_down)
        assert await gateway.worker.run_due() == 0
        assert gateway.worker._until_next_look("crm") == 3600.0  # the safety net: the next poll
        assert "cannot read when sink crm next has a delivery due (polling)" in caplog.text


class CountingClaims(SQLiteStore):
    """Counts the worker's claims."""

    claims = 0

    async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        self.claims += 1
        return await super().claim(*args, **kwargs)


@pytest.fixture
def pauses_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paused sinks the worker read at its first claim stay trusted through the test: offers never wait for
    another claim to read them."""
    monkeypatch.setattr(delivery, "PAUSES_READ_EVERY", 600.0)


def polling_rarely(sinks: str) -> str:
    return sinks.replace("poll_interval: 0.05", "poll_interval: 30s")


@pytest.mark.usefixtures("pauses_known")
async def test_new_deliveries_are_handed_to_the_worker_by_their_ingest_and_sent_without_a_claim(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(polling_rarely(http_sinks(crm=(crm.url, "concurrency: 2"))))
    store = CountingClaims.from_url(config.settings.storage.url)
    async with running_gateway(config, run_worker=True, store=store) as gateway:
        await until(lambda: store.claims > 0, "the lane's first look", 10)
        before = store.claims
        for n in range(4):  # twice the concurrency: the lane's claimed-ahead limit
            await accepted(gateway, event(event_id=f"evt_{n}", appointment=n))
        with anyio.fail_after(10):
            await crm.wait_for(4)
        assert store.claims == before
        recorded = {"sink": "crm", "outcome": "succeeded"}
        await until(lambda: metric(gateway, "gateway_delivery_attempts_total", **recorded) == 4, "the records", 10)
        for request in crm.requests:
            delivered = await gateway.store.deliveries(json.loads(request.body)["id"])
            assert [(d.status, d.attempts, d.lease_owner) for d in delivered] == [("succeeded", 1, None)]


@pytest.mark.usefixtures("pauses_known")
async def test_a_delivery_waiting_behind_a_handed_off_one_is_sent_as_soon_as_that_one_is_answered(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    """The worker polls every 30 s: only the store saying, as the first attempt is recorded, that another delivery
    of the appointment waits can send the second at once."""
    release = anyio.Event()
    crm.script(Answer(hold=release))
    config = write_config(polling_rarely(http_sinks(crm=(crm.url, "concurrency: 4"))))
    async with running_gateway(config, run_worker=True) as gateway:
        first = await accepted(gateway, event("appointment.created", event_id="created"))
        with anyio.fail_after(10):
            await crm.wait_for(1)
        second = await accepted(gateway, event("appointment.cancelled", event_id="cancelled"))
        assert (await only_delivery(gateway, first)).lease_owner == gateway.worker.owner
        assert (await only_delivery(gateway, second)).lease_owner is None  # not handed off: it waits
        release.set()
        with anyio.fail_after(10):
            await crm.wait_for(2)
    assert [json.loads(r.body)["provider_event_id"] for r in crm.requests] == ["created", "cancelled"]


@pytest.mark.usefixtures("pauses_known")
async def test_the_worker_takes_no_handoff_beyond_its_claimed_ahead_limit_nor_for_a_held_back_sink(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    async with (
        receiver() as failing,
        running_gateway(
            write_config(
                http_sinks(
                    crm=(crm.url, "concurrency: 1"),
                    paused=(crm.url, "concurrency: 1"),
                    broken=(failing.url, "circuit: {failures: 1, probe_every: 1h}"),
                    limited=(crm.url, "rate_limit: {per_second: 10, burst: 10}"),
                )
            ),
            run_worker=True,
        ) as gateway,
    ):
        failing.default = Answer(503)
        worker = gateway.worker
        assert worker.offer(["crm"]) is None  # no lane has looked yet: the paused sinks are not known
        await gateway.store.set_paused("paused", paused=True, reason="maintenance", now=0.0)
        worker.wake()  # read the pauses again
        await until(lambda: worker.offer(["nowhere"]) is None and "paused" in worker._paused, "pauses read", 10)
        await accepted(gateway, event(event_id="opens-the-circuit", appointment=1))
        await until(lambda: worker.circuit_states().get("broken") == "open", "the circuit opened", 10)
        offers = [worker.offer(["crm", "paused", "broken", "limited", "nowhere"]) for _ in range(3)]
        assert [offer.sinks if offer else None for offer in offers] == [{"crm"}, {"crm"}, None]
        for offer in offers:
            await worker.take(offer, (), None)
        offer = worker.offer(["crm"])
        assert offer is not None and offer.sinks == {"crm"}  # answered offers free their place
        await worker.take(offer, (), None)


async def test_a_handoff_taken_after_the_worker_stopped_gives_its_leases_back(
    write_config: Callable[[str], Config], crm: Receiver, pauses_known: None
) -> None:
    config = write_config(http_sinks(crm=(crm.url, "concurrency: 1")))
    async with running_gateway(config, run_worker=True) as gateway:
        worker = gateway.worker
        await until(lambda: worker.offer([]) is None and worker._paused_read_at > 0, "the lane's first look", 10)
        offer = worker.offer(["crm"])
        assert offer is not None
        record = helpers.record("evt_stopped", appointment_id="1")
        stored = await gateway.store.ingest(record, [Target("crm")], handoff=offer)
        assert [d.lease_owner for d in await gateway.store.deliveries(record.id)] == [worker.owner]
        worker.stop()
        await worker.take(offer, stored.leased, None)
        assert [d.lease_owner for d in await gateway.store.deliveries(record.id)] == [None]
    assert crm.requests == []


@pytest.mark.usefixtures("pauses_known")
async def test_an_ingest_waits_for_room_in_a_full_lane_until_the_sink_answers_or_its_time_is_up(
    write_config: Callable[[str], Config], crm: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: the webhook path of a process delivering less than it takes in waits for delivery, a bounded
    time (Ingest's WAIT_FOR_DELIVERY), rather than piling up a backlog; not for a sink that has stopped answering
    (slow, not short of CPU)."""
    release = anyio.Event()
    crm.script(Answer(), Answer(hold=release), Answer(hold=release))
    config = write_config(polling_rarely(http_sinks(crm=(crm.url, "concurrency: 1"))))
    async with running_gateway(config, run_worker=True) as gateway:
        worker = gateway.worker
        await until(lambda: worker.offer([]) is None and worker._paused_read_at > 0, "the lane's first look", 10)
        await accepted(gateway, event(event_id="evt_0", appointment=0))
        with anyio.fail_after(10):
            await crm.wait_for(1)
            for n in (1, 2):  # one sent (and held), one claimed ahead: the lane is full
                await accepted(gateway, event(event_id=f"evt_{n}", appointment=n))
            await crm.wait_for(2)
            assert worker.offer(["crm"]) is None
            monkeypatch.setattr(delivery, "ANSWERS_LATELY", 0.0)  # its last answer is not recent: a slow sink
            await worker.room(["crm"], within=3600)  # no wait
            monkeypatch.setattr(delivery, "ANSWERS_LATELY", 3600.0)  # it answered lately: waiting is worth it
            await worker.room(["crm"], within=0.01)  # full: it waits its time out
            waited = anyio.Event()

            async def wait_for_room() -> None:
                await worker.room(["crm", "elsewhere"], within=3600)
                waited.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wait_for_room)
                await anyio.wait_all_tasks_blocked()
                assert not waited.is_set()
                release.set()  # the sink answers: room for one more
                await waited.wait()
            offer = worker.offer(["crm"])
            assert offer is not None
            await worker.take(offer, (), None)
            await crm.wait_for(3)


class FailingIngests(SQLiteStore):
    """Fails the next `failures` ingests, as a store that went away would."""

    failures = 0

    async def ingest(self, *args: Any, **kwargs: Any) -> Ingested:
        if self.failures:
            self.failures -= 1
            raise StorageError("disk I/O error")
        return await super().ingest(*args, **kwargs)


@pytest.mark.fault
@pytest.mark.usefixtures("pauses_known")
async def test_an_ingest_that_fails_to_commit_gives_its_offered_place_back(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    release = anyio.Event()
    crm.default = Answer(hold=release)
    config = write_config(polling_rarely(http_sinks(crm=(crm.url, "concurrency: 1"))))
    store = FailingIngests.from_url(config.settings.storage.url)
    async with running_gateway(config, run_worker=True, store=store) as gateway:
        worker = gateway.worker
        await until(lambda: worker.offer([]) is None and worker._paused_read_at > 0, "the lane's first look", 10)
        store.failures = 3  # more than the lane's room (twice its concurrency)
        for n in range(3):
            assert (await gateway.post_moncreneau(event(event_id=f"lost_{n}", appointment=n))).status_code == 503
        ids = [await accepted(gateway, event(event_id=f"evt_{n}", appointment=10 + n)) for n in range(2)]
        # one sent (held by the sink), one handed off to wait for the slot: the failed offers left no place taken
        assert [(await only_delivery(gateway, event_id)).lease_owner for event_id in ids] == [worker.owner] * 2
        release.set()
        with anyio.fail_after(10):
            await crm.wait_for(2)
        assert await store.count_events() == 2


@pytest.mark.fault
async def test_a_handed_off_delivery_the_sink_refuses_is_retried_on_time_with_a_rare_poll(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    """503, then 429: each failure is retried at its scheduled time, which the lane learns from the store as it
    records the attempt (its poll is 30 s)."""
    crm.script(Answer(503), Answer(429))
    config = write_config(polling_rarely(http_sinks(crm=(crm.url, "retry: {schedule: [200ms]}"))))
    async with running_gateway(config, run_worker=True) as gateway:
        event_id = await accepted(gateway, event())

        async def recorded(attempts: int) -> bool:
            return bool((await only_delivery(gateway, event_id)).attempts == attempts)

        for sent in (1, 2):
            await until(partial(recorded, sent), f"attempt {sent} recorded", 10)
            gateway.clock.advance(1)  # its retry is due (the worker's clock is the test's)
        await until(partial(recorded, 3), "attempt 3 recorded", 10)
        delivery = await only_delivery(gateway, event_id)
        assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert len(crm.requests) == 3
