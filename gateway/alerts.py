"""The gateway's own events: a sink's circuit opening or closing, a sink paused or resumed, a delivery
dead-lettered, a backlog running late. Routes send them like any event (`events: [gateway.*]`) to any sink: email
the staff, post to a chat webhook.

Each is stored and delivered as a canonical event from the source `gateway`, with `alert` saying which sink and
what happened. Alerts of one type about one sink are debounced (in each process); an alert about an alert's own
delivery is never raised, so a failing alert sink cannot feed itself.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

from gateway.clock import Clock, to_datetime
from gateway.events import Alert, AppointmentEvent, EventType
from gateway.exceptions import StorageError
from gateway.ids import new_id
from gateway.metrics import Metrics
from gateway.routing import ALERTS, Router
from gateway.store.base import EventRecord, Store

logger = logging.getLogger(__name__)
SOURCE = "gateway"


class Alerts:
    def __init__(
        self,
        store: Store,
        router: Router,
        clock: Clock,
        metrics: Metrics,
        *,
        debounce: float,
        on_stored: Callable[[Iterable[str]], None] = lambda sinks: None,
    ) -> None:
        self.store = store
        self.router = router
        self.clock = clock
        self.metrics = metrics
        self.debounce = debounce
        self.on_stored = on_stored
        self._last: dict[tuple[str, str], float] = {}

    async def emit(
        self,
        type: EventType,
        sink: str,
        detail: str | None = None,
        *,
        delivery_id: str | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Store the alert with a delivery to every sink a route sends it to (nothing when no route does); False
        when debounced, or when it could not be stored (logged: an alert never stops what raised it)."""
        now = self.clock.now()
        last = self._last.get((type, sink))
        if last is not None and now - last < self.debounce:
            return False
        self._last[(type, sink)] = now
        event = AppointmentEvent(
            id=new_id(),
            type=type,
            source=SOURCE,
            provider=SOURCE,
            provider_event_id=f"{type}:{sink}:{uuid.uuid4().hex}",
            provider_event_type=type,
            occurred_at=to_datetime(now),
            received_at=to_datetime(now),
            alert=Alert(sink=sink, detail=detail, delivery_id=delivery_id, event_id=event_id),
        )
        self.metrics.alerts.labels(type).inc()
        targets = self.router.targets(event)
        if not targets:
            return True  # no route sends it: the log line and the metric are all there is
        record = EventRecord(
            id=event.id,
            source=SOURCE,
            provider_event_id=event.provider_event_id,
            provider_event_type=type,
            provider_delivery_id=None,
            type=type,
            occurred_at=now,
            received_at=now,
            ordering_key=None,
            canonical=event.model_dump_json(by_alias=True),
            raw_body=b"",
            headers={},
            appointment_id=None,
            customer_phone=None,
            customer_email=None,
        )
        try:
            await self.store.ingest(record, targets)
        except StorageError as error:
            logger.error("cannot store the alert %s about sink %s: %s", type, sink, error)
            return False
        self.on_stored(target.sink for target in targets)
        return True


def is_alert(event_type: str | None) -> bool:
    return event_type is not None and event_type.startswith(ALERTS)
