from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.operations import EventFilter, OperationError, Operations, Purge
from gateway.store.sqlite import SQLiteStore
from tests.helpers import record

pytestmark = pytest.mark.anyio
DAY = 86400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "gateway.db")
    await store.open()
    yield store
    await store.close()


async def test_purging_keeps_tombstones_for_their_own_time_then_forgets_them(store: SQLiteStore) -> None:
    clock = ManualClock(0.0)
    operations = Operations(store, clock, retention=30 * DAY, tombstones=90 * DAY, wake=lambda sinks: None)
    await store.ingest(record("evt_old", received=0.0), [])
    clock.advance(31 * DAY)
    assert (await operations.purge(Purge()))["deleted"] == 1
    assert (await store.ingest(record("evt_old", received=clock.now()), [])).duplicate
    clock.advance(91 * DAY)
    await operations.purge(Purge())
    assert not (await store.ingest(record("evt_old", received=clock.now()), [])).duplicate


async def test_a_cursor_the_gateway_did_not_give_out_is_a_400(store: SQLiteStore) -> None:
    operations = Operations(store, ManualClock(), retention=DAY, wake=lambda sinks: None)
    with pytest.raises(OperationError) as error:
        await operations.list_events(EventFilter(cursor="garbage"))
    assert (error.value.status_code, error.value.reason) == (400, "invalid_parameters")
