from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.retry import Backoff, GiveUp, Retry, RetryPolicy, after_failure

RNG = random.Random(7)


def decide(policy: RetryPolicy, attempts: int, now: float = 0.0, retry_after: float | None = None) -> Retry | GiveUp:
    return after_failure(policy, attempts=attempts, received_at=0.0, now=now, retry_after=retry_after, rng=RNG)


def test_default_is_the_moncreneau_schedule_then_every_two_hours_until_24h() -> None:
    policy = RetryPolicy()
    now, times = 0.0, [0.0]
    attempts = 1
    while isinstance(decision := decide(policy, attempts, now), Retry):
        now = decision.at
        times.append(now)
        attempts += 1
    assert times[:6] == [0, 60, 360, 2160, 9360, 16560]
    assert times[-1] <= 86400 < times[-1] + 7200
    assert isinstance(decision, GiveUp) and "give_up_after" in decision.reason


def test_schedule_waits_are_taken_in_order() -> None:
    policy = RetryPolicy.model_validate({"schedule": ["10s", "1m"], "give_up_after": None})
    assert [policy.wait_before_retry(n, RNG) for n in (1, 2, 3, 4)] == [10, 60, 60, 60]


def test_max_attempts_counts_the_first_attempt() -> None:
    policy = RetryPolicy(schedule=[1.0], max_attempts=3, give_up_after=None)
    assert isinstance(decide(policy, 2), Retry)
    decision = decide(policy, 3)
    assert isinstance(decision, GiveUp) and "max_attempts" in decision.reason


def test_retry_after_is_honoured_when_longer_than_the_policy() -> None:
    policy = RetryPolicy(schedule=[60.0])
    assert decide(policy, 1, now=100.0, retry_after=300.0) == Retry(at=400.0)
    assert decide(policy, 1, now=100.0, retry_after=5.0) == Retry(at=160.0)


def test_retry_after_beyond_the_give_up_age_gives_up() -> None:
    policy = RetryPolicy(schedule=[60.0], give_up_after=3600.0)
    assert isinstance(decide(policy, 1, now=10.0, retry_after=7200.0), GiveUp)


@given(retry=st.integers(1, 60), seed=st.integers())
def test_backoff_stays_within_its_bounds(retry: int, seed: int) -> None:
    backoff = Backoff(initial=2.0, factor=3.0, max=600.0, jitter=0.25)
    wait = RetryPolicy(backoff=backoff).wait_before_retry(retry, random.Random(seed))
    base = min(600.0, 2.0 * 3.0 ** (retry - 1))
    assert base * 0.75 <= wait <= min(600.0, base * 1.25)


def test_backoff_without_jitter_is_exact() -> None:
    policy = RetryPolicy.model_validate({"backoff": {"initial": "1s", "factor": 2, "max": "10s", "jitter": 0}})
    assert [policy.wait_before_retry(n, RNG) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"schedule": ["1m"], "backoff": {"initial": "1s"}}, "either schedule or backoff"),
        ({"schedule": []}, "schedule is empty"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"backoff": {"factor": 0.5}}, "greater than or equal to 1"),
        ({"backoff": {"jitter": 2}}, "less than or equal to 1"),
    ],
)
def test_ambiguous_or_impossible_policies_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RetryPolicy.model_validate(settings)
