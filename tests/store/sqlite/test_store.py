"""What only the SQLite store does: its schema version, its file, and the upgrade of older files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import gateway.store.sqlite as sqlite_store
from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store.queries import EventQuery
from gateway.store.sqlite import SCHEMA_VERSION, SELECT_CLAIMABLE, SQLiteStore
from tests.helpers import record

pytestmark = pytest.mark.anyio


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this gateway"):
        await SQLiteStore(tmp_path / "g.db").open()


async def test_an_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError):
        await SQLiteStore(tmp_path / "file" / "g.db").open()


VERSION_1_DELIVERIES = """
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, event_id TEXT NOT NULL REFERENCES events (id), sink TEXT NOT NULL, locale TEXT,
    ordering_key TEXT, occurred_at REAL NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, lease_owner TEXT, lease_expires_at REAL,
    last_error TEXT, dead_reason TEXT, updated_at REAL NOT NULL, requeued_at REAL,
    attempts_before_requeue INTEGER NOT NULL DEFAULT 0, UNIQUE (event_id, sink)
);
"""


async def test_a_version_1_database_is_brought_to_reminders_keeping_every_delivery_and_attempt(tmp_path: Path) -> None:
    """Version 1 had one delivery per event and sink; its table is copied into the new one, attempts still
    pointing at their deliveries."""
    path = tmp_path / "old.db"
    current = SQLiteStore(path)
    await current.open()
    event = record()
    await current.ingest(event, [Target("crm")])
    await current.close()
    with sqlite3.connect(path) as db:  # what version 1 left: the same rows in the old table
        rows = db.execute("SELECT * FROM deliveries").fetchall()
        db.executescript("DROP INDEX deliveries_one; DROP TABLE deliveries;" + VERSION_1_DELIVERIES)
        db.executemany(f"INSERT INTO deliveries VALUES ({', '.join('?' * 17)})", [row[:17] for row in rows])
        db.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome) "
            "VALUES (?, 1, 1, 1, 'retryable')",
            (rows[0][0],),
        )
        db.execute("PRAGMA user_version = 1")
    store = SQLiteStore(path)
    await store.open()
    try:
        (delivery,) = await store.deliveries(event.id)
        assert (delivery.id, delivery.sink, delivery.reminder, delivery.due_at) == (rows[0][0], "crm", None, 1000.0)
        assert [a.outcome for a in await store.attempts(delivery.id)] == ["retryable"]
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        await store.close()


async def test_a_version_2_file_gets_the_indexes_of_pending_deliveries_only(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = SQLiteStore(path)
    await store.open()
    await store.ingest(record(), [Target("crm")])
    await store.close()
    with sqlite3.connect(path) as db:  # version 2's indexes: every delivery, pending or not
        db.executescript(
            "DROP INDEX deliveries_due; DROP INDEX deliveries_order;"
            "CREATE INDEX deliveries_due ON deliveries (sink, status, next_attempt_at, occurred_at);"
            "CREATE INDEX deliveries_order ON deliveries (sink, ordering_key, status, occurred_at);"
            "PRAGMA user_version = 2;"
        )
    await store.open()
    try:
        assert len(await store.claim("crm", limit=10, now=1000.0, owner="w", lease_until=1030.0)) == 1
        with sqlite3.connect(path) as db:
            definitions = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'deliveries'"))
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        for name in ("deliveries_due", "deliveries_order"):
            assert definitions[name].endswith("WHERE status = 'pending'")
        plan = " ".join(
            row[3]
            for row in sqlite3.connect(path).execute(
                "EXPLAIN QUERY PLAN " + SELECT_CLAIMABLE, {"sink": "crm", "now": 1.0, "limit": 1}
            )
        )
        assert "USING INDEX deliveries_due" in plan and "USING INDEX deliveries_order" in plan
    finally:
        await store.close()


@pytest.mark.parametrize("few", [0, 10_000], ids=["walking the events", "from the deliveries"])
async def test_events_with_a_delivery_status_are_the_same_whichever_way_they_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """A status few deliveries have is looked up from them; a common one by walking the events newest first."""
    monkeypatch.setattr(sqlite_store, "FEW", few)
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    ids = []
    for n in range(6):
        event = record(f"evt_{n}", received=1000.0 + n, source="yapp" if n % 2 else "moncreneau")
        await store.ingest(event, [Target("crm"), Target("journal")], skipped="stale" if n in (1, 2, 4) else None)
        ids.append(event.id)
    newest_first = [ids[4], ids[2], ids[1]]
    assert [e.id for e in await store.list_events(EventQuery(status="skipped"), limit=10)] == newest_first
    assert [e.id for e in await store.list_events(EventQuery(status="skipped"), limit=2)] == newest_first[:2]
    after = (1002.0, ids[2])
    assert [e.id for e in await store.list_events(EventQuery(status="skipped"), limit=5, after=after)] == [ids[1]]
    yapp = EventQuery(status="skipped", source="yapp")
    assert [e.id for e in await store.list_events(yapp, limit=5)] == [ids[1]]
    assert await store.list_events(EventQuery(status="dead"), limit=5) == []
    await store.close()


async def test_a_file_with_the_old_listing_index_gets_the_new_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("DROP INDEX events_listing")
        db.execute("CREATE INDEX events_received ON events (received_at, id)")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'events'")}
    assert "events_listing" in indexes and "events_received" not in indexes
