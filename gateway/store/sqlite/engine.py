"""The SQLite engine under the embedded store: one file in WAL mode, every commit synced before it returns.

Writes run one at a time on one connection, in a worker thread, grouped into shared commits (`Engine.write`); other
processes on the file take a lock file in turn before they write (`WriterConnection`); reads have a connection and
a thread of their own, and a background thread copies the write-ahead log into the file (`Checkpointer`). The
store (gateway/store/sqlite) says what to write; this module says how it reaches the disk.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import anyio
import anyio.to_thread

from gateway.exceptions import StorageError
from gateway.private import private_file
from gateway.store.group_commit import GroupCommit, PendingWrite

PAGE_SIZE = 2048
"""Bytes per page of a new file (SQLite's default is 4096; a file keeps the size it was made with). A commit writes
every page it changed, whole, to the log; an event's rows change a page in each of several indexes keyed by random
values (provider ids, appointments, phones, emails), so smaller pages mean fewer bytes to write and sync. Measured
in bench/store.py: 50 against 40 KiB written per delivered event, 110 against 71 us of system CPU; 1024 bytes wrote
as much and cost more."""
CHECKPOINT_EVERY = 0.1
"""Seconds between two copies of the write-ahead log into the database file, made by a thread of their own."""
RESTART_PAGES = 4_000
"""Past this many pages (8 MiB; 16 MiB in a file of 4 KiB pages) the log is started over, writers waiting a moment:
under a steady load the background copy never catches up with the last commit, which a restart needs."""
INLINE_CHECKPOINT_PAGES = 4 * RESTART_PAGES
"""A commit copies the log itself only past this: should the background copy ever stop, the log stays bounded."""
BUSY_TIMEOUT = 2.0
"""Seconds a write waits for another process's by default, before the store reports the database locked: one
webhook's whole wait, its place in the group commit included (storage.busy_timeout)."""

logger = logging.getLogger(__name__)
R = TypeVar("R")


class Engine:
    """The file's connections and threads; `set_up` brings a new writer connection's schema up to date (under the
    writer lock, so that processes starting together set up a new file in turn)."""

    def __init__(
        self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT, set_up: Callable[[sqlite3.Connection], None]
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.set_up = set_up
        self.writer: WriterConnection | None = None
        self.reader: sqlite3.Connection | None = None
        self.checkpointer: Checkpointer | None = None
        self._one_write_at_a_time = anyio.CapacityLimiter(1)
        self._one_read_at_a_time = anyio.CapacityLimiter(1)
        self._group = GroupCommit(self._commit)

    async def open(self) -> None:
        self.writer = await self._in_thread(self._connect, self._one_write_at_a_time)
        self.reader = await self._in_thread(self._connect_reader, self._one_read_at_a_time)
        self.checkpointer = Checkpointer(self.connect_writer, CHECKPOINT_EVERY, RESTART_PAGES)

    async def close(self) -> None:
        if self.checkpointer is not None:
            checkpointer, self.checkpointer = self.checkpointer, None
            await anyio.to_thread.run_sync(checkpointer.stop)
        if self.reader is not None:
            reader, self.reader = self.reader, None
            await anyio.to_thread.run_sync(reader.close, limiter=self._one_read_at_a_time)
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await anyio.to_thread.run_sync(writer.close, limiter=self._one_write_at_a_time)

    def connect_writer(self, *, check_same_thread: bool = True) -> WriterConnection:
        """A connection that takes the lock file every process on the database shares before it writes."""
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=check_same_thread,
            timeout=self.busy_timeout,
            factory=WriterConnection,
        )
        try:
            connection.open_writer_lock(Path(f"{self.path}-writer.lock"), self.busy_timeout)
        except BaseException:
            connection.close()
            raise
        return connection

    def _connect(self) -> WriterConnection:
        private_file(self.path)  # SQLite gives its -wal and -shm files the database file's permissions
        connection = self.connect_writer(check_same_thread=False)
        try:
            connection.lock_writers()
            try:
                connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before WAL mode: a new file's only
                connection.execute("PRAGMA journal_mode = WAL")  # refused at once, not retried, while another sets it
                connection.execute("PRAGMA synchronous = FULL")
                connection.execute(f"PRAGMA wal_autocheckpoint = {INLINE_CHECKPOINT_PAGES}")
                self.set_up(connection)
            finally:
                connection.unlock_writers()
        except BaseException:
            connection.close()
            raise
        return connection

    def _connect_reader(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        connection.execute("PRAGMA query_only = 1")
        return connection

    async def write(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        """Group commit (gateway/store/group_commit.py): one transaction, one fsync, for every write waiting."""
        self._open(self.writer)
        try:
            result: R = await self._group.write(PendingWrite(operation, deadline=time.monotonic() + self.busy_timeout))
        except sqlite3.Error as error:
            raise StorageError(f"SQLite {self.path}: {error}") from error
        return result

    async def _commit(self, batch: list[PendingWrite[sqlite3.Connection]]) -> None:
        connection = self._open(self.writer)
        await self._in_thread(partial(commit_together, connection, batch), self._one_write_at_a_time)

    async def run(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        """A write in a transaction of its own (long ones: purges, requeues), on the writer connection."""
        connection = self._open(self.writer)
        return await self._in_thread(lambda: operation(connection), self._one_write_at_a_time)

    async def read(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        """A read on a connection and thread of its own: in WAL mode it sees every commit and waits for none, so a
        scrape or an admin query never holds up a webhook's commit."""
        connection = self._open(self.reader)
        return await self._in_thread(lambda: operation(connection), self._one_read_at_a_time)

    def _open(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise StorageError(f"SQLite {self.path}: the store is not open")
        return connection

    async def _in_thread(self, call: Callable[[], R], limiter: anyio.CapacityLimiter) -> R:
        def guarded() -> R:
            try:
                return call()
            except (sqlite3.Error, OSError) as error:
                raise StorageError(f"SQLite {self.path}: {error}") from error

        return await anyio.to_thread.run_sync(guarded, limiter=limiter)


class WriterConnection(sqlite3.Connection):
    """A connection whose write transactions take a lock file first, shared by every gateway process on the database.

    A process waiting for another's write (a separate worker beside `serve`, a CLI command) then starts within half
    a millisecond of that commit; SQLite's own busy handler sleeps in steps of up to 100 ms, which is what a
    webhook waiting on the lock would feel.
    """

    _writer_lock: BinaryIO | None = None
    _busy_timeout = BUSY_TIMEOUT

    def open_writer_lock(self, path: Path, busy_timeout: float) -> None:
        private_file(path)
        self._writer_lock = path.open("ab")
        self._busy_timeout = busy_timeout

    def wait_at_most(self, seconds: float) -> None:
        """Wait this long at most for the lock file, then for SQLite's own lock (another program's write)."""
        self._busy_timeout = max(0.0, seconds)
        self.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def lock_writers(self) -> None:
        if self._writer_lock is None:
            return
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                fcntl.flock(self._writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: another process has been writing for {self._busy_timeout:g}s"
                    ) from None
                time.sleep(0.0005)

    def unlock_writers(self) -> None:
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._writer_lock is not None:
            self._writer_lock.close()


class Checkpointer:
    """Copies the write-ahead log into the database file from a thread and connection of its own, so that no commit
    (and no webhook waiting for one) pays for it. A checkpoint by another process at the same time is skipped."""

    def __init__(self, connect: Callable[[], WriterConnection], every: float, restart_pages: int) -> None:
        self.connect = connect
        self.every = every
        self.restart_pages = restart_pages
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            db = self.connect()
        except sqlite3.Error as error:
            logger.error("no background checkpoints (%s); commits will copy the log themselves", error)
            return
        try:
            while not self._stopping.wait(self.every):
                try:
                    self._checkpoint(db)
                except sqlite3.Error as error:  # e.g. a full disk: commits fail too, and say so
                    logger.warning("checkpoint failed (it will be tried again): %s", error)
        finally:
            db.close()

    def _checkpoint(self, db: WriterConnection) -> None:
        _, pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages >= self.restart_pages:
            db.lock_writers()
            try:
                db.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                db.unlock_writers()


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode); inside a
    transaction already begun (a group commit), it leaves commit and rollback to whoever began it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.began = False

    def __enter__(self) -> None:
        if self.db.in_transaction:
            return
        self._lock()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise
        self.began = True

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self.began:
            return
        try:
            if self.db.in_transaction:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._unlock()

    def _lock(self) -> None:
        if isinstance(self.db, WriterConnection):
            self.db.lock_writers()

    def _unlock(self) -> None:
        if isinstance(self.db, WriterConnection):
            self.db.unlock_writers()


def commit_together(db: sqlite3.Connection, writes: list[PendingWrite[sqlite3.Connection]]) -> None:
    """Run every write in one transaction, each in its own savepoint so that one failing write fails alone; wait
    for another process's lock only until the first of their deadlines."""
    if isinstance(db, WriterConnection):
        db.wait_at_most(min(write.deadline for write in writes) - time.monotonic())
    with transaction(db):
        for write in writes:
            db.execute("SAVEPOINT write")
            try:
                write.result = write.operation(db)
            except Exception as error:  # the write's own failure: undo it, keep the others
                db.execute("ROLLBACK TO write")
                write.error = error
            db.execute("RELEASE write")
