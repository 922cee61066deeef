"""The storage protocol: what the webhook path and the delivery worker need from a database, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.routing import Target
from gateway.store.buckets import Taken

if TYPE_CHECKING:
    from gateway.store.queries import DeadLetterQuery, EventQuery

DeliveryStatus = Literal["pending", "succeeded", "dead", "discarded", "skipped", "superseded"]
"""`skipped`: never attempted, or given up for a reason that is no failure (too late, quiet hours, no recipient);
`superseded`: withdrawn because a later event of its appointment made it stale. Neither is a dead letter."""
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
    appointment_id: str | None = None
    customer_phone: str | None = None
    customer_email: str | None = None


@dataclass(frozen=True)
class Withheld:
    """A delivery the ingest did not leave pending: created skipped or superseded, or withdrawn from before."""

    sink: str
    status: DeliveryStatus
    reason: str


@dataclass(frozen=True)
class Handoff:
    """An ingest's offer to the worker of its own process: lease it the new deliveries to these sinks in the ingest's
    own transaction, so that it sends them from memory, with no claim and no second read."""

    owner: str
    lease_until: float
    sinks: frozenset[str]


@dataclass(frozen=True)
class Ingested:
    event_id: str
    duplicate: bool
    withheld: tuple[Withheld, ...] = ()
    leased: tuple[ClaimedDelivery, ...] = ()
    """The deliveries leased to the handoff's owner."""


@dataclass(frozen=True)
class Recorded:
    """What recording an attempt came to."""

    moved: bool
    """The delivery moved on: the recording worker still held its lease."""
    followed: bool = False
    """Another delivery of the same appointment to the same sink waits (it may be claimable now)."""


@dataclass(frozen=True)
class ScheduledReminder:
    """A reminder to schedule: a delivery to `sink` due `before` seconds before the appointment starts."""

    sink: str
    locale: str | None
    before: float
    due_at: float
    skipped: str | None = None
    """Why it is created skipped (too late) rather than pending."""


@dataclass(frozen=True)
class FollowUp:
    """What a new event of an appointment does to the messages still waiting for it, unless an event of the same
    appointment with a later provider time came first (then it changes nothing, and its own deliveries to the
    `late_superseded` sinks are created superseded)."""

    reminders: tuple[ScheduledReminder, ...] = ()
    """They replace the appointment's pending reminders (one already due at the same time is kept, and from now on
    reads this event); the others are withdrawn for `reason`."""
    reason: str = "rescheduled"
    supersede: frozenset[str] = frozenset()
    """Sinks whose pending messages of earlier events of the appointment are withdrawn (cancellation notices
    never are)."""
    late_superseded: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    event_id: str
    sink: str
    attempts: int
    retry_since: float
    """When the retry policy's clock started: when the delivery fell due (the event's receipt, a reminder's time),
    or the latest replay."""
    attempts_before: int
    """Attempts made before the latest replay; the retry policy counts only those after it."""
    locale: str | None
    canonical: str
    reminder: float | None = None
    """For a reminder: seconds before the appointment's start it is due."""
    due_at: float | None = None
    """When it was first due (a reminder's time, before quiet hours or retries moved it)."""


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
    """Why it is dead, skipped or superseded."""
    last_error: str | None
    reminder: float | None = None
    due_at: float | None = None


@dataclass(frozen=True)
class EventSummary:
    id: str
    source: str
    provider_event_id: str
    provider_event_type: str
    type: str | None
    occurred_at: float
    received_at: float
    appointment_id: str | None
    customer_phone: str | None
    customer_email: str | None
    deliveries: dict[str, DeliveryStatus]
    """Sink -> status of its delivery."""


@dataclass(frozen=True)
class DeadLetter:
    delivery_id: str
    event_id: str
    sink: str
    source: str
    type: str | None
    provider_event_type: str
    provider_event_id: str
    attempts: int
    dead_reason: str | None
    last_error: str | None
    dead_at: float
    received_at: float


@dataclass(frozen=True)
class SinkStats:
    pending: int
    """Deliveries not yet done, leased or waiting."""
    due: int
    """Of those, due now and not leased."""
    oldest_due_age: float
    """Seconds the oldest due delivery has waited past its due time (0 when none)."""
    dead: int


@dataclass(frozen=True)
class TrafficCount:
    """How many webhooks a source answered (kind "webhook") or attempts a sink made (kind "attempt") with one
    outcome during one minute (`minute`: seconds since the epoch, divided by 60), counted by every process."""

    kind: Literal["webhook", "attempt"]
    name: str
    outcome: str
    minute: int
    count: int


@dataclass(frozen=True)
class RecentFailure:
    delivery_id: str
    event_id: str
    sink: str
    started_at: float
    outcome: Outcome
    status_code: int | None
    detail: str | None


def sink_stats(rows: dict[str, Any], now: float) -> dict[str, SinkStats]:
    """SinkStats from each sink's (pending, due, oldest due time, dead) row; sinks with nothing left out."""
    return {
        sink: SinkStats(pending, due, now - oldest if oldest is not None else 0.0, dead)
        for sink, (pending, due, oldest, dead) in rows.items()
        if pending or dead
    }


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

    async def ingest(
        self,
        event: EventRecord,
        targets: Sequence[Target],
        *,
        skipped: str | None = None,
        follow_up: FollowUp | None = None,
        handoff: Handoff | None = None,
    ) -> Ingested:
        """Commit the event and one pending delivery per target in one transaction (`skipped` deliveries with that
        reason instead, when given), with what the event does to its appointment's waiting messages
        (`follow_up`), unless the provider's event id was stored before, or purged since (then nothing is written
        and `duplicate` is set). With `handoff`, lease to its owner, in the same transaction, the new deliveries to
        its sinks that a claim would take now (pending, due, no earlier one of the appointment waiting), and return
        them as claimed. Raises StorageError."""
        ...

    async def claim(
        self, sink: str, *, limit: int, now: float, owner: str, lease_until: float
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries of `sink`: pending, due, not leased (or lease expired), and with no
        earlier pending delivery of the same appointment to the same sink."""
        ...

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
        """Record the attempt, and move the delivery on if `owner` still holds its lease (not `moved` otherwise),
        saying whether a later delivery of its appointment waits behind it; with `fallback`, queue the same message
        to that sink, due now, in the same transaction (unless the event already has one there)."""
        ...

    async def settle(self, delivery_id: str, owner: str, transition: Transition, *, note: str, now: float) -> bool:
        """Move a leased delivery on without an attempt (quiet hours postpone or skip it), `note` saying why;
        False unless `owner` still holds its lease."""
        ...

    async def next_due(self, sink: str, *, after: float) -> float | None:
        """When the sink's earliest pending delivery due after `after` falls due (an index lookup), or None."""
        ...

    async def release(self, delivery_ids: Sequence[str], owner: str) -> None:
        """Give leases back without an attempt, so that another worker may claim them at once."""
        ...

    async def renew(self, delivery_ids: Sequence[str], owner: str, *, lease_until: float) -> None:
        """Extend the leases `owner` still holds on these deliveries."""
        ...

    async def set_paused(self, sink: str, *, paused: bool, reason: str | None, now: float) -> None:
        """Pause a sink (no worker claims its deliveries; they wait, spending no attempt) or resume it."""
        ...

    async def paused_sinks(self) -> dict[str, str | None]:
        """The paused sinks, each with the reason it was paused for."""
        ...

    async def take_tokens(self, sink: str, *, want: int, per_second: float, burst: int, now: float) -> Taken:
        """Up to `want` tokens from the sink's shared bucket (gateway.store.buckets)."""
        ...

    async def block_tokens(self, sink: str, *, until: float, now: float) -> None:
        """Give no token for the sink before `until` (a provider's Retry-After), in every process."""
        ...

    async def lease_owners(self) -> set[str]:
        """The owners holding leases on pending deliveries, expired or not."""
        ...

    async def release_owner(self, owner: str) -> int:
        """Give back every lease `owner` holds (its process is gone); return how many."""
        ...

    async def get_state(self, sink: str, key: str) -> str | None:
        """A sink's own remembered value (e.g. what it last applied for an appointment), or None."""
        ...

    async def set_state(self, sink: str, key: str, value: str, *, now: float) -> None: ...

    async def list_state(self, sink: str, prefix: str) -> dict[str, str]:
        """Every key (and value) the sink remembers that starts with `prefix`, in key order."""
        ...

    async def sent_messages(self, delivery_id: str) -> dict[str, str]:
        """Recipient -> provider message id of every message a sink confirmed sending for this delivery."""
        ...

    async def record_sent(self, delivery_id: str, recipient: str, provider_message_id: str, *, at: float) -> None:
        """Remember, at once and durably, that a message reached its provider, so that it is never sent twice."""
        ...

    async def get_event(self, event_id: str) -> EventRecord | None: ...

    async def list_events(
        self, query: EventQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[EventSummary]:
        """Matching events, newest first (received_at, id), starting after the `after` position."""
        ...

    async def replay(self, event_id: str, *, sink: str | None = None, now: float) -> list[str]:
        """Queue the event's finished (succeeded or dead) deliveries again, or only the one to `sink`, due now;
        their attempts stay, and the retry policy starts afresh. Return the ids re-queued."""
        ...

    async def list_dead_letters(
        self, query: DeadLetterQuery, *, limit: int, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        """Dead deliveries matching `query`, most recently dead first, starting after the `after` position."""
        ...

    async def requeue_dead_letters(self, query: DeadLetterQuery, *, now: float, dry_run: bool = False) -> int:
        """Queue every matching dead delivery again (as `replay` does), or only count them; return how many."""
        ...

    async def set_dead_letter(self, delivery_id: str, *, status: DeliveryStatus, now: float) -> bool:
        """Move one dead delivery to `pending` (retry now) or `discarded`; False unless it was dead."""
        ...

    async def purge(self, *, before: float, batch: int, now: float) -> int:
        """Delete up to `batch` events received before `before` whose deliveries are all finished, with their
        deliveries, attempts and sent messages, in one short transaction, remembering each one's provider id (a
        tombstone, dated `now`: `ingest` takes it again as a duplicate); return how many events went."""
        ...

    async def forget(self, *, tombstones_before: float, state_before: float) -> None:
        """Delete tombstones made before `tombstones_before` and sink state last written before `state_before`."""
        ...

    async def sink_stats(self, sinks: Sequence[str], *, now: float) -> dict[str, SinkStats]:
        """Queue depth, due backlog, age of the oldest due delivery and dead letters, of each of these sinks that
        has any."""
        ...

    async def ping(self) -> None:
        """Raise StorageError unless the database answers."""
        ...

    async def add_traffic(self, counts: Sequence[TrafficCount], *, forget_before: int) -> None:
        """Add these counts to the stored ones (per minute, kind, name and outcome) and delete the minutes before
        `forget_before`, in one transaction."""
        ...

    async def traffic(self, *, since: int) -> list[TrafficCount]:
        """The stored counts of the minutes from `since` on."""
        ...

    async def recent_failures(self, *, limit: int, among: int) -> list[RecentFailure]:
        """The latest attempts that failed, newest first, among the `among` latest attempts (a bound on the work)."""
        ...

    async def deliveries(self, event_id: str) -> list[DeliveryRow]: ...

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]: ...

    async def count_events(self) -> int: ...
