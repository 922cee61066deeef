"""What only the PostgreSQL store does: migrations, NOTIFY, and several processes' pools on one database."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from gateway.app import build_worker, create_app
from gateway.clock import ManualClock
from gateway.config import Config
from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.sources.base import load_samples
from gateway.store.base import (
    AttemptRecord,
    FollowUp,
    Handoff,
    Ingested,
    Recorded,
    ScheduledReminder,
    Transition,
)
from gateway.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from gateway.store.postgres.writes import APPOINTMENT_LOCKS, Ingesting, Recording, ingest_together, record_together
from tests.conftest import moncreneau_request
from tests.helpers import record, until
from tests.peers import postgres_cluster

pytestmark = pytest.mark.anyio


@pytest.fixture
async def migrated(postgres_url: str) -> AsyncIterator[str]:
    store = PostgresStore(postgres_url)
    await store.migrate()
    await store.close()
    yield postgres_url


async def test_a_database_without_the_schema_is_refused_with_the_fix(postgres_url: str) -> None:
    with pytest.raises(
        StorageError,
        match=rf"schema is at version 0, this gateway needs {SCHEMA_VERSION}; run `appointment-gateway migrate`",
    ):
        await PostgresStore(postgres_url).open()


async def test_migrations_apply_once_even_when_two_processes_race(postgres_url: str) -> None:
    results: list[list[str]] = []

    async def migrate() -> None:
        store = PostgresStore(postgres_url)
        results.append(await store.migrate())
        await store.close()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(migrate)
        tasks.start_soon(migrate)
    # each migration is its own transaction: the two may share them out, but none is applied twice
    assert sorted(results[0] + results[1]) == [name for _, name in MIGRATIONS]
    assert [name for _, name in MIGRATIONS][:2] == ["0001_initial.sql", "0002_purged_events.sql"]
    store = PostgresStore(postgres_url)
    await store.open()
    assert await store.schema_version() == SCHEMA_VERSION
    assert await store.migrate() == []
    await store.close()


async def test_new_deliveries_wake_listening_workers_in_other_processes(migrated: str) -> None:
    listener, writer = PostgresStore(migrated), PostgresStore(migrated)
    await writer.open()
    woken: list[list[str] | None] = []
    listening, arrived = anyio.Event(), anyio.Event()

    def wake(sinks: Iterable[str] | None) -> None:
        woken.append(None if sinks is None else list(sinks))
        (listening if sinks is None else arrived).set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(listener.watch, wake)
        with anyio.fail_after(5):
            await listening.wait()  # the first wake-up says the listener is connected
            await writer.ingest(record(), [Target("crm"), Target("sms")])
            await arrived.wait()
        tasks.cancel_scope.cancel()
    await writer.close()
    assert woken == [None, ["crm", "sms"]]


async def test_workers_on_separate_pools_claim_disjoint_deliveries(migrated: str) -> None:
    setup = PostgresStore(migrated)
    await setup.open()
    for n in range(60):
        await setup.ingest(record(f"evt_{n}", key=f"appointment-{n}"), [Target("crm")])
    workers = [PostgresStore(migrated) for _ in range(3)]
    claimed: list[list[str]] = [[] for _ in workers]

    async def drain(index: int) -> None:
        store = workers[index]
        await store.open()
        while batch := await store.claim("crm", limit=4, now=2000.0, owner=f"w{index}", lease_until=2030.0):
            claimed[index] += [delivery.id for delivery in batch]
        await store.close()

    async with anyio.create_task_group() as tasks:
        for index in range(len(workers)):
            tasks.start_soon(drain, index)
    everything = [delivery_id for ids in claimed for delivery_id in ids]
    assert len(everything) == len(set(everything)) == 60
    await setup.close()


async def test_the_same_provider_event_from_two_processes_is_stored_once(migrated: str) -> None:
    stores = [PostgresStore(migrated) for _ in range(2)]
    for store in stores:
        await store.open()
    results = []

    async def ingest(store: PostgresStore) -> None:
        for n in range(30):
            results.append(await store.ingest(record(f"evt_{n}"), [Target("crm")]))

    async with anyio.create_task_group() as tasks:
        for store in stores:
            tasks.start_soon(ingest, store)
    assert sum(not result.duplicate for result in results) == 30
    assert await stores[0].count_events() == 30
    for store in stores:
        await store.close()


async def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    store = PostgresStore(f"postgresql://gateway:s3cret@127.0.0.1:9/{uuid.uuid4().hex}", connect_timeout=1)
    with pytest.raises(StorageError, match="cannot connect") as error:
        await store.open()
    assert "s3cret" not in str(error.value) and "gateway:***@127.0.0.1:9" in str(error.value)


@pytest.mark.fault
async def test_postgresql_stopped_mid_run_is_answered_503_and_the_gateway_recovers_when_it_returns(
    write_config: Callable[[str], Config],
) -> None:
    with postgres_cluster() as cluster:
        migrator = PostgresStore(cluster.url)
        await migrator.migrate()
        await migrator.close()
        config = write_config("storage: {busy_timeout: 1s}\n")
        app = create_app(config, store=PostgresStore(cluster.url, busy_timeout=1.0), clock=ManualClock())
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client,
        ):

            async def post(n: int) -> httpx.Response:
                raw, headers = moncreneau_request(
                    {**load_samples("moncreneau.json")["appointment.created"], "id": f"e{n}"}
                )
                return await client.post("/webhooks/moncreneau", content=raw, headers=headers)

            assert (await post(1)).status_code == 202
            cluster.stop()
            began = time.monotonic()
            down = await post(2)
            answered_in = time.monotonic() - began
            assert (await client.get("/readyz")).status_code == 503
            cluster.start()
            answers = []
            for _ in range(50):  # as a provider retries, bounded
                answers.append((await post(2)).status_code)
                if answers[-1] == 202:
                    break
                await anyio.sleep(0.2)
            ready = (await client.get("/readyz")).status_code
    print(f"\nwhile down: {down.status_code} in {answered_in:.2f}s; after the restart: {answers}")
    assert down.status_code == 503 and down.json()["error"] == "storage_unavailable" and answered_in < 3
    assert answers[-1] == 202 and ready == 200


async def test_a_pause_reaches_a_worker_on_another_connection_within_a_second(
    migrated: str, write_config: Callable[[str], Config]
) -> None:
    config = write_config(
        "sinks: {crm: {type: http, options: {url: 'http://127.0.0.1:9/'}}}\nroutes: [{sinks: [crm]}]\n"
    )
    here, there = PostgresStore(migrated), PostgresStore(migrated)  # as two processes would each have
    await here.open()
    await there.open()
    try:
        other = build_worker(config, there, ManualClock())
        assert not await other._is_paused("crm")  # read, and trusted for a second
        await here.set_paused("crm", paused=True, reason="maintenance", now=0.0)
        paused_at = time.monotonic()

        async def obeys() -> bool:
            return await other._is_paused("crm")

        await until(obeys, "the other worker to see the pause", 1.5)
        assert time.monotonic() - paused_at <= 1.1
    finally:
        await here.close()
        await there.close()


async def test_concurrent_events_of_one_appointment_leave_only_the_latest_ones_reminders(postgres_url: str) -> None:
    """Two processes ingesting a booking and its reschedule at the same moment: each transaction must see the
    other's reminders, or both sets stay pending (READ COMMITTED alone lets them both pass)."""
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.migrate()
    await first.open()
    await second.open()
    try:
        for n in range(40):
            created = record(f"c{n}", occurred=100.0, appointment_id=str(n), key=f"mc:appointment:{n}")
            moved = record(f"m{n}", occurred=200.0, appointment_id=str(n), key=f"mc:appointment:{n}")
            async with anyio.create_task_group() as both:
                both.start_soon(partial(first.ingest, created, [], follow_up=reminding(5_000.0)))
                both.start_soon(partial(second.ingest, moved, [], follow_up=reminding(9_000.0)))
            pending = [
                (d.due_at, d.status)
                for event in (created, moved)
                for d in await first.deliveries(event.id)
                if d.status == "pending"
            ]
            assert pending == [(9_000.0 - 7200.0, "pending")], f"appointment {n}: {pending}"
    finally:
        await first.close()
        await second.close()


def reminding(starts: float) -> FollowUp:
    return FollowUp(reminders=(ScheduledReminder("sms", None, 7200.0, starts - 7200.0),))


async def test_concurrent_writes_share_one_transaction(migrated: str) -> None:
    store = PostgresStore(migrated)
    await store.open()
    try:
        results = []

        async def ingest(n: int) -> None:
            results.append(await store.ingest(record(f"evt_{n}", key=f"mc:appointment:{n}"), [Target("crm")]))

        async with anyio.create_task_group() as tasks:
            for n in range(30):
                tasks.start_soon(ingest, n)
        assert sorted(result.duplicate for result in results) == [False] * 30
        assert await store.count_events() == 30
        async with await psycopg.AsyncConnection.connect(migrated) as connection:
            # the rows one transaction inserts carry its id: the first ingest commits alone, the 29 others together
            cursor = await connection.execute("SELECT count(DISTINCT xmin::text) FROM events")
            assert await cursor.fetchone() == (2,)
    finally:
        await store.close()


async def test_a_write_failing_in_a_shared_transaction_fails_alone(migrated: str) -> None:
    """A purged event's replay (which rolls its transaction back) and an attempt at a delivery that does not exist
    (a foreign key refuses it) share a commit with new events: the others are stored all the same."""
    store = PostgresStore(migrated)
    await store.open()
    try:
        purged = record("evt_purged", received=100.0)
        await store.ingest(purged, [])
        assert await store.purge(before=1000.0, batch=10, now=2000.0) == 1
        outcomes: dict[int, Ingested] = {}
        apart: dict[str, object] = {}

        async def ingest(n: int) -> None:
            outcomes[n] = await store.ingest(record(f"evt_{n}", key=f"mc:appointment:{n}"), [Target("crm")])

        async def replay() -> None:
            apart["replay"] = await store.ingest(record("evt_purged", received=3000.0), [Target("crm")])

        async def stray_attempt() -> None:
            attempt = AttemptRecord(1, 1000.0, 5.0, "succeeded", 200)
            try:
                await store.record_attempt("no-such-delivery", "w", attempt, Transition("succeeded"), now=1.0)
            except StorageError as error:
                apart["stray"] = str(error)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ingest, 0)
            await anyio.wait_all_tasks_blocked()  # its commit has begun: the rest wait for the next, together
            tasks.start_soon(replay)
            tasks.start_soon(stray_attempt)
            for n in range(1, 10):
                tasks.start_soon(ingest, n)
        assert apart["replay"] == Ingested(event_id=purged.id, duplicate=True)
        assert "violates foreign key constraint" in str(apart["stray"])
        assert sorted(outcomes) == list(range(10))
        assert not any(result.duplicate for result in outcomes.values())
        assert await store.count_events() == 10
        assert await store.claim("crm", limit=20, now=4000.0, owner="w", lease_until=4100.0) != []
    finally:
        await store.close()


@pytest.mark.fault
async def test_writes_sharing_a_commit_when_the_server_stops_all_fail_at_once() -> None:
    """Not one after another, each waiting the busy timeout for a connection of its own."""
    with postgres_cluster() as cluster:
        store = PostgresStore(cluster.url, busy_timeout=1.0)
        await store.migrate()
        await store.open()
        await store.ingest(record("evt_before"), [Target("crm")])
        cluster.stop()
        failures: list[str] = []

        async def ingest(n: int) -> None:
            try:
                await store.ingest(record(f"evt_{n}", key=f"mc:appointment:{n}"), [Target("crm")])
            except StorageError as error:
                failures.append(str(error))

        began = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(ingest, n)
        took = time.monotonic() - began
        await store.close()
    print(f"\n10 ingests with the server stopped: {len(failures)} storage errors in {took:.2f}s")
    assert len(failures) == 10
    assert took < 5.0  # one after another, they would take 10 busy timeouts


async def test_attempts_recorded_in_one_group_commit_each_have_their_own_outcome(migrated: str) -> None:
    """Successes, a failure sent on to its fallback, and a worker that lost its lease, in one group commit."""
    store = PostgresStore(migrated)
    await store.open()
    try:
        events = [record(f"evt_{n}", key=f"mc:appointment:{n}") for n in range(12)]
        for event in events:
            await store.ingest(event, [Target("crm")])
        claimed = await store.claim("crm", limit=20, now=2000.0, owner="w", lease_until=2030.0)
        by_event = {delivery.event_id: delivery.id for delivery in claimed}
        succeeded = AttemptRecord(1, 2000.0, 5.0, "succeeded", 200, "ok")
        refused = AttemptRecord(1, 2000.0, 5.0, "permanent", 400, "bad recipient")
        outcomes: dict[int, object] = {}

        async def attempt(n: int) -> None:
            delivery_id = by_event[events[n].id]
            if n == 10:  # its fallback is queued with the failure
                skipped = Transition("skipped", dead_reason="bad recipient; sent through email")
                outcomes[n] = await store.record_attempt(
                    delivery_id, "w", refused, skipped, now=2001.0, fallback="email"
                )
            elif n == 11:  # another worker: its lease is lost, its attempt is kept
                outcomes[n] = await store.record_attempt(
                    delivery_id, "other", succeeded, Transition("succeeded"), now=2001.0
                )
            else:
                outcomes[n] = await store.record_attempt(
                    delivery_id, "w", succeeded, Transition("succeeded"), now=2001.0
                )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(attempt, 0)
            await anyio.wait_all_tasks_blocked()  # its commit has begun: the 11 others wait for the next, together
            for n in range(1, 12):
                tasks.start_soon(attempt, n)
        assert outcomes == {**{n: Recorded(True, False) for n in range(11)}, 11: Recorded(False, False)}
        statuses = {
            event.provider_event_id: [(d.sink, d.status) for d in await store.deliveries(event.id)] for event in events
        }
        assert statuses["evt_0"] == [("crm", "succeeded")]
        assert statuses["evt_10"] == [("crm", "skipped"), ("email", "pending")]
        assert statuses["evt_11"] == [("crm", "pending")]
        async with await psycopg.AsyncConnection.connect(migrated) as connection:
            cursor = await connection.execute("SELECT count(*), count(DISTINCT xmin::text) FROM attempts")
            assert await cursor.fetchone() == (12, 2)
    finally:
        await store.close()


async def test_ingests_in_one_group_commit_each_get_their_own_handoff(migrated: str) -> None:
    """One statement leases the new deliveries of every ingest in the commit: each gets its own back, a later event
    of an appointment whose earlier delivery is in the same commit waits behind it, and a duplicate gets none."""
    store = PostgresStore(migrated)
    await store.open()
    try:
        handoff = Handoff("w1", 1030.0, frozenset({"crm", "sms"}))
        await store.ingest(record("evt_stored"), [Target("crm")])
        events = {
            "first": record("evt_a1", occurred=100.0, appointment_id="a", key="mc:appointment:a"),
            "later": record("evt_a2", occurred=200.0, appointment_id="a", key="mc:appointment:a"),
            "other": record("evt_b", appointment_id="b", key="mc:appointment:b"),
            "crm only": record("evt_c", appointment_id="c", key="mc:appointment:c"),
            "duplicate": record("evt_stored"),
        }
        sinks = {"crm only": [Target("crm")]}
        outcomes: dict[str, Ingested] = {}

        async def ingest(name: str) -> None:
            targets = sinks.get(name, [Target("crm"), Target("sms")])
            outcomes[name] = await store.ingest(events[name], targets, handoff=handoff)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ingest, "first")
            await anyio.wait_all_tasks_blocked()  # its commit has begun: the others wait for the next, together
            for name in ("later", "other", "crm only", "duplicate"):
                tasks.start_soon(ingest, name)
        leased = {name: sorted((d.event_id, d.sink) for d in outcome.leased) for name, outcome in outcomes.items()}
        ids = {name: event.id for name, event in events.items()}
        assert leased == {
            "first": [(ids["first"], "crm"), (ids["first"], "sms")],
            "later": [],  # behind the first event's, leased and pending
            "other": [(ids["other"], "crm"), (ids["other"], "sms")],
            "crm only": [(ids["crm only"], "crm")],
            "duplicate": [],
        }
        assert outcomes["duplicate"].duplicate
        for name in ("other", "crm only"):
            handed = {d.id for d in outcomes[name].leased}
            stored = {d.id for d in await store.deliveries(ids[name]) if d.lease_owner == "w1"}
            assert handed == stored
        assert await store.claim("crm", limit=10, now=1000.0, owner="w2", lease_until=1030.0) != []  # evt_stored's
    finally:
        await store.close()


def ingestings(first: int, size: int, handoff: Handoff | None) -> list[Ingesting]:
    """Events of as many appointments, each with a delivery to crm."""
    return [
        Ingesting(record(f"evt_{n}", key=f"mc:appointment:{n}"), [Target("crm")], None, None, handoff)
        for n in range(first, first + size)
    ]


async def deliveries_read(conn: psycopg.AsyncConnection[Any]) -> int:
    """Rows of deliveries this connection has read (by full scans and through indexes) since it last sent its
    statistics: a difference of two readings is what the statements between them read."""
    query = "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'deliveries'"
    row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return int(row[0])


async def test_recording_reads_only_its_deliveries_after_the_table_grew(migrated: str) -> None:
    """Records run many times while deliveries is small, then the table grows with no ANALYZE (as under load, between
    two of autovacuum's): the next batch of records reads its own deliveries, not the table. A prepared statement's
    generic plan, made while the table was small, read all of it for every batch."""
    handoff = Handoff("w1", 1030.0, frozenset({"crm"}))

    def recordings(outcomes: list[Ingested]) -> list[Recording]:
        succeeded = Transition("succeeded")
        attempt = AttemptRecord(1, 1000.0, 5.0, "succeeded", 204)
        return [Recording(d.id, "w1", attempt, succeeded, 1001.0, None) for each in outcomes for d in each.leased]

    async with await psycopg.AsyncConnection.connect(migrated) as conn:
        await conn.execute("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        for n in range(12):  # psycopg prepares a statement on its 6th run, the server plans it generically on its 6th
            await record_together(conn, recordings(await ingest_together(conn, ingestings(n * 10, 10, handoff))))
            await conn.commit()
        await ingest_together(conn, ingestings(1000, 3000, handoff))
        await conn.commit()
        last = recordings(await ingest_together(conn, ingestings(5000, 20, handoff)))
        before = await deliveries_read(conn)
        recorded = await record_together(conn, last)
        read = await deliveries_read(conn) - before
        assert [outcome.moved for outcome in recorded] == [True] * 20
        assert read <= 4 * 20, read  # each delivery: its update, its attempt's foreign key, and whether another waits


async def test_a_handoff_reads_only_its_deliveries_behind_a_backlog(migrated: str) -> None:
    """3,000 deliveries pending (their sink's worker is behind) and no ANALYZE since they came: handing off the next
    batch's 20 reads those, not the backlog. The pending deliveries' partial index, which the planner chose while its
    statistics counted few of them, read the whole backlog for every batch."""
    async with await psycopg.AsyncConnection.connect(migrated) as conn:
        await conn.execute("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        await ingest_together(conn, ingestings(0, 3000, None))
        await conn.commit()
        before = await deliveries_read(conn)
        outcomes = await ingest_together(conn, ingestings(5000, 20, Handoff("w1", 1030.0, frozenset({"crm"}))))
        read = await deliveries_read(conn) - before
        assert [len(outcome.leased) for outcome in outcomes] == [1] * 20
        assert read <= 3 * 20, read  # each delivery by its event and sink, and whether an earlier one holds it back


async def test_the_same_provider_event_twice_in_one_group_commit_is_stored_once(migrated: str) -> None:
    store = PostgresStore(migrated)
    await store.open()
    try:
        outcomes: list[Ingested] = []

        async def ingest(provider_id: str) -> None:
            outcomes.append(await store.ingest(record(provider_id), [Target("crm")]))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ingest, "evt_first")
            await anyio.wait_all_tasks_blocked()  # its commit has begun: the two others wait for the next, together
            tasks.start_soon(ingest, "evt_twice")
            tasks.start_soon(ingest, "evt_twice")
        stored, again = sorted(outcomes[1:], key=lambda outcome: outcome.duplicate)
        assert not stored.duplicate and again == Ingested(event_id=stored.event_id, duplicate=True)
        assert await store.count_events() == 2
        assert len(await store.deliveries(stored.event_id)) == 1
    finally:
        await store.close()


async def test_two_processes_committing_events_of_the_same_appointments_never_deadlock(migrated: str) -> None:
    """Each commit takes its appointments' locks in the order of their keys, whatever order its events came in. Two
    processes' commits hold events of the same appointments in opposite orders, and another session holds one of
    those appointments' lock until both wait for it: they then wait for each other in turn, never in a circle,
    which PostgreSQL would break after a second by failing a commit (whose writes then run again one by one)."""
    stores = [PostgresStore(migrated), PostgresStore(migrated)]
    for store in stores:
        await store.open()
    handoff = Handoff("w1", 1030.0, frozenset({"crm"}))
    lock = f"hashtextextended(%s, {APPOINTMENT_LOCKS})"
    middle = "moncreneau\n15"

    async def ingest(process: int, appointment: int) -> None:
        event = record(f"evt_{process}_{appointment}", appointment_id=str(appointment), key=f"k{appointment}")
        await stores[process].ingest(event, [Target("crm")], handoff=handoff)

    async def waiting_for_the_middle(session: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await session.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return await cursor.fetchone() == (2,)

    try:
        async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as other:
            await other.execute(f"SELECT pg_advisory_lock({lock})", (middle,))
            async with anyio.create_task_group() as tasks:
                for process, order in ((0, range(30)), (1, reversed(range(30)))):
                    for n in order:  # the first commits alone; the 29 others together, up to the middle one
                        tasks.start_soon(ingest, process, n)
                await until(partial(waiting_for_the_middle, other), "both commits to wait for the middle lock", 5)
                await other.execute(f"SELECT pg_advisory_unlock({lock})", (middle,))
        assert await stores[0].count_events() == 60
    finally:
        for store in stores:
            await store.close()
    async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as connection:
        # the stores' connections have ended: their server processes have reported their counts
        cursor = await connection.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        assert await cursor.fetchone() == (0,)
