"""Messages that follow the appointment: the reminders an event schedules, the stale messages it withdraws, and the
`appointment.reminder` event a reminder's sink receives.

The store applies the plan made here only if no event of the same appointment with a later provider time came
first (gateway/store/follow_up.py), so that duplicates, late events and several processes agree.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gateway.clock import to_datetime
from gateway.events import REMINDER, AppointmentEvent, Reminder
from gateway.routing import SCHEDULING, ReminderTarget, Routed, Router
from gateway.store.base import FollowUp, ScheduledReminder

ENDINGS = {
    "appointment.cancelled": "appointment cancelled",
    "appointment.validated": "appointment validated",
    "appointment.completed": "appointment completed",
}
"""Events after which an appointment has no reminders and its stale messages are withdrawn from every sink."""
NEVER_WITHDRAWN = "appointment.cancelled"
TOO_LATE = "too late"


def follow_up(
    event: AppointmentEvent, routed: Routed, router: Router, withdrawing: Collection[str], *, now: float
) -> FollowUp | None:
    """What `event` does to its appointment's waiting messages, given where its routes sent it (`routed`), or None
    when it cannot do anything (no appointment, or neither reminders nor sinks that withdraw stale messages are
    configured). `withdrawing`: the sinks whose stale messages are withdrawn (`supersede`)."""
    if event.appointment is None or not (router.schedules_reminders or withdrawing):
        return None
    sinks = {target.sink for target in routed.targets}
    ending = ENDINGS.get(event.type)
    return FollowUp(
        reminders=tuple(_reminders(event, routed.reminders, now)),
        reason=ending or "rescheduled",
        supersede=frozenset(withdrawing if ending else sinks.intersection(withdrawing)),
        late_superseded=frozenset() if event.type == NEVER_WITHDRAWN else frozenset(sinks.intersection(withdrawing)),
    )


def _reminders(event: AppointmentEvent, targets: Sequence[ReminderTarget], now: float) -> list[ScheduledReminder]:
    appointment = event.appointment
    if event.type not in SCHEDULING or appointment is None or appointment.starts_at is None:
        return []
    if appointment.status == "cancelled":
        return []
    starts_at = appointment.starts_at.timestamp()
    found = []
    for target in targets:
        due_at = starts_at - target.before
        late = due_at < now - target.grace or starts_at <= now
        found.append(ScheduledReminder(target.sink, target.locale, target.before, due_at, TOO_LATE if late else None))
    return found


def reminder_event(event: AppointmentEvent, *, delivery_id: str, before: float, due_at: float) -> AppointmentEvent:
    """The reminder a sink receives: the appointment as its latest event left it, under the reminder's own id
    (stable across retries) and type."""
    reminder = Reminder(before_seconds=before, due_at=to_datetime(due_at), event_id=event.id)
    return event.model_copy(update={"id": delivery_id, "type": REMINDER, "reminder": reminder, "changes": {}})
