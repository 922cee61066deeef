from __future__ import annotations

from gateway.circuit import Circuit, CircuitPolicy, State


def circuit() -> Circuit:
    return Circuit(CircuitPolicy(failures=3, within=60, probe_every=30))


def test_failures_in_a_row_within_the_window_open_it_and_a_success_closes_it() -> None:
    breaker = circuit()
    assert [breaker.failed(t) for t in (0, 10, 20)] == [False, False, True]
    assert breaker.allowance(20) == 0 and breaker.allowance(49) == 0
    assert breaker.allowance(50) == 1 and breaker.state is State.PROBING
    assert breaker.allowance(50) == 0  # one probe at a time
    assert breaker.succeeded() and breaker.allowance(51) is None


def test_a_failed_probe_waits_for_the_next_one_and_slow_failures_never_open_it() -> None:
    breaker = circuit()
    for t in (0, 1, 2):
        breaker.failed(t)
    assert breaker.allowance(32) == 1
    assert not breaker.failed(33) and breaker.allowance(40) == 0 and breaker.allowance(63) == 1
    slow = circuit()
    assert not any(slow.failed(t) for t in (0, 61, 122, 183))  # never three within a minute
    slow.failed(190)
    assert slow.failed(200) and slow.state is State.OPEN


def test_a_success_resets_the_count_and_a_probe_without_a_delivery_is_made_with_the_next() -> None:
    breaker = circuit()
    breaker.failed(0)
    breaker.failed(1)
    assert not breaker.succeeded()  # it was closed
    assert not breaker.failed(2) and breaker.state is State.CLOSED
    breaker.failed(3)
    breaker.failed(4)
    assert breaker.allowance(40) == 1
    breaker.no_probe()
    assert breaker.allowance(41) == 1
