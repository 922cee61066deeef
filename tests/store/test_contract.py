"""The store contract: every backend passes the same tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store.base import AttemptRecord, EventRecord, Store, Transition
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from tests.peers import postgres_database

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Makes store objects on one database of each backend (the PostgreSQL one is created for the test)."""
    if request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "data" / "gateway.db")
        return
    with postgres_database() as url:
        yield lambda: PostgresStore(url)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    store = new_store()
    await store.migrate()
    await store.open()
    yield store
    await store.close()


def targets(*sinks: str) -> list[Target]:
    return [Target(sink) for sink in sinks]


def record(provider_id: str = "evt_1", *, key: str | None = "mc:appointment:1", occurred: float = 100.0) -> EventRecord:
    return EventRecord(
        id=str(uuid.uuid4()),
        source="moncreneau",
        provider_event_id=provider_id,
        provider_event_type="appointment.created",
        provider_delivery_id="d",
        type="appointment.created",
        occurred_at=occurred,
        received_at=1000.0,
        ordering_key=key,
        canonical='{"json": true}',
        raw_body=b'{"raw": 1}',
        headers={"x-moncreneau-event": "appointment.created"},
    )


async def claim(store: Store, owner: str = "w1", now: float = 1000.0, limit: int = 10) -> list[str]:
    return [d.id for d in await store.claim("crm", limit=limit, now=now, owner=owner, lease_until=now + 30)]


async def test_an_event_and_its_deliveries_are_stored_together(store: Store) -> None:
    event = record()
    assert (await store.ingest(event, targets("crm", "sms"))).duplicate is False
    assert await store.get_event(event.id) == event
    assert [(d.sink, d.status, d.attempts) for d in await store.deliveries(event.id)] == [
        ("crm", "pending", 0),
        ("sms", "pending", 0),
    ]


async def test_a_known_provider_event_is_a_duplicate_and_writes_nothing(store: Store) -> None:
    first = record()
    await store.ingest(first, targets("crm"))
    again = await store.ingest(record(), targets("crm", "sms"))
    assert (again.event_id, again.duplicate) == (first.id, True)
    assert await store.count_events() == 1
    assert len(await store.deliveries(first.id)) == 1


async def test_concurrent_ingestion_of_one_provider_event_stores_it_once(store: Store) -> None:
    results = []

    async def ingest() -> None:
        results.append(await store.ingest(record(), targets("crm")))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(ingest)
    assert sorted(r.duplicate for r in results) == [False] + [True] * 19
    assert len({r.event_id for r in results}) == 1


async def test_a_failed_ingest_leaves_nothing_behind(store: Store) -> None:
    event = record()
    with pytest.raises(StorageError):
        await store.ingest(
            event, targets("crm", "crm")
        )  # not possible through the router; forces a failure mid-transaction
    assert await store.get_event(event.id) is None


async def test_a_claim_is_exclusive_until_its_lease_expires(store: Store) -> None:
    await store.ingest(record(), targets("crm"))
    (claimed,) = await claim(store, "w1")
    assert await claim(store, "w2", now=1029.0) == []
    assert await claim(store, "w2", now=1030.0) == [claimed]


async def test_only_the_lease_holder_moves_a_delivery_on(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    (claimed,) = await claim(store, "w1")
    await claim(store, "w2", now=1030.0)  # w1 was too slow; w2 took over
    attempt = AttemptRecord(1, 1000.0, 5.0, "succeeded", 200)
    assert await store.record_attempt(claimed, "w1", attempt, Transition("succeeded"), now=1031.0) is False
    (delivery,) = await store.deliveries(event.id)
    assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("pending", 0, "w2")
    assert await store.attempts(claimed) == [attempt]  # the attempt still happened, and is recorded


async def test_a_retry_is_not_due_before_its_time(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    (claimed,) = await claim(store)
    attempt = AttemptRecord(1, 1000.0, 5.0, "retryable", 503, "busy")
    assert await store.record_attempt(claimed, "w1", attempt, Transition("pending", next_attempt_at=1060.0), now=1000.0)
    assert await claim(store, now=1059.0) == []
    assert await claim(store, now=1060.0) == [claimed]
    (delivery,) = await store.deliveries(event.id)
    assert (delivery.attempts, delivery.last_error) == (1, "busy")


async def test_released_deliveries_can_be_claimed_at_once(store: Store) -> None:
    await store.ingest(record(), targets("crm"))
    claimed = await claim(store, "w1")
    await store.release(claimed, "w1")
    assert await claim(store, "w2") == claimed


async def test_a_later_event_of_an_appointment_waits_for_the_earlier_one(store: Store) -> None:
    later, earlier, other = (
        record("b", occurred=200.0),
        record("a", occurred=100.0),
        record("c", key="mc:appointment:2"),
    )
    for event in (later, earlier, other):
        await store.ingest(event, targets("crm"))
    first = await claim(store)
    assert {(await store.deliveries(e.id))[0].id for e in (earlier, other)} == set(first)
    dead = Transition("dead", dead_reason="permanent error")
    for delivery in first:
        await store.record_attempt(delivery, "w1", AttemptRecord(1, 1000.0, 1.0, "permanent"), dead, now=1000.0)
    assert await claim(store) == [(await store.deliveries(later.id))[0].id]


async def test_events_without_an_ordering_key_never_wait(store: Store) -> None:
    for n in range(3):
        await store.ingest(record(f"evt_{n}", key=None), targets("crm"))
    assert len(await claim(store)) == 3


async def test_claims_respect_the_limit(store: Store) -> None:
    for n in range(5):
        await store.ingest(record(f"evt_{n}", key=f"k{n}"), targets("crm"))
    assert len(await claim(store, limit=2)) == 2
    assert len(await claim(store, "w2", limit=10)) == 3


async def test_data_survives_reopening(store: Store, new_store: Callable[[], Store]) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    await store.close()
    again = new_store()
    await again.open()
    assert await again.get_event(event.id) == event
    await again.close()


async def test_a_closed_store_refuses_work(store: Store) -> None:
    await store.close()
    with pytest.raises(StorageError, match="not open"):
        await store.count_events()


async def test_sent_messages_are_remembered_per_delivery_first_confirmation_wins(store: Store) -> None:
    event = record()
    await store.ingest(event, [Target("sms", "fr")])
    (delivery,) = await store.deliveries(event.id)
    assert await store.sent_messages(delivery.id) == {}
    await store.record_sent(delivery.id, "+224621234567", "SM1", at=1.0)
    await store.record_sent(delivery.id, "+224621234567", "SM2", at=2.0)
    await store.record_sent(delivery.id, "+224622000000", "SM3", at=3.0)
    assert await store.sent_messages(delivery.id) == {"+224621234567": "SM1", "+224622000000": "SM3"}
    (claimed,) = await store.claim("sms", limit=1, now=1000.0, owner="w", lease_until=1030.0)
    assert claimed.locale == "fr"
