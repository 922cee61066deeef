"""The SQLite engine: WAL with full sync, the lock between processes, group commits, reads apart, checkpoints."""

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
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite.engine import INLINE_CHECKPOINT_PAGES, PAGE_SIZE, Checkpointer, Engine, WriterConnection
from tests.helpers import record, until

pytestmark = pytest.mark.anyio


async def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store.engine.writer is not None
    assert store.engine.writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.engine.writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.engine.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == INLINE_CHECKPOINT_PAGES
    assert store.engine.writer.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 2048
    await store.close()


async def test_a_file_made_with_other_pages_keeps_them_and_serves(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "g.db") as made_before:
        made_before.execute("PRAGMA page_size = 4096")
        made_before.execute("CREATE TABLE kept (n INTEGER)")
    made_before.close()
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store.engine.writer is not None
    assert store.engine.writer.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert not (await store.ingest(record("evt_1"), [Target("crm")])).duplicate
    assert await store.count_events() == 1
    await store.close()


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
        from gateway.store.sqlite.engine import WriterConnection, transaction
        db = sqlite3.connect({str(database)!r}, isolation_level=None, factory=WriterConnection)
        db.open_writer_lock(__import__("pathlib").Path({str(database)!r} + "-writer.lock"), 5.0)
        with transaction(db):
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
    assert store.engine.writer is not None
    assert store.engine.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == INLINE_CHECKPOINT_PAGES
    for n in range(50):
        await store.ingest(record(f"evt_{n}", id=f"event-{n}"), [Target("crm")])
    pages = store.engine.writer.execute("PRAGMA page_count").fetchone()[0]  # as read through the log

    def in_the_file() -> int:
        return database.stat().st_size // PAGE_SIZE

    await until(lambda: in_the_file() == pages, "the background checkpoint", 5)
    await store.close()
    print(f"50 commits, far below the {INLINE_CHECKPOINT_PAGES} pages of a checkpoint by a commit: {pages} pages")
    print("in the database file")


async def test_a_log_that_keeps_growing_under_load_is_started_over(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store.engine.checkpointer is not None
    store.engine.checkpointer.every, store.engine.checkpointer.restart_pages = 0.01, 100
    for n in range(2_000):  # 2,000 commits back to back, a few pages each: the background copy never catches up
        await store.ingest(record(f"evt_{n}", id=f"event-{n}"), [Target("crm")])
    log_bytes = (tmp_path / "g.db-wal").stat().st_size
    await store.close()
    frames = log_bytes // (PAGE_SIZE + 24)  # a page and its frame's header
    print(f"2,000 commits with a restart past 100 pages: the log file is {frames} pages long")
    assert frames < 8_000  # never started over, it holds every commit's pages: 16,000 here


async def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    await store.ingest(record("evt_1", id="event-1"), [Target("crm")])
    writing, release = threading.Event(), threading.Event()

    def slow_write(db: sqlite3.Connection) -> None:  # a long group commit, say
        writing.set()
        release.wait(10)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.engine.write, slow_write)
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
    def refused() -> WriterConnection:
        raise sqlite3.OperationalError("unable to open database file")

    def closed() -> WriterConnection:  # every checkpoint on it fails
        connection = sqlite3.connect(tmp_path / "g.db", factory=WriterConnection)
        connection.close()
        return connection

    with caplog.at_level(logging.WARNING, logger="gateway.store.sqlite"):
        Checkpointer(refused, 0.01, 100).stop()
        failing = Checkpointer(closed, 0.01, 100)
        deadline = time.monotonic() + 5
        while caplog.text.count("checkpoint failed") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failing._thread.is_alive()  # a failed round is logged, and the next one comes
        failing.stop()
    assert "no background checkpoints (unable to open database file)" in caplog.text
    assert caplog.text.count("checkpoint failed (it will be tried again)") >= 2


async def test_the_engine_alone_groups_writes_and_one_failing_write_fails_alone(tmp_path: Path) -> None:
    """Used without the store: its schema is whatever `set_up` makes."""

    def set_up(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER UNIQUE)")

    engine = Engine(tmp_path / "plain.db", set_up=set_up)
    with pytest.raises(StorageError, match="the store is not open"):
        await engine.read(lambda db: db.execute("SELECT 1").fetchone())
    await engine.open()
    try:
        results: list[object] = []

        async def insert(n: int) -> None:
            try:
                results.append(await engine.write(lambda db: db.execute("INSERT INTO t VALUES (?)", (n,)).rowcount))
            except StorageError as error:
                results.append("UNIQUE constraint failed" if "UNIQUE constraint failed" in str(error) else error)

        async with anyio.create_task_group() as tasks:
            for n in (1, 2, 2, 3):  # the second 2 breaks the unique key: only it is undone
                tasks.start_soon(insert, n)
        assert sorted(map(str, results)) == ["1", "1", "1", "UNIQUE constraint failed"]
        assert await engine.read(lambda db: [row[0] for row in db.execute("SELECT n FROM t ORDER BY n")]) == [1, 2, 3]
        assert await engine.run(lambda db: db.execute("DELETE FROM t").rowcount) == 3
    finally:
        await engine.close()
