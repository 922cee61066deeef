"""The writes of the hot path, which a group commit runs together: ingests (`Ingesting`) and attempts' records
(`Recording`). Each costs psycopg's work and the server's per statement, whatever the statement does; so an ingest
is one statement, and however many a commit holds, their hand-offs are one more, and their records one.
`run_together` runs a batch on one connection in one transaction; the store (gateway/store/postgres) owns the
transaction, the pool, and what happens when a batch fails.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from gateway.ids import new_id
from gateway.routing import Target
from gateway.store import statements
from gateway.store.base import (
    AttemptRecord,
    ClaimedDelivery,
    EventRecord,
    FollowUp,
    Handoff,
    Ingested,
    Recorded,
    Transition,
)
from gateway.store.follow_up import ringing, withheld
from gateway.store.follow_up import steps as follow_up_steps
from gateway.store.group_commit import PendingWrite
from gateway.store.statements import EVENT_COLUMNS, attempt_row, delivery_rows, for_psycopg, handed_off

CHANNEL = "gateway_deliveries"
"""Where an ingest or a requeue says which sinks have new deliveries (LISTEN in every worker's process)."""
FIND_EVENT_ID = for_psycopg(statements.FIND_EVENT_ID)
INSERT_DELIVERY = for_psycopg(statements.INSERT_DELIVERY)
INSERT_FALLBACK = for_psycopg(statements.INSERT_FALLBACK)
FOLLOWED = for_psycopg(statements.FOLLOWED)

DELIVERY_TYPES = (
    *("text",) * 5,  # id, event_id, sink, locale, ordering_key
    *("double precision",) * 2,  # occurred_at, created_at
    *("text",) * 2,  # status, dead_reason
    *("double precision",) * 4,  # next_attempt_at, updated_at, reminder, due_at
)
"""INSERT_DELIVERY's columns' types, as INSERT_EVENTS receives them (each array given to unnest says its type)."""


EVENT_TYPES = tuple(
    {"occurred_at": "double precision", "received_at": "double precision", "raw_body": "bytea"}.get(column, "text")
    for column in EVENT_COLUMNS
)
"""The events' columns' types as INSERT_EVENTS receives them (headers as JSON text)."""
DELIVERY_COLUMNS = INSERT_DELIVERY[INSERT_DELIVERY.index("(") + 1 : INSERT_DELIVERY.index(")")]


APPOINTMENT_LOCKS = 7395013620946
"""The seed of the advisory locks' keys taken per appointment (`hashtextextended("source\\nappointment", seed)`)."""


def arrays(types: Sequence[str]) -> str:
    """Placeholders for one array of each type, sent in binary: psycopg's text form escapes each element with a
    regular expression, 14 times the CPU."""
    return ", ".join(f"%b::{kind}[]" for kind in types)


INSERT_EVENTS = f"""
WITH given AS (
    SELECT * FROM unnest({arrays(EVENT_TYPES)}) WITH ORDINALITY AS g ({", ".join(EVENT_COLUMNS)}, position)
),
inserted AS (
    INSERT INTO events ({", ".join(EVENT_COLUMNS)})
    SELECT {", ".join(f"{column}::jsonb" if column == "headers" else column for column in EVENT_COLUMNS)}
    FROM given ORDER BY source, provider_event_id
    ON CONFLICT (source, provider_event_id) DO NOTHING
    RETURNING id
),
delivered AS (
    INSERT INTO deliveries ({DELIVERY_COLUMNS})
    SELECT * FROM unnest({arrays(DELIVERY_TYPES)}) AS d ({DELIVERY_COLUMNS})
    WHERE d.event_id IN (SELECT id FROM inserted)
),
locked AS (
    SELECT count(pg_advisory_xact_lock(hashtextextended(key, {APPOINTMENT_LOCKS}))) AS locks
    FROM (SELECT DISTINCT l.key FROM unnest({arrays(("text", "text"))}) AS l (event_id, key)
          WHERE l.event_id IN (SELECT id FROM inserted) ORDER BY l.key) AS keys
)
SELECT (SELECT p.event_id FROM purged_events AS p
        WHERE p.source = g.source AND p.provider_event_id = g.provider_event_id),
       g.id IN (SELECT id FROM inserted), (SELECT locks FROM locked)
FROM given AS g
ORDER BY g.position
"""
"""A group commit's events, their deliveries and their appointments' locks, in one statement. It returns for each
event the tombstone's event id should the provider's event have been purged (the transaction is then rolled back),
and whether it was stored: a duplicate inserts no delivery and takes no lock.

The lock lets one ingest at a time decide an appointment's follow-ups and hand its deliveries off: under READ
COMMITTED two transactions would each miss the other's uncommitted events, reminders and deliveries. The locks are
taken after the events' rows (an ingest waiting for another's row of the same event holds none), in the order of
their keys, as the rows are inserted in the order of theirs: two commits never wait for each other in a circle.
They are held to the commit; each statement after this one sees what the others committed."""


NOTIFY = "SELECT pg_notify(%s, %s)"

HAND_OFF_TYPES = ("text", "text", "text", "text", "double precision", "double precision")
HAND_OFF_TOGETHER = f"""
UPDATE deliveries AS d SET lease_owner = h.owner, lease_expires_at = h.lease_until
FROM unnest({arrays(HAND_OFF_TYPES)})
    AS h (event_id, sink, pending, owner, lease_until, now)
WHERE d.event_id = h.event_id AND d.sink = h.sink AND d.status = h.pending AND d.reminder IS NULL
  AND d.next_attempt_at <= h.now AND (d.ordering_key IS NULL OR NOT {statements.WAITS_BEHIND})
RETURNING d.id, d.event_id, d.sink, d.locale
"""
"""The SQLite store's HAND_OFF for every ingest of a group commit at once: new deliveries leased to the worker of their
process, where a claim would take them. After the events' rows and their appointments' locks, in a statement of
its own: it sees what other transactions on those appointments committed.

The status is compared with a given 'pending', not a constant, so that no plan can read the pending deliveries'
partial indexes: the planner chose them when its statistics counted few pending deliveries, and then read every
pending delivery for each batch (60 times the batch's rows in bench/compare.py --postgres; a backlog's worth when
statistics lag behind a growing backlog). Each delivery is found by its event and sink."""
ATTEMPT_TYPES = (
    *("text", "integer", "double precision", "double precision", "text", "integer", "text"),  # the attempt's row
    *("text", "double precision", "text", "double precision", "text"),  # status, next attempt, dead reason, now, owner
)
RECORD_ATTEMPTS = f"""
WITH given AS (
    SELECT * FROM unnest({arrays(ATTEMPT_TYPES)}) WITH ORDINALITY
        AS g (delivery_id, number, started_at, duration_ms, outcome, status_code, detail,
              status, next_attempt_at, dead_reason, now, owner, position)
),
attempt AS (
    INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, status_code, detail)
    SELECT delivery_id, number, started_at, duration_ms, outcome, status_code, detail FROM given
),
finished AS (
    UPDATE deliveries AS d
    SET status = g.status, attempts = d.attempts + 1, next_attempt_at = COALESCE(g.next_attempt_at, d.next_attempt_at),
        lease_owner = NULL, lease_expires_at = NULL,
        last_error = CASE WHEN g.outcome = 'succeeded' THEN NULL ELSE g.detail END,
        dead_reason = g.dead_reason, updated_at = g.now
    FROM given AS g
    WHERE d.id = g.delivery_id AND d.lease_owner = g.owner
    RETURNING d.id
)
SELECT g.delivery_id IN (SELECT id FROM finished), ({FOLLOWED.replace("d.id = %s", "d.id = g.delivery_id")})
FROM given AS g
ORDER BY g.position
"""
"""Attempts, their deliveries' moves, and for each whether another delivery of its appointment waits, in one
statement however many a group commit holds (each statement costs psycopg's work and the server's). The last
test reads the table as the statement found it, which its moves do not change: it looks at other deliveries."""


@dataclass(frozen=True)
class Ingesting:
    """`ingest`'s write: alone, or with the others of its group commit (`ingest_together`)."""

    event: EventRecord
    targets: Sequence[Target]
    skipped: str | None
    follow_up: FollowUp | None
    handoff: Handoff | None
    """None, or sinks this process's worker takes new deliveries to (not for a skipped event)."""

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> Ingested:
        return (await ingest_together(conn, [self]))[0]

    @property
    def locked(self) -> bool:
        """Whether it takes its appointment's lock: to decide follow-ups, or to hand deliveries off."""
        return self.event.appointment_id is not None and (self.follow_up is not None or self.handoff is not None)

    async def follow(self, conn: psycopg.AsyncConnection[Any]) -> Ingested:
        """Its event stored, the follow-ups of its appointment, and the wake-up of workers for the sinks it does
        not hand off."""
        event, follow_up, handoff = self.event, self.follow_up, self.handoff
        steps = follow_up_steps(event, follow_up, now=event.received_at) if follow_up is not None else []
        rest = [(for_psycopg(step.sql), step.parameters) for step in steps]
        # an offered sink that is not leased waits behind an earlier delivery: no worker could take it yet
        if self.skipped is None and (rung := ringing(self.targets, follow_up, handoff.sinks if handoff else ())):
            rest.append((NOTIFY, (CHANNEL, ",".join(rung))))
        async with conn.pipeline() if len(rest) > 1 else nullcontext():  # one round trip for them all
            cursors = [await conn.execute(statement, parameters) for statement, parameters in rest]
        stepped = cursors[: len(steps)]
        found = [row for cursor in stepped if cursor.description is not None for row in await cursor.fetchall()]
        return Ingested(event.id, False, tuple(withheld(found)))


async def ingest_together(conn: psycopg.AsyncConnection[Any], ingestings: Sequence[Ingesting]) -> list[Ingested]:
    """What came of each ingest: its event stored with its deliveries (in one statement for all), its follow-ups,
    and its hand-off (in one statement for all); or a duplicate's existing id. Purged when one of them was purged:
    the transaction must then be rolled back."""
    deliveries = [row for each in ingestings for row in delivery_rows(each.event, each.targets, each.skipped)]
    keys = [(each.event.id, f"{each.event.source}\n{each.event.appointment_id}") for each in ingestings if each.locked]
    given = [
        *columns([_event_row(each.event) for each in ingestings], EVENT_TYPES),
        *columns(deliveries, DELIVERY_TYPES),
        *columns(keys, ("text", "text")),
    ]
    rows = await (await conn.execute(INSERT_EVENTS, given)).fetchall()
    for purged, _, _ in rows:
        if purged is not None:
            raise Purged(purged)
    outcomes: list[Ingested] = []
    for each, (_, stored, _) in zip(ingestings, rows, strict=True):
        if stored:
            outcomes.append(await each.follow(conn))
            continue
        event = each.event
        existing = await (await conn.execute(FIND_EVENT_ID, (event.source, event.provider_event_id))).fetchone()
        assert existing is not None  # the conflicting row is committed (ON CONFLICT waited for it), or in this batch
        outcomes.append(Ingested(event_id=existing[0], duplicate=True))
    handing = [n for n, each in enumerate(ingestings) if each.handoff and not outcomes[n].duplicate]
    if handing:
        leased = await hand_off_together(conn, [ingestings[n] for n in handing])
        for n, handed in zip(handing, leased, strict=True):
            outcomes[n] = replace(outcomes[n], leased=handed)
    return outcomes


def _event_row(event: EventRecord) -> tuple[Any, ...]:
    return tuple(
        json.dumps(event.headers) if column == "headers" else getattr(event, column) for column in EVENT_COLUMNS
    )


def columns(rows: Sequence[Sequence[Any]], types: Sequence[str]) -> list[list[Any]]:
    """`rows` as one list per column, for unnest: numbers made floats where the column is (psycopg refuses a list
    of ints and floats mixed)."""
    by_column = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in types]
    return [
        [None if value is None else float(value) for value in values] if kind == "double precision" else values
        for values, kind in zip(by_column, types, strict=True)
    ]


async def hand_off_together(
    conn: psycopg.AsyncConnection[Any], ingestings: Sequence[Ingesting]
) -> list[tuple[ClaimedDelivery, ...]]:
    """The deliveries each stored ingest leased to its worker, in one statement for all of them."""
    given = [
        (each.event.id, sink, "pending", each.handoff.owner, each.handoff.lease_until, each.event.received_at)
        for each in ingestings
        if each.handoff is not None
        for sink in each.handoff.sinks
    ]
    rows = await (await planned_afresh(conn, HAND_OFF_TOGETHER, columns(given, HAND_OFF_TYPES))).fetchall()
    by_event: dict[str, list[tuple[str, str, str | None]]] = {}
    for delivery_id, event_id, sink, locale in rows:
        by_event.setdefault(event_id, []).append((delivery_id, sink, locale))
    return [handed_off(each.event, by_event.get(each.event.id, [])) for each in ingestings]


@dataclass(frozen=True)
class Recording:
    """`record_attempt`'s write: alone, or with the others of its group commit in one statement."""

    delivery_id: str
    owner: str
    attempt: AttemptRecord
    transition: Transition
    now: float
    fallback: str | None

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> Recorded:
        return (await record_together(conn, [self]))[0]


async def record_together(conn: psycopg.AsyncConnection[Any], recordings: Sequence[Recording]) -> list[Recorded]:
    """What came of each recording; a moved delivery's fallback, should it have one, is inserted and announced."""
    given = [
        (
            *attempt_row(each.delivery_id, each.attempt),
            each.transition.status,
            each.transition.next_attempt_at,
            each.transition.dead_reason,
            each.now,
            each.owner,
        )
        for each in recordings
    ]
    rows = await (await planned_afresh(conn, RECORD_ATTEMPTS, columns(given, ATTEMPT_TYPES))).fetchall()
    for each, (moved, _) in zip(recordings, rows, strict=True):
        if moved and each.fallback is not None:
            now = each.now
            await conn.execute(INSERT_FALLBACK, (new_id(), each.fallback, now, now, now, now, each.delivery_id))
            await conn.execute(NOTIFY, (CHANNEL, each.fallback))
    return [Recorded(moved, followed) for moved, followed in rows]


async def planned_afresh(
    conn: psycopg.AsyncConnection[Any], statement: str, parameters: Sequence[Any]
) -> psycopg.AsyncCursor[Any]:
    """`statement` planned for these parameters and the tables as they are now, not prepared: an UPDATE joining a
    batch to deliveries must find each row by its index. psycopg prepares a statement run five times, and the server
    keeps the generic plan it made then; while the table was small, that is a hash join reading the whole table, for
    every batch until an ANALYZE: 5 ms a batch at 11,000 deliveries in bench/compare.py --postgres, and growing.
    Planning costs about 0.2 ms a batch."""
    return await conn.execute(statement, parameters, prepare=False)


class Purged(Exception):
    """An ingest found the provider's event id purged (a tombstone): it rolls back, and the event is a duplicate."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


async def run_together(
    conn: psycopg.AsyncConnection[Any], batch: Sequence[PendingWrite[psycopg.AsyncConnection[Any]]]
) -> None:
    """Every write of the batch (ingests and attempts' records: the store's `_write` takes no other), in the
    transaction open on `conn`, each write's result set: the records together, then the ingests together. A write's
    error is raised (the transaction must then be rolled back)."""
    recordings = [(write, write.operation) for write in batch if isinstance(write.operation, Recording)]
    ingests = [(write, write.operation) for write in batch if isinstance(write.operation, Ingesting)]
    assert len(recordings) + len(ingests) == len(batch), "a group commit runs ingests and records only"
    if recordings:
        recorded = await record_together(conn, [recording for _, recording in recordings])
        for (write, _), outcome in zip(recordings, recorded, strict=True):
            write.result = outcome
    if ingests:
        ingested = await ingest_together(conn, [ingesting for _, ingesting in ingests])
        for (write, _), result in zip(ingests, ingested, strict=True):
            write.result = result
