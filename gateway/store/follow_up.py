"""What an appointment's new event does to its waiting messages, as SQL both stores run in the ingest transaction.

The latest event by provider time decides: its reminders replace the pending ones (withdrawn, or kept when due at
the same time), and it withdraws the stale messages still waiting for the sinks that withdraw them. An event older
than one already stored changes nothing: its own messages to those sinks are stale from the start. Deliveries
leased by a worker (being sent) are left alone. Every statement repeats the "no later event" test, so that the whole
decision is made inside the transaction, also between processes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.ids import new_id
from gateway.routing import Target
from gateway.store.base import EventRecord, FollowUp, Withheld

LATER = "EXISTS (SELECT 1 FROM events AS l WHERE l.source = ? AND l.appointment_id = ? AND l.occurred_at > ?)"
EARLIER = """
SELECT d.id FROM events AS o CROSS JOIN deliveries AS d {by_event}
WHERE o.source = ? AND o.appointment_id = ? AND o.id <> ? AND d.event_id = o.id AND d.status = 'pending'
  AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= ?)
"""
"""The waiting, unleased deliveries of the appointment's other events, found from its events (a few rows) rather
than from every pending delivery: `{by_event}` names the index for SQLite, whose planner cannot tell them apart."""
LATE_EVENT = "a later event came first"

SUPERSEDE_OWN = f"""
UPDATE deliveries SET status = 'superseded', dead_reason = ?, updated_at = ?
WHERE id IN (SELECT d.id FROM deliveries AS d {{by_event}}
             WHERE d.event_id = ? AND d.sink = ? AND d.reminder IS NULL AND d.status = 'pending')
  AND {LATER}
RETURNING sink, status, dead_reason
"""
KEEP_REMINDER = f"""
UPDATE deliveries SET event_id = ?, occurred_at = ?, locale = ?, updated_at = ?
WHERE id = ({EARLIER} AND d.sink = ? AND d.reminder = ? AND d.due_at = ? LIMIT 1)
  AND NOT {LATER}
"""
WITHDRAW_REMINDERS = f"""
UPDATE deliveries SET status = 'superseded', dead_reason = ?, updated_at = ?
WHERE id IN ({EARLIER} AND d.reminder IS NOT NULL) AND NOT {LATER}
RETURNING sink, status, dead_reason
"""
ADD_REMINDER = f"""
INSERT INTO deliveries (id, event_id, sink, locale, ordering_key, occurred_at, created_at, status, dead_reason,
                        next_attempt_at, updated_at, reminder, due_at)
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE NOT {LATER}
  AND NOT EXISTS (SELECT 1 FROM deliveries AS k WHERE k.event_id = ? AND k.sink = ? AND k.reminder = ?)
RETURNING sink, status, dead_reason
"""
SUPERSEDE_EARLIER = f"""
UPDATE deliveries SET status = 'superseded', dead_reason = ?, updated_at = ?
WHERE id IN ({EARLIER} AND d.reminder IS NULL AND d.sink = ? AND o.type <> 'appointment.cancelled')
  AND NOT {LATER}
RETURNING sink, status, dead_reason
"""


def withheld(rows: Iterable[Sequence[Any]]) -> list[Withheld]:
    """The deliveries a step returned that are not pending: created skipped or superseded, or withdrawn."""
    return [Withheld(*row) for row in rows if row[1] != "pending"]


@dataclass(frozen=True)
class Step:
    sql: str
    parameters: tuple[Any, ...]


def steps(event: EventRecord, follow_up: FollowUp, *, now: float, by_event: str = "") -> list[Step]:
    """The statements to run, in order, after the event and its deliveries are inserted; the rows they return
    (sink, status, reason) are the deliveries withheld. `by_event`: SQLite's INDEXED BY clause for the deliveries
    of one event."""
    return [Step(step.sql.replace("{by_event}", by_event), step.parameters) for step in _steps(event, follow_up, now)]


def _steps(event: EventRecord, follow_up: FollowUp, now: float) -> list[Step]:
    if event.appointment_id is None:
        return []
    later = (event.source, event.appointment_id, event.occurred_at)
    earlier = (event.source, event.appointment_id, event.id, now)
    found: list[Step] = [
        Step(SUPERSEDE_OWN, (LATE_EVENT, now, event.id, sink, *later)) for sink in sorted(follow_up.late_superseded)
    ]
    for reminder in follow_up.reminders:
        found.append(
            Step(
                KEEP_REMINDER,
                (
                    event.id,
                    event.occurred_at,
                    reminder.locale,
                    now,
                    *earlier,
                    reminder.sink,
                    reminder.before,
                    reminder.due_at,
                    *later,
                ),
            )
        )
    found.append(Step(WITHDRAW_REMINDERS, (follow_up.reason, now, *earlier, *later)))
    for reminder in follow_up.reminders:
        status = "pending" if reminder.skipped is None else "skipped"
        found.append(
            Step(
                ADD_REMINDER,
                (
                    new_id(),
                    event.id,
                    reminder.sink,
                    reminder.locale,
                    event.ordering_key,
                    event.occurred_at,
                    event.received_at,
                    status,
                    reminder.skipped,
                    reminder.due_at,
                    now,
                    reminder.before,
                    reminder.due_at,
                    *later,
                    event.id,
                    reminder.sink,
                    reminder.before,
                ),
            )
        )
    reason = f"superseded by {event.type or event.provider_event_type}"
    found += [Step(SUPERSEDE_EARLIER, (reason, now, *earlier, sink, *later)) for sink in sorted(follow_up.supersede)]
    return found


def ringing(targets: Sequence[Target], follow_up: FollowUp | None, handed: Collection[str] = ()) -> list[str]:
    """The sinks whose workers should look again after the ingest commits: its targets' (but the `handed` sinks,
    whose delivery is leased to a worker already, or waits behind an earlier one), and its reminders'."""
    sinks = dict.fromkeys(target.sink for target in targets if target.sink not in handed)
    if follow_up is not None:
        sinks.update(dict.fromkeys(reminder.sink for reminder in follow_up.reminders))
    return list(sinks)
