"""Group commit on its own: who shares a commit, and what each writer learns when a commit fails or is cut short."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from gateway.exceptions import StorageError
from gateway.store.group_commit import GroupCommit, PendingWrite

pytestmark = pytest.mark.anyio


class Journal:
    """A commit that runs each write on a list standing for the connection and keeps its batches; the batches
    numbered in `holding` (from 1) wait to be let go, so that writes pile up behind them."""

    def __init__(self, *, holding: tuple[int, ...] = (1,), fail: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.committed: list[int] = []
        self.committers: list[int] = []
        self.let_go = {number: anyio.Event() for number in holding}
        self.fail = fail

    async def commit(self, batch: list[PendingWrite[list[int]]]) -> None:
        transaction: list[int] = []
        for write in batch:
            write.result = write.operation(transaction)
        self.batches.append(transaction)
        self.committers.append(anyio.get_current_task().id)
        if held := self.let_go.get(len(self.batches)):
            await held.wait()
        if self.fail is not None:
            raise self.fail
        self.committed += transaction


async def one_then_two_behind(
    tasks: TaskGroup, write: Callable[[int], Coroutine[Any, Any, None]], journal: Journal
) -> None:
    """Write 1 commits alone, writes 2 and 3 queue behind it, then its commit is let go."""
    tasks.start_soon(write, 1)
    await anyio.wait_all_tasks_blocked()
    tasks.start_soon(write, 2)
    tasks.start_soon(write, 3)
    await anyio.wait_all_tasks_blocked()
    journal.let_go[1].set()


def appending(n: int) -> PendingWrite[list[int]]:
    def operation(transaction: list[int]) -> int:
        transaction.append(n)
        return n * 10

    return PendingWrite(operation)


async def test_writes_that_arrive_during_a_commit_share_the_next_and_each_returns_after_its_own() -> None:
    journal = Journal()
    group: GroupCommit[list[int]] = GroupCommit(journal.commit)
    returned: dict[int, tuple[int, list[int]]] = {}

    async def write(n: int) -> None:
        result = await group.write(appending(n))
        returned[n] = (result, list(journal.committed))  # what was committed when it returned

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(write, 1)
        await anyio.wait_all_tasks_blocked()  # the first commit runs, holding its batch of one
        for n in (2, 3, 4):
            tasks.start_soon(write, n)
        await anyio.wait_all_tasks_blocked()
        assert returned == {}
        journal.let_go[1].set()
    assert journal.batches == [[1], [2, 3, 4]]
    assert returned[1] == (10, [1])
    assert {n: returned[n] for n in (2, 3, 4)} == {n: (n * 10, [1, 2, 3, 4]) for n in (2, 3, 4)}


async def test_a_failed_commit_fails_each_of_its_writes_and_the_next_batch_goes_on() -> None:
    journal = Journal(fail=StorageError("disk full"))
    group: GroupCommit[list[int]] = GroupCommit(journal.commit)
    errors: dict[int, str] = {}

    async def write(n: int) -> None:
        try:
            await group.write(appending(n))
        except StorageError as error:
            errors[n] = str(error)

    async with anyio.create_task_group() as tasks:
        await one_then_two_behind(tasks, write, journal)
    assert errors == {1: "disk full", 2: "disk full", 3: "disk full"}
    journal.fail = None
    assert await group.write(appending(4)) == 40
    assert journal.committed == [4]


async def test_a_write_that_fails_in_its_transaction_fails_alone() -> None:
    async def commit(batch: list[PendingWrite[None]]) -> None:
        for write in batch:
            try:
                write.result = write.operation(None)
            except ValueError as error:  # as a store undoes one write, keeping the others
                write.error = error

    group: GroupCommit[None] = GroupCommit(commit)

    def refused(_: None) -> Any:
        raise ValueError("not this one")

    with pytest.raises(ValueError, match="not this one"):
        await group.write(PendingWrite(refused))
    assert await group.write(PendingWrite(lambda _: "stored")) == "stored"


async def test_when_the_committing_writer_is_cancelled_the_others_in_its_batch_learn_their_fate_is_unknown() -> None:
    journal = Journal(holding=(1, 2))
    group: GroupCommit[list[int]] = GroupCommit(journal.commit)
    scopes: dict[int, anyio.CancelScope] = {}
    tasks_of: dict[int, int] = {}
    learned: dict[int, object] = {}

    async def write(n: int) -> None:
        tasks_of[anyio.get_current_task().id] = n
        with anyio.CancelScope() as scopes[n]:
            try:
                learned[n] = await group.write(appending(n))
            except StorageError as error:
                learned[n] = str(error)
            return
        learned[n] = "cancelled"

    async with anyio.create_task_group() as tasks:
        await one_then_two_behind(tasks, write, journal)
        await anyio.wait_all_tasks_blocked()  # [2, 3] is being committed by one of them
        assert journal.batches == [[1], [2, 3]]
        committer = tasks_of[journal.committers[1]]
        scopes[committer].cancel()
    other = 5 - committer
    assert learned == {
        1: 10,
        committer: "cancelled",
        other: "the commit was interrupted; whether it was stored is unknown",
    }
    assert await group.write(appending(4)) == 40  # the group is free for the next commit
