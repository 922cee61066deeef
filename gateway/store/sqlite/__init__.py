"""The embedded default store: one SQLite file, every commit synced before a webhook is answered.

What to write lives here (the protocol's methods, their statements; the schema in schema.sql and the upgrades of
older files in upgrades/); how it reaches the disk (group commits, the writer lock shared by every process on the
file, the reader connection, the checkpointer) is gateway/store/sqlite/engine.py. Commits ring the doorbell of
workers in other processes (gateway/store/doorbell.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Self

from gateway.exceptions import StorageError
from gateway.ids import new_id
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
    Handoff,
    Ingested,
    RecentFailure,
    Recorded,
    SinkStats,
    TrafficCount,
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
from gateway.store.sqlite.engine import BUSY_TIMEOUT, Engine, transaction
from gateway.store.statements import (
    ADD_TRAFFIC,
    COUNT_EVENTS,
    DEAD_LETTER_IDS,
    EVENT_COLUMNS,
    FIND_EVENT_ID,
    FIND_PURGED,
    FOLLOWED,
    FORGET_PURGED,
    FORGET_TRAFFIC,
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
    RECENT_FAILURES,
    RELEASE,
    RELEASE_OWNER,
    RENEW,
    SELECT_ATTEMPTS,
    SELECT_DELIVERIES,
    SELECT_EVENT,
    SELECT_SENT,
    SELECT_TRAFFIC,
    SET_PAUSED,
    SET_STATE,
    SETTLE,
    SINK_STATS,
    WAITS_BEHIND,
    attempt_row,
    delivery_rows,
    handed_off,
    sink_stats_row,
    traffic_row,
)

SCHEMA_VERSION = 3
"""The version `PRAGMA user_version` records once schema.sql is applied."""
SCHEMA = resources.files(__name__).joinpath("schema.sql").read_text(encoding="utf-8")
UPGRADES = {
    int(entry.name.removesuffix(".sql")): entry.read_text(encoding="utf-8")
    for entry in resources.files(__name__).joinpath("upgrades").iterdir()
    if entry.name.endswith(".sql")
}
"""Per schema version, the script that brings a file at that version to the next (SCHEMA then completes it)."""

INSERT_EVENT = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)}) VALUES ({", ".join("?" for _ in EVENT_COLUMNS)})
ON CONFLICT (source, provider_event_id) DO NOTHING
"""
SELECT_CLAIMABLE = f"""
SELECT d.id FROM deliveries AS d
WHERE d.sink = :sink AND d.status = 'pending' AND d.next_attempt_at <= :now
  AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= :now)
  AND (d.ordering_key IS NULL OR d.reminder IS NOT NULL OR NOT {WAITS_BEHIND})
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
       e.appointment_id, e.customer_phone, e.customer_email,
       (SELECT json_group_object(d.sink, d.status) FROM deliveries AS d WHERE d.event_id = e.id)
FROM events AS e
WHERE {where}
ORDER BY e.received_at DESC, e.id DESC
LIMIT ?
"""
# Events with a delivery in a status few deliveries have (pending, dead...): read from those deliveries, not by
# walking every event newest first in search of them (3.2 s on a million events when none is pending).
LIST_EVENTS_WITH_STATUS = LIST_EVENTS.replace(
    "FROM events AS e",
    "FROM (SELECT DISTINCT event_id FROM deliveries INDEXED BY deliveries_dead WHERE status = ?) AS s\n"
    "CROSS JOIN events AS e ON e.id = s.event_id",
)
COUNT_STATUS = "SELECT count(*) FROM (SELECT 1 FROM deliveries INDEXED BY deliveries_dead WHERE status = ? LIMIT ?)"
FEW = 10_000
"""Under this many deliveries in a status, events are listed from them; over it, a walk finds 50 soon enough."""
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
sink (deliveries_due): the follow-up and handoff statements name the index."""
LIST_STATE = "SELECT key, value FROM sink_state WHERE sink = ? AND substr(key, 1, ?) = ? ORDER BY key"
HAND_OFF = f"""
UPDATE deliveries AS d {BY_EVENT} SET lease_owner = ?, lease_expires_at = ?
WHERE d.event_id = ? AND d.sink IN ({{sinks}}) AND d.status = 'pending' AND d.reminder IS NULL
  AND d.next_attempt_at <= ? AND (d.ordering_key IS NULL OR NOT {WAITS_BEHIND})
RETURNING id, sink, locale
"""
"""An ingest's new deliveries leased to the worker of its process, where a claim would take them. RETURNING takes
no table alias in SQLite ("no such column: d.id")."""


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.engine = Engine(self.path, busy_timeout=busy_timeout, set_up=self._set_up)
        self._doorbell = Doorbell(self.path)

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> Self:
        return cls(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout)

    async def open(self) -> None:
        await self.engine.open()

    def _set_up(self, connection: sqlite3.Connection) -> None:
        """Bring the file's schema to this version: upgrade an older one, refuse a newer one."""
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this gateway's {SCHEMA_VERSION}; upgrade"
            )
        upgrades = "".join(UPGRADES[step] for step in range(version, SCHEMA_VERSION)) if version else ""
        # foreign keys are off (a new connection's default) while a table is copied; the writer lock is held
        connection.executescript(f"BEGIN IMMEDIATE;{upgrades}{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
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
        await self.engine.close()

    async def ingest(
        self,
        event: EventRecord,
        targets: Sequence[Target],
        *,
        skipped: str | None = None,
        follow_up: FollowUp | None = None,
        handoff: Handoff | None = None,
    ) -> Ingested:
        def ingest(db: sqlite3.Connection) -> Ingested:
            with transaction(db):
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
                leased: list[tuple[str, str, str | None]] = []
                if handoff is not None and handoff.sinks and skipped is None:
                    statement = HAND_OFF.format(sinks=", ".join("?" for _ in handoff.sinks))
                    parameters = (handoff.owner, handoff.lease_until, event.id, *handoff.sinks, event.received_at)
                    leased = db.execute(statement, parameters).fetchall()
                return Ingested(event.id, False, tuple(found), handed_off(event, leased))

        ingested = await self.engine.write(ingest)
        handed = {delivery.sink for delivery in ingested.leased}
        if not ingested.duplicate and skipped is None and (rung := ringing(targets, follow_up, handed)):
            self._doorbell.ring(rung)
        return ingested

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        def claim(db: sqlite3.Connection) -> list[ClaimedDelivery]:
            with transaction(db):
                ids = [row[0] for row in db.execute(SELECT_CLAIMABLE, {"sink": sink, "now": now, "limit": limit})]
                db.executemany(LEASE, [(owner, lease_until, delivery_id) for delivery_id in ids])
                return [ClaimedDelivery(*db.execute(SELECT_CLAIMED, (delivery_id,)).fetchone()) for delivery_id in ids]

        return await self.engine.write(claim)

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
        def record(db: sqlite3.Connection) -> Recorded:
            with transaction(db):
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
                    db.execute(INSERT_FALLBACK, (new_id(), fallback, now, now, now, now, delivery_id))
                return Recorded(bool(moved), bool(db.execute(FOLLOWED, (delivery_id,)).fetchone()[0]))

        recorded = await self.engine.write(record)
        if recorded.moved and fallback is not None:
            self._doorbell.ring([fallback])
        return recorded

    async def settle(self, delivery_id: str, owner: str, transition: Transition, *, note: str, now: float) -> bool:
        def settle(db: sqlite3.Connection) -> bool:
            with transaction(db):
                row = (transition.status, transition.next_attempt_at, transition.dead_reason, note, now)
                return bool(db.execute(SETTLE, (*row, delivery_id, owner)).rowcount)

        return await self.engine.write(settle)

    async def next_due(self, sink: str, *, after: float) -> float | None:
        return await self.engine.read(lambda db: db.execute(NEXT_DUE, (sink, after)).fetchone()[0])

    async def renew(self, delivery_ids: Sequence[str], owner: str, *, lease_until: float) -> None:
        def renew(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(RENEW, [(lease_until, delivery_id, owner) for delivery_id in delivery_ids])

        await self.engine.write(renew)

    async def set_paused(self, sink: str, *, paused: bool, reason: str | None, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(SET_PAUSED, (sink, paused, reason, now))

        await self.engine.write(write)

    async def paused_sinks(self) -> dict[str, str | None]:
        return await self.engine.read(lambda db: dict(db.execute(PAUSED_SINKS).fetchall()))

    async def take_tokens(self, sink: str, *, want: int, per_second: float, burst: int, now: float) -> Taken:
        def take(db: sqlite3.Connection) -> Taken:
            with transaction(db):
                db.execute(buckets.CREATE, (sink, float(burst), now))
                tokens, updated_at, blocked_until = db.execute(buckets.READ, (sink,)).fetchone()
                taken = buckets.take(
                    tokens, updated_at, blocked_until, want=want, per_second=per_second, burst=burst, now=now
                )
                db.execute(buckets.WRITE, (taken.tokens, max(now, updated_at), sink))
                return taken

        taken: Taken = await self.engine.write(take)
        return taken

    async def block_tokens(self, sink: str, *, until: float, now: float) -> None:
        def block(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(buckets.BLOCK.format(greatest="max"), (sink, now, until))

        await self.engine.write(block)

    async def lease_owners(self) -> set[str]:
        return await self.engine.read(lambda db: {row[0] for row in db.execute(LEASE_OWNERS)})

    async def release_owner(self, owner: str) -> int:
        def release(db: sqlite3.Connection) -> int:
            with transaction(db):
                return db.execute(RELEASE_OWNER, (owner,)).rowcount

        released: int = await self.engine.write(release)
        return released

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(RELEASE, [(delivery_id, owner) for delivery_id in delivery_ids])

        await self.engine.write(release)

    async def get_state(self, sink: str, key: str) -> str | None:
        return await self.engine.read(lambda db: (db.execute(GET_STATE, (sink, key)).fetchone() or (None,))[0])

    async def set_state(self, sink: str, key: str, value: str, *, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(SET_STATE, (sink, key, value, now))

        await self.engine.write(write)

    async def list_state(self, sink: str, prefix: str) -> dict[str, str]:
        return await self.engine.read(lambda db: dict(db.execute(LIST_STATE, (sink, len(prefix), prefix)).fetchall()))

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        return await self.engine.read(lambda db: dict(db.execute(SELECT_SENT, (delivery_id,)).fetchall()))

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        def record(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(INSERT_SENT, (delivery_id, recipient, provider_message_id, at))

        await self.engine.write(record)

    async def list_events(
        self, query: EventQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[EventSummary]:
        def select(db: sqlite3.Connection) -> list[EventSummary]:
            few = query.status is not None and db.execute(COUNT_STATUS, (query.status, FEW)).fetchone()[0] < FEW
            where = event_conditions(replace(query, status=None) if few else query, "?")
            if after is not None:
                where.add("(e.received_at, e.id) < (?, ?)", *after)
            statement, first = (LIST_EVENTS_WITH_STATUS, [query.status]) if few else (LIST_EVENTS, [])
            rows = db.execute(statement.format(where=where.sql), [*first, *where.parameters, limit]).fetchall()
            return [summary(row) for row in rows]

        return await self.engine.read(select)

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

        return await self.engine.read(select)

    async def requeue_dead_letters(self, query: DeadLetterQuery, *, now: float, dry_run: bool = False) -> int:
        where = dead_letter_conditions(query, "?")
        if dry_run:
            sql = f"SELECT count(*) FROM ({DEAD_LETTER_IDS.format(where=where.sql)})"
            return await self.engine.read(lambda db: int(db.execute(sql, where.parameters).fetchone()[0]))
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
            with transaction(db):
                return db.execute(DISCARD.format(where=where.sql), [now, *where.parameters]).fetchone() is not None

        return await self.engine.run(discard)

    async def purge(self, *, before: float, batch: int, now: float) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with transaction(db):
                ids = [row[0] for row in db.execute(PURGEABLE, (before, batch))]
                if ids:
                    marks = ", ".join("?" for _ in ids)
                    tombstones, *deletes = PURGE
                    db.execute(tombstones.format(ids=marks), [now, *ids])
                    for statement in deletes:
                        db.execute(statement.format(ids=marks), ids)
                return len(ids)

        return await self.engine.run(purge)

    async def forget(self, *, tombstones_before: float, state_before: float) -> None:
        def forget(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(FORGET_PURGED, (tombstones_before,))
                db.execute(PURGE_STATE, (state_before,))

        await self.engine.run(forget)

    async def sink_stats(self, sinks: Sequence[str], *, now: float) -> dict[str, SinkStats]:
        def stats(db: sqlite3.Connection) -> dict[str, SinkStats]:
            return sink_stats(
                {sink: db.execute(SINK_STATS, sink_stats_row(sink, now)).fetchone() for sink in sinks}, now
            )

        return await self.engine.read(stats)

    async def ping(self) -> None:
        await self.engine.read(lambda db: db.execute("SELECT 1").fetchone())

    async def add_traffic(self, counts: Sequence[TrafficCount], *, forget_before: int) -> None:
        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(ADD_TRAFFIC, [traffic_row(count) for count in counts])
                db.execute(FORGET_TRAFFIC, (forget_before,))

        await self.engine.write(write)

    async def traffic(self, *, since: int) -> list[TrafficCount]:
        return await self.engine.read(
            lambda db: [TrafficCount(*row) for row in db.execute(SELECT_TRAFFIC, (since,)).fetchall()]
        )

    async def recent_failures(self, *, limit: int, among: int) -> list[RecentFailure]:
        return await self.engine.read(
            lambda db: [RecentFailure(*row) for row in db.execute(RECENT_FAILURES, (among, limit)).fetchall()]
        )

    async def _requeue(self, where: Where, now: float) -> list[str]:
        def requeue(db: sqlite3.Connection) -> list[str]:
            with transaction(db):
                return [row[0] for row in db.execute(REQUEUE.format(where=where.sql), [now, *where.parameters])]

        requeued = await self.engine.run(requeue)
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

        return await self.engine.read(get)

    async def deliveries(self, event_id: str) -> list[DeliveryRow]:
        return await self.engine.read(
            lambda db: [DeliveryRow(*row) for row in db.execute(SELECT_DELIVERIES, (event_id,))]
        )

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self.engine.read(
            lambda db: [AttemptRecord(*row) for row in db.execute(SELECT_ATTEMPTS, (delivery_id,))]
        )

    async def count_events(self) -> int:
        return await self.engine.read(lambda db: int(db.execute(COUNT_EVENTS).fetchone()[0]))
