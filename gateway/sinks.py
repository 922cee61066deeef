"""What a sink is: a class that delivers one canonical event somewhere, and says how a failure should be retried.

Scheduling, timeouts, concurrency, retries and dead letters are the core's (gateway.delivery), not the sink's.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict
from starlette.routing import BaseRoute

from gateway.events import AppointmentEvent


class SinkOptions(BaseModel):
    """Base of a sink's `Options`: unknown keys in YAML are errors."""

    model_config = ConfigDict(extra="forbid")


class Ledger(Protocol):
    """What a delivery has already sent, by recipient: providers without idempotency keys (SMS, email) consult it
    so that a retry or a replay never sends the same message to the same recipient twice."""

    async def sent(self) -> dict[str, str]:
        """Recipient -> provider message id, for every message already confirmed sent."""
        ...

    async def record(self, recipient: str, provider_message_id: str) -> None:
        """Remember a confirmed send; call it as soon as the provider confirms, before sending the next one."""
        ...


class MemoryLedger:
    """A ledger that lives as long as the object: for sinks used outside the worker (tests, one-off sends)."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}

    async def sent(self) -> dict[str, str]:
        return dict(self.messages)

    async def record(self, recipient: str, provider_message_id: str) -> None:
        self.messages.setdefault(recipient, provider_message_id)


class SinkState(Protocol):
    """What a sink remembers between deliveries (per key, e.g. per appointment), kept in the gateway's store:
    for sinks that must not let a stale event undo a newer one."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...

    async def items(self, prefix: str) -> dict[str, str]: ...


class MemoryState:
    """Sink state that lives as long as the object: for sinks used outside the gateway (tests, one-off runs)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def set(self, key: str, value: str) -> None:
        self.values[key] = value

    async def items(self, prefix: str) -> dict[str, str]:
        return {key: value for key, value in sorted(self.values.items()) if key.startswith(prefix)}


@dataclass(frozen=True)
class Delivery:
    """Which delivery a sink is working on: its id is stable across retries (an idempotency key)."""

    id: str
    sink: str
    attempt: int
    attempted_at: float = field(default_factory=time.time)
    """When the core started this attempt, by its clock (seconds since the epoch)."""
    locale: str | None = None
    """The locale the route chose for this delivery's messages, if any."""
    ledger: Ledger = field(default_factory=MemoryLedger)
    state: SinkState = field(default_factory=MemoryState)
    """The sink's state, shared by all its deliveries."""


@dataclass(frozen=True)
class Receipt:
    """What a sink may report about a success, recorded with the attempt."""

    status_code: int | None = None
    detail: str | None = None


class Sink(ABC):
    type_name: ClassVar[str]
    Options: ClassVar[type[SinkOptions]] = SinkOptions
    withdraws_stale: ClassVar[bool] = False
    """Whether, unless its configuration's `supersede` says otherwise, a message still waiting for this sink is
    withdrawn when a later event of its appointment makes it stale (messages to people); False: every event is
    delivered, in order (records, calendars)."""

    def __init__(self, name: str, options: SinkOptions, *, timeout: float) -> None:
        self.name = name
        self.options = options
        self.timeout = timeout

    async def open(self) -> None:  # noqa: B027  optional hook
        """Acquire resources (clients, connections) before the first delivery."""

    async def aclose(self) -> None:  # noqa: B027  optional hook
        """Release what `open` acquired."""

    @abstractmethod
    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        """Deliver, or raise PermanentDeliveryError / RetryableDeliveryError; any other error is retried."""

    def send_by(self, event: AppointmentEvent) -> datetime | None:
        """The latest time this event is still worth delivering (quiet hours skip it rather than wait past it);
        None, the default: any time."""
        return None

    def routes(self, state: SinkState) -> list[BaseRoute]:
        """HTTP routes the sink serves from the gateway (e.g. a calendar feed), given its state; none by default."""
        return []

    def check(self, samples: Sequence[tuple[AppointmentEvent, str | None]]) -> list[str]:
        """Problems `check-config` should report, found by trying the sink on the sample events its routes would
        send it, each with the locale its route chose; none by default."""
        return []


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
