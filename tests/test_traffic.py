from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gateway.clock import ManualClock
from gateway.exceptions import StorageError
from gateway.store.base import TrafficCount
from gateway.store.sqlite import SQLiteStore
from gateway.traffic import KEPT_MINUTES, Traffic

pytestmark = pytest.mark.anyio


class FlakyStore(SQLiteStore):
    failing = True

    async def add_traffic(self, counts: Sequence[TrafficCount], *, forget_before: int) -> None:
        if self.failing:
            raise StorageError("database is locked")
        await super().add_traffic(counts, forget_before=forget_before)


async def test_counts_per_minute_survive_a_failed_flush_and_old_minutes_are_forgotten(tmp_path: Path) -> None:
    clock = ManualClock(6000.0)  # minute 100
    store = FlakyStore(tmp_path / "gateway.db")
    await store.open()
    traffic = Traffic(clock)
    traffic.count("webhook", "moncreneau", "accepted")
    clock.advance(60)
    traffic.count("webhook", "moncreneau", "accepted")
    traffic.count("attempt", "crm", "succeeded")
    with pytest.raises(StorageError):
        await traffic.flush(store)
    traffic.count("webhook", "moncreneau", "accepted")
    store.failing = False
    await traffic.flush(store)
    assert sorted(await store.traffic(since=0), key=str) == sorted(
        [
            TrafficCount("webhook", "moncreneau", "accepted", 100, 1),
            TrafficCount("webhook", "moncreneau", "accepted", 101, 2),
            TrafficCount("attempt", "crm", "succeeded", 101, 1),
        ],
        key=str,
    )
    clock.advance(KEPT_MINUTES * 60)  # minute 1601: minute 100 is past the day and the hour kept
    await traffic.flush(store)  # nothing counted: nothing written
    assert {count.minute for count in await store.traffic(since=0)} == {100, 101}
    traffic.count("webhook", "yapp", "accepted")
    await traffic.flush(store)
    assert {count.minute for count in await store.traffic(since=0)} == {101, 1601}
    await store.close()


async def test_run_flushes_when_cancelled(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gateway.db")
    await store.open()
    traffic = Traffic(ManualClock(6000.0))
    async with anyio.create_task_group() as running:
        running.start_soon(traffic.run, store)
        traffic.count("webhook", "yapp", "accepted")
        await anyio.lowlevel.checkpoint()
        running.cancel_scope.cancel()
    assert await store.traffic(since=0) == [TrafficCount("webhook", "yapp", "accepted", 100, 1)]
    await store.close()
