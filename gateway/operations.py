"""What operators do with stored events: look them up, replay them, handle dead letters, purge old ones.

The admin API and the CLI both call these; each answers JSON-ready data or raises OperationError (a 4xx).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway.alerts import Alerts
from gateway.clock import Clock, to_datetime
from gateway.durations import Duration
from gateway.exceptions import GatewayError
from gateway.store.base import DeadLetter, DeliveryRow, EventRecord, EventSummary, SinkStats, Store, TrafficCount
from gateway.store.queries import DeadLetterQuery, EventQuery, decode_cursor, encode_cursor
from gateway.traffic import Traffic


class OperationError(GatewayError):
    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventFilter(Params):
    source: str | None = None
    type: str | None = Field(None, description="Canonical (appointment.created) or provider (booking.created) type")
    appointment: str | None = Field(None, description="The provider's appointment id")
    customer: str | None = Field(None, description="Customer phone (E.164) or email")
    since: AwareDatetime | None = Field(None, description="Received at or after (ISO 8601 with a zone)")
    until: AwareDatetime | None = Field(None, description="Received before")
    status: Literal["pending", "succeeded", "dead", "discarded", "skipped", "superseded"] | None = Field(
        None, description="With at least one delivery in this status"
    )
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, description="next_cursor of the previous page")


class DeadLetterFilter(Params):
    sink: str | None = None
    source: str | None = None
    type: str | None = None
    since: AwareDatetime | None = Field(None, description="Dead-lettered at or after")
    until: AwareDatetime | None = Field(None, description="Dead-lettered before")
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None


class DeadLetterReplay(Params):
    sink: str | None = None
    source: str | None = None
    type: str | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    dry_run: bool = Field(False, description="Only count what would be re-queued")


class Replay(Params):
    sink: str | None = Field(None, description="Only the delivery to this sink; all finished ones when omitted")


class Pause(Params):
    reason: str | None = Field(None, max_length=500, description="Why, for the other operators (sinks list)")


class Purge(Params):
    older_than: Duration | None = Field(None, description="Default: retention.max_age")


P = TypeVar("P", bound=Params)
ACKNOWLEDGED = frozenset({"accepted", "duplicate", "stale", "unmapped"})
"""Webhook outcomes answered with a 2xx; every other outcome is a refusal, by reason."""
RECENT_FAILURES = 10
RECENT_AMONG = 10_000
"""The overview's recent failures are looked for among this many latest attempts: bounded work on a big store."""
TIMELINE_EVENTS = 500
"""An appointment's timeline shows at most this many events (its latest)."""


def parse(model: type[P], data: Any) -> P:
    """Validated parameters, or a 400 naming every parameter that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [f"{'.'.join(map(str, item['loc'])) or '(body)'}: {item['msg']}" for item in error.errors()]
        raise OperationError(400, "invalid_parameters", "; ".join(problems)) from None


class Operations:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        retention: float,
        tombstones: float = 365 * 86400.0,
        wake: Callable[[Iterable[str] | None], None],
        sinks: Sequence[str] = (),
        sources: Sequence[str] = (),
        circuits: Callable[[], dict[str, str]] = dict,
        traffic: Traffic | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self.traffic = traffic
        """This process's counts, flushed before the overview reads every process's."""
        self.alerts = alerts
        self.sources = list(sources)
        self.circuits = circuits
        """Per sink with a circuit breaker, its state in this process's worker (none without a worker)."""
        self.sinks = list(sinks)
        """The configured sinks, in configuration order."""
        self.store = store
        self.clock = clock
        self.retention = retention
        self.tombstones = tombstones
        self.wake = wake

    async def list_events(self, params: EventFilter) -> dict[str, Any]:
        query = EventQuery(
            source=params.source,
            type=params.type,
            appointment=params.appointment,
            customer=params.customer,
            since=params.since.timestamp() if params.since else None,
            until=params.until.timestamp() if params.until else None,
            status=params.status,
        )
        events = await self.store.list_events(query, limit=params.limit, after=_position(params.cursor))
        last = (events[-1].received_at, events[-1].id) if len(events) == params.limit else None
        return {"events": [_summary(event) for event in events], "next_cursor": last and encode_cursor(last)}

    async def show_event(self, event_id: str) -> dict[str, Any]:
        event = await self._event(event_id)
        deliveries = []
        for delivery in await self.store.deliveries(event_id):
            attempts = await self.store.attempts(delivery.id)
            deliveries.append(
                {
                    **_delivery(delivery),
                    "attempt_log": [
                        {
                            "number": a.number,
                            "started_at": _iso(a.started_at),
                            "duration_ms": round(a.duration_ms, 3),
                            "outcome": a.outcome,
                            "status_code": a.status_code,
                            "detail": a.detail,
                        }
                        for a in attempts
                    ],
                }
            )
        return {**_record(event), "deliveries": deliveries}

    async def show_appointment(self, source: str, appointment_id: str) -> dict[str, Any]:
        """An appointment's timeline: its events in provider order, each with its messages (status and reason),
        and its reminders, pending and withdrawn, with their due times."""
        query = EventQuery(source=source, appointment=appointment_id)
        events = await self.store.list_events(query, limit=TIMELINE_EVENTS)
        if not events:
            raise OperationError(
                404, "unknown_appointment", f"no event of appointment {appointment_id!r} from source {source!r}"
            )
        timeline, reminders = [], []
        for event in sorted(events, key=lambda e: (e.occurred_at, e.received_at)):
            deliveries = [_delivery(row) for row in await self.store.deliveries(event.id)]
            messages = [row for row in deliveries if row["reminder_before_seconds"] is None]
            reminders += [{**row, "event_id": event.id} for row in deliveries if row not in messages]
            timeline.append({**_summary(event), "deliveries": messages})
        return {
            "source": source,
            "appointment_id": appointment_id,
            "events": timeline,
            "reminders": sorted(reminders, key=lambda row: (row["status"] != "pending", row["due_at"] or "")),
            "truncated": len(events) == TIMELINE_EVENTS,
        }

    async def replay(self, event_id: str, params: Replay) -> dict[str, Any]:
        event = await self._event(event_id)
        deliveries = await self.store.deliveries(event_id)
        if params.sink is not None and params.sink not in {d.sink for d in deliveries}:
            known = ", ".join(sorted(d.sink for d in deliveries)) or "none (the event was routed nowhere)"
            raise OperationError(
                404, "unknown_sink", f"event {event_id} has no delivery to {params.sink!r}; it has {known}"
            )
        requeued = await self.store.replay(event.id, sink=params.sink, now=self.clock.now())
        if not requeued:
            raise OperationError(
                409, "nothing_to_replay", "no finished delivery to replay: they are all still pending, or none exist"
            )
        self.wake([d.sink for d in deliveries])
        return {"requeued": requeued}

    async def list_dead_letters(self, params: DeadLetterFilter) -> dict[str, Any]:
        query = _dead_letter_query(params)
        letters = await self.store.list_dead_letters(query, limit=params.limit, after=_position(params.cursor))
        last = (letters[-1].dead_at, letters[-1].delivery_id) if len(letters) == params.limit else None
        return {
            "dead_letters": [_dead_letter(letter) for letter in letters],
            "next_cursor": last and encode_cursor(last),
        }

    async def replay_dead_letters(self, params: DeadLetterReplay) -> dict[str, Any]:
        count = await self.store.requeue_dead_letters(
            _dead_letter_query(params), now=self.clock.now(), dry_run=params.dry_run
        )
        if count and not params.dry_run:
            self.wake(None)
        return {"dry_run": params.dry_run, "matched": count, "requeued": 0 if params.dry_run else count}

    async def retry_dead_letter(self, delivery_id: str) -> dict[str, Any]:
        if not await self.store.set_dead_letter(delivery_id, status="pending", now=self.clock.now()):
            raise OperationError(404, "unknown_dead_letter", f"no dead letter with delivery id {delivery_id!r}")
        self.wake(None)
        return {"requeued": [delivery_id]}

    async def discard_dead_letter(self, delivery_id: str) -> dict[str, Any]:
        if not await self.store.set_dead_letter(delivery_id, status="discarded", now=self.clock.now()):
            raise OperationError(404, "unknown_dead_letter", f"no dead letter with delivery id {delivery_id!r}")
        return {"discarded": delivery_id}

    async def list_sinks(self) -> dict[str, Any]:
        minute, counts = await self._traffic(minutes=60)
        return {"sinks": await self._sinks(counts, since=minute - 59)}

    async def overview(self) -> dict[str, Any]:
        """Per source, webhooks acknowledged and refused (by reason) over the last hour and day; the sinks, as
        list_sinks; and the latest failed attempts. Counts come from every process (gateway.traffic)."""
        minute, counts = await self._traffic(minutes=1440)
        webhooks: dict[str, dict[str, dict[str, int]]] = {name: {} for name in self.sources}
        """Source -> outcome -> {"hour": n, "day": n}"""
        for count in counts:
            if count.kind == "webhook" and count.name in webhooks:
                totals = webhooks[count.name].setdefault(count.outcome, _window())
                totals["day"] += count.count
                totals["hour"] += count.count if count.minute > minute - 60 else 0
        failures = await self.store.recent_failures(limit=RECENT_FAILURES, among=RECENT_AMONG)
        return {
            "sources": [_webhook_counts(name, outcomes) for name, outcomes in webhooks.items()],
            "sinks": await self._sinks(counts, since=minute - 59),
            "recent_failures": [
                {
                    "delivery_id": failure.delivery_id,
                    "event_id": failure.event_id,
                    "sink": failure.sink,
                    "started_at": _iso(failure.started_at),
                    "outcome": failure.outcome,
                    "status_code": failure.status_code,
                    "detail": failure.detail,
                }
                for failure in failures
            ],
        }

    async def _traffic(self, *, minutes: int) -> tuple[int, list[TrafficCount]]:
        """The current minute, and every process's counts of the last `minutes` (this process's flushed first)."""
        if self.traffic is not None:
            await self.traffic.flush(self.store)
        minute = int(self.clock.now() // 60)
        return minute, await self.store.traffic(since=minute - minutes + 1)

    async def _sinks(self, counts: list[TrafficCount], *, since: int) -> list[dict[str, Any]]:
        """Per sink: running or paused (and why), its queue, its circuit in this process's worker, and its attempts
        and success rate from the minute `since` on."""
        stats, paused = await self.store.sink_stats(self.sinks, now=self.clock.now()), await self.store.paused_sinks()
        attempts: dict[str, dict[str, int]] = {}
        for count in counts:
            if count.kind == "attempt" and count.minute >= since:
                made = attempts.setdefault(count.name, {})
                made[count.outcome] = made.get(count.outcome, 0) + count.count
        circuits = self.circuits()
        rows = []
        for sink in self.sinks:
            current = stats.get(sink, SinkStats(0, 0, 0.0, 0))
            made = attempts.get(sink, {})
            total = sum(made.values())
            rows.append(
                {
                    "sink": sink,
                    "state": "paused" if sink in paused else "running",
                    "paused_because": paused.get(sink),
                    "circuit": circuits.get(sink),
                    "queue_depth": current.pending,
                    "due": current.due,
                    "oldest_due_seconds": round(current.oldest_due_age, 3),
                    "dead_letters": current.dead,
                    "attempts_last_hour": total,
                    "success_rate_last_hour": round(made.get("succeeded", 0) / total, 4) if total else None,
                }
            )
        return rows

    async def pause_sink(self, sink: str, params: Pause) -> dict[str, Any]:
        """Stop every worker claiming the sink's deliveries (within a second): they wait, spending no attempt."""
        self._known_sink(sink)
        reason = params.reason or "paused by an operator"
        await self.store.set_paused(sink, paused=True, reason=reason, now=self.clock.now())
        if self.alerts is not None:
            await self.alerts.emit("gateway.sink.paused", sink, reason)
        self.wake(None)
        return {"sink": sink, "state": "paused"}

    async def resume_sink(self, sink: str) -> dict[str, Any]:
        """Let the workers claim the sink's deliveries again, in order, from where they stopped."""
        self._known_sink(sink)
        await self.store.set_paused(sink, paused=False, reason=None, now=self.clock.now())
        if self.alerts is not None:
            await self.alerts.emit("gateway.sink.resumed", sink, "resumed by an operator")
        self.wake(None)
        return {"sink": sink, "state": "running"}

    def _known_sink(self, sink: str) -> None:
        if sink not in self.sinks:
            known = ", ".join(self.sinks) or "none configured"
            raise OperationError(404, "unknown_sink", f"no sink named {sink!r}; sinks: {known}")

    async def purge(self, params: Purge, *, batch: int = 500) -> dict[str, Any]:
        """Delete what is older than the retention, in batches of short transactions, so ingestion goes on."""
        older_than = self.retention if params.older_than is None else params.older_than
        now = self.clock.now()
        before = now - older_than
        deleted = 0
        while removed := await self.store.purge(before=before, batch=batch, now=now):
            deleted += removed
        await self.store.forget(tombstones_before=now - self.tombstones, state_before=before)
        return {"deleted": deleted, "older_than_seconds": older_than}

    async def _event(self, event_id: str) -> EventRecord:
        event = await self.store.get_event(event_id)
        if event is None:
            raise OperationError(404, "unknown_event", f"no event with id {event_id!r}")
        return event


def _window() -> dict[str, int]:
    return {"hour": 0, "day": 0}


def _webhook_counts(source: str, outcomes: dict[str, dict[str, int]]) -> dict[str, Any]:
    acknowledged, refused = _window(), _window()
    for outcome, window in outcomes.items():
        total = acknowledged if outcome in ACKNOWLEDGED else refused
        total["hour"] += window["hour"]
        total["day"] += window["day"]
    refusals = {outcome: window for outcome, window in outcomes.items() if outcome not in ACKNOWLEDGED}
    return {"source": source, "acknowledged": acknowledged, "refused": refused, "refusals": refusals}


def _position(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as error:
        raise OperationError(400, "invalid_parameters", f"cursor: {error}") from None


def _dead_letter_query(params: DeadLetterFilter | DeadLetterReplay) -> DeadLetterQuery:
    return DeadLetterQuery(
        sink=params.sink,
        source=params.source,
        type=params.type,
        since=params.since.timestamp() if params.since else None,
        until=params.until.timestamp() if params.until else None,
    )


def _iso(moment: float | None) -> str | None:
    return None if moment is None else to_datetime(moment).isoformat()


def _summary(event: EventSummary) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source,
        "provider_event_id": event.provider_event_id,
        "provider_event_type": event.provider_event_type,
        "type": event.type,
        "appointment_id": event.appointment_id,
        "customer_phone": event.customer_phone,
        "customer_email": event.customer_email,
        "occurred_at": _iso(event.occurred_at),
        "received_at": _iso(event.received_at),
        "deliveries": event.deliveries,
    }


def _record(event: EventRecord) -> dict[str, Any]:
    try:
        raw: dict[str, Any] = {"raw_body": event.raw_body.decode("utf-8")}
    except UnicodeDecodeError:
        raw = {"raw_body_base64": base64.b64encode(event.raw_body).decode()}
    return {
        "id": event.id,
        "source": event.source,
        "provider_event_id": event.provider_event_id,
        "provider_event_type": event.provider_event_type,
        "provider_delivery_id": event.provider_delivery_id,
        "type": event.type,
        "occurred_at": _iso(event.occurred_at),
        "received_at": _iso(event.received_at),
        "canonical": json.loads(event.canonical) if event.canonical else None,
        "headers": event.headers,
        **raw,
    }


def _delivery(delivery: DeliveryRow) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "sink": delivery.sink,
        "status": delivery.status,
        "reason": delivery.dead_reason,
        "reminder_before_seconds": delivery.reminder,
        "due_at": _iso(delivery.due_at),
        "attempts": delivery.attempts,
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_error": delivery.last_error,
    }


def _dead_letter(letter: DeadLetter) -> dict[str, Any]:
    return {
        "delivery_id": letter.delivery_id,
        "event_id": letter.event_id,
        "sink": letter.sink,
        "source": letter.source,
        "type": letter.type or letter.provider_event_type,
        "provider_event_type": letter.provider_event_type,
        "provider_event_id": letter.provider_event_id,
        "attempts": letter.attempts,
        "reason": letter.dead_reason,
        "last_error": letter.last_error,
        "dead_at": _iso(letter.dead_at),
        "received_at": _iso(letter.received_at),
    }
