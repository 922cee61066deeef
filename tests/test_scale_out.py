"""Several gateway processes on one PostgreSQL database: two ingest replicas, two workers, one killed midway."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import psycopg
import pytest

from gateway.cli import main
from gateway.signing import hmac_sha256_hex
from gateway.testing.receiver import receiver
from tests.conftest import MONCRENEAU_SECRET
from tests.helpers import free_port, signed, until

pytestmark = pytest.mark.anyio
EVENTS = 3000
SENT_TO_BOTH = 300  # of those, posted at the same moment to both replicas
CONCURRENCY = 32


@contextmanager
def process(log: Path, config: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@pytest.mark.fault
async def test_replicas_and_workers_deliver_every_accepted_event_once_through_a_worker_kill(
    tmp_path: Path, postgres_url: str
) -> None:
    async with receiver() as crm, await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        config = tmp_path / "config.yaml"
        ports = [free_port(), free_port()]
        config.write_text(
            f"""
storage: {{url: "{postgres_url}", pool_max: 4}}
worker: {{poll_interval: 1s, lease: 1s, shutdown_grace: 1s}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "{crm.url}/crm"}}, concurrency: 8, timeout: 2s, retry: {{schedule: [1s]}}}}
routes:
  - sinks: [crm]
"""
        )
        assert await anyio.to_thread.run_sync(main, ["-c", str(config), "migrate"]) == 0
        with ExitStack() as processes:
            for index, port in enumerate(ports):
                processes.enter_context(
                    process(tmp_path / f"serve{index}.log", config, "serve", "--no-worker", "--port", str(port))
                )
            workers = [processes.enter_context(process(tmp_path / f"worker{i}.log", config, "worker")) for i in (0, 1)]
            urls = [f"http://127.0.0.1:{port}/webhooks/moncreneau" for port in ports]

            async with httpx.AsyncClient(timeout=30) as client:

                async def healthy() -> bool:
                    try:
                        return all(
                            [
                                (await client.get(url.replace("/webhooks/moncreneau", "/healthz"))).is_success
                                for url in urls
                            ]
                        )
                    except httpx.HTTPError:
                        return False

                await until(healthy, "both replicas to listen", 30)
                answers: Counter[int] = Counter()
                limit = anyio.Semaphore(CONCURRENCY)

                async def post(n: int) -> None:
                    raw, headers = signed(n)
                    async with limit:
                        targets = urls if n < SENT_TO_BOTH else [urls[n % 2]]
                        async with anyio.create_task_group() as both:
                            for url in targets:
                                both.start_soon(send, url, raw, headers)

                async def send(url: str, raw: bytes, headers: dict[str, str]) -> None:
                    answers[(await client.post(url, content=raw, headers=headers)).status_code] += 1

                async def post_range(start: int, stop: int) -> None:
                    async with anyio.create_task_group() as posting:
                        for n in range(start, stop):
                            posting.start_soon(post, n)

                async def flowing() -> bool:
                    return len(crm.requests) >= EVENTS // 4

                started = time.monotonic()
                await post_range(0, EVENTS // 2)
                await until(flowing, "deliveries to flow", 60)
                owner = re.search(r"worker (worker:\S+) delivering", (tmp_path / "worker0.log").read_text())
                assert owner is not None
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                cursor = await db.execute("SELECT id FROM deliveries WHERE lease_owner = %s", (owner.group(1),))
                in_flight = {row[0] for row in await cursor.fetchall()}
                await post_range(EVENTS // 2, EVENTS)
                posted = time.monotonic()

            expected = {f"evt_{n}" for n in range(EVENTS)}

            async def everything_delivered() -> bool:
                return {json.loads(r.body)["provider_event_id"] for r in crm.requests} >= expected

            await until(everything_delivered, "every accepted event at the sink", 90)

            async def nothing_pending() -> bool:
                cursor = await db.execute("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
                row = await cursor.fetchone()
                return row is not None and row[0] == 0

            await until(nothing_pending, "no delivery left pending", 30)
            drained = time.monotonic()

        received = Counter(request.headers["idempotency-key"] for request in crm.requests)
        duplicated = {key for key, count in received.items() if count > 1}
        cursor = await db.execute("SELECT count(*), count(DISTINCT event_id) FROM deliveries")
        deliveries, events = await cursor.fetchone() or (0, 0)
        print(
            f"\nsent {EVENTS} events ({SENT_TO_BOTH} to both replicas at once): answers {dict(answers)}; "
            f"stored {events}, deliveries {deliveries}; sink received {len(crm.requests)} requests for "
            f"{len(received)} deliveries; duplicated {len(duplicated)}; in flight at the kill {len(in_flight)}; "
            f"all posted in {posted - started:.1f}s, all delivered {drained - started:.1f}s after the first post"
        )
        assert answers == {202: EVENTS, 200: SENT_TO_BOTH}
        assert (events, deliveries, len(received)) == (EVENTS, EVENTS, EVENTS)
        assert duplicated <= in_flight


@pytest.mark.fault
async def test_two_workers_on_postgresql_send_each_reminder_of_the_final_state_once_on_time(
    tmp_path: Path, postgres_url: str
) -> None:
    """Forty appointments with a reminder due 6 to 10 s ahead, through one ingest replica and two workers: a third
    moved two seconds later, a third cancelled. Each reminder left is sent once, at the moved time, by either
    worker; none for a cancelled appointment."""
    async with receiver() as crm:
        port, config = free_port(), tmp_path / "config.yaml"
        config.write_text(
            f"""
storage: {{url: "{postgres_url}", pool_max: 4}}
worker: {{poll_interval: 30s}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "{crm.url}/crm"}}, concurrency: 8}}
routes:
  - events: [appointment.created, appointment.updated, appointment.cancelled]
    sinks: [crm]
    reminders: [24h]
"""
        )
        assert await anyio.to_thread.run_sync(main, ["-c", str(config), "migrate"]) == 0
        wall, clock = time.time(), time.monotonic()
        due = {n: float(int(wall) + 6 + n % 5) for n in range(40)}
        with ExitStack() as processes:
            processes.enter_context(
                process(tmp_path / "serve.log", config, "serve", "--no-worker", "--port", str(port))
            )
            for index in (0, 1):
                processes.enter_context(process(tmp_path / f"worker{index}.log", config, "worker"))
            async with httpx.AsyncClient(timeout=10) as client:
                url = f"http://127.0.0.1:{port}/webhooks/moncreneau"

                async def healthy() -> bool:
                    try:
                        return (await client.get(url.replace("/webhooks/moncreneau", "/healthz"))).is_success
                    except httpx.HTTPError:
                        return False

                await until(healthy, "the replica to listen", 30)

                async def post(n: int, kind: str, at: float, sequence: int) -> None:
                    body = json.loads(signed(n)[0])
                    body["id"], body["type"] = f"evt_{n}_{sequence}", f"appointment.{kind}"
                    body["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall - 60 + sequence))
                    body["data"]["object"]["dateTime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at + 86400))
                    raw = json.dumps(body).encode()
                    headers = {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)}
                    assert (await client.post(url, content=raw, headers=headers)).status_code == 202

                for n, at in due.items():
                    await post(n, "created", at, 0)
                for n, at in due.items():
                    if n % 3 == 1:
                        due[n] = at + 2
                        await post(n, "updated", due[n], 1)
                    elif n % 3 == 2:
                        await post(n, "cancelled", at, 1)
                assert time.time() < min(due.values()), "the machine was too slow: a reminder was due already"
                expected = {str(n): at for n, at in due.items() if n % 3 != 2}

                def reminders() -> list[tuple[str, float]]:
                    bodies = [(json.loads(r.body), r.arrived_at) for r in crm.requests]
                    return [(b["appointment"]["id"], t) for b, t in bodies if b["type"] == "appointment.reminder"]

                await until(lambda: len(reminders()) >= len(expected), "every reminder left", 30)
                await until(lambda: time.time() > max(due.values()) + 1.5, "a moment past the last due time", 30)
    sent = reminders()
    lateness = sorted(t - clock - (expected[appointment] - wall) for appointment, t in sent)
    print(f"{len(sent)} reminders from two workers on PostgreSQL; lateness {lateness[0]:.3f}s to {lateness[-1]:.3f}s")
    assert sorted(appointment for appointment, _ in sent) == sorted(expected)  # once each, none cancelled
    assert lateness[0] > -0.05 and lateness[-1] < 1.5  # at the moved time, not the first one
