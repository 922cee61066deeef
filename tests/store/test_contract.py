"""The store contract: every backend passes the same tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store.base import (
    AttemptRecord,
    EventRecord,
    FollowUp,
    Handoff,
    Ingested,
    Recorded,
    ScheduledReminder,
    Store,
    TrafficCount,
    Transition,
    Withheld,
)
from gateway.store.postgres import PostgresStore
from gateway.store.queries import DeadLetterQuery, EventQuery
from gateway.store.sqlite import SQLiteStore
from tests.helpers import record
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
    assert (await store.record_attempt(claimed, "w1", attempt, Transition("succeeded"), now=1031.0)).moved is False
    (delivery,) = await store.deliveries(event.id)
    assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("pending", 0, "w2")
    assert await store.attempts(claimed) == [attempt]  # the attempt still happened, and is recorded


async def test_a_retry_is_not_due_before_its_time(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    (claimed,) = await claim(store)
    attempt = AttemptRecord(1, 1000.0, 5.0, "retryable", 503, "busy")
    recorded = await store.record_attempt(
        claimed, "w1", attempt, Transition("pending", next_attempt_at=1060.0), now=1000.0
    )
    assert recorded.moved
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


def handoff(*sinks: str, owner: str = "w1") -> Handoff:
    return Handoff(owner, 1030.0, frozenset(sinks))


async def test_an_ingest_hands_off_the_deliveries_it_is_asked_for_as_a_claim_would_give_them(store: Store) -> None:
    event, other = record("a", appointment_id="1"), record("b", key="mc:appointment:2", appointment_id="2")
    stored = await store.ingest(event, targets("crm", "sms"), handoff=handoff("crm"))
    await store.ingest(other, targets("crm"))
    (handed,) = stored.leased
    (claimed,) = await store.claim("crm", limit=10, now=1000.0, owner="w1", lease_until=1030.0)
    assert claimed.event_id == other.id  # the handed-off delivery is leased already: no claim takes it
    assert replace(handed, id=claimed.id, event_id=other.id) == claimed
    assert (handed.sink, handed.event_id) == ("crm", event.id)
    assert [(d.sink, d.lease_owner) for d in await store.deliveries(event.id)] == [("crm", "w1"), ("sms", None)]
    assert (await store.claim("sms", limit=10, now=1000.0, owner="w2", lease_until=1030.0))[0].event_id == event.id
    assert await claim(store, "w2", now=1029.0) == []  # leased until the handoff said
    assert sorted(await claim(store, "w2", now=1030.0)) == sorted([handed.id, claimed.id])


async def test_a_delivery_waiting_behind_an_earlier_one_is_not_handed_off(store: Store) -> None:
    earlier, later = record("a", occurred=100.0, appointment_id="1"), record("b", occurred=200.0, appointment_id="1")
    await store.ingest(earlier, targets("crm"))
    assert (await store.ingest(later, targets("crm"), handoff=handoff("crm"))).leased == ()
    assert [d.lease_owner for d in await store.deliveries(later.id)] == [None]
    assert await claim(store) == [(await store.deliveries(earlier.id))[0].id]


async def test_duplicates_and_skipped_deliveries_are_never_handed_off(store: Store) -> None:
    await store.ingest(record("a", appointment_id="1"), targets("crm"))
    assert (await store.ingest(record("a", appointment_id="1"), targets("crm"), handoff=handoff("crm"))).leased == ()
    stale = record("b", key="mc:appointment:2", appointment_id="2")
    assert (await store.ingest(stale, targets("crm"), skipped="stale", handoff=handoff("crm"))).leased == ()


async def test_recording_an_attempt_says_whether_the_appointment_has_another_delivery_waiting(store: Store) -> None:
    first, second = record("a", occurred=100.0), record("b", occurred=200.0)
    for event in (first, second):
        await store.ingest(event, targets("crm"))
    done = AttemptRecord(1, 1000.0, 1.0, "succeeded")
    (leading,) = await claim(store)
    assert await store.record_attempt(leading, "w1", done, Transition("succeeded"), now=1000.0) == Recorded(True, True)
    (following,) = await claim(store)
    assert await store.record_attempt(following, "w1", done, Transition("succeeded"), now=1000.0) == Recorded(True)


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


async def finish(store: Store, event: EventRecord, sink: str, outcome: str, *, now: float = 1000.0) -> str:
    """Claim the event's delivery to `sink` and end it: succeeded, or dead after a permanent error."""
    (delivery,) = [d for d in await store.deliveries(event.id) if d.sink == sink]
    await store.claim(sink, limit=100, now=now, owner="w", lease_until=now + 30)
    transition = (
        Transition("succeeded") if outcome == "succeeded" else Transition("dead", dead_reason="permanent error")
    )
    attempt = AttemptRecord(1, now, 3.0, "succeeded" if outcome == "succeeded" else "permanent", 500, "boom")
    assert (await store.record_attempt(delivery.id, "w", attempt, transition, now=now)).moved
    return delivery.id


async def test_events_are_listed_newest_first_with_their_deliveries_and_filters(store: Store) -> None:
    first = record(
        "a", received=10.0, appointment_id="12345", customer_phone="+224621234567", customer_email="jean@example.gn"
    )
    second = record("b", received=20.0, type=None, provider_event_type="appointment.teleported")
    third = record("c", received=30.0, source="yapp", provider_event_type="booking.created", appointment_id="bkg_1")
    await store.ingest(first, targets("crm", "sms"))
    await store.ingest(second, [])
    await store.ingest(third, targets("crm"))
    await finish(store, first, "crm", "dead")

    async def ids(**filters: Any) -> list[str]:
        return [e.provider_event_id for e in await store.list_events(EventQuery(**filters), limit=10)]

    assert await ids() == ["c", "b", "a"]
    (listed,) = await store.list_events(EventQuery(source="moncreneau", status="dead"), limit=10)
    assert listed.deliveries == {"crm": "dead", "sms": "pending"} and listed.appointment_id == "12345"
    assert await ids(source="yapp") == ["c"]
    assert await ids(type="appointment.created") == ["c", "a"]  # canonical type
    assert await ids(type="booking.created") == ["c"]  # the provider's own
    assert await ids(type="appointment.teleported") == ["b"]
    assert await ids(appointment="bkg_1") == ["c"]
    assert await ids(customer="+224621234567") == ["a"]
    assert await ids(customer="Jean@Example.GN") == ["a"]
    assert await ids(since=20.0) == ["c", "b"]
    assert await ids(since=10.0, until=30.0) == ["b", "a"]
    assert await ids(status="pending") == ["c", "a"]
    assert await ids(status="succeeded") == []


async def test_event_listing_pages_with_a_position(store: Store) -> None:
    for n in range(7):
        await store.ingest(record(f"evt_{n}", received=100.0 + n // 2), [])  # pairs share a time: ids break ties
    seen: list[str] = []
    after: tuple[float, str] | None = None
    while page := await store.list_events(EventQuery(), limit=3, after=after):
        seen += [e.provider_event_id for e in page]
        after = (page[-1].received_at, page[-1].id)
    assert sorted(seen) == [f"evt_{n}" for n in range(7)] and len(seen) == 7


async def test_a_replay_requeues_finished_deliveries_keeping_their_history(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm", "sms", "email"))
    crm = await finish(store, event, "crm", "succeeded")
    sms = await finish(store, event, "sms", "dead")
    assert await store.replay(event.id, sink="crm", now=5000.0) == [crm]
    assert await store.replay(event.id, now=5000.0) == [sms]  # email is still pending: nothing to replay
    assert await store.replay("no-such-event", now=5000.0) == []
    by_sink = {d.sink: d for d in await store.deliveries(event.id)}
    assert (by_sink["crm"].status, by_sink["crm"].attempts, by_sink["crm"].dead_reason) == ("pending", 1, None)
    assert len(await store.attempts(crm)) == 1
    claimed = {c.sink: c for c in await store.claim("sms", limit=5, now=5000.0, owner="w2", lease_until=5030.0)}
    assert (claimed["sms"].retry_since, claimed["sms"].attempts_before, claimed["sms"].attempts) == (5000.0, 1, 1)


async def test_dead_letters_are_listed_requeued_retried_and_discarded(store: Store) -> None:
    events = [record(f"evt_{n}", key=f"k{n}", source="yapp" if n == 3 else "moncreneau") for n in range(4)]
    dead = []
    for n, event in enumerate(events):
        await store.ingest(event, targets("crm" if n < 3 else "sms"))
        dead.append(await finish(store, event, "crm" if n < 3 else "sms", "dead", now=1000.0 + n))
    letters = await store.list_dead_letters(DeadLetterQuery(), limit=10)
    assert [letter.delivery_id for letter in letters] == dead[::-1]
    assert (letters[0].dead_reason, letters[0].last_error, letters[0].attempts) == ("permanent error", "boom", 1)
    assert [d.delivery_id for d in await store.list_dead_letters(DeadLetterQuery(sink="crm"), limit=2)] == dead[2:0:-1]
    after = (letters[1].dead_at, letters[1].delivery_id)
    assert [d.delivery_id for d in await store.list_dead_letters(DeadLetterQuery(), limit=10, after=after)] == dead[
        1::-1
    ]
    assert await store.requeue_dead_letters(DeadLetterQuery(source="yapp"), now=2000.0, dry_run=True) == 1
    assert await store.requeue_dead_letters(DeadLetterQuery(sink="crm", since=1001.0), now=2000.0) == 2
    assert await store.set_dead_letter(dead[0], status="discarded", now=2000.0)
    assert not await store.set_dead_letter(dead[0], status="pending", now=2000.0)  # no longer dead
    assert await store.set_dead_letter(dead[3], status="pending", now=2000.0)
    assert await store.list_dead_letters(DeadLetterQuery(), limit=10) == []
    statuses = [(await store.deliveries(e.id))[0].status for e in events]
    assert statuses == ["discarded", "pending", "pending", "pending"]


async def test_purge_removes_old_finished_events_in_batches_and_keeps_the_rest(store: Store) -> None:
    old = [record(f"old_{n}", key=f"k{n}", received=100.0 + n) for n in range(5)]
    for event in old:
        await store.ingest(event, targets("crm"))
        delivery = await finish(store, event, "crm", "succeeded")
        await store.record_sent(delivery, "+224621234567", "SM1", at=1.0)
    still_pending = record("old_pending", key="kp", received=50.0)
    unrouted = record("old_unrouted", received=60.0)
    recent = record("recent", key="kr", received=5000.0)
    for event, sinks in ((still_pending, targets("crm")), (unrouted, []), (recent, targets("crm"))):
        await store.ingest(event, sinks)
    assert await store.purge(before=1000.0, batch=4, now=2000.0) == 4  # the unrouted one and three finished ones
    assert await store.purge(before=1000.0, batch=4, now=2000.0) == 2
    assert await store.purge(before=1000.0, batch=4, now=2000.0) == 0
    left = [e.provider_event_id for e in await store.list_events(EventQuery(), limit=10)]
    assert left == ["recent", "old_pending"]
    assert await store.count_events() == 2


async def test_a_purged_event_replayed_is_a_duplicate_until_its_tombstone_is_forgotten(store: Store) -> None:
    first = record("evt_replayed", received=100.0)
    await store.ingest(first, [])
    assert await store.purge(before=1000.0, batch=10, now=2000.0) == 1
    again = await store.ingest(record("evt_replayed", received=3000.0), targets("crm"))
    assert again == Ingested(event_id=first.id, duplicate=True)
    assert await store.count_events() == 0
    assert await store.claim("crm", limit=10, now=4000.0, owner="w", lease_until=4100.0) == []
    await store.forget(tombstones_before=1999.0, state_before=0.0)  # kept: made at 2000
    assert (await store.ingest(record("evt_replayed", received=3000.0), [])).duplicate
    await store.forget(tombstones_before=2001.0, state_before=0.0)
    assert not (await store.ingest(record("evt_replayed", received=3000.0), [])).duplicate


async def test_skipped_deliveries_are_recorded_with_their_reason_and_never_claimed(store: Store) -> None:
    event = record("evt_stale")
    await store.ingest(event, targets("crm", "sms"), skipped="stale")
    rows = await store.deliveries(event.id)
    assert [(row.sink, row.status, row.dead_reason) for row in rows] == [
        ("crm", "skipped", "stale"),
        ("sms", "skipped", "stale"),
    ]
    assert await store.claim("crm", limit=10, now=5000.0, owner="w", lease_until=5100.0) == []
    assert (await store.sink_stats(["crm"], now=5000.0)).get("crm") is None


async def test_sink_state_not_written_since_the_cut_off_is_forgotten(store: Store) -> None:
    await store.set_state("calendar", "appointment:old", "{}", now=100.0)
    await store.set_state("calendar", "appointment:new", "{}", now=2000.0)
    await store.forget(tombstones_before=0.0, state_before=1000.0)
    assert await store.list_state("calendar", "appointment:") == {"appointment:new": "{}"}


async def test_leases_are_renewed_only_by_their_owner_and_a_gone_owners_are_released(store: Store) -> None:
    for n in range(3):
        await store.ingest(record(f"evt_{n}", key=f"k{n}"), targets("crm"))
    mine = await store.claim("crm", limit=2, now=1000.0, owner="w1", lease_until=1010.0)
    theirs = await store.claim("crm", limit=1, now=1000.0, owner="w2", lease_until=1010.0)
    await store.renew([d.id for d in mine + theirs], "w1", lease_until=1020.0)
    assert [d.id for d in await store.claim("crm", limit=10, now=1015.0, owner="w3", lease_until=1030.0)] == [
        theirs[0].id
    ]  # w2's lease ran out; w1's two were renewed
    assert await store.lease_owners() == {"w1", "w3"}
    assert await store.release_owner("w1") == 2
    assert await store.lease_owners() == {"w3"}
    again = await store.claim("crm", limit=10, now=1015.0, owner="w4", lease_until=1030.0)
    assert sorted(d.id for d in again) == sorted(d.id for d in mine)


async def test_a_sink_is_paused_with_its_reason_and_resumed(store: Store) -> None:
    assert await store.paused_sinks() == {}
    await store.set_paused("sms", paused=True, reason="authentication failed", now=1.0)
    await store.set_paused("crm", paused=True, reason=None, now=1.0)
    assert await store.paused_sinks() == {"sms": "authentication failed", "crm": None}
    await store.set_paused("sms", paused=False, reason=None, now=2.0)
    assert await store.paused_sinks() == {"crm": None}


async def test_a_sinks_token_bucket_is_shared_refilled_and_blocked(store: Store) -> None:
    async def take(sink: str, want: int, now: float) -> tuple[int, float]:
        taken = await store.take_tokens(sink, want=want, per_second=2.0, burst=3, now=now)
        return taken.granted, taken.wait

    assert (await take("sms", 5, 100.0))[0] == 3  # a full bucket: the burst
    assert await take("sms", 1, 100.0) == (0, 0.5)
    assert (await take("sms", 5, 101.0))[0] == 2  # refilled at 2/s
    assert (await take("crm", 1, 101.0))[0] == 1  # a bucket per sink
    await store.block_tokens("sms", until=110.0, now=101.0)
    await store.block_tokens("sms", until=105.0, now=101.0)  # never shortens a block
    assert await take("sms", 1, 104.0) == (0, 6.0)
    assert (await take("sms", 5, 110.0))[0] == 3


async def test_sink_stats_count_the_queue_and_the_dead(store: Store) -> None:
    for n in range(3):
        await store.ingest(record(f"evt_{n}", key=f"k{n}", received=1000.0 + n), targets("crm"))
    event = record("dead", key="kd")
    await store.ingest(event, targets("sms"))
    await finish(store, event, "sms", "dead")
    await store.claim("crm", limit=1, now=1100.0, owner="w", lease_until=1130.0)
    stats = await store.sink_stats(["crm", "sms", "email"], now=1100.0)
    assert stats["crm"].pending == 3 and stats["crm"].due == 2 and stats["crm"].dead == 0
    assert stats["crm"].oldest_due_age == pytest.approx(99.0)  # the first one is leased, not due
    assert (stats["sms"].pending, stats["sms"].dead, stats["sms"].oldest_due_age) == (0, 1, 0.0)
    assert "email" not in stats  # nothing queued, nothing dead
    await store.ping()


async def test_purging_while_events_arrive_loses_nothing_newer_than_the_cut_off(store: Store) -> None:
    old = [record(f"old_{n}", key=f"old{n}", received=100.0) for n in range(120)]
    for event in old:
        await store.ingest(event, targets("crm"))
    for event in old[:100]:  # the last 20 are still pending: kept whatever their age
        await finish(store, event, "crm", "succeeded")
    new = [record(f"new_{n}", key=f"new{n}", received=5000.0 + n) for n in range(150)]
    purged = 0

    async def arrive() -> None:
        for event in new:
            await store.ingest(event, targets("crm"))

    async def purge() -> None:
        nonlocal purged
        while removed := await store.purge(before=1000.0, batch=7, now=6000.0):
            purged += removed

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(arrive)
        tasks.start_soon(purge)
    assert purged == 100
    left = {e.provider_event_id for e in await store.list_events(EventQuery(), limit=1000)}
    assert left == {e.provider_event_id for e in new + old[100:]}


async def test_a_sink_remembers_values_by_key(store: Store) -> None:
    assert await store.get_state("calendar", "appointment:1") is None
    await store.set_state("calendar", "appointment:1", "first", now=1.0)
    await store.set_state("calendar", "appointment:1", "second", now=2.0)
    await store.set_state("calendar", "appointment:2", "other", now=2.0)
    await store.set_state("calendar", "feed:1", "x", now=2.0)
    await store.set_state("sms", "appointment:1", "not the calendar's", now=2.0)
    assert await store.get_state("calendar", "appointment:1") == "second"
    assert await store.list_state("calendar", "appointment:") == {"appointment:1": "second", "appointment:2": "other"}


async def test_a_failing_write_among_concurrent_ones_fails_alone(store: Store) -> None:
    """On SQLite, concurrent writes share one transaction (group commit): each still succeeds or fails alone."""
    outcomes: dict[str, bool] = {}

    async def ingest(event: EventRecord, sinks: list[Target]) -> None:
        try:
            await store.ingest(event, sinks)
            outcomes[event.provider_event_id] = True
        except StorageError:
            outcomes[event.provider_event_id] = False

    async with anyio.create_task_group() as tasks:
        for n in range(30):
            broken = n == 17
            tasks.start_soon(
                ingest, record(f"evt_{n}", key=f"k{n}"), targets("crm", "crm") if broken else targets("crm")
            )
    assert outcomes == {f"evt_{n}": n != 17 for n in range(30)}
    assert await store.count_events() == 29


def appointment(provider_id: str, *, occurred: float, kind: str = "appointment.created", **fields: Any) -> EventRecord:
    """An event of moncreneau appointment 1 (what follow-ups find an appointment's events by)."""
    return record(provider_id, occurred=occurred, type=kind, appointment_id="1", **fields)


def plan(*reminders: tuple[str, float, float], **fields: Any) -> FollowUp:
    return FollowUp(reminders=tuple(ScheduledReminder(s, None, b, due) for s, b, due in reminders), **fields)


async def rows(store: Store, *events: EventRecord) -> list[tuple[str, float | None, str, str | None]]:
    """(sink, reminder, status, reason) of every delivery of these events."""
    found = [d for event in events for d in await store.deliveries(event.id)]
    return sorted(((d.sink, d.reminder, d.status, d.dead_reason) for d in found), key=lambda row: (row[0], row[1] or 0))


async def test_reminders_are_stored_with_the_event_and_replaced_by_the_next_one(store: Store) -> None:
    created = appointment("e1", occurred=100.0)
    first = await store.ingest(
        created, targets("sms"), follow_up=plan(("sms", 7200.0, 50_000.0), ("sms", 86400.0, 1.0))
    )
    assert first.withheld == ()
    assert await rows(store, created) == [
        ("sms", None, "pending", None),
        ("sms", 7200.0, "pending", None),
        ("sms", 86400.0, "pending", None),
    ]
    moved = appointment("e2", occurred=200.0, kind="appointment.updated")
    # the 2 h reminder keeps its time (kept, now reading the update); the 24 h one moves
    second = await store.ingest(moved, [], follow_up=plan(("sms", 7200.0, 50_000.0), ("sms", 86400.0, 2.0)))
    assert second.withheld == (Withheld("sms", "superseded", "rescheduled"),)
    assert await rows(store, created) == [("sms", None, "pending", None), ("sms", 86400.0, "superseded", "rescheduled")]
    assert await rows(store, moved) == [("sms", 7200.0, "pending", None), ("sms", 86400.0, "pending", None)]
    cancelled = appointment("e3", occurred=300.0, kind="appointment.cancelled")
    third = await store.ingest(cancelled, [], follow_up=plan(reason="appointment cancelled"))
    assert third.withheld == (Withheld("sms", "superseded", "appointment cancelled"),) * 2


async def test_an_event_older_than_one_stored_changes_nothing(store: Store) -> None:
    moved = appointment("e2", occurred=200.0, kind="appointment.updated")
    await store.ingest(moved, targets("sms"), follow_up=plan(("sms", 7200.0, 50_000.0)))
    created = appointment("e1", occurred=100.0)
    late = await store.ingest(
        created,
        targets("sms", "crm"),
        follow_up=plan(("sms", 7200.0, 40_000.0), supersede=frozenset({"sms"}), late_superseded=frozenset({"sms"})),
    )
    assert late.withheld == (Withheld("sms", "superseded", "a later event came first"),)
    assert await rows(store, created) == [
        ("crm", None, "pending", None),
        ("sms", None, "superseded", "a later event came first"),
    ]
    assert await rows(store, moved) == [("sms", None, "pending", None), ("sms", 7200.0, "pending", None)]


async def test_a_later_event_withdraws_waiting_messages_but_no_cancellation_notice_and_nothing_leased(
    store: Store,
) -> None:
    created = appointment("e1", occurred=100.0)
    cancelled = appointment("e2", occurred=200.0, kind="appointment.cancelled")
    updated = appointment("e3", occurred=300.0, kind="appointment.updated")
    await store.ingest(created, targets("crm", "sms"))
    await store.ingest(cancelled, targets("crm", "sms"), follow_up=plan(supersede=frozenset({"sms"})))
    assert await rows(store, created) == [
        ("crm", None, "pending", None),
        ("sms", None, "superseded", "superseded by appointment.cancelled"),
    ]
    (leased,) = await claim(store)  # the CRM's first event, being delivered
    await store.ingest(updated, targets("crm", "sms"), follow_up=plan(supersede=frozenset({"sms", "crm"})))
    assert await rows(store, cancelled) == [("crm", None, "pending", None), ("sms", None, "pending", None)]
    assert [(d.id, d.status) for d in await store.deliveries(created.id) if d.sink == "crm"] == [(leased, "pending")]


async def test_reminders_keep_their_own_time_they_neither_wait_nor_hold_back(store: Store) -> None:
    created = appointment("e1", occurred=100.0)
    await store.ingest(created, targets("crm"), follow_up=plan(("crm", 60.0, 500.0)))
    claimed = await store.claim("crm", limit=10, now=1000.0, owner="w1", lease_until=1030.0)
    assert sorted((d.reminder or 0, d.due_at) for d in claimed) == [(0, 1000.0), (60.0, 500.0)]


async def test_settle_moves_a_leased_delivery_on_without_an_attempt(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    (delivery_id,) = await claim(store)
    assert not await store.settle(
        delivery_id, "w2", Transition("pending", next_attempt_at=5000.0), note="x", now=1000.0
    )
    assert await store.settle(
        delivery_id, "w1", Transition("pending", next_attempt_at=5000.0), note="quiet hours: waits", now=1000.0
    )
    (row,) = await store.deliveries(event.id)
    assert (row.status, row.attempts, row.next_attempt_at, row.lease_owner, row.last_error) == (
        "pending",
        0,
        5000.0,
        None,
        "quiet hours: waits",
    )
    assert await store.next_due("crm", after=1000.0) == 5000.0
    assert await store.next_due("crm", after=5000.0) is None and await claim(store) == []
    (again,) = await claim(store, now=5000.0)
    assert await store.settle(
        again, "w1", Transition("skipped", dead_reason="quiet hours"), note="too late", now=5000.0
    )
    assert [(d.status, d.dead_reason) for d in await store.deliveries(event.id)] == [("skipped", "quiet hours")]


async def test_a_fallback_is_queued_with_the_failure_once(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    (delivery_id,) = await claim(store)
    attempt = AttemptRecord(1, 1000.0, 5.0, "permanent", 400, "bad recipient")
    skipped = Transition("skipped", dead_reason="bad recipient; sent through email")
    assert (await store.record_attempt(delivery_id, "w1", attempt, skipped, now=1001.0, fallback="email")).moved
    await store.ingest(record("evt_2", key=None), targets("crm"))
    assert [(d.sink, d.status) for d in await store.deliveries(event.id)] == [("crm", "skipped"), ("email", "pending")]
    (fallback,) = await store.claim("email", limit=10, now=1001.0, owner="w1", lease_until=1030.0)
    assert fallback.event_id == event.id


async def test_traffic_counts_add_up_across_flushes_and_old_minutes_go(store: Store) -> None:
    counts = [
        TrafficCount("webhook", "moncreneau", "accepted", 100, 3),
        TrafficCount("webhook", "moncreneau", "invalid_signature", 100, 1),
        TrafficCount("attempt", "crm", "succeeded", 101, 2),
    ]
    await store.add_traffic(counts, forget_before=0)
    await store.add_traffic([TrafficCount("webhook", "moncreneau", "accepted", 100, 2)], forget_before=0)
    assert sorted(await store.traffic(since=100), key=str) == sorted(
        [counts[2], TrafficCount("webhook", "moncreneau", "accepted", 100, 5), counts[1]], key=str
    )
    assert await store.traffic(since=101) == [counts[2]]
    await store.add_traffic([], forget_before=101)
    assert await store.traffic(since=0) == [counts[2]]


async def test_recent_failures_are_the_latest_failed_attempts_among_the_latest(store: Store) -> None:
    event = record()
    await store.ingest(event, targets("crm"))
    [delivery] = [d.id for d in await store.claim("crm", limit=1, now=1000.0, owner="w1", lease_until=1030.0)]
    outcomes: list[Any] = ["retryable", "succeeded", "permanent", "retryable"]
    for number, outcome in enumerate(outcomes, 1):
        attempt = AttemptRecord(number, 1000.0 + number, 5.0, outcome, 500, f"attempt {number}")
        await store.record_attempt(delivery, "w1", attempt, Transition("pending", next_attempt_at=1000.0), now=1000.0)
    failures = await store.recent_failures(limit=2, among=100)
    assert [(f.detail, f.outcome, f.sink, f.event_id, f.delivery_id) for f in failures] == [
        ("attempt 4", "retryable", "crm", event.id, delivery),
        ("attempt 3", "permanent", "crm", event.id, delivery),
    ]
    assert [f.detail for f in await store.recent_failures(limit=10, among=2)] == ["attempt 4", "attempt 3"]
    assert [f.detail for f in await store.recent_failures(limit=10, among=3)] == ["attempt 4", "attempt 3"]
    assert [f.detail for f in await store.recent_failures(limit=10, among=4)] == ["attempt 4", "attempt 3", "attempt 1"]
