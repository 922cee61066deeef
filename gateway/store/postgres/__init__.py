"""PostgreSQL store, for several gateway processes on one database (psycopg 3, async, pooled).

Ingests and attempts' records go in group commits (`_write`): one transaction on one connection for every write
that waits, their statements merged (writes.py); the rest is a transaction per call (`_run`).

Claims lock rows with FOR UPDATE SKIP LOCKED, so that workers never wait on each other and never take the same
delivery; leases still bound a claim in time, so that a killed worker's deliveries come back. Every ingest that
creates deliveries no worker took from it sends NOTIFY gateway_deliveries in its transaction: listening workers look
at once, on commit. The schema is versioned (gateway/store/migrations/NNNN_name.sql), applied by `appointment-gateway
migrate` and checked at open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store import buckets, statements
from gateway.store.base import (
    AttemptRecord,
    ClaimedDelivery,
    DeadLetter,
    DeliveryRow,
    DeliveryStatus,
    EventRecord,
    EventSummary,
    FollowUp,
    Handoff,
    Ingested,
    RecentFailure,
    Recorded,
    SinkStats,
    TrafficCount,
    Transition,
    sink_stats,
)
from gateway.store.buckets import Taken
from gateway.store.group_commit import GroupCommit, PendingWrite
from gateway.store.postgres.writes import (
    CHANNEL,
    NOTIFY,
    Ingesting,
    Purged,
    Recording,
    run_together,
)
from gateway.store.queries import (
    DeadLetterQuery,
    EventQuery,
    Where,
    dead_letter_conditions,
    event_conditions,
    summary,
)
from gateway.store.statements import (
    EVENT_COLUMNS,
    for_psycopg,
    sink_stats_row,
    traffic_row,
)

logger = logging.getLogger(__name__)
R = TypeVar("R")
SETTLE = for_psycopg(statements.SETTLE)
NEXT_DUE = for_psycopg(statements.NEXT_DUE)
FORGET_PURGED = for_psycopg(statements.FORGET_PURGED)
PURGE_STATE = for_psycopg(statements.PURGE_STATE)
RELEASE = for_psycopg(statements.RELEASE)
LEASE_OWNERS = statements.LEASE_OWNERS
BUCKET_CREATE = for_psycopg(buckets.CREATE)
BUCKET_READ = for_psycopg(buckets.READ) + " FOR UPDATE"  # one process at a time takes from a bucket
BUCKET_WRITE = for_psycopg(buckets.WRITE)
BUCKET_BLOCK = for_psycopg(buckets.BLOCK.format(greatest="GREATEST"))
SET_PAUSED = for_psycopg(statements.SET_PAUSED)
PAUSED_SINKS = statements.PAUSED_SINKS
RENEW = for_psycopg(statements.RENEW)
RELEASE_OWNER = for_psycopg(statements.RELEASE_OWNER)
SELECT_EVENT = for_psycopg(statements.SELECT_EVENT)
SELECT_DELIVERIES = for_psycopg(statements.SELECT_DELIVERIES)
SELECT_ATTEMPTS = for_psycopg(statements.SELECT_ATTEMPTS)
COUNT_EVENTS = for_psycopg(statements.COUNT_EVENTS)
LIST_DEAD_LETTERS = for_psycopg(statements.LIST_DEAD_LETTERS)
DEAD_LETTER_IDS = for_psycopg(statements.DEAD_LETTER_IDS)
GET_STATE = for_psycopg(statements.GET_STATE)
SET_STATE = for_psycopg(statements.SET_STATE)
SELECT_SENT = for_psycopg(statements.SELECT_SENT)
INSERT_SENT = for_psycopg(statements.INSERT_SENT)
ADD_TRAFFIC = for_psycopg(statements.ADD_TRAFFIC)
FORGET_TRAFFIC = for_psycopg(statements.FORGET_TRAFFIC)
SELECT_TRAFFIC = for_psycopg(statements.SELECT_TRAFFIC)
RECENT_FAILURES = for_psycopg(statements.RECENT_FAILURES)
MIGRATIONS = sorted(
    (int(entry.name.split("_")[0]), entry.name)
    for entry in resources.files("gateway.store.migrations").iterdir()
    if entry.name.endswith(".sql")
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

CLAIM = f"""
WITH claimable AS (
    SELECT d.id FROM deliveries AS d
    WHERE d.sink = %(sink)s AND d.status = 'pending' AND d.next_attempt_at <= %(now)s
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= %(now)s)
      AND (d.ordering_key IS NULL OR d.reminder IS NOT NULL OR NOT {statements.WAITS_BEHIND})
    ORDER BY d.next_attempt_at, d.occurred_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries AS d SET lease_owner = %(owner)s, lease_expires_at = %(lease_until)s
FROM claimable, events AS e
WHERE d.id = claimable.id AND e.id = d.event_id
RETURNING d.id, d.event_id, d.sink, d.attempts, COALESCE(d.requeued_at, d.due_at, d.created_at),
          d.attempts_before_requeue, d.locale, e.canonical, d.reminder, d.due_at
"""
LIST_EVENTS = """
SELECT e.id, e.source, e.provider_event_id, e.provider_event_type, e.type, e.occurred_at, e.received_at,
       e.appointment_id, e.customer_phone, e.customer_email,
       (SELECT json_object_agg(d.sink, d.status) FROM deliveries AS d WHERE d.event_id = e.id)
FROM events AS e
WHERE {where}
ORDER BY e.received_at DESC, e.id DESC
LIMIT %s
"""
REQUEUE = """
UPDATE deliveries
SET status = 'pending', next_attempt_at = %s, requeued_at = %s, attempts_before_requeue = attempts,
    dead_reason = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = %s
WHERE {where}
RETURNING id, sink
"""
DISCARD = "UPDATE deliveries SET status = 'discarded', updated_at = %s WHERE {where} RETURNING id"
PURGEABLE = """
SELECT e.id FROM events AS e
WHERE e.received_at < %s
  AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id AND d.status = 'pending')
ORDER BY e.received_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""
PURGE = (
    "INSERT INTO purged_events (source, provider_event_id, event_id, purged_at) "
    "SELECT source, provider_event_id, id, %s FROM events WHERE id = ANY(%s) ON CONFLICT DO NOTHING",
    "DELETE FROM sent_messages WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY(%s))",
    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY(%s))",
    "DELETE FROM deliveries WHERE event_id = ANY(%s)",
    "DELETE FROM events WHERE id = ANY(%s)",
)
SINK_STATS = for_psycopg(statements.SINK_STATS)
LIST_STATE = "SELECT key, value FROM sink_state WHERE sink = %s AND left(key, %s) = %s ORDER BY key"
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS gateway_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(7395013620945)"  # one migrating process at a time
SCHEMA_VERSION_QUERY = "SELECT coalesce(max(version), 0) FROM gateway_schema_migrations"
MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('gateway_schema_migrations') IS NOT NULL"
RECORD_MIGRATION = "INSERT INTO gateway_schema_migrations (version, name) VALUES (%s, %s)"


class PostgresStore:
    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout: float = 5.0,
        busy_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._pool = AsyncConnectionPool(  # a webhook waits busy_timeout for a connection, then for a row lock
            url,
            min_size=pool_min,
            max_size=pool_max,
            timeout=busy_timeout,
            open=False,
            kwargs={
                "connect_timeout": max(1, int(connect_timeout)),
                "row_factory": tuple_row,
                "options": f"-c lock_timeout={max(1, int(busy_timeout * 1000))}",
            },
        )
        self._opened = False
        self._group = GroupCommit(self._commit_together)

    async def open(self) -> None:
        """Connect, and refuse a database whose schema is not this gateway's version."""
        await self._connect()
        version = await self.schema_version()
        if version < SCHEMA_VERSION:
            await self.close()
            raise StorageError(
                f"PostgreSQL {_safe(self.url)}: the schema is at version {version}, this gateway needs "
                f"{SCHEMA_VERSION}; run `appointment-gateway migrate`"
            )
        if version > SCHEMA_VERSION:
            await self.close()
            raise StorageError(
                f"PostgreSQL {_safe(self.url)}: the schema is at version {version}, newer than this gateway's "
                f"{SCHEMA_VERSION}; upgrade the gateway"
            )

    async def close(self) -> None:
        self._opened = False
        await self._pool.close()

    async def _connect(self) -> None:
        if self._opened:
            return
        try:
            # one direct attempt first: a refused or misconfigured server fails now, with the server's own words
            probe = await psycopg.AsyncConnection.connect(self.url, connect_timeout=max(1, int(self.connect_timeout)))
            await probe.close()
            await self._pool.open(wait=True, timeout=self.connect_timeout)
        except (PoolTimeout, psycopg.Error) as error:
            await self._pool.close()  # or it keeps trying in the background
            raise StorageError(f"PostgreSQL {_safe(self.url)}: cannot connect: {error}") from error
        self._opened = True

    async def schema_version(self) -> int:
        async def version(conn: psycopg.AsyncConnection[Any]) -> int:
            if not (await (await conn.execute(MIGRATIONS_TABLE_EXISTS)).fetchone() or (False,))[0]:
                return 0
            row = await (await conn.execute(SCHEMA_VERSION_QUERY)).fetchone()
            return int(row[0]) if row else 0

        return await self._run(version)

    async def migrate(self) -> list[str]:
        """Apply the migrations this database lacks, each in its own transaction; return their names."""
        await self._connect()
        applied = []
        for version, name in MIGRATIONS:

            async def apply(conn: psycopg.AsyncConnection[Any], version: int = version, name: str = name) -> bool:
                await conn.execute(MIGRATION_LOCK)
                await conn.execute(CREATE_MIGRATIONS_TABLE)
                current = await (await conn.execute(SCHEMA_VERSION_QUERY)).fetchone()
                if current is not None and current[0] >= version:
                    return False
                sql = resources.files("gateway.store.migrations").joinpath(name).read_text(encoding="utf-8")
                await conn.execute(sql.encode())
                await conn.execute(RECORD_MIGRATION, (version, name))
                return True

            if await self._run(apply):
                applied.append(name)
        return applied

    async def ingest(
        self,
        event: EventRecord,
        targets: Sequence[Target],
        *,
        skipped: str | None = None,
        follow_up: FollowUp | None = None,
        handoff: Handoff | None = None,
    ) -> Ingested:
        # deliveries ordered by a customer rather than an appointment are left to claims: the lock is per appointment
        by_customer = event.ordering_key is not None and event.appointment_id is None
        if handoff is None or not handoff.sinks or skipped is not None or by_customer:
            handoff = None
        try:
            return await self._write(Ingesting(event, targets, skipped, follow_up, handoff))
        except Purged as purged:
            return Ingested(event_id=purged.event_id, duplicate=True)

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        parameters = {"sink": sink, "now": now, "limit": limit, "owner": owner, "lease_until": lease_until}

        async def claim(conn: psycopg.AsyncConnection[Any]) -> list[ClaimedDelivery]:
            rows = await (await conn.execute(CLAIM, parameters)).fetchall()
            return [ClaimedDelivery(*row) for row in rows]

        return await self._run(claim)

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: AttemptRecord,
        transition: Transition,
        *,
        now: float,
        fallback: str | None = None,
    ) -> Recorded:
        return await self._write(Recording(delivery_id, owner, attempt, transition, now, fallback))

    async def settle(self, delivery_id: str, owner: str, transition: Transition, *, note: str, now: float) -> bool:
        async def settle(conn: psycopg.AsyncConnection[Any]) -> bool:
            row = (transition.status, transition.next_attempt_at, transition.dead_reason, note, now)
            return (await conn.execute(SETTLE, (*row, delivery_id, owner))).rowcount > 0

        return await self._run(settle)

    async def next_due(self, sink: str, *, after: float) -> float | None:
        async def next_due(conn: psycopg.AsyncConnection[Any]) -> float | None:
            row = await (await conn.execute(NEXT_DUE, (sink, after))).fetchone()
            return row[0] if row else None

        return await self._run(next_due)

    async def renew(self, delivery_ids: Sequence[str], owner: str, *, lease_until: float) -> None:
        async def renew(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(RENEW, [(lease_until, delivery_id, owner) for delivery_id in delivery_ids])

        await self._run(renew)

    async def set_paused(self, sink: str, *, paused: bool, reason: str | None, now: float) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(SET_PAUSED, (sink, paused, reason, now))

        await self._run(write)

    async def paused_sinks(self) -> dict[str, str | None]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> dict[str, str | None]:
            return {sink: reason for sink, reason in await (await conn.execute(PAUSED_SINKS)).fetchall()}

        return await self._run(read)

    async def take_tokens(self, sink: str, *, want: int, per_second: float, burst: int, now: float) -> Taken:
        async def take(conn: psycopg.AsyncConnection[Any]) -> Taken:
            await conn.execute(BUCKET_CREATE, (sink, float(burst), now))
            row = await (await conn.execute(BUCKET_READ, (sink,))).fetchone()
            assert row is not None
            tokens, updated_at, blocked_until = row
            taken = buckets.take(
                tokens, updated_at, blocked_until, want=want, per_second=per_second, burst=burst, now=now
            )
            await conn.execute(BUCKET_WRITE, (taken.tokens, max(now, updated_at), sink))
            return taken

        return await self._run(take)

    async def block_tokens(self, sink: str, *, until: float, now: float) -> None:
        async def block(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(BUCKET_BLOCK, (sink, now, until))

        await self._run(block)

    async def lease_owners(self) -> set[str]:
        async def owners(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            return {row[0] for row in await (await conn.execute(LEASE_OWNERS)).fetchall()}

        return await self._run(owners)

    async def release_owner(self, owner: str) -> int:
        async def release(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(RELEASE_OWNER, (owner,))).rowcount

        return await self._run(release)

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        async def release(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(RELEASE, [(delivery_id, owner) for delivery_id in delivery_ids])

        await self._run(release)

    async def get_state(self, sink: str, key: str) -> str | None:
        async def get(conn: psycopg.AsyncConnection[Any]) -> str | None:
            row = await (await conn.execute(GET_STATE, (sink, key))).fetchone()
            return None if row is None else str(row[0])

        return await self._run(get)

    async def set_state(self, sink: str, key: str, value: str, *, now: float) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(SET_STATE, (sink, key, value, now))

        await self._run(write)

    async def list_state(self, sink: str, prefix: str) -> dict[str, str]:
        async def select(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
            return dict(await (await conn.execute(LIST_STATE, (sink, len(prefix), prefix))).fetchall())

        return await self._run(select)

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        async def sent(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
            return dict(await (await conn.execute(SELECT_SENT, (delivery_id,))).fetchall())

        return await self._run(sent)

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        async def record(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(INSERT_SENT, (delivery_id, recipient, provider_message_id, at))

        await self._run(record)

    async def get_event(self, event_id: str) -> EventRecord | None:
        async def get(conn: psycopg.AsyncConnection[Any]) -> EventRecord | None:
            row = await (await conn.execute(SELECT_EVENT, (event_id,))).fetchone()
            if row is None:
                return None
            columns = dict(zip(EVENT_COLUMNS, row, strict=True))
            columns["raw_body"] = bytes(columns["raw_body"])
            return EventRecord(**columns)

        return await self._run(get)

    async def deliveries(self, event_id: str) -> list[DeliveryRow]:
        async def deliveries(conn: psycopg.AsyncConnection[Any]) -> list[DeliveryRow]:
            return [DeliveryRow(*row) for row in await (await conn.execute(SELECT_DELIVERIES, (event_id,))).fetchall()]

        return await self._run(deliveries)

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        async def attempts(conn: psycopg.AsyncConnection[Any]) -> list[AttemptRecord]:
            return [
                AttemptRecord(*row) for row in await (await conn.execute(SELECT_ATTEMPTS, (delivery_id,))).fetchall()
            ]

        return await self._run(attempts)

    async def count_events(self) -> int:
        async def count(conn: psycopg.AsyncConnection[Any]) -> int:
            row = await (await conn.execute(COUNT_EVENTS)).fetchone()
            return int(row[0]) if row else 0

        return await self._run(count)

    async def list_events(
        self, query: EventQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[EventSummary]:
        where = event_conditions(query, "%s")
        if after is not None:
            where.add("(e.received_at, e.id) < (?, ?)", *after)

        async def select(conn: psycopg.AsyncConnection[Any]) -> list[EventSummary]:
            cursor = await conn.execute(LIST_EVENTS.format(where=where.sql).encode(), [*where.parameters, limit])
            return [summary(row) for row in await cursor.fetchall()]

        return await self._run(select)

    async def replay(self, event_id: str, *, sink: str | None = None, now: float) -> list[str]:
        where = Where("%s", "status IN ('succeeded', 'dead')")
        where.add("event_id = ?", event_id)
        if sink is not None:
            where.add("sink = ?", sink)
        return await self._requeue(where, now)

    async def list_dead_letters(
        self, query: DeadLetterQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        where = dead_letter_conditions(query, "%s")
        if after is not None:
            where.add("(d.updated_at, d.id) < (?, ?)", *after)

        async def select(conn: psycopg.AsyncConnection[Any]) -> list[DeadLetter]:
            sql = LIST_DEAD_LETTERS.format(where=where.sql).encode()
            return [DeadLetter(*row) for row in await (await conn.execute(sql, [*where.parameters, limit])).fetchall()]

        return await self._run(select)

    async def requeue_dead_letters(self, query: DeadLetterQuery, *, now: float, dry_run: bool = False) -> int:
        where = dead_letter_conditions(query, "%s")
        if dry_run:

            async def count(conn: psycopg.AsyncConnection[Any]) -> int:
                sql = f"SELECT count(*) FROM ({DEAD_LETTER_IDS.format(where=where.sql)}) AS dead".encode()
                row = await (await conn.execute(sql, where.parameters)).fetchone()
                return int(row[0]) if row else 0

            return await self._run(count)
        selection = Where("%s", f"id IN ({DEAD_LETTER_IDS.format(where=where.sql)})")
        selection.parameters.extend(where.parameters)
        return len(await self._requeue(selection, now))

    async def set_dead_letter(self, delivery_id: str, *, status: DeliveryStatus, now: float) -> bool:
        where = Where("%s", "status = 'dead'")
        where.add("id = ?", delivery_id)
        if status == "pending":
            return bool(await self._requeue(where, now))
        if status != "discarded":
            raise ValueError(f"a dead letter can be retried (pending) or discarded, not made {status!r}")

        async def discard(conn: psycopg.AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(DISCARD.format(where=where.sql).encode(), [now, *where.parameters])
            return await cursor.fetchone() is not None

        return await self._run(discard)

    async def purge(self, *, before: float, batch: int, now: float) -> int:
        async def purge(conn: psycopg.AsyncConnection[Any]) -> int:
            ids = [row[0] for row in await (await conn.execute(PURGEABLE, (before, batch))).fetchall()]
            if ids:
                tombstones, *deletes = PURGE
                await conn.execute(tombstones, (now, ids))
                for statement in deletes:
                    await conn.execute(statement, (ids,))
            return len(ids)

        return await self._run(purge)

    async def forget(self, *, tombstones_before: float, state_before: float) -> None:
        async def forget(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(FORGET_PURGED, (tombstones_before,))
            await conn.execute(PURGE_STATE, (state_before,))

        await self._run(forget)

    async def sink_stats(self, sinks: Sequence[str], *, now: float) -> dict[str, SinkStats]:
        async def stats(conn: psycopg.AsyncConnection[Any]) -> dict[str, SinkStats]:
            rows = {
                sink: await (await conn.execute(SINK_STATS, sink_stats_row(sink, now))).fetchone() for sink in sinks
            }
            return sink_stats(rows, now)

        return await self._run(stats)

    async def ping(self) -> None:
        async def ping(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("SELECT 1")

        await self._run(ping)

    async def add_traffic(self, counts: Sequence[TrafficCount], *, forget_before: int) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(ADD_TRAFFIC, [traffic_row(count) for count in counts])
                await cursor.execute(FORGET_TRAFFIC, (forget_before,))

        await self._run(write)

    async def traffic(self, *, since: int) -> list[TrafficCount]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[TrafficCount]:
            return [TrafficCount(*row) for row in await (await conn.execute(SELECT_TRAFFIC, (since,))).fetchall()]

        return await self._run(read)

    async def recent_failures(self, *, limit: int, among: int) -> list[RecentFailure]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[RecentFailure]:
            rows = await (await conn.execute(RECENT_FAILURES, (among, limit))).fetchall()
            return [RecentFailure(*row) for row in rows]

        return await self._run(read)

    async def _requeue(self, where: Where, now: float) -> list[str]:
        """Requeue the matching deliveries and tell listening workers at once."""

        async def requeue(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            cursor = await conn.execute(REQUEUE.format(where=where.sql).encode(), [now, now, now, *where.parameters])
            rows = await cursor.fetchall()
            if rows:
                await conn.execute(NOTIFY, (CHANNEL, ",".join(sorted({sink for _, sink in rows}))))
            return [delivery_id for delivery_id, _ in rows]

        return await self._run(requeue)

    async def watch(self, wake: Callable[[Iterable[str] | None], None]) -> None:
        """LISTEN for new deliveries from every process and wake the worker's lanes; reconnects after failures,
        waking every lane each time it (re)connects, since notifications sent meanwhile are lost."""
        pause = 0.5
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
                )
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    wake(None)
                    pause = 0.5
                    async for notice in connection.notifies():
                        wake(notice.payload.split(","))
            except psycopg.Error as error:
                logger.warning("LISTEN %s lost (%s); polling until it is back", CHANNEL, error)
                await anyio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def _run(self, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[R]]) -> R:
        if not self._opened:
            raise StorageError(f"PostgreSQL {_safe(self.url)}: the store is not open")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await operation(conn)
        except (psycopg.Error, PoolTimeout) as error:
            raise StorageError(f"PostgreSQL {_safe(self.url)}: {error}") from error

    async def _write(self, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[R]]) -> R:
        """An ingest or an attempt's record (`Ingesting`, `Recording`), in a group commit (`_commit_together`)."""
        if not self._opened:
            raise StorageError(f"PostgreSQL {_safe(self.url)}: the store is not open")
        try:
            result: R = await self._group.write(PendingWrite(operation))
        except (psycopg.Error, PoolTimeout) as error:
            raise StorageError(f"PostgreSQL {_safe(self.url)}: {error}") from error
        return result

    async def _commit_together(self, batch: list[PendingWrite[psycopg.AsyncConnection[Any]]]) -> None:
        """The batch's writes one after the other in one transaction on one connection: one commit, one sync of
        the server's log, two round trips fewer per write. Should one of them fail (a conflict, a deadlock, a
        purged event's rollback), that transaction is rolled back and each write runs again in its own, to fail
        alone; a lost connection fails them all at once, rather than each waiting for one in turn."""
        if len(batch) > 1:
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    await run_together(conn, batch)
                return
            except psycopg.Error as error:
                if error.sqlstate is None or error.sqlstate.startswith(("08", "57")):
                    raise
            except Purged:
                pass
        for write in batch:
            try:
                write.result = await self._run(write.operation)
            except (StorageError, Purged) as error:
                write.error = error


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
