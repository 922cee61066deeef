from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.sinks import MemoryLedger, MemoryState, parse_retry_after

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        (format_datetime(datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC), usegmt=True), 90.0),
        (format_datetime(datetime(2025, 12, 31, tzinfo=UTC), usegmt=True), 0.0),  # already past
        ("soon", None),
        ("-5", None),
        (None, None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


async def test_the_in_memory_state_and_ledger_remember_what_they_are_told() -> None:
    state, ledger = MemoryState(), MemoryLedger()
    await state.set("appointment:1", "a")
    await state.set("other:2", "b")
    assert await state.get("appointment:1") == "a" and await state.get("missing") is None
    assert await state.items("appointment:") == {"appointment:1": "a"}
    await ledger.record("+224621234567", "SM1")
    assert await ledger.sent() == {"+224621234567": "SM1"}
