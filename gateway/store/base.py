"""The storage protocol: what the webhook path and the delivery worker need from a database, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.routing import Target

DeliveryStatus = Literal["pending", "succeeded", "dead"]
Outcome = Literal["succeeded", "retryable", "permanent"]
"""An attempt's result: delivered, failed in a way that may pass, or failed for good."""


@dataclass(frozen=True)
class EventRecord:
    """A verified webhook as stored: `canonical` (JSON) is None when its type is not mapped."""

    id: str
    source: str
    provider_event_id: str
    provider_event_type: str
    provider_delivery_id: str | None
    type: str | None
    occurred_at: float
    received_at: float
    ordering_key: str | None
    canonical: str | None
    raw_body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Ingested:
    event_id: str
    duplicate: bool


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    event_id: str
    sink: str
    attempts: int
    created_at: float
    locale: str | None
    canonical: str


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: float
    duration_ms: float
    outcome: Outcome
    status_code: int | None = None
    detail: str | None = None
    """An excerpt of the error, or what the sink reported of its success."""


@dataclass(frozen=True)
class Transition:
    """Where a delivery goes after an attempt: done, due again at `next_attempt_at`, or dead with a reason."""

    status: DeliveryStatus
    next_attempt_at: float | None = None
    dead_reason: str | None = None


@dataclass(frozen=True)
class DeliveryRow:
    id: str
    event_id: str
    sink: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    lease_owner: str | None
    dead_reason: str | None
    last_error: str | None


class Store(Protocol):
    async def open(self) -> None:
        """Connect; raise StorageError when the database cannot be used (unreachable, schema behind or ahead)."""
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Bring the schema to this gateway's version; return the names of the migrations applied."""
        ...

    async def watch(self, wake: Callable[[Iterable[str] | None], None]) -> None:
        """Until cancelled, call `wake(sinks)` whenever any process commits deliveries for those sinks (None: look
        at every sink). A store that cannot tell waits forever, and workers fall back on polling."""
        ...

    async def ingest(self, event: EventRecord, targets: Sequence[Target]) -> Ingested:
        """Commit the event and one pending delivery per target in one transaction, unless the provider's event id
        was stored before (then nothing is written and `duplicate` is set). Raises StorageError."""
        ...

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries of `sink`: pending, due, not leased (or lease expired), and with no
        earlier pending delivery of the same appointment to the same sink."""
        ...

    async def record_attempt(
        self, delivery_id: str, owner: str, attempt: AttemptRecord, transition: Transition, *, now: float
    ) -> bool:
        """Record the attempt, and move the delivery on if `owner` still holds its lease (False otherwise)."""
        ...

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        """Give leases back without an attempt, so that another worker may claim them at once."""
        ...

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        """Recipient -> provider message id of every message a sink confirmed sending for this delivery."""
        ...

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        """Remember, at once and durably, that a message reached its provider, so that it is never sent twice."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def deliveries(self, event_id: str) -> list[DeliveryRow]: ...

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]: ...

    async def count_events(self) -> int: ...
