"""The embedded default store: one SQLite file in WAL mode, every commit synced before a webhook is answered.

Calls run in a worker thread, one at a time on one connection; other processes (a separate `worker`) share the
file through SQLite's own locking.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Self, TypeVar

import anyio
import anyio.to_thread

from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store.base import (
    AttemptRecord,
    ClaimedDelivery,
    DeliveryRow,
    EventRecord,
    Ingested,
    Transition,
)

SCHEMA_VERSION = 1
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
    UNIQUE (source, provider_event_id)
);
CREATE TABLE IF NOT EXISTS deliveries (
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
    UNIQUE (event_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (sink, ordering_key, status, occurred_at);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
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
CREATE TABLE IF NOT EXISTS sent_messages (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    recipient TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (delivery_id, recipient)
);
"""

EVENT_COLUMNS = tuple(field.name for field in fields(EventRecord))
INSERT_EVENT = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)}) VALUES ({", ".join("?" for _ in EVENT_COLUMNS)})
ON CONFLICT (source, provider_event_id) DO NOTHING
"""
FIND_EVENT_ID = "SELECT id FROM events WHERE source = ? AND provider_event_id = ?"
INSERT_DELIVERY = """
INSERT INTO deliveries (id, event_id, sink, locale, ordering_key, occurred_at, created_at, status, next_attempt_at,
                        updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
"""
# A delivery waits behind an earlier pending one of the same appointment and sink (ordered by the provider's
# time, then arrival, then id), whether that one is leased or waiting for its next retry.
SELECT_CLAIMABLE = """
SELECT d.id FROM deliveries AS d
WHERE d.sink = :sink AND d.status = 'pending' AND d.next_attempt_at <= :now
  AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= :now)
  AND (d.ordering_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM deliveries AS e
        WHERE e.sink = d.sink AND e.ordering_key = d.ordering_key AND e.status = 'pending'
          AND (e.occurred_at, e.created_at, e.id) < (d.occurred_at, d.created_at, d.id)))
ORDER BY d.next_attempt_at, d.occurred_at
LIMIT :limit
"""
LEASE = "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ? WHERE id = ?"
SELECT_CLAIMED = """
SELECT d.id, d.event_id, d.sink, d.attempts, d.created_at, d.locale, e.canonical
FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
WHERE d.id = ?
"""
INSERT_ATTEMPT = """
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, status_code, detail)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
FINISH_ATTEMPT = """
UPDATE deliveries
SET status = ?, attempts = attempts + 1, next_attempt_at = COALESCE(?, next_attempt_at), lease_owner = NULL,
    lease_expires_at = NULL, last_error = CASE WHEN ? = 'succeeded' THEN NULL ELSE ? END, dead_reason = ?,
    updated_at = ?
WHERE id = ? AND lease_owner = ?
"""
RELEASE = "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?"
SELECT_EVENT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?"
SELECT_DELIVERIES = """
SELECT id, event_id, sink, status, attempts, next_attempt_at, lease_owner, dead_reason, last_error
FROM deliveries WHERE event_id = ? ORDER BY sink
"""
SELECT_ATTEMPTS = """
SELECT number, started_at, duration_ms, outcome, status_code, detail
FROM attempts WHERE delivery_id = ? ORDER BY id
"""
COUNT_EVENTS = "SELECT count(*) FROM events"
SELECT_SENT = "SELECT recipient, provider_message_id FROM sent_messages WHERE delivery_id = ?"
INSERT_SENT = """
INSERT INTO sent_messages (delivery_id, recipient, provider_message_id, sent_at) VALUES (?, ?, ?, ?)
ON CONFLICT (delivery_id, recipient) DO NOTHING
"""

R = TypeVar("R")


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._one_at_a_time = anyio.CapacityLimiter(1)

    @classmethod
    def from_url(cls, url: str) -> Self:
        return cls(url.removeprefix("sqlite:///"))

    async def open(self) -> None:
        self._connection = await self._in_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}, newer than this gateway's {SCHEMA_VERSION}; upgrade"
                )
            connection.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
        except BaseException:
            connection.close()
            raise
        return connection

    async def migrate(self) -> list[str]:
        """The embedded store brings its schema up to date whenever it opens."""
        await self.open()
        await self.close()
        return []

    async def watch(self, wake: Callable[[Iterable[str] | None], None]) -> None:
        """SQLite cannot tell other processes about new rows: in-process ingest wakes the worker directly, and a
        separate worker process polls."""
        await anyio.sleep_forever()

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await anyio.to_thread.run_sync(connection.close, limiter=self._one_at_a_time)

    async def ingest(self, event: EventRecord, targets: Sequence[Target]) -> Ingested:
        def ingest(db: sqlite3.Connection) -> Ingested:
            with _transaction(db):
                values = [json.dumps(event.headers) if c == "headers" else getattr(event, c) for c in EVENT_COLUMNS]
                inserted = db.execute(INSERT_EVENT, values).rowcount
                if not inserted:
                    (existing,) = db.execute(FIND_EVENT_ID, (event.source, event.provider_event_id)).fetchone()
                    return Ingested(event_id=existing, duplicate=True)
                db.executemany(
                    INSERT_DELIVERY,
                    [
                        (
                            str(uuid.uuid4()),
                            event.id,
                            target.sink,
                            target.locale,
                            event.ordering_key,
                            event.occurred_at,
                            event.received_at,
                            event.received_at,
                            event.received_at,
                        )
                        for target in targets
                    ],
                )
                return Ingested(event_id=event.id, duplicate=False)

        return await self._run(ingest)

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        def claim(db: sqlite3.Connection) -> list[ClaimedDelivery]:
            with _transaction(db):
                ids = [row[0] for row in db.execute(SELECT_CLAIMABLE, {"sink": sink, "now": now, "limit": limit})]
                db.executemany(LEASE, [(owner, lease_until, delivery_id) for delivery_id in ids])
                return [ClaimedDelivery(*db.execute(SELECT_CLAIMED, (delivery_id,)).fetchone()) for delivery_id in ids]

        return await self._run(claim)

    async def record_attempt(
        self, delivery_id: str, owner: str, attempt: AttemptRecord, transition: Transition, *, now: float
    ) -> bool:
        def record(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                db.execute(
                    INSERT_ATTEMPT,
                    (
                        delivery_id,
                        attempt.number,
                        attempt.started_at,
                        attempt.duration_ms,
                        attempt.outcome,
                        attempt.status_code,
                        attempt.detail,
                    ),
                )
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
                return bool(moved)

        return await self._run(record)

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(RELEASE, [(delivery_id, owner) for delivery_id in delivery_ids])

        await self._run(release)

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        return await self._run(lambda db: dict(db.execute(SELECT_SENT, (delivery_id,)).fetchall()))

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        def record(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(INSERT_SENT, (delivery_id, recipient, provider_message_id, at))

        await self._run(record)

    async def get_event(self, event_id: str) -> EventRecord | None:
        def get(db: sqlite3.Connection) -> EventRecord | None:
            row = db.execute(SELECT_EVENT, (event_id,)).fetchone()
            if row is None:
                return None
            columns = dict(zip(EVENT_COLUMNS, row, strict=True))
            columns["headers"] = json.loads(columns["headers"])
            return EventRecord(**columns)

        return await self._run(get)

    async def deliveries(self, event_id: str) -> list[DeliveryRow]:
        return await self._run(lambda db: [DeliveryRow(*row) for row in db.execute(SELECT_DELIVERIES, (event_id,))])

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self._run(lambda db: [AttemptRecord(*row) for row in db.execute(SELECT_ATTEMPTS, (delivery_id,))])

    async def count_events(self) -> int:
        return await self._run(lambda db: int(db.execute(COUNT_EVENTS).fetchone()[0]))

    async def _run(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        connection = self._connection
        if connection is None:
            raise StorageError(f"SQLite {self.path}: the store is not open")
        return await self._in_thread(lambda: operation(connection))

    async def _in_thread(self, call: Callable[[], R]) -> R:
        def guarded() -> R:
            try:
                return call()
            except (sqlite3.Error, OSError) as error:
                raise StorageError(f"SQLite {self.path}: {error}") from error

        return await anyio.to_thread.run_sync(guarded, limiter=self._one_at_a_time)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self.db.in_transaction:
            return
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
