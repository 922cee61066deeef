"""What a sink is: a class that delivers one canonical event somewhere, and says how a failure should be retried.

Scheduling, timeouts, concurrency, retries and dead letters are the core's (gateway.delivery), not the sink's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from gateway.events import AppointmentEvent


class SinkOptions(BaseModel):
    """Base of a sink's `Options`: unknown keys in YAML are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Delivery:
    """Which delivery a sink is working on: its id is stable across retries (an idempotency key)."""

    id: str
    sink: str
    attempt: int


@dataclass(frozen=True)
class Receipt:
    """What a sink may report about a success, recorded with the attempt."""

    status_code: int | None = None
    detail: str | None = None


class Sink(ABC):
    type_name: ClassVar[str]
    Options: ClassVar[type[SinkOptions]] = SinkOptions

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
