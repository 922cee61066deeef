"""The embedded default store: one SQLite file in WAL mode, every commit synced before a webhook is answered.

Calls run in a worker thread, one at a time on one connection, writes grouped into shared commits. Other processes
(a separate `worker`, the CLI) share the file: writers take a lock file in turn, and commits ring the doorbell of
workers elsewhere (gateway/store/doorbell.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar

import anyio
import anyio.to_thread

from gateway.exceptions import StorageError
from gateway.private import private_file
from gateway.routing import Target
from gateway.store import buckets
from gateway.store.base import (
    AttemptRecord,
    ClaimedDelivery,
    DeadLetter,
    DeliveryRow,
    DeliveryStatus,
    EventRecord,
    EventSummary,
    FollowUp,
    Ingested,
    SinkStats,
    Transition,
    Withheld,
    sink_stats,
)
from gateway.store.buckets import Taken
from gateway.store.doorbell import Doorbell
from gateway.store.follow_up import ringing, withheld
from gateway.store.follow_up import steps as follow_up_steps
from gateway.store.queries import (
    DeadLetterQuery,
    EventQuery,
    Where,
    dead_letter_conditions,
    event_conditions,
    summary,
)
from gateway.store.statements import (
    COUNT_EVENTS,
    DEAD_LETTER_IDS,
    EVENT_COLUMNS,
    FIND_EVENT_ID,
    FIND_PURGED,
    FORGET_PURGED,
    GET_STATE,
    INSERT_ATTEMPT,
    INSERT_DELIVERY,
    INSERT_FALLBACK,
    INSERT_SENT,
    LEASE_OWNERS,
    LIST_DEAD_LETTERS,
    NEXT_DUE,
    PAUSED_SINKS,
    PURGE_STATE,
    RELEASE,
    RELEASE_OWNER,
    RENEW,
    SELECT_ATTEMPTS,
    SELECT_DELIVERIES,
    SELECT_EVENT,
    SELECT_SENT,
    SET_PAUSED,
    SET_STATE,
    SETTLE,
    SINK_STATS,
    attempt_row,
    delivery_rows,
    sink_stats_row,
)

SCHEMA_VERSION = 2
CHECKPOINT_EVERY = 0.1
"""Seconds between two copies of the write-ahead log into the database file, made by a thread of their own."""
RESTART_PAGES = 4_000
"""Past this many pages (16 MiB) the log is started over, writers waiting a moment: under a steady load the
background copy never catches up with the last commit, which a restart needs."""
INLINE_CHECKPOINT_PAGES = 4 * RESTART_PAGES
"""A commit copies the log itself only past this: should the background copy ever stop, the log stays bounded."""
DELIVERIES = """
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id),
    sink TEXT NOT NULL,
    locale TEXT,
    ordering_key TEXT,
    occurred_at REAL NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_error TEXT,
    dead_reason TEXT,
    updated_at REAL NOT NULL,
    requeued_at REAL,
    attempts_before_requeue INTEGER NOT NULL DEFAULT 0,
    reminder REAL,
    due_at REAL
);
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    provider_event_type TEXT NOT NULL,
    provider_delivery_id TEXT,
    type TEXT,
    occurred_at REAL NOT NULL,
    received_at REAL NOT NULL,
    ordering_key TEXT,
    canonical TEXT,
    raw_body BLOB NOT NULL,
    headers TEXT NOT NULL,
    appointment_id TEXT,
    customer_phone TEXT,
    customer_email TEXT,
    UNIQUE (source, provider_event_id)
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at, id);
CREATE INDEX IF NOT EXISTS events_appointment ON events (appointment_id);
CREATE INDEX IF NOT EXISTS events_phone ON events (customer_phone);
CREATE INDEX IF NOT EXISTS events_email ON events (customer_email);
{deliveries}
-- one delivery per event, sink and reminder: a fallback queued twice is queued once
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_one ON deliveries (event_id, sink, coalesce(reminder, -1));
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (status, sink, updated_at);
-- in claim order: a claim reads the index up to its limit instead of sorting the whole backlog
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, status, next_attempt_at, occurred_at);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (sink, ordering_key, status, occurred_at);
-- deliveries_one serves lookups by event; a separate index on event_id only cost every insert
DROP INDEX IF EXISTS deliveries_event;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
CREATE TABLE IF NOT EXISTS sink_state (
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sink, key)
);
CREATE TABLE IF NOT EXISTS sink_controls (
    sink TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    reason TEXT,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_buckets (
    sink TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated_at REAL NOT NULL,
    blocked_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_events (
    source TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    purged_at REAL NOT NULL,
    PRIMARY KEY (source, provider_event_id)
);
CREATE INDEX IF NOT EXISTS purged_events_at ON purged_events (purged_at);
CREATE TABLE IF NOT EXISTS sent_messages (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    recipient TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (delivery_id, recipient)
);
""".replace("{deliveries}", DELIVERIES.format(name="deliveries"))
MIGRATIONS = {
    # 1 -> 2: reminders. SQLite cannot drop the UNIQUE (event_id, sink) of version 1: the table is copied.
    1: DELIVERIES.format(name="deliveries_2")
    + """
INSERT INTO deliveries_2 SELECT *, NULL, created_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_2 RENAME TO deliveries;
""",
}
"""Per schema version, the script that brings a database at that version to the next (SCHEMA then completes it)."""

INSERT_EVENT = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)}) VALUES ({", ".join("?" for _ in EVENT_COLUMNS)})
ON CONFLICT (source, provider_event_id) DO NOTHING
"""
# A delivery waits behind an earlier pending one of the same appointment and sink (ordered by the provider's
# time, then arrival, then id), whether that one is leased or waiting for its next retry. Reminders keep their own
# time: they neither wait nor hold anything back.
SELECT_CLAIMABLE = """
SELECT d.id FROM deliveries AS d
WHERE d.sink = :sink AND d.status = 'pending' AND d.next_attempt_at <= :now
  AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= :now)
  AND (d.ordering_key IS NULL OR d.reminder IS NOT NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries AS e
        WHERE e.sink = d.sink AND e.ordering_key = d.ordering_key AND e.status = 'pending' AND e.reminder IS NULL
          AND (e.occurred_at, e.created_at, e.id) < (d.occurred_at, d.created_at, d.id)))
ORDER BY d.next_attempt_at, d.occurred_at
LIMIT :limit
"""
LEASE = "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ? WHERE id = ?"
SELECT_CLAIMED = """
SELECT d.id, d.event_id, d.sink, d.attempts, COALESCE(d.requeued_at, d.due_at, d.created_at), d.attempts_before_requeue,
       d.locale, e.canonical, d.reminder, d.due_at
FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
WHERE d.id = ?
"""
FINISH_ATTEMPT = """
UPDATE deliveries
SET status = ?, attempts = attempts + 1, next_attempt_at = COALESCE(?, next_attempt_at), lease_owner = NULL,
    lease_expires_at = NULL, last_error = CASE WHEN ? = 'succeeded' THEN NULL ELSE ? END, dead_reason = ?,
    updated_at = ?
WHERE id = ? AND lease_owner = ?
"""
LIST_EVENTS = """
SELECT e.id, e.source, e.provider_event_id, e.provider_event_type, e.type, e.occurred_at, e.received_at,
       e.appointment_id,
       (SELECT json_group_object(d.sink, d.status) FROM deliveries AS d WHERE d.event_id = e.id)
FROM events AS e
WHERE {where}
ORDER BY e.received_at DESC, e.id DESC
LIMIT ?
"""
REQUEUE = """
UPDATE deliveries
SET status = 'pending', next_attempt_at = ?1, requeued_at = ?1, attempts_before_requeue = attempts,
    dead_reason = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1
WHERE {where}
RETURNING id
"""
DISCARD = "UPDATE deliveries SET status = 'discarded', updated_at = ?1 WHERE {where} RETURNING id"
PURGEABLE = """
SELECT e.id FROM events AS e
WHERE e.received_at < ?
  AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id AND d.status = 'pending')
ORDER BY e.received_at
LIMIT ?
"""
PURGE = (
    "INSERT INTO purged_events (source, provider_event_id, event_id, purged_at) "
    "SELECT source, provider_event_id, id, ? FROM events WHERE id IN ({ids}) ON CONFLICT DO NOTHING",
    "DELETE FROM sent_messages WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id IN ({ids}))",
    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id IN ({ids}))",
    "DELETE FROM deliveries WHERE event_id IN ({ids})",
    "DELETE FROM events WHERE id IN ({ids})",
)
BY_EVENT = "INDEXED BY deliveries_one"
"""Without statistics SQLite rates an event's deliveries (deliveries_one) no better than every pending delivery of a
sink (deliveries_due): the follow-up statements name the index."""
LIST_STATE = "SELECT key, value FROM sink_state WHERE sink = ? AND substr(key, 1, ?) = ? ORDER BY key"

logger = logging.getLogger(__name__)
R = TypeVar("R")
BUSY_TIMEOUT = 2.0
"""Seconds a write waits for another process's by default, before the store reports the database locked: one
webhook's whole wait, its place in the group commit included (storage.busy_timeout)."""


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._doorbell = Doorbell(self.path)
        self._connection: sqlite3.Connection | None = None
        self._one_at_a_time = anyio.CapacityLimiter(1)
        self._pending: list[_Write] = []
        self._committing = False
        self._committed = anyio.Event()
        self._checkpointer: _Checkpointer | None = None
        self._reader: sqlite3.Connection | None = None
        self._one_read_at_a_time = anyio.CapacityLimiter(1)

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> Self:
        return cls(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout)

    async def open(self) -> None:
        self._connection = await self._in_thread(self._connect)
        self._reader = await self._in_thread(self._connect_reader, self._one_read_at_a_time)
        self._checkpointer = _Checkpointer(self._connect_writer, CHECKPOINT_EVERY, RESTART_PAGES)

    def _connect(self) -> sqlite3.Connection:
        private_file(self.path)  # SQLite gives its -wal and -shm files the database file's permissions
        connection = self._connect_writer(check_same_thread=False)
        try:
            connection.lock_writers()  # processes starting together (serve --processes N) set up a new file in turn
            try:
                self._set_up(connection)
            finally:
                connection.unlock_writers()
        except BaseException:
            connection.close()
            raise
        return connection

    def _connect_reader(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        connection.execute("PRAGMA query_only = 1")
        return connection

    def _connect_writer(self, *, check_same_thread: bool = True) -> _Connection:
        """A connection that takes the lock file every process on the database shares before it writes."""
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=check_same_thread,
            timeout=self.busy_timeout,
            factory=_Connection,
        )
        try:
            connection.open_writer_lock(Path(f"{self.path}-writer.lock"), self.busy_timeout)
        except BaseException:
            connection.close()
            raise
        return connection

    def _set_up(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode = WAL")  # refused at once, not retried, while another sets it
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(f"PRAGMA wal_autocheckpoint = {INLINE_CHECKPOINT_PAGES}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this gateway's {SCHEMA_VERSION}; upgrade"
            )
        steps = "".join(MIGRATIONS[step] for step in range(version, SCHEMA_VERSION)) if version else ""
        # foreign keys off while a table is copied (and nothing else runs: the writer lock is held)
        connection.executescript(f"BEGIN IMMEDIATE;{steps}{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
        connection.execute("PRAGMA foreign_keys = ON")

    async def migrate(self) -> list[str]:
        """The embedded store brings its schema up to date whenever it opens."""
        await self.open()
        await self.close()
        return []

    async def watch(self, wake: Callable[[Iterable[str] | None], None]) -> None:
        """Wake-ups from other processes' commits, through the doorbell beside the file (in-process ingest wakes
        the worker directly)."""
        await self._doorbell.listen(wake)

    async def close(self) -> None:
        self._doorbell.close()
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await anyio.to_thread.run_sync(checkpointer.stop)
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await anyio.to_thread.run_sync(reader.close, limiter=self._one_read_at_a_time)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await anyio.to_thread.run_sync(connection.close, limiter=self._one_at_a_time)

    async def ingest(
        self,
        event: EventRecord,
        targets: Sequence[Target],
        *,
        skipped: str | None = None,
        follow_up: FollowUp | None = None,
    ) -> Ingested:
        def ingest(db: sqlite3.Connection) -> Ingested:
            with _transaction(db):
                if purged := db.execute(FIND_PURGED, (event.source, event.provider_event_id)).fetchone():
                    return Ingested(event_id=purged[0], duplicate=True)
                values = [json.dumps(event.headers) if c == "headers" else getattr(event, c) for c in EVENT_COLUMNS]
                inserted = db.execute(INSERT_EVENT, values).rowcount
                if not inserted:
                    (existing,) = db.execute(FIND_EVENT_ID, (event.source, event.provider_event_id)).fetchone()
                    return Ingested(event_id=existing, duplicate=True)
                db.executemany(INSERT_DELIVERY, delivery_rows(event, targets, skipped))
                found: list[Withheld] = []
                if follow_up is not None:
                    for step in follow_up_steps(event, follow_up, now=event.received_at, by_event=BY_EVENT):
                        found += withheld(db.execute(step.sql, step.parameters).fetchall())
                return Ingested(event_id=event.id, duplicate=False, withheld=tuple(found))

        ingested = await self._write(ingest)
        if not ingested.duplicate and skipped is None and (rung := ringing(targets, follow_up)):
            self._doorbell.ring(rung)
        return ingested

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        def claim(db: sqlite3.Connection) -> list[ClaimedDelivery]:
            with _transaction(db):
                ids = [row[0] for row in db.execute(SELECT_CLAIMABLE, {"sink": sink, "now": now, "limit": limit})]
                db.executemany(LEASE, [(owner, lease_until, delivery_id) for delivery_id in ids])
                return [ClaimedDelivery(*db.execute(SELECT_CLAIMED, (delivery_id,)).fetchone()) for delivery_id in ids]

        return await self._write(claim)

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: AttemptRecord,
        transition: Transition,
        *,
        now: float,
        fallback: str | None = None,
    ) -> bool:
        def record(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                db.execute(INSERT_ATTEMPT, attempt_row(delivery_id, attempt))
                moved = db.execute(
                    FINISH_ATTEMPT,
                    (
                        transition.status,
                        transition.next_attempt_at,
                        attempt.outcome,
                        attempt.detail,
                        transition.dead_reason,
                        now,
                        delivery_id,
                        owner,
                    ),
                ).rowcount
                if moved and fallback is not None:
                    db.execute(INSERT_FALLBACK, (str(uuid.uuid4()), fallback, now, now, now, now, delivery_id))
                return bool(moved)

        moved = await self._write(record)
        if moved and fallback is not None:
            self._doorbell.ring([fallback])
        return moved

    async def settle(self, delivery_id: str, owner: str, transition: Transition, *, note: str, now: float) -> bool:
        def settle(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                row = (transition.status, transition.next_attempt_at, transition.dead_reason, note, now)
                return bool(db.execute(SETTLE, (*row, delivery_id, owner)).rowcount)

        return await self._write(settle)

    async def next_due(self, sink: str, *, after: float) -> float | None:
        return await self._read(lambda db: db.execute(NEXT_DUE, (sink, after)).fetchone()[0])

    async def renew(self, delivery_ids: Sequence[str], owner: str, *, lease_until: float) -> None:
        def renew(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(RENEW, [(lease_until, delivery_id, owner) for delivery_id in delivery_ids])

        await self._write(renew)

    async def set_paused(self, sink: str, *, paused: bool, reason: str | None, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(SET_PAUSED, (sink, paused, reason, now))

        await self._write(write)

    async def paused_sinks(self) -> dict[str, str | None]:
        return await self._read(lambda db: dict(db.execute(PAUSED_SINKS).fetchall()))

    async def take_tokens(self, sink: str, *, want: int, per_second: float, burst: int, now: float) -> Taken:
        def take(db: sqlite3.Connection) -> Taken:
            with _transaction(db):
                db.execute(buckets.CREATE, (sink, float(burst), now))
                tokens, updated_at, blocked_until = db.execute(buckets.READ, (sink,)).fetchone()
                taken = buckets.take(
                    tokens, updated_at, blocked_until, want=want, per_second=per_second, burst=burst, now=now
                )
                db.execute(buckets.WRITE, (taken.tokens, max(now, updated_at), sink))
                return taken

        taken: Taken = await self._write(take)
        return taken

    async def block_tokens(self, sink: str, *, until: float, now: float) -> None:
        def block(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(buckets.BLOCK.format(greatest="max"), (sink, now, until))

        await self._write(block)

    async def lease_owners(self) -> set[str]:
        return await self._read(lambda db: {row[0] for row in db.execute(LEASE_OWNERS)})

    async def release_owner(self, owner: str) -> int:
        def release(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute(RELEASE_OWNER, (owner,)).rowcount

        released: int = await self._write(release)
        return released

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(RELEASE, [(delivery_id, owner) for delivery_id in delivery_ids])

        await self._write(release)

    async def get_state(self, sink: str, key: str) -> str | None:
        return await self._read(lambda db: (db.execute(GET_STATE, (sink, key)).fetchone() or (None,))[0])

    async def set_state(self, sink: str, key: str, value: str, *, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(SET_STATE, (sink, key, value, now))

        await self._write(write)

    async def list_state(self, sink: str, prefix: str) -> dict[str, str]:
        return await self._read(lambda db: dict(db.execute(LIST_STATE, (sink, len(prefix), prefix)).fetchall()))

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        return await self._read(lambda db: dict(db.execute(SELECT_SENT, (delivery_id,)).fetchall()))

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        def record(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(INSERT_SENT, (delivery_id, recipient, provider_message_id, at))

        await self._write(record)

    async def list_events(
        self, query: EventQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[EventSummary]:
        where = event_conditions(query, "?")
        if after is not None:
            where.add("(e.received_at, e.id) < (?, ?)", *after)

        def select(db: sqlite3.Connection) -> list[EventSummary]:
            rows = db.execute(LIST_EVENTS.format(where=where.sql), [*where.parameters, limit]).fetchall()
            return [summary(row) for row in rows]

        return await self._read(select)

    async def replay(self, event_id: str, *, sink: str | None = None, now: float) -> list[str]:
        where = Where("?", "status IN ('succeeded', 'dead')")
        where.add("event_id = ?", event_id)
        if sink is not None:
            where.add("sink = ?", sink)
        return await self._requeue(where, now)

    async def list_dead_letters(
        self, query: DeadLetterQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        where = dead_letter_conditions(query, "?")
        if after is not None:
            where.add("(d.updated_at, d.id) < (?, ?)", *after)

        def select(db: sqlite3.Connection) -> list[DeadLetter]:
            rows = db.execute(LIST_DEAD_LETTERS.format(where=where.sql), [*where.parameters, limit]).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await self._read(select)

    async def requeue_dead_letters(self, query: DeadLetterQuery, *, now: float, dry_run: bool = False) -> int:
        where = dead_letter_conditions(query, "?")
        if dry_run:
            sql = f"SELECT count(*) FROM ({DEAD_LETTER_IDS.format(where=where.sql)})"
            return await self._read(lambda db: int(db.execute(sql, where.parameters).fetchone()[0]))
        selection = Where("?", f"id IN ({DEAD_LETTER_IDS.format(where=where.sql)})")
        selection.parameters.extend(where.parameters)
        return len(await self._requeue(selection, now))

    async def set_dead_letter(self, delivery_id: str, *, status: DeliveryStatus, now: float) -> bool:
        where = Where("?", "status = 'dead'")
        where.add("id = ?", delivery_id)
        if status == "pending":
            return bool(await self._requeue(where, now))
        if status != "discarded":
            raise ValueError(f"a dead letter can be retried (pending) or discarded, not made {status!r}")

        def discard(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                return db.execute(DISCARD.format(where=where.sql), [now, *where.parameters]).fetchone() is not None

        return await self._run(discard)

    async def purge(self, *, before: float, batch: int, now: float) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with _transaction(db):
                ids = [row[0] for row in db.execute(PURGEABLE, (before, batch))]
                if ids:
                    marks = ", ".join("?" for _ in ids)
                    tombstones, *deletes = PURGE
                    db.execute(tombstones.format(ids=marks), [now, *ids])
                    for statement in deletes:
                        db.execute(statement.format(ids=marks), ids)
                return len(ids)

        return await self._run(purge)

    async def forget(self, *, tombstones_before: float, state_before: float) -> None:
        def forget(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(FORGET_PURGED, (tombstones_before,))
                db.execute(PURGE_STATE, (state_before,))

        await self._run(forget)

    async def sink_stats(self, sinks: Sequence[str], *, now: float) -> dict[str, SinkStats]:
        def stats(db: sqlite3.Connection) -> dict[str, SinkStats]:
            return sink_stats(
                {sink: db.execute(SINK_STATS, sink_stats_row(sink, now)).fetchone() for sink in sinks}, now
            )

        return await self._read(stats)

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def _requeue(self, where: Where, now: float) -> list[str]:
        def requeue(db: sqlite3.Connection) -> list[str]:
            with _transaction(db):
                return [row[0] for row in db.execute(REQUEUE.format(where=where.sql), [now, *where.parameters])]

        requeued = await self._run(requeue)
        if requeued:
            self._doorbell.ring(None)
        return requeued

    async def get_event(self, event_id: str) -> EventRecord | None:
        def get(db: sqlite3.Connection) -> EventRecord | None:
            row = db.execute(SELECT_EVENT, (event_id,)).fetchone()
            if row is None:
                return None
            columns = dict(zip(EVENT_COLUMNS, row, strict=True))
            columns["headers"] = json.loads(columns["headers"])
            return EventRecord(**columns)

        return await self._read(get)

    async def deliveries(self, event_id: str) -> list[DeliveryRow]:
        return await self._read(lambda db: [DeliveryRow(*row) for row in db.execute(SELECT_DELIVERIES, (event_id,))])

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self._read(lambda db: [AttemptRecord(*row) for row in db.execute(SELECT_ATTEMPTS, (delivery_id,))])

    async def count_events(self) -> int:
        return await self._read(lambda db: int(db.execute(COUNT_EVENTS).fetchone()[0]))

    async def _write(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        """Group commit: writes that arrive while one commit runs wait for it, then go in the next transaction
        together, one fsync for all of them. Each caller still returns only after its own write is committed."""
        connection = self._connection
        if connection is None:
            raise StorageError(f"SQLite {self.path}: the store is not open")
        write = _Write(operation, deadline=time.monotonic() + self.busy_timeout)
        self._pending.append(write)
        while not write.done:
            if self._committing:
                await self._committed.wait()
                continue
            self._committing = True
            batch, self._pending = self._pending, []
            try:
                await self._in_thread(partial(_commit_together, connection, batch))
            except StorageError as error:  # the transaction itself failed: none of the batch is stored
                for each in batch:
                    each.error = error
            finally:
                for each in batch:
                    each.done = True
                self._committing = False
                committed, self._committed = self._committed, anyio.Event()
                committed.set()
        if write.error is not None:
            if isinstance(write.error, sqlite3.Error):
                raise StorageError(f"SQLite {self.path}: {write.error}") from write.error
            raise write.error
        return write.result  # type: ignore[no-any-return]

    async def _run(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        connection = self._connection
        if connection is None:
            raise StorageError(f"SQLite {self.path}: the store is not open")
        return await self._in_thread(lambda: operation(connection))

    async def _read(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        """A read on a connection and thread of its own: in WAL mode it sees every commit and waits for none, so a
        scrape or an admin query never holds up a webhook's commit."""
        connection = self._reader
        if connection is None:
            raise StorageError(f"SQLite {self.path}: the store is not open")
        return await self._in_thread(lambda: operation(connection), self._one_read_at_a_time)

    async def _in_thread(self, call: Callable[[], R], limiter: anyio.CapacityLimiter | None = None) -> R:
        def guarded() -> R:
            try:
                return call()
            except (sqlite3.Error, OSError) as error:
                raise StorageError(f"SQLite {self.path}: {error}") from error

        return await anyio.to_thread.run_sync(guarded, limiter=limiter or self._one_at_a_time)


class _Connection(sqlite3.Connection):
    """A connection whose write transactions take a lock file first, shared by every gateway process on the database.

    A process waiting for another's write (a separate worker beside `serve`, a CLI command) then starts within half
    a millisecond of that commit; SQLite's own busy handler sleeps in steps of up to 100 ms, which is what a
    webhook waiting on the lock would feel.
    """

    _writer_lock: BinaryIO | None = None
    _busy_timeout = BUSY_TIMEOUT

    def open_writer_lock(self, path: Path, busy_timeout: float) -> None:
        private_file(path)
        self._writer_lock = path.open("ab")
        self._busy_timeout = busy_timeout

    def wait_at_most(self, seconds: float) -> None:
        """Wait this long at most for the lock file, then for SQLite's own lock (another program's write)."""
        self._busy_timeout = max(0.0, seconds)
        self.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def lock_writers(self) -> None:
        if self._writer_lock is None:
            return
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                fcntl.flock(self._writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: another process has been writing for {self._busy_timeout:g}s"
                    ) from None
                time.sleep(0.0005)

    def unlock_writers(self) -> None:
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._writer_lock is not None:
            self._writer_lock.close()


class _Checkpointer:
    """Copies the write-ahead log into the database file from a thread and connection of its own, so that no commit
    (and no webhook waiting for one) pays for it. A checkpoint by another process at the same time is skipped."""

    def __init__(self, connect: Callable[[], _Connection], every: float, restart_pages: int) -> None:
        self.connect = connect
        self.every = every
        self.restart_pages = restart_pages
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            db = self.connect()
        except sqlite3.Error as error:
            logger.error("no background checkpoints (%s); commits will copy the log themselves", error)
            return
        try:
            while not self._stopping.wait(self.every):
                try:
                    self._checkpoint(db)
                except sqlite3.Error as error:  # e.g. a full disk: commits fail too, and say so
                    logger.warning("checkpoint failed (it will be tried again): %s", error)
        finally:
            db.close()

    def _checkpoint(self, db: _Connection) -> None:
        _, pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages >= self.restart_pages:
            db.lock_writers()
            try:
                db.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                db.unlock_writers()


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode); inside a
    transaction already begun (a group commit), it leaves commit and rollback to whoever began it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.began = False

    def __enter__(self) -> None:
        if self.db.in_transaction:
            return
        self._lock()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise
        self.began = True

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self.began:
            return
        try:
            if self.db.in_transaction:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._unlock()

    def _lock(self) -> None:
        if isinstance(self.db, _Connection):
            self.db.lock_writers()

    def _unlock(self) -> None:
        if isinstance(self.db, _Connection):
            self.db.unlock_writers()


class _Write:
    """One write waiting for a group commit, and what came of it."""

    def __init__(self, operation: Callable[[sqlite3.Connection], Any], *, deadline: float) -> None:
        self.operation = operation
        self.deadline = deadline
        """When its caller stops waiting for a lock (time.monotonic()): a write queued behind a commit that waited
        gets only what is left, so that no webhook waits twice the busy timeout."""
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


def _commit_together(db: sqlite3.Connection, writes: list[_Write]) -> None:
    """Run every write in one transaction, each in its own savepoint so that one failing write fails alone; wait
    for another process's lock only until the first of their deadlines."""
    if isinstance(db, _Connection):
        db.wait_at_most(min(write.deadline for write in writes) - time.monotonic())
    with _transaction(db):
        for write in writes:
            db.execute("SAVEPOINT write")
            try:
                write.result = write.operation(db)
            except Exception as error:  # the write's own failure: undo it, keep the others
                db.execute("ROLLBACK TO write")
                write.error = error
            db.execute("RELEASE write")
