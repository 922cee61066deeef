"""Retry policies: given what has happened to a delivery, when to try next, or whether to give up.

Pure functions of their inputs (the random source is passed in), so schedules are tested without waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.durations import Duration

MONCRENEAU_SCHEDULE = (60.0, 300.0, 1800.0, 7200.0)
"""The moncreneau sender's own schedule after the first, immediate attempt: 1 min, 5 min, 30 min, 2 h."""


class Backoff(BaseModel):
    """Exponential backoff: before retry n (n = 1 after the first failure), wait
    `min(max, initial * factor ** (n - 1))`, then scale by a random factor in `[1 - jitter, 1 + jitter]`
    (still capped at `max`)."""

    model_config = ConfigDict(extra="forbid")

    initial: Duration = 1.0
    factor: float = Field(2.0, ge=1.0)
    max: Duration = 3600.0
    jitter: float = Field(0.1, ge=0.0, le=1.0)


class RetryPolicy(BaseModel):
    """When a retryable failure is tried again.

    - `schedule`: waits before retry 1, 2, 3...; after the last one its final wait repeats.
    - `backoff`: exponential waits instead of a schedule (set one or the other, not both).
    - `max_attempts`: give up after this many attempts (counting the first).
    - `give_up_after`: give up when the next attempt would start later than this after the event was received.
    A sink's `retry_after` is honoured: the wait is never shorter than it. Defaults to the moncreneau schedule,
    giving up after 24 h.
    """

    model_config = ConfigDict(extra="forbid")

    schedule: list[Duration] | None = None
    backoff: Backoff | None = None
    max_attempts: int | None = Field(None, ge=1)
    give_up_after: Duration | None = 86400.0

    @model_validator(mode="after")
    def _one_strategy(self) -> RetryPolicy:
        if self.schedule is not None and self.backoff is not None:
            raise ValueError("set either schedule or backoff, not both")
        if self.schedule == []:
            raise ValueError("schedule is empty; list at least one wait, e.g. [1m, 5m, 30m]")
        return self

    def wait_before_retry(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1 = the second attempt)."""
        if self.backoff is not None:
            b = self.backoff
            wait = min(b.max, b.initial * b.factor ** (retry - 1))
            return min(b.max, wait * rng.uniform(1 - b.jitter, 1 + b.jitter))
        schedule = self.schedule or MONCRENEAU_SCHEDULE
        return schedule[min(retry, len(schedule)) - 1]


@dataclass(frozen=True)
class Retry:
    at: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


def after_failure(
    policy: RetryPolicy,
    *,
    attempts: int,
    received_at: float,
    now: float,
    retry_after: float | None,
    rng: random.Random,
) -> Retry | GiveUp:
    """What to do after the `attempts`-th attempt failed with a retryable error."""
    if policy.max_attempts is not None and attempts >= policy.max_attempts:
        return GiveUp(f"max_attempts: {attempts} attempts made")
    wait = max(policy.wait_before_retry(attempts, rng), retry_after or 0.0)
    if policy.give_up_after is not None and now + wait > received_at + policy.give_up_after:
        return GiveUp(f"give_up_after: the next attempt would be more than {policy.give_up_after:g}s after receipt")
    return Retry(at=now + wait)
