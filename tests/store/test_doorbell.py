"""Wake-ups between processes on one SQLite file: a worker learns of another process's commits at once, not at its
next poll."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from gateway.routing import Target
from gateway.store.base import AttemptRecord, Transition
from gateway.store.doorbell import Doorbell, directory_for
from gateway.store.sqlite import SQLiteStore
from gateway.testing.receiver import receiver
from tests.conftest import MONCRENEAU_SECRET
from tests.helpers import free_port, gateway_process, record, signed, until

pytestmark = pytest.mark.anyio


class Woken:
    """What a watching store was woken for, and an event per wake-up to wait on."""

    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []
        self.event = anyio.Event()

    def __call__(self, sinks: Iterable[str] | None) -> None:
        self.calls.append(None if sinks is None else set(sinks))
        self.event.set()

    async def next(self) -> set[str] | None:
        with anyio.fail_after(5):
            await self.event.wait()
        self.event = anyio.Event()
        return self.calls[-1]


@asynccontextmanager
async def watching(store: SQLiteStore, woken: Woken) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.watch, woken)
        await wait_all_tasks_blocked()
        yield
        tasks.cancel_scope.cancel()


async def test_a_commit_wakes_the_workers_of_other_processes_for_its_sinks_and_not_its_own(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    worker, other_worker, ingest = SQLiteStore(database), SQLiteStore(database), SQLiteStore(database)
    for store in (worker, other_worker, ingest):
        await store.open()
    woken, other_woken = Woken(), Woken()
    async with watching(worker, woken), watching(other_worker, other_woken):
        await ingest.ingest(record("evt_1", id="event-1"), [Target("crm"), Target("sms")])
        assert await woken.next() == {"crm", "sms"}
        assert await other_woken.next() == {"crm", "sms"}

        await worker.ingest(
            record("evt_2", id="event-2"), [Target("crm")]
        )  # the worker's own process wakes it directly
        assert await other_woken.next() == {"crm"}
        await wait_all_tasks_blocked()
        assert woken.calls == [{"crm", "sms"}]

        await ingest.ingest(
            record("evt_1", id="event-1"), [Target("crm")]
        )  # a duplicate stores nothing: nobody to wake
        await ingest.replay("event-1", now=2.0)  # nothing finished yet: nothing requeued
        await wait_all_tasks_blocked()
        assert len(woken.calls) == 1 and len(other_woken.calls) == 2
    for store in (worker, other_worker, ingest):
        await store.close()


async def test_rings_within_one_turn_of_the_event_loop_send_one_datagram(tmp_path: Path) -> None:
    doorbell = Doorbell(tmp_path / "g.db")
    doorbell.directory.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(str(doorbell.directory / "1-peer.sock"))
        peer.setblocking(False)
        for sinks in (["crm"], ["sms"], ["crm"], []):  # the writes of one group commit
            doorbell.ring(sinks)
        await checkpoint()  # the loop turns
        first = [peer.recv(1024)]
        doorbell.ring(None)
        await checkpoint()  # the loop turns
        received = [*first, peer.recv(1024)]
        with pytest.raises(BlockingIOError):
            peer.recv(1024)
    doorbell.close()
    print(f"5 rings in two turns of the loop: {len(received)} datagrams")
    assert set(received[0].decode().split("\n")) == {"crm", "sms"} and received[1] == b""  # b"": every sink


async def test_a_requeue_wakes_every_sink_and_a_dead_workers_socket_is_swept(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    worker, operator = SQLiteStore(database), SQLiteStore(database)
    await worker.open()
    await operator.open()
    await operator.ingest(record("evt_1", id="event-1"), [Target("crm")])
    claimed = await operator.claim("crm", limit=1, now=1001.0, owner="w", lease_until=1100.0)
    attempt = AttemptRecord(1, 1001.0, 1.0, "succeeded", 200, None)
    await operator.record_attempt(claimed[0].id, "w", attempt, Transition("succeeded"), now=1002.0)
    directory_for(database).mkdir()
    dead = directory_for(database) / "1-deadbeef.sock"  # a worker SIGKILLed while listening left this behind
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(dead))
    woken = Woken()
    async with watching(worker, woken):
        assert await operator.replay("event-1", now=1003.0)
        assert await woken.next() is None
    assert not dead.exists()
    await worker.close()
    await operator.close()


async def test_a_database_path_too_long_for_a_socket_rings_through_the_temporary_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    database = deep / "g.db"
    assert not str(directory_for(database)).startswith(str(tmp_path))
    worker, ingest = SQLiteStore(database), SQLiteStore(database)
    await worker.open()
    await ingest.open()
    woken = Woken()
    async with watching(worker, woken):
        await ingest.ingest(record("evt_1", id="event-1"), [Target("crm")])
        assert await woken.next() == {"crm"}
    await worker.close()
    await ingest.close()


async def test_a_worker_that_cannot_listen_says_so_and_polls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    database = tmp_path / "g.db"
    directory_for(database).write_text("a file where the directory should be")
    store = SQLiteStore(database)
    await store.open()
    with caplog.at_level(logging.WARNING, logger="gateway.store.doorbell"):
        async with watching(store, Woken()):
            pass
    assert "polling only" in caplog.text
    await store.ingest(
        record("evt_1", id="event-1"), [Target("crm")]
    )  # ringing an unusable directory is not an error either
    await store.close()


async def test_a_separate_worker_delivers_what_serve_stores_at_once_not_at_its_next_poll(tmp_path: Path) -> None:
    port = free_port()
    async with receiver() as crm:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{tmp_path}/gateway.db"}}
worker: {{poll_interval: 60s}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "{crm.url}"}}}}
routes:
  - sinks: [crm]
"""
        )
        with (
            gateway_process(config, port, tmp_path / "serve.log", "--no-worker"),
            (tmp_path / "worker.log").open("ab") as log,
        ):
            command = [sys.executable, "-m", "gateway", "-c", str(config), "worker"]
            worker = await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                sockets = directory_for(tmp_path / "gateway.db")
                await until(lambda: any(sockets.glob("*.sock")), "the worker listening", 30)
                await anyio.sleep(1.5)  # the worker's first poll has passed: only a wake-up can deliver now
                raw, headers = signed(1)
                async with httpx.AsyncClient() as client:
                    response = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                    )
                assert response.status_code == 202
                began = time.monotonic()
                with anyio.fail_after(10):
                    await crm.wait_for(1)
                print(f"delivered by the separate worker {time.monotonic() - began:.3f}s after the 202 (poll: 60s)")
                assert json.loads(crm.requests[0].body)["provider_event_id"] == "evt_1"
            finally:
                worker.send_signal(signal.SIGTERM)
                with anyio.fail_after(20):
                    await worker.wait()
                await worker.aclose()
