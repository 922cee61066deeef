"""The delivery worker: claims due deliveries per sink, runs the sink, records the attempt, retries or dead-letters.

Each sink has its own claim loop and its own concurrency limit, so a slow or failing sink never holds up another.
The worker talks to the store through its protocol and never writes SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import ValidationError

from gateway.alerts import Alerts, is_alert
from gateway.circuit import Circuit, CircuitPolicy, State
from gateway.clock import Clock, SystemClock, to_datetime
from gateway.events import STORED, AppointmentEvent, carried_forward, merged
from gateway.exceptions import (
    NO_RECIPIENT,
    RECIPIENT_REASONS,
    SKIP_REASONS,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StorageError,
)
from gateway.ingress import RateLimit
from gateway.leases import is_gone, owner_id
from gateway.logs import redact
from gateway.metrics import Metrics
from gateway.quiet_hours import QuietHours
from gateway.reminders import reminder_event
from gateway.retry import GiveUp, RetryPolicy, after_failure
from gateway.sinks import Delivery, Sink
from gateway.store.base import AttemptRecord, ClaimedDelivery, Handoff, Outcome, Store, Transition
from gateway.store.queries import EventQuery

logger = logging.getLogger(__name__)
ERROR_EXCERPT = 500
PAUSES_READ_EVERY = 1.0
"""Seconds a worker trusts what it last read of the paused sinks: every process obeys a pause within this."""
STATE_EVENTS = 100
"""A reminder's appointment state is folded from at most this many of its latest events."""
ANSWERS_LATELY = 0.05
"""Seconds since a sink's last answer within which an ingest waits for room in its lane (backpressure)."""
AUTHENTICATION_FAILED = "authentication failed"
"""A sink's refused credentials: the sink is paused until an operator resumes it, not every message dead-lettered."""


@dataclass(frozen=True)
class Lane:
    """A sink as the worker drives it: the plugin's object plus the core's policy for it."""

    sink: Sink
    retry: RetryPolicy
    concurrency: int
    timeout: float
    circuit: CircuitPolicy | None = None
    rate_limit: RateLimit | None = None
    quiet_hours: QuietHours | None = None
    fallback: str | None = None
    """The sink that sends a message this one cannot deliver for a recipient reason (RECIPIENT_REASONS)."""
    skip_no_recipient: bool = True
    """An event without the recipient the message needs is skipped (on_no_recipient: skip), not a dead letter."""

    @property
    def name(self) -> str:
        return self.sink.name


@dataclass(frozen=True)
class _Result:
    outcome: Outcome
    status_code: int | None = None
    detail: str | None = None
    retry_after: float | None = None
    dead_reason: str = "permanent error"


class StoreState:
    """A sink's state, kept in the store so that every process and every delivery sees it."""

    def __init__(self, store: Store, sink: str, clock: Clock) -> None:
        self.store = store
        self.sink = sink
        self.clock = clock

    async def get(self, key: str) -> str | None:
        return await self.store.get_state(self.sink, key)

    async def set(self, key: str, value: str) -> None:
        await self.store.set_state(self.sink, key, value, now=self.clock.now())

    async def items(self, prefix: str) -> dict[str, str]:
        return await self.store.list_state(self.sink, prefix)


class StoreLedger:
    """A delivery's sent messages, kept in the store so that they outlive the process."""

    def __init__(self, store: Store, delivery_id: str, clock: Clock) -> None:
        self.store = store
        self.delivery_id = delivery_id
        self.clock = clock

    async def sent(self) -> dict[str, str]:
        return await self.store.sent_messages(self.delivery_id)

    async def record(self, recipient: str, provider_message_id: str) -> None:
        await self.store.record_sent(self.delivery_id, recipient, provider_message_id, at=self.clock.now())


class Worker:
    def __init__(
        self,
        store: Store,
        lanes: Mapping[str, Lane],
        *,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        lease: float = 10.0,
        shutdown_grace: float = 10.0,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        alerts: Alerts | None = None,
        backlog_late_after: float | None = None,
    ) -> None:
        self.store = store
        self.lanes = dict(lanes)
        self.clock = clock or SystemClock()
        self.owner = owner_id()
        self.poll_interval = poll_interval
        self.lease = lease
        self.shutdown_grace = shutdown_grace
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.alerts = alerts
        self.backlog_late_after = backlog_late_after
        self._claimed: dict[str, set[str]] = {name: set() for name in self.lanes}
        """Per sink, claimed deliveries the sink has not answered yet: up to twice its `concurrency`, so that the
        next ones are claimed (a commit away) while the first are sent, and start as soon as a slot frees."""
        self._slots = {name: asyncio.Semaphore(lane.concurrency) for name, lane in self.lanes.items()}
        """Per sink, its attempts under way, `concurrency` at most. asyncio's semaphore: anyio's yields to the event
        loop twice on every acquire, a slot free or not (measured: 5.9 against 0.7 us per acquire and release)."""
        self._attempts: dict[str, TaskGroup] = {}
        """Per running lane, the task group its attempts run in (handed-off deliveries start there too)."""
        self._waiting: dict[str, deque[anyio.Event]] = {name: deque() for name in self.lanes}
        """Per sink, the ingests waiting for room (`room`), first come first served: each place freed wakes one."""
        self._answered_at = dict.fromkeys(self.lanes, -ANSWERS_LATELY)
        """Per sink, when it last answered a delivery (time.monotonic())."""
        self._coming = dict.fromkeys(self.lanes, 0)
        """Per sink, deliveries on their way: offered to ingests still committing, or asked of a claim in flight.
        They count against the limit of `_claimed` as if they were there."""
        self._more_due = dict.fromkeys(self.lanes, False)
        """Per sink, whether its last claim was cut short by the limit (more may be due than it took)."""
        self._wakeups = {name: anyio.Event() for name in self.lanes}
        self._next_due: dict[str, float | None] = dict.fromkeys(self.lanes)
        """Per sink, when its earliest waiting delivery falls due (reminders, retries), as the store said when the
        last claim took all that was due (None after a claim cut short by its limit: their attempts wake the lane):
        the lane sleeps until then, not a poll."""
        self._circuits = {name: Circuit(lane.circuit) for name, lane in self.lanes.items() if lane.circuit}
        self._probes: dict[str, str] = {}
        """Per sink whose circuit is open, the delivery claimed to probe it."""
        self._tokens_at: dict[str, float] = {}
        """Per rate-limited sink that got no token, when the next one is there (worker clock)."""
        self._paused: dict[str, str | None] = {}
        self._paused_read_at = -PAUSES_READ_EVERY
        self._stop = anyio.Event()
        self.running = False
        """True while `run` is delivering (readiness)."""
        self.finished = anyio.Event()

    def wake(self, sinks: Iterable[str] | None = None) -> None:
        """New deliveries are due for these sinks (all when None, which also reads the paused sinks again): look
        now rather than at the next poll."""
        if sinks is None:
            self._paused_read_at = -PAUSES_READ_EVERY
        for name in self.lanes if sinks is None else sinks:
            if name in self._wakeups:
                self._wakeups[name].set()

    def offer(self, sinks: Iterable[str]) -> Handoff | None:
        """What this worker takes straight from an ingest about to commit deliveries to `sinks`: those of its running
        lanes with room to claim ahead, nothing held back (a pause, an open circuit, a rate limit, pauses not read
        lately). Every offer is answered by `take`, whatever the ingest came to."""
        sinks = frozenset(sink for sink in sinks if self._takes(sink) and self._has_room(sink))
        if not sinks:
            return None
        for sink in sinks:
            self._coming[sink] += 1
        return Handoff(self.owner, self.clock.now() + self.lease, sinks)

    async def room(self, sinks: Iterable[str], *, within: float) -> None:
        """Wait, `within` seconds at most, until the lanes that would take new deliveries to `sinks` have room:
        a webhook path flat out then waits on delivery instead of piling up a backlog in the store (backpressure).
        A lane whose sink has not answered for ANSWERS_LATELY is not waited for: it is full because its sink is
        slow, not for want of CPU, and waiting would only slow the webhooks down."""
        full = [sink for sink in sinks if self._must_wait(sink)]
        if not full:  # the usual answer, without the cost of a cancel scope
            return
        with anyio.move_on_after(within):
            for sink in full:
                while self._must_wait(sink):
                    waiter = anyio.Event()
                    self._waiting[sink].append(waiter)
                    try:
                        await waiter.wait()
                    finally:
                        if not waiter.is_set():
                            self._waiting[sink].remove(waiter)

    def _must_wait(self, sink: str) -> bool:
        return self._takes(sink) and not self._has_room(sink) and self._answers_lately(sink)

    def _takes(self, sink: str) -> bool:
        """Whether this worker takes new deliveries to `sink` from their ingest (room aside)."""
        if not self.running or self._stop.is_set() or time.monotonic() - self._paused_read_at >= PAUSES_READ_EVERY:
            return False
        lane = self.lanes.get(sink)
        if lane is None or sink not in self._attempts or lane.rate_limit is not None or sink in self._paused:
            return False
        circuit = self._circuits.get(sink)
        return circuit is None or circuit.state is State.CLOSED

    def _has_room(self, sink: str) -> bool:
        return len(self._claimed[sink]) + self._coming[sink] < 2 * self.lanes[sink].concurrency

    def _answers_lately(self, sink: str) -> bool:
        return time.monotonic() - self._answered_at[sink] < ANSWERS_LATELY

    def _room_freed(self, sink: str) -> None:
        if self._waiting[sink]:
            self._waiting[sink].popleft().set()

    async def take(
        self, handoff: Handoff | None, leased: Sequence[ClaimedDelivery], event: AppointmentEvent | None
    ) -> None:
        """Attempt the deliveries an ingest leased to this worker on its `offer`, sending `event` from memory (or
        give them back, should the worker have stopped meanwhile)."""
        if handoff is None:
            return
        for sink in handoff.sinks:
            self._coming[sink] -= 1
            if not any(claimed.sink == sink for claimed in leased):
                self._room_freed(sink)  # offered, not taken (a duplicate, a failed commit...)
        for claimed in leased:
            attempts = self._attempts.get(claimed.sink)
            if attempts is None or self._stop.is_set():
                await self._release(claimed)
                continue
            self._claimed[claimed.sink].add(claimed.id)
            attempts.start_soon(self._attempt, self.lanes[claimed.sink], claimed, event)

    def stop(self) -> None:
        """Claim nothing more; in-flight attempts get `shutdown_grace` seconds, then their leases are released."""
        self._stop.set()
        self.wake()

    async def take_back_orphans(self) -> int:
        """Release the leases of workers whose process is gone (a crash on this host): their deliveries are due
        again now rather than when the leases expire. Return how many."""
        try:
            gone = [owner for owner in await self.store.lease_owners() if is_gone(owner)]
            released = sum([await self.store.release_owner(owner) for owner in gone])
        except StorageError as error:
            logger.error("cannot take back the leases of crashed workers (they will expire): %s", error)
            return 0
        if released:
            logger.warning("took back %d deliveries leased by %s, which no longer run", released, ", ".join(gone))
        return released

    def circuit_states(self) -> dict[str, str]:
        """Per sink with a circuit breaker, its state in this process: closed, open or probing."""
        return {name: circuit.state.value for name, circuit in self._circuits.items()}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        logger.info("worker %s delivering to %s", self.owner, ", ".join(self.lanes) or "no sink")
        await self.take_back_orphans()
        self.running = True
        task_status.started()
        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(self.store.watch, self.wake)
                watching.start_soon(self._renew_leases)
                if self.alerts is not None and self.backlog_late_after is not None:
                    watching.start_soon(self._watch_backlogs, self.backlog_late_after)
                async with anyio.create_task_group() as lanes:
                    lanes.start_soon(self._stop.wait)  # run until stopped, even with no sink to drive
                    for lane in self.lanes.values():
                        lanes.start_soon(self._run_lane, lane)
                watching.cancel_scope.cancel()
        finally:
            self.running = False
            self.finished.set()

    async def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of what this worker holds (in flight, or claimed and waiting
        for a slot): leases stay short, so that a dead worker's deliveries come back within one, on any host."""
        while True:
            await anyio.sleep(self.lease / 3)
            held = [delivery_id for claimed in self._claimed.values() for delivery_id in claimed]
            if not held:
                continue
            try:
                await self.store.renew(held, self.owner, lease_until=self.clock.now() + self.lease)
            except StorageError as error:
                logger.error("cannot renew the leases of %d deliveries (they may expire): %s", len(held), error)

    async def _watch_backlogs(self, late_after: float) -> None:
        """Check the backlogs every tenth of `late_after`, at most every minute."""
        while True:
            await anyio.sleep(min(late_after / 10, 60.0))
            await self.check_backlogs(late_after)

    async def check_backlogs(self, late_after: float) -> None:
        """Raise gateway.sink.backlog_late for each sink whose oldest due delivery has waited longer than
        `late_after`."""
        if self.alerts is None:
            return
        try:
            stats = await self.store.sink_stats(list(self.lanes), now=self.clock.now())
        except StorageError as error:
            logger.error("cannot check the sinks' backlogs: %s", error)
            return
        for sink, current in stats.items():
            if sink in self.lanes and current.oldest_due_age > late_after:
                detail = f"{current.due} deliveries due, the oldest for {current.oldest_due_age:.0f}s"
                await self.alerts.emit("gateway.sink.backlog_late", sink, detail)

    async def run_due(self) -> int:
        """Claim and attempt, once, what is due now on every sink (up to its concurrency); return how many attempts
        were made."""
        made = 0
        async with anyio.create_task_group() as attempts:
            for lane in self.lanes.values():
                made += await self._claim(lane, attempts, ahead=False)
        return made

    async def _run_lane(self, lane: Lane) -> None:
        async with anyio.create_task_group() as attempts:
            self._attempts[lane.name] = attempts
            while not self._stop.is_set():
                # A claim takes everything due up to the free slots, so the lane then waits: for new deliveries
                # (ingest or the store wakes it, even during the claim), a slot freed while more were due, or a poll.
                self._wakeups[lane.name] = wakeup = anyio.Event()
                await self._claim(lane, attempts)
                with anyio.move_on_after(self._until_next_look(lane.name)):
                    await wakeup.wait()
            del self._attempts[lane.name]
            attempts.cancel_scope.deadline = anyio.current_time() + self.shutdown_grace

    def _until_next_look(self, sink: str) -> float:
        """Seconds until the sink's earliest waiting delivery falls due, at most a poll (and, for a paused sink, at
        most until the pauses are read again)."""
        now, next_due = self.clock.now(), self._next_due[sink]
        limit = min(self.poll_interval, PAUSES_READ_EVERY) if sink in self._paused else self.poll_interval
        circuit = self._circuits.get(sink)
        if circuit is not None and circuit.state is State.OPEN:
            limit = min(limit, max(0.0, circuit.next_probe_at - now))
        if sink in self._tokens_at:
            limit = min(limit, max(0.0, self._tokens_at[sink] - now))
        return min(limit, max(0.0, next_due - now)) if next_due is not None else limit

    async def _is_paused(self, sink: str) -> bool:
        """Whether the sink is paused, as read from the store at most PAUSES_READ_EVERY seconds ago."""
        if time.monotonic() - self._paused_read_at >= PAUSES_READ_EVERY:
            try:
                self._paused = await self.store.paused_sinks()
                self._paused_read_at = time.monotonic()
            except StorageError as error:
                logger.error("cannot read which sinks are paused (keeping what was read before): %s", error)
        return sink in self._paused

    async def _claim(self, lane: Lane, attempts: TaskGroup, *, ahead: bool = True) -> int:
        """Claim what is due, up to the sink's free slots plus (when `ahead`) as many again to wait for them."""
        self._next_due[lane.name] = None  # learnt again below once what is due now is taken
        free = (2 if ahead else 1) * lane.concurrency - len(self._claimed[lane.name]) - self._coming[lane.name]
        if free <= 0:
            self._more_due[lane.name] = True  # perhaps: look again once a slot frees
            return 0
        if await self._is_paused(lane.name):
            return 0
        now = self.clock.now()
        circuit = self._circuits.get(lane.name)
        allowance = circuit.allowance(now) if circuit is not None else None
        if allowance is not None:  # the circuit is open: nothing, or one delivery to probe the sink
            if allowance == 0 or lane.name in self._probes:
                return 0
            free = min(free, allowance)
        lease_until = now + self.lease  # renewed while held (_renew_leases)
        self._coming[lane.name] += free
        try:
            claimed = await self.store.claim(lane.name, limit=free, now=now, owner=self.owner, lease_until=lease_until)
        except StorageError as error:
            logger.error("cannot claim deliveries for sink %s: %s", lane.name, error)
            return 0
        finally:
            self._coming[lane.name] -= free
        if lane.rate_limit is not None and claimed:
            claimed = await self._with_tokens(lane, claimed, now)
        self._more_due[lane.name] = len(claimed) == free
        if len(claimed) < free:
            await self._look_ahead(lane.name, now)
        if circuit is not None and allowance is not None:
            if claimed:
                self._probes[lane.name] = claimed[0].id
            else:
                circuit.no_probe()
        for delivery in claimed:
            if delivery.id in self._claimed[lane.name]:
                continue  # still in flight here: its lease looked expired only because the clock jumped forward
            self._claimed[lane.name].add(delivery.id)
            attempts.start_soon(self._attempt, lane, delivery)
        return len(claimed)

    async def _look_ahead(self, sink: str, now: float) -> None:
        """Nothing is due: learn when something next is, to sleep until then (one index lookup)."""
        try:
            self._next_due[sink] = await self.store.next_due(sink, after=now)
        except StorageError as error:
            logger.error("cannot read when sink %s next has a delivery due (polling): %s", sink, error)
            self._next_due[sink] = None

    async def _attempt(self, lane: Lane, claimed: ClaimedDelivery, handed: AppointmentEvent | None = None) -> None:
        """Deliver in one of the sink's slots, then record the attempt; the lane claims more as soon as the sink has
        answered, while the record waits for its commit (the delivery stays leased until then). `handed`: the event
        of a delivery handed off by its ingest, not read again."""
        number = claimed.attempts + 1
        look_again = True
        try:
            async with self._slots[lane.name]:
                if self._held_back(lane, claimed):
                    await self._release(claimed)  # claimed ahead before the circuit opened: it waits, unspent
                    return
                started_at = self.clock.now()
                began = time.perf_counter()
                event = handed if handed is not None else await self._readable_event(claimed)
                if isinstance(event, AppointmentEvent):
                    quiet = lane.quiet_hours
                    if quiet is not None and await self._kept_quiet(lane, quiet, claimed, event):
                        return
                    result = await self._deliver(lane, claimed, number, event)
                else:
                    result = event  # it could not be read: that is the attempt's outcome
                duration_ms = (time.perf_counter() - began) * 1000
            self._answered(lane, claimed.id)
            probe = self._probes.get(lane.name) == claimed.id
            await self._observe_circuit(lane, claimed, result)
            await self._slow_down(lane, result)
            if result.dead_reason == AUTHENTICATION_FAILED and result.outcome == "permanent":
                await self._pause_refused(lane, result)
            transition = self._transition(lane, claimed, number, result)
            attempt = AttemptRecord(number, started_at, duration_ms, result.outcome, result.status_code, result.detail)
            self._log(lane, claimed, attempt, transition)
            self.metrics.attempted(lane.name, result.outcome, duration_ms / 1000)
            if transition.status == "dead":
                self.metrics.dead_lettered.labels(lane.name).inc()
                logger.warning("delivery %s to %s dead-lettered: %s", claimed.id, lane.name, transition.dead_reason)
            elif transition.status == "skipped":
                self.metrics.withheld.labels(lane.name, "skipped", transition.dead_reason).inc()
            fallback = (
                lane.fallback if result.outcome == "permanent" and result.dead_reason in RECIPIENT_REASONS else None
            )
            recorded = await self.store.record_attempt(
                claimed.id, self.owner, attempt, transition, now=self.clock.now(), fallback=fallback
            )
            # the lane looks again for what waited behind this delivery (same appointment), for its retry, or
            # after a probe of the sink's circuit; otherwise the store has nothing new for it
            look_again = recorded.followed or transition.status == "pending" or probe
            if fallback is not None:
                self.wake([fallback])
            if transition.status == "dead":
                await self._alert_dead_letter(lane, claimed, transition)
        except StorageError as error:
            logger.error("cannot record attempt %d of delivery %s (it will be retried): %s", number, claimed.id, error)
        except Exception:
            logger.exception(
                "attempt %d of delivery %s failed in the worker; its lease will expire", number, claimed.id
            )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._release(claimed)
            raise
        finally:
            self._answered(lane, claimed.id)
            if look_again:
                self.wake([lane.name])

    def _answered(self, lane: Lane, delivery_id: str) -> None:
        """The sink answered: room to claim one more, worth a claim only if the last one left some due behind."""
        if delivery_id in self._claimed[lane.name]:
            self._claimed[lane.name].remove(delivery_id)
            self._answered_at[lane.name] = time.monotonic()
            self._room_freed(lane.name)
            if self._more_due[lane.name]:
                self.wake([lane.name])

    async def _kept_quiet(
        self, lane: Lane, quiet: QuietHours, claimed: ClaimedDelivery, event: AppointmentEvent
    ) -> bool:
        """Whether the sink's quiet hours hold the delivery back, spending no attempt: postponed to their end, or
        skipped when that end is past the latest time its message is worth sending."""
        now = self.clock.now()
        end = quiet.end(now, event.appointment.timezone if event.appointment else None)
        if end is None:
            return False
        latest = lane.sink.send_by(event)
        if latest is not None and end > latest.timestamp():
            transition = Transition("skipped", dead_reason="quiet hours")
            note = f"quiet hours end at {_iso(end)}, later than the message is worth sending ({latest.isoformat()})"
            self.metrics.withheld.labels(lane.name, "skipped", "quiet hours").inc()
        else:
            transition = Transition("pending", next_attempt_at=end)
            note = f"quiet hours: waits until {_iso(end)}"
        logger.info("delivery %s to %s: %s", claimed.id, lane.name, note)
        await self.store.settle(claimed.id, self.owner, transition, note=note, now=now)
        return True

    async def _event(self, claimed: ClaimedDelivery) -> AppointmentEvent:
        """The event to deliver: the stored one, or for a reminder, the reminder of the appointment as its events
        left it (the latest one, what it leaves out filled from the earlier ones)."""
        event = AppointmentEvent.model_validate_json(claimed.canonical, context=STORED)
        if claimed.reminder is None or event.appointment is None:
            return event
        query = EventQuery(source=event.source, appointment=event.appointment.id)
        earlier = [
            summary
            for summary in await self.store.list_events(query, limit=STATE_EVENTS)
            if summary.id != event.id
            and summary.type is not None
            and summary.occurred_at <= event.occurred_at.timestamp()
        ]
        state = None
        for summary in sorted(earlier, key=lambda summary: (summary.occurred_at, summary.received_at)):
            record = await self.store.get_event(summary.id)
            if record is not None and record.canonical is not None:
                state = merged(state, json.loads(record.canonical))
        due_at = claimed.due_at if claimed.due_at is not None else self.clock.now()
        latest = carried_forward(state, event)
        return reminder_event(latest, delivery_id=claimed.id, before=claimed.reminder, due_at=due_at)

    async def _readable_event(self, claimed: ClaimedDelivery) -> AppointmentEvent | _Result:
        """The event to deliver, or what its reading came to as an attempt's outcome."""
        try:
            return await self._event(claimed)
        except ValidationError as error:  # stored by another version, or damaged: trying again cannot help
            detail = _excerpt(error, "the stored event cannot be read: ")
            return _Result("permanent", detail=detail, dead_reason="unreadable event")
        except StorageError as error:
            return _Result("retryable", detail=_excerpt(error, "cannot read the appointment's events: "))

    async def _deliver(self, lane: Lane, claimed: ClaimedDelivery, number: int, event: AppointmentEvent) -> _Result:
        try:
            delivery = Delivery(
                id=claimed.id,
                sink=lane.name,
                attempt=number,
                attempted_at=self.clock.now(),
                locale=claimed.locale,
                ledger=StoreLedger(self.store, claimed.id, self.clock),
                state=StoreState(self.store, lane.name, self.clock),
            )
            async with asyncio.timeout(lane.timeout):  # cheaper than a cancel scope on this hot path
                receipt = await lane.sink.deliver(event, delivery)
        except PermanentDeliveryError as error:
            return _Result("permanent", error.status_code, _excerpt(error), dead_reason=error.reason)
        except RetryableDeliveryError as error:
            return _Result("retryable", error.status_code, _excerpt(error), error.retry_after)
        except TimeoutError:
            return _Result("retryable", detail=f"timed out after {lane.timeout:g}s")
        except (OverflowError, UnicodeError) as error:  # the event's data (a date out of range, text that is not)
            logger.warning("sink %s could not use the data of delivery %s: %s", lane.name, claimed.id, error)
            detail = _excerpt(error, f"bad data: {type(error).__name__}: ")
            return _Result("permanent", detail=detail, dead_reason="bad data")
        except Exception as error:
            logger.exception("sink %s raised an unexpected error on delivery %s", lane.name, claimed.id)
            return _Result("retryable", detail=_excerpt(error, f"{type(error).__name__}: "))
        if receipt is None:
            return _Result("succeeded")
        return _Result("succeeded", receipt.status_code, receipt.detail)

    def _transition(self, lane: Lane, claimed: ClaimedDelivery, number: int, result: _Result) -> Transition:
        if result.outcome == "succeeded":
            return Transition("succeeded")
        if result.outcome == "permanent" and result.dead_reason == AUTHENTICATION_FAILED:
            return Transition("pending", next_attempt_at=self.clock.now())  # waits for the sink to be resumed
        if result.outcome == "permanent":
            reason = result.dead_reason
            if lane.fallback is not None and reason in RECIPIENT_REASONS:
                return Transition("skipped", dead_reason=f"{reason}; sent through {lane.fallback}")
            if reason in SKIP_REASONS or (reason == NO_RECIPIENT and lane.skip_no_recipient):
                return Transition("skipped", dead_reason=reason)
            return Transition("dead", dead_reason=reason)
        decision = after_failure(
            lane.retry,
            attempts=number - claimed.attempts_before,
            received_at=claimed.retry_since,
            now=self.clock.now(),
            retry_after=result.retry_after,
            rng=self.rng,
        )
        if isinstance(decision, GiveUp):
            return Transition("dead", dead_reason=decision.reason)
        return Transition("pending", next_attempt_at=decision.at)

    def _log(self, lane: Lane, claimed: ClaimedDelivery, attempt: AttemptRecord, transition: Transition) -> None:
        """One line per attempt; a sink's error text may echo the customer, so it is scrubbed of their values."""
        level = logging.INFO if attempt.outcome == "succeeded" else logging.WARNING
        if not logger.isEnabledFor(level):
            return
        detail = None
        if attempt.detail:
            customer = json.loads(claimed.canonical).get("customer") or {}
            known = (customer.get("name"), customer.get("phone"), customer.get("phone_raw"), customer.get("email"))
            detail = redact(attempt.detail, known) or None
        logger.log(
            level,
            f"attempt {attempt.outcome}",
            extra={
                "event_id": claimed.event_id,
                "delivery_id": claimed.id,
                "sink": lane.name,
                "attempt": attempt.number,
                "outcome": attempt.outcome,
                "status_code": attempt.status_code,
                "duration_ms": round(attempt.duration_ms, 3),
                "next": transition.status,
                "detail": detail,
            },
        )

    async def _with_tokens(self, lane: Lane, claimed: list[ClaimedDelivery], now: float) -> list[ClaimedDelivery]:
        """The claimed deliveries the sink's shared rate limit has tokens for; the others are given back at once
        and the lane looks again when the next token is there."""
        limit = lane.rate_limit
        assert limit is not None
        try:
            taken = await self.store.take_tokens(
                lane.name, want=len(claimed), per_second=limit.per_second, burst=limit.burst, now=now
            )
        except StorageError as error:
            logger.error("cannot take rate-limit tokens for sink %s: %s", lane.name, error)
            taken = None
        granted = taken.granted if taken is not None else 0
        self._tokens_at.pop(lane.name, None)
        if granted < len(claimed):
            self.metrics.rate_limit_waits.labels(lane.name).inc()
            self._tokens_at[lane.name] = now + (
                taken.wait if taken is not None and taken.wait else 1 / limit.per_second
            )
            surplus = claimed[granted:]
            try:
                await self.store.release([delivery.id for delivery in surplus], self.owner)
            except StorageError as error:
                logger.error("cannot give back %d deliveries (their leases will expire): %s", len(surplus), error)
        return claimed[:granted]

    async def _slow_down(self, lane: Lane, result: _Result) -> None:
        """A provider's Retry-After (or 429) on a rate-limited sink holds back every process, not one delivery."""
        limit = lane.rate_limit
        if limit is None or result.outcome != "retryable" or (result.retry_after is None and result.status_code != 429):
            return
        now = self.clock.now()
        until = now + (result.retry_after if result.retry_after is not None else 1 / limit.per_second)
        try:
            await self.store.block_tokens(lane.name, until=until, now=now)
        except StorageError as error:  # the attempt is recorded all the same; only this sink's pause is lost
            logger.error("cannot hold sink %s back until %.0f: %s", lane.name, until, error)

    def _held_back(self, lane: Lane, claimed: ClaimedDelivery) -> bool:
        """Whether the sink's circuit is open and this delivery is not its probe."""
        circuit = self._circuits.get(lane.name)
        return circuit is not None and circuit.state is not State.CLOSED and self._probes.get(lane.name) != claimed.id

    async def _alert_dead_letter(self, lane: Lane, claimed: ClaimedDelivery, transition: Transition) -> None:
        """gateway.delivery.dead_lettered, unless the dead letter is itself an alert's delivery."""
        if self.alerts is None or is_alert(json.loads(claimed.canonical).get("type")):
            return
        await self.alerts.emit(
            "gateway.delivery.dead_lettered",
            lane.name,
            transition.dead_reason,
            delivery_id=claimed.id,
            event_id=claimed.event_id,
        )

    async def _observe_circuit(self, lane: Lane, claimed: ClaimedDelivery, result: _Result) -> None:
        """Feed the sink's circuit: retryable failures open it, a success closes it (data errors say nothing)."""
        circuit = self._circuits.get(lane.name)
        if circuit is None:
            return
        if self._probes.get(lane.name) == claimed.id:
            del self._probes[lane.name]
        if result.outcome == "succeeded" and circuit.succeeded():
            self.metrics.circuit_open.labels(lane.name).set(0)
            logger.warning("sink %s circuit closed: a delivery succeeded", lane.name)
            if self.alerts is not None:
                await self.alerts.emit("gateway.sink.circuit_closed", lane.name, "a delivery succeeded")
        elif result.outcome == "retryable" and circuit.failed(self.clock.now()):
            self.metrics.circuit_open.labels(lane.name).set(1)
            detail = f"{circuit.policy.failures} failures in a row, the last: {result.detail}"
            logger.error(
                "ALERT sink %s circuit opened: %s; probing every %gs", lane.name, detail, circuit.policy.probe_every
            )
            if self.alerts is not None:
                await self.alerts.emit("gateway.sink.circuit_opened", lane.name, detail)
        else:
            circuit.no_probe()  # a probe that failed on its own data says nothing of the sink: probe again

    async def _pause_refused(self, lane: Lane, result: _Result) -> None:
        """The provider refused the sink's credentials: pause the sink for every process (its deliveries wait
        rather than each failing in turn) until an operator has fixed them and resumes it."""
        reason = f"{AUTHENTICATION_FAILED}: {result.detail or ''}"[:ERROR_EXCERPT]
        self._paused[lane.name] = reason  # this process stops at once, whatever the store says
        try:
            await self.store.set_paused(lane.name, paused=True, reason=reason, now=self.clock.now())
        except StorageError as error:  # the attempt is recorded all the same; the next refusal pauses it again
            logger.error("cannot pause sink %s in the store: %s", lane.name, error)
        logger.error("ALERT sink %s paused: %s; resume it once its credentials are fixed", lane.name, reason)
        if self.alerts is not None:
            await self.alerts.emit("gateway.sink.paused", lane.name, reason)

    async def _release(self, claimed: ClaimedDelivery) -> None:
        try:
            await self.store.release([claimed.id], self.owner)
        except StorageError as error:
            logger.error("cannot release delivery %s (its lease will expire): %s", claimed.id, error)


def _iso(timestamp: float) -> str:
    return to_datetime(timestamp).isoformat(timespec="seconds")


def _excerpt(error: BaseException, prefix: str = "") -> str:
    return (prefix + str(error))[:ERROR_EXCERPT]
