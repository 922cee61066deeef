"""SQL that both stores run as it is: written with `?` placeholders, as SQLite takes them; PostgreSQL's store
takes each through `for_psycopg`. Dialect-specific statements stay in each store's module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from gateway.ids import new_id
from gateway.routing import Target
from gateway.store.base import AttemptRecord, ClaimedDelivery, EventRecord, TrafficCount


def for_psycopg(statement: str) -> str:
    """The statement with psycopg's `%s` placeholders (none of these statements has a literal `?` or `%`)."""
    return statement.replace("?", "%s")


EVENT_COLUMNS = tuple(field.name for field in fields(EventRecord))

FIND_EVENT_ID = "SELECT id FROM events WHERE source = ? AND provider_event_id = ?"

WAITS_BEHIND = """EXISTS (
    SELECT 1 FROM deliveries AS e
    WHERE e.sink = d.sink AND e.ordering_key = d.ordering_key AND e.status = 'pending' AND e.reminder IS NULL
      AND (e.occurred_at, e.created_at, e.id) < (d.occurred_at, d.created_at, d.id))"""
"""Delivery `d` waits behind an earlier pending one of the same appointment and sink (ordered by the provider's
time, then arrival, then id), whether that one is leased or waiting for its next retry. Reminders keep their own
time: they neither wait nor hold anything back."""
FOLLOWED = """
SELECT EXISTS (
    SELECT 1 FROM deliveries AS d CROSS JOIN deliveries AS e
    WHERE d.id = ? AND e.sink = d.sink AND e.ordering_key = d.ordering_key AND e.status = 'pending'
      AND e.reminder IS NULL AND e.id <> d.id)
"""
"""Whether another delivery of the appointment waits for the same sink (deliveries_order finds it)."""

INSERT_DELIVERY = """
INSERT INTO deliveries (id, event_id, sink, locale, ordering_key, occurred_at, created_at, status, dead_reason,
                        next_attempt_at, updated_at, reminder, due_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# The same message to a messaging sink's fallback, due now, committed with the failure that sends it there.
INSERT_FALLBACK = """
INSERT INTO deliveries (id, event_id, sink, locale, ordering_key, occurred_at, created_at, status, next_attempt_at,
                        updated_at, reminder, due_at)
SELECT ?, event_id, ?, locale, ordering_key, occurred_at, ?, 'pending', ?, ?, reminder, ?
FROM deliveries WHERE id = ?
ON CONFLICT DO NOTHING
"""


def handed_off(event: EventRecord, rows: Sequence[tuple[str, str, str | None]]) -> tuple[ClaimedDelivery, ...]:
    """A hand-off's rows (id, sink, locale) as the claim of new deliveries due on receipt, before any attempt."""
    return tuple(
        ClaimedDelivery(
            delivery_id, event.id, sink, 0, event.received_at, 0, locale, event.canonical or "", None, event.received_at
        )
        for delivery_id, sink, locale in rows
    )


def delivery_rows(event: EventRecord, targets: Sequence[Target], skipped: str | None) -> list[tuple[Any, ...]]:
    """INSERT_DELIVERY's rows: one per target, pending (or skipped for that reason), due on receipt."""
    status = "pending" if skipped is None else "skipped"
    return [
        (
            new_id(),
            event.id,
            target.sink,
            target.locale,
            event.ordering_key,
            event.occurred_at,
            event.received_at,
            status,
            skipped,
            event.received_at,
            event.received_at,
            None,
            event.received_at,
        )
        for target in targets
    ]


def attempt_row(delivery_id: str, attempt: AttemptRecord) -> tuple[Any, ...]:
    """INSERT_ATTEMPT's row."""
    return (
        delivery_id,
        attempt.number,
        attempt.started_at,
        attempt.duration_ms,
        attempt.outcome,
        attempt.status_code,
        attempt.detail,
    )


# A leased delivery moved on without an attempt: postponed past quiet hours, or skipped.
SETTLE = """
UPDATE deliveries
SET status = ?, next_attempt_at = COALESCE(?, next_attempt_at), dead_reason = ?, last_error = ?, lease_owner = NULL,
    lease_expires_at = NULL, updated_at = ?
WHERE id = ? AND lease_owner = ?
"""

# One sink's queue, each figure from its own index range: a million deliveries scheduled ahead cost a scrape only
# the index-only count of its pending ones, not a read of every row.
SINK_STATS = """
SELECT
  (SELECT count(*) FROM deliveries WHERE sink = ? AND status = 'pending'),
  (SELECT count(*) FROM deliveries WHERE sink = ? AND status = 'pending' AND next_attempt_at <= ?
     AND (lease_expires_at IS NULL OR lease_expires_at <= ?)),
  (SELECT min(next_attempt_at) FROM deliveries WHERE sink = ? AND status = 'pending' AND next_attempt_at <= ?
     AND (lease_expires_at IS NULL OR lease_expires_at <= ?)),
  (SELECT count(*) FROM deliveries WHERE sink = ? AND status = 'dead')
"""


def sink_stats_row(sink: str, now: float) -> tuple[Any, ...]:
    return (sink, sink, now, now, sink, now, now, sink)


NEXT_DUE = "SELECT min(next_attempt_at) FROM deliveries WHERE sink = ? AND status = 'pending' AND next_attempt_at > ?"

# Paused sinks: every worker reads them before it claims.
SET_PAUSED = """
INSERT INTO sink_controls (sink, paused, reason, changed_at) VALUES (?, ?, ?, ?)
ON CONFLICT (sink) DO UPDATE SET paused = excluded.paused, reason = excluded.reason, changed_at = excluded.changed_at
"""
PAUSED_SINKS = "SELECT sink, reason FROM sink_controls WHERE paused"

# A purged event's provider id is remembered (a tombstone), so that the same request replayed is a duplicate.
FIND_PURGED = "SELECT event_id FROM purged_events WHERE source = ? AND provider_event_id = ?"
FORGET_PURGED = "DELETE FROM purged_events WHERE purged_at < ?"
PURGE_STATE = "DELETE FROM sink_state WHERE updated_at < ?"

INSERT_ATTEMPT = """
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, status_code, detail)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""

RELEASE = "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?"
RENEW = "UPDATE deliveries SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?"
LEASE_OWNERS = "SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'pending' AND lease_owner IS NOT NULL"
RELEASE_OWNER = """
UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL WHERE status = 'pending' AND lease_owner = ?
"""

SELECT_EVENT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?"

SELECT_DELIVERIES = """
SELECT id, event_id, sink, status, attempts, next_attempt_at, lease_owner, dead_reason, last_error, reminder, due_at
FROM deliveries WHERE event_id = ? ORDER BY sink, COALESCE(reminder, -1), created_at
"""

SELECT_ATTEMPTS = """
SELECT number, started_at, duration_ms, outcome, status_code, detail
FROM attempts WHERE delivery_id = ? ORDER BY id
"""

COUNT_EVENTS = "SELECT count(*) FROM events"

LIST_DEAD_LETTERS = """
SELECT d.id, d.event_id, d.sink, e.source, e.type, e.provider_event_type, e.provider_event_id, d.attempts,
       d.dead_reason, d.last_error, d.updated_at, e.received_at
FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
WHERE {where}
ORDER BY d.updated_at DESC, d.id DESC
LIMIT ?
"""

DEAD_LETTER_IDS = "SELECT d.id FROM deliveries AS d JOIN events AS e ON e.id = d.event_id WHERE {where}"

GET_STATE = "SELECT value FROM sink_state WHERE sink = ? AND key = ?"

SET_STATE = """
INSERT INTO sink_state (sink, key, value, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (sink, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""

SELECT_SENT = "SELECT recipient, provider_message_id FROM sent_messages WHERE delivery_id = ?"

INSERT_SENT = """
INSERT INTO sent_messages (delivery_id, recipient, provider_message_id, sent_at) VALUES (?, ?, ?, ?)
ON CONFLICT (delivery_id, recipient) DO NOTHING
"""

# Traffic per minute, added by every process (a batch every few seconds), read by the console's overview.
ADD_TRAFFIC = """
INSERT INTO traffic (minute, kind, name, outcome, count) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (minute, kind, name, outcome) DO UPDATE SET count = traffic.count + excluded.count
"""
FORGET_TRAFFIC = "DELETE FROM traffic WHERE minute < ?"
SELECT_TRAFFIC = "SELECT kind, name, outcome, minute, count FROM traffic WHERE minute >= ?"
# Attempt ids grow with time in both stores: the last `among` of them are read backwards from the newest.
RECENT_FAILURES = """
SELECT d.id, d.event_id, d.sink, a.started_at, a.outcome, a.status_code, a.detail
FROM attempts AS a JOIN deliveries AS d ON d.id = a.delivery_id
WHERE a.id > (SELECT coalesce(max(id), 0) FROM attempts) - ? AND a.outcome <> 'succeeded'
ORDER BY a.id DESC LIMIT ?
"""


def traffic_row(count: TrafficCount) -> tuple[Any, ...]:
    return (count.minute, count.kind, count.name, count.outcome, count.count)
