from __future__ import annotations

import time
from datetime import UTC, datetime

from gateway.clock import ManualClock, SystemClock, to_datetime


def test_the_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(100.0)
    assert clock.now() == clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5


def test_the_system_clock_is_the_wall_clock_and_times_convert_to_utc() -> None:
    before = time.time()
    assert before <= SystemClock().now() <= time.time()
    assert to_datetime(0.0) == datetime(1970, 1, 1, tzinfo=UTC)
