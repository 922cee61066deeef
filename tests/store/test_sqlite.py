"""What only the SQLite store does: WAL with full sync, its schema version, its file, its lock between processes."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from gateway.exceptions import StorageError
from gateway.routing import Target
from gateway.store.sqlite import INLINE_CHECKPOINT_PAGES, SCHEMA_VERSION, SQLiteStore, _Checkpointer, _Connection
from tests.helpers import record, until

pytestmark = pytest.mark.anyio


async def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store._connection is not None
    assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == INLINE_CHECKPOINT_PAGES
    await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this gateway"):
        await SQLiteStore(tmp_path / "g.db").open()


async def test_an_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError):
        await SQLiteStore(tmp_path / "file" / "g.db").open()


async def test_a_write_waits_for_another_process_writing_then_goes_through(tmp_path: Path) -> None:
    """Every process on the file takes its lock file before writing (a waiter starts as soon as it is released)."""
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    with (tmp_path / "g.db-writer.lock").open("ab") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        stored: list[str] = []

        async def ingest() -> None:
            stored.append((await store.ingest(record("evt_1", id="event-1"), [Target("crm")])).event_id)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ingest)
            await anyio.sleep(0.2)
            waited = not stored
            fcntl.flock(other_process, fcntl.LOCK_UN)
    assert waited, "the write did not wait for the lock"
    assert stored == ["event-1"]
    assert await store.count_events() == 1
    await store.close()


async def test_a_write_blocked_past_the_busy_timeout_is_a_storage_error_and_stores_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db", busy_timeout=0.1)
    await store.open()
    with (tmp_path / "g.db-writer.lock").open("ab") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        with pytest.raises(StorageError, match="database is locked"):
            await store.ingest(record("evt_1", id="event-1"), [Target("crm")])
    await store.ingest(record("evt_2", id="event-2"), [Target("crm")])  # released: the store writes again
    assert await store.count_events() == 1
    await store.close()


async def test_a_process_killed_in_the_middle_of_a_write_leaves_neither_lock_nor_half_a_write(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    store = SQLiteStore(database, busy_timeout=5.0)
    await store.open()
    writer = textwrap.dedent(
        f"""
        import sqlite3, sys, time
        from gateway.store.sqlite import _Connection, _transaction
        db = sqlite3.connect({str(database)!r}, isolation_level=None, factory=_Connection)
        db.open_writer_lock(__import__("pathlib").Path({str(database)!r} + "-writer.lock"), 5.0)
        with _transaction(db):
            db.execute("DELETE FROM events")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    await store.ingest(record("evt_1", id="event-1"), [Target("crm")])
    async with await anyio.open_process([sys.executable, "-c", writer], stderr=None) as process:
        assert process.stdout is not None
        said = b""
        while not said.endswith(b"\n"):
            said += await process.stdout.receive()
        assert said == b"writing\n"
        process.kill()
        await process.wait()
    await store.ingest(record("evt_2", id="event-2"), [Target("crm")])
    assert await store.count_events() == 2  # the killed transaction's delete never happened
    await store.close()


async def test_processes_opening_a_new_database_together_all_open_it(tmp_path: Path) -> None:
    opened = 0
    for attempt in range(10):  # `serve --processes N` starts its processes at the same moment
        stores = [SQLiteStore(tmp_path / f"new-{attempt}.db") for _ in range(4)]
        async with anyio.create_task_group() as opening:
            for store in stores:
                opening.start_soon(store.open)
        for store in stores:
            opened += await store.count_events() == 0
            await store.close()
    print(f"40 stores opened four at a time on new files: {opened} opened")
    assert opened == 40


async def test_the_log_is_copied_into_the_database_in_the_background_not_by_commits(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    store = SQLiteStore(database)
    await store.open()
    assert store._connection is not None
    assert store._connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == INLINE_CHECKPOINT_PAGES
    for n in range(50):
        await store.ingest(record(f"evt_{n}", id=f"event-{n}"), [Target("crm")])
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]  # as read through the log

    def in_the_file() -> int:
        return database.stat().st_size // 4096

    await until(lambda: in_the_file() == pages, "the background checkpoint", 5)
    await store.close()
    print(f"50 commits, far below the {INLINE_CHECKPOINT_PAGES} pages of a checkpoint by a commit: {pages} pages")
    print("in the database file")


async def test_a_log_that_keeps_growing_under_load_is_started_over(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store._checkpointer is not None
    store._checkpointer.every, store._checkpointer.restart_pages = 0.01, 100
    for n in range(2_000):  # 2,000 commits back to back, a few pages each: the background copy never catches up
        await store.ingest(record(f"evt_{n}", id=f"event-{n}"), [Target("crm")])
    log_bytes = (tmp_path / "g.db-wal").stat().st_size
    await store.close()
    print(f"2,000 commits with a restart past 100 pages: the log file is {log_bytes / 4096:.0f} pages long")
    assert log_bytes < 8_000 * 4096  # never started over, it holds every commit's pages: 16,000 here


async def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    await store.ingest(record("evt_1", id="event-1"), [Target("crm")])
    writing, release = threading.Event(), threading.Event()

    def slow_write(db: sqlite3.Connection) -> None:  # a long group commit, say
        writing.set()
        release.wait(10)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store._write, slow_write)
        await anyio.to_thread.run_sync(writing.wait)
        with anyio.fail_after(2):  # the scrape and the admin read, while the writer's thread is busy
            stats = await store.sink_stats(["crm"], now=2000.0)
            assert await store.count_events() == 1
        release.set()
    await store.close()
    assert stats["crm"].pending == 1


def test_a_checkpointer_that_cannot_connect_or_checkpoint_says_so_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def refused() -> _Connection:
        raise sqlite3.OperationalError("unable to open database file")

    def closed() -> _Connection:  # every checkpoint on it fails
        connection = sqlite3.connect(tmp_path / "g.db", factory=_Connection)
        connection.close()
        return connection

    with caplog.at_level(logging.WARNING, logger="gateway.store.sqlite"):
        _Checkpointer(refused, 0.01, 100).stop()
        failing = _Checkpointer(closed, 0.01, 100)
        deadline = time.monotonic() + 5
        while caplog.text.count("checkpoint failed") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failing._thread.is_alive()  # a failed round is logged, and the next one comes
        failing.stop()
    assert "no background checkpoints (unable to open database file)" in caplog.text
    assert caplog.text.count("checkpoint failed (it will be tried again)") >= 2


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
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        await store.close()
