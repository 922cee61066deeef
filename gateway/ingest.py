"""The webhook path: verify, parse, route, and commit the event with its deliveries before acknowledging."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.cleaning import may_hold_surrogates, without_surrogates
from gateway.clock import Clock, to_datetime
from gateway.events import AppointmentEvent
from gateway.exceptions import WebhookRejected
from gateway.ids import new_id
from gateway.metrics import Metrics
from gateway.reminders import follow_up
from gateway.routing import Routed, Router
from gateway.sources.base import Source
from gateway.store.base import ClaimedDelivery, EventRecord, Handoff, Ingested, Store
from gateway.store.follow_up import ringing

logger = logging.getLogger(__name__)
WAIT_FOR_DELIVERY = 0.1
"""Seconds at most a webhook waits for its process's worker to have room for its deliveries: under a load beyond
what one process delivers, acknowledgements slow down by up to this, and the backlog stays flat."""


@dataclass(frozen=True)
class Acknowledgement:
    status_code: int
    body: dict[str, Any]


class Deliverer(Protocol):
    """The worker of this process, as the webhook path sees it (gateway.delivery.Worker)."""

    def offer(self, sinks: Iterable[str]) -> Handoff | None: ...

    async def room(self, sinks: Iterable[str], *, within: float) -> None: ...

    async def take(
        self, handoff: Handoff | None, leased: Sequence[ClaimedDelivery], event: AppointmentEvent | None
    ) -> None: ...

    def wake(self, sinks: Iterable[str] | None = None) -> None: ...


class Ingest:
    def __init__(
        self,
        sources: Mapping[str, Source],
        router: Router,
        store: Store,
        *,
        clock: Clock,
        metrics: Metrics,
        deliverer: Deliverer | None = None,
        withdrawing: Collection[str] = (),
    ) -> None:
        self.withdrawing = frozenset(withdrawing)
        """The sinks whose waiting messages a later event of the same appointment withdraws (`supersede`)."""
        self.sources = sources
        self.router = router
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.deliverer = deliverer
        """Offered each new event's deliveries, to send from memory; woken for those it did not take."""

    async def receive(self, source_name: str, headers: Mapping[str, str], body: bytes) -> Acknowledgement:
        """Acknowledge a webhook to a configured source only once it is committed; raise WebhookRejected (4xx) or
        StorageError (503)."""
        began = time.perf_counter()
        source = self.sources[source_name]
        source.verify(headers, body)
        received_at = self.clock.now()
        event_id = new_id()
        webhook = source.parse(_json(body), headers, event_id=event_id, received_at=to_datetime(received_at))
        event = webhook.event
        routed = self.router.route(event) if event is not None else Routed([], [])
        targets = routed.targets
        record = EventRecord(
            id=event_id,
            source=source_name,
            provider_event_id=webhook.provider_event_id,
            provider_event_type=webhook.provider_event_type,
            provider_delivery_id=webhook.provider_delivery_id,
            type=event.type if event is not None else None,
            occurred_at=webhook.occurred_at.timestamp(),
            received_at=received_at,
            ordering_key=event.ordering_key if event is not None else None,
            canonical=event.model_dump_json(by_alias=True) if event is not None else None,
            raw_body=body,
            headers=webhook.headers,
            appointment_id=event.appointment.id if event is not None and event.appointment else None,
            customer_phone=event.customer.phone if event is not None and event.customer else None,
            customer_email=event.customer.email.lower()
            if event is not None and event.customer and event.customer.email
            else None,
        )
        stale = source.options.stale_after is not None and record.occurred_at < received_at - source.options.stale_after
        plan = None
        if event is not None and not stale:
            plan = follow_up(event, routed, self.router, self.withdrawing, now=received_at)
        handoff = None
        if self.deliverer is not None and event is not None and not stale:
            target_sinks = [target.sink for target in targets]
            await self.deliverer.room(target_sinks, within=WAIT_FOR_DELIVERY)
            handoff = self.deliverer.offer(target_sinks)
        stored: Ingested | None = None
        try:
            stored = await self.store.ingest(
                record, targets, skipped="stale" if stale else None, follow_up=plan, handoff=handoff
            )
        finally:
            if self.deliverer is not None:
                await self.deliverer.take(handoff, stored.leased if stored is not None else (), event)
        for withheld in stored.withheld:
            self.metrics.withheld.labels(withheld.sink, withheld.status, withheld.reason).inc()
        outcome = (
            "duplicate" if stored.duplicate else "stale" if stale else "accepted" if event is not None else "unmapped"
        )
        # unmapped types are whatever a signed body says: one label value for all of them keeps the series bounded
        metric_type = webhook.provider_event_type if event is not None else "other"
        self.metrics.answered(source_name, metric_type, outcome)
        sinks = [] if stored.duplicate or stale else [target.sink for target in targets]
        level = logging.WARNING if outcome in ("unmapped", "stale") else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                f"webhook {outcome}",
                extra={
                    "source": source_name,
                    "outcome": outcome,
                    "event_id": stored.event_id,
                    "provider_event_id": webhook.provider_event_id,
                    "provider_event_type": webhook.provider_event_type,
                    "provider_delivery_id": webhook.provider_delivery_id,
                    "sinks": sinks,
                    "duration_ms": round((time.perf_counter() - began) * 1000, 3),
                },
            )
        if stored.duplicate:
            return Acknowledgement(200, {"status": "duplicate", "event_id": stored.event_id})
        if event is None:
            return Acknowledgement(202, {"status": "unmapped", "event_id": stored.event_id})
        if stale:
            return Acknowledgement(202, {"status": "stale", "event_id": stored.event_id})
        if self.deliverer is not None:
            self.deliverer.wake(ringing(targets, plan, {delivery.sink for delivery in stored.leased}))
        return Acknowledgement(202, {"status": "accepted", "event_id": stored.event_id, "sinks": sinks})


def _json(body: bytes) -> Any:
    """The parsed body; a lone surrogate escape (`"\\ud800"`, valid JSON but not text) is read as U+FFFD."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise WebhookRejected(400, "invalid_json", f"the body is not JSON: {error}") from None
    return without_surrogates(value) if may_hold_surrogates(body) else value
