"""A sink's circuit breaker: after `failures` retryable failures in a row (within `within` seconds) the sink opens,
and its deliveries wait without spending attempts; every `probe_every` seconds one delivery probes it, and the
first success closes it.

Pure and clocked from outside: the worker feeds it each attempt's outcome and asks it how many deliveries it may
claim. Each worker process keeps its own circuit per sink.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from gateway.durations import Duration


class CircuitPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: int = Field(10, ge=1, description="Retryable failures in a row that open the circuit")
    within: Duration = Field(60.0, gt=0, description="...counted only while they come within this of each other")
    probe_every: Duration = Field(30.0, gt=0, description="While open, one delivery probes the sink this often")


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"


class Circuit:
    def __init__(self, policy: CircuitPolicy) -> None:
        self.policy = policy
        self.state = State.CLOSED
        self.next_probe_at = 0.0
        self._failures: deque[float] = deque()

    def allowance(self, now: float) -> int | None:
        """How many deliveries may be claimed now: None for no limit (closed), 1 for a probe, else 0."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.OPEN and now >= self.next_probe_at:
            self.state = State.PROBING
            return 1
        return 0

    def no_probe(self) -> None:
        """Nothing was due to probe with, or the probe said nothing of the sink: probe with the next delivery."""
        if self.state is State.PROBING:
            self.state = State.OPEN

    def succeeded(self) -> bool:
        """Record a success; True when it closed the circuit."""
        self._failures.clear()
        closed = self.state is not State.CLOSED
        self.state = State.CLOSED
        return closed

    def failed(self, now: float) -> bool:
        """Record a retryable failure; True when it opened the circuit."""
        if self.state is State.PROBING:  # the probe failed: wait for the next one
            self.state, self.next_probe_at = State.OPEN, now + self.policy.probe_every
            return False
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.policy.within:
            self._failures.popleft()
        if self.state is State.CLOSED and len(self._failures) >= self.policy.failures:
            self.state, self.next_probe_at = State.OPEN, now + self.policy.probe_every
            return True
        return False
