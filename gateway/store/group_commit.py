"""Group commit: writes that arrive while one commit runs wait for it, then go in the next transaction together.

Both stores use it. A transaction costs a sync to disk and, on PostgreSQL, round trips and the server's work per
commit; under load, each commit then carries every write that came meanwhile, and each caller still returns only
after its own write is committed. What a commit does with its batch (a savepoint per write in SQLite's writer
thread, one transaction on one PostgreSQL connection) is the store's: `GroupCommit(commit)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

from gateway.exceptions import StorageError

C = TypeVar("C")
"""What a write runs on: a SQLite connection, a PostgreSQL connection."""


class PendingWrite(Generic[C]):
    """One write waiting for a group commit, and what came of it."""

    def __init__(self, operation: Callable[[C], Any], *, deadline: float = float("inf")) -> None:
        self.operation = operation
        self.deadline = deadline
        """When its caller stops waiting for a lock (time.monotonic()): a write queued behind a commit that waited
        gets only what is left, so that no webhook waits twice the busy timeout."""
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[C]):
    """One commit at a time; `commit(batch)` runs a batch's writes, setting each one's result or error, and raises
    when the transaction itself failed (none of the batch is then stored)."""

    def __init__(self, commit: Callable[[list[PendingWrite[C]]], Awaitable[None]]) -> None:
        self.commit = commit
        self._pending: list[PendingWrite[C]] = []
        self._committing = False
        self._committed = anyio.Event()

    async def write(self, write: PendingWrite[C]) -> Any:
        """The write's result once its transaction is committed; its error, or the transaction's, raised."""
        self._pending.append(write)
        while not write.done:
            if self._committing:
                await self._committed.wait()
                continue
            self._committing = True
            batch, self._pending = self._pending, []
            try:
                await self.commit(batch)
            except Exception as error:
                for each in batch:
                    each.error = error
            except BaseException:  # this caller was cancelled: whether the others' writes are stored is unknown
                for each in batch:
                    each.error = StorageError("the commit was interrupted; whether it was stored is unknown")
                raise
            finally:
                for each in batch:
                    each.done = True
                self._committing = False
                committed, self._committed = self._committed, anyio.Event()
                committed.set()
        if write.error is not None:
            raise write.error
        return write.result
