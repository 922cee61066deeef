"""The fault suite: real gateway processes killed, starved of their sink, and fed hostile bytes.

Each test prints the figures it checked. Run alone with `pytest -m fault`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from gateway.signing import hmac_sha256_hex
from gateway.testing.receiver import Answer, Request, receiver
from tests.conftest import MONCRENEAU_SECRET
from tests.helpers import free_port, gateway_process, serving_children, signed, until
from tests.peers import postgres_database

pytestmark = [pytest.mark.fault, pytest.mark.anyio]


def configure(tmp_path: Path, port: int, sink_url: str, *, retry: str = "{schedule: [200ms]}") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
server: {{port: {port}, read_timeout: 1s, max_body_bytes: 65536}}
storage: {{url: "sqlite:///{tmp_path}/gateway.db"}}
worker: {{poll_interval: 100ms, lease: 1s}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "{sink_url}"}}, concurrency: 8, timeout: 2s, retry: {retry}}}
routes:
  - sinks: [crm]
"""
    )
    return config


def delivered_ids(requests: list[Request]) -> Counter[str]:
    return Counter(json.loads(r.body)["provider_event_id"] for r in requests)


def more_than_once(received: Counter[str]) -> set[str]:
    return {event for event, count in received.items() if count > 1}


async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port, events = free_port(), 600
    async with receiver() as crm:
        config = configure(tmp_path, port, crm.url)
        acknowledged: set[str] = set()
        outstanding = 0
        at_kill: tuple[int, int] = (0, 0)
        with gateway_process(config, port, tmp_path / "gateway.log") as process:
            async with httpx.AsyncClient(timeout=10) as client:

                async def post(n: int) -> None:
                    nonlocal outstanding
                    raw, headers = signed(n)
                    outstanding += 1
                    try:
                        response = await client.post(
                            f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                        )
                    except httpx.HTTPError:
                        return  # the process died under this request: not acknowledged
                    finally:
                        outstanding -= 1
                    if response.status_code == 202:
                        acknowledged.add(f"evt_{n}")

                async def kill_midway() -> None:
                    nonlocal at_kill
                    await until(lambda: len(acknowledged) >= events // 3, "a third acknowledged", 60)
                    process.send_signal(signal.SIGKILL)
                    at_kill = (len(acknowledged), outstanding)

                limit = anyio.Semaphore(16)

                async def bounded(n: int) -> None:
                    async with limit:
                        await post(n)

                async with anyio.create_task_group() as load:
                    load.start_soon(kill_midway)
                    for n in range(events):
                        load.start_soon(bounded, n)
            process.wait()
        with sqlite3.connect(tmp_path / "gateway.db") as db:
            in_flight = {
                row[0]
                for row in db.execute(
                    "SELECT e.provider_event_id FROM deliveries d JOIN events e ON e.id = d.event_id "
                    "WHERE d.lease_owner IS NOT NULL AND d.status = 'pending'"
                )
            }
        with gateway_process(config, port, tmp_path / "gateway.log"):
            await until(lambda: acknowledged <= set(delivered_ids(crm.requests)), "every acknowledged event", 60)
        received = delivered_ids(crm.requests)
    duplicated = more_than_once(received)
    print(
        f"\nsent {events}, acknowledged {len(acknowledged)} before the kill stopped the load ({at_kill[0]} when it "
        f"landed, {at_kill[1]} requests outstanding), delivered {len(received)} distinct "
        f"({sum(received.values())} requests), duplicated {len(duplicated)}, leased at the kill {len(in_flight)}"
    )
    assert 0 < at_kill[0] < events and at_kill[1] > 0, "the kill did not land mid-load"
    assert acknowledged <= set(received)
    assert duplicated <= in_flight


async def test_one_of_several_serving_processes_sigkilled_under_load_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """`serve --processes 2`: one process dies mid-load; the other answers meanwhile, uvicorn's supervisor starts a
    replacement, and a provider retrying what was not acknowledged gets everything delivered."""
    port, events = free_port(), 600
    async with receiver() as crm:
        config = configure(tmp_path, port, crm.url)
        acknowledged: set[str] = set()
        failures: Counter[str] = Counter()
        outstanding = 0
        at_kill: tuple[int, int] = (0, 0)
        leased_by_killed: set[str] = set()
        with gateway_process(config, port, tmp_path / "gateway.log", "--processes", "2") as process:
            await until(lambda: len(serving_children(process.pid)) == 2, "two serving processes", 30)
            first = serving_children(process.pid)
            async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=16)) as client:

                async def post(n: int) -> None:
                    nonlocal outstanding
                    raw, headers = signed(n)
                    for _ in range(200):  # as a provider does: again until acknowledged (bounded: a hang fails)
                        outstanding += 1
                        try:
                            response = await client.post(
                                f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                            )
                        except httpx.HTTPError as error:
                            failures[type(error).__name__] += 1
                            await anyio.sleep(0.05)
                            continue
                        finally:
                            outstanding -= 1
                        assert response.status_code in (200, 202), response.text
                        acknowledged.add(f"evt_{n}")
                        return
                    raise AssertionError(f"evt_{n} was never acknowledged in 200 tries")

                async def kill_midway() -> None:
                    nonlocal at_kill
                    await until(lambda: len(acknowledged) >= events // 3, "a third acknowledged", 60)
                    victim = max(first, key=open_sockets)  # the one holding our connections
                    os.kill(victim, signal.SIGKILL)
                    at_kill = (len(acknowledged), outstanding)
                    with sqlite3.connect(tmp_path / "gateway.db") as db:  # before its replacement takes them back
                        leased_by_killed.update(
                            row[0]
                            for row in db.execute(
                                "SELECT e.provider_event_id FROM deliveries d JOIN events e ON e.id = d.event_id "
                                "WHERE d.status = 'pending' AND d.lease_owner LIKE ?",
                                (f"worker:%:{victim}:%",),
                            )
                        )

                async with anyio.create_task_group() as load:
                    load.start_soon(kill_midway)
                    for n in range(events):
                        load.start_soon(post, n)
            await until(lambda: acknowledged <= set(delivered_ids(crm.requests)), "every acknowledged event", 60)
            await until(lambda: len(serving_children(process.pid) - first) == 1, "a replacement process", 30)
            replaced = serving_children(process.pid) - first
        received = delivered_ids(crm.requests)
    duplicated = more_than_once(received)
    print(
        f"\nsent {events}, all acknowledged in the end ({dict(failures)} refused by the killed process and sent"
        f" again; {at_kill[0]} acknowledged and {at_kill[1]} outstanding when the kill landed), delivered"
        f" {len(received)} distinct ({sum(received.values())} requests), duplicated {len(duplicated)}, leased by"
        f" the killed process {len(leased_by_killed)}; replacement process: {sorted(replaced)}"
    )
    assert 0 < at_kill[0] < events and at_kill[1] > 0, "the kill did not land mid-load"
    assert len(acknowledged) == events and acknowledged <= set(received)
    assert duplicated <= leased_by_killed
    assert len(replaced) == 1


def open_sockets(pid: int) -> int:
    """Sockets a process holds; 0 once it is gone (its /proc entries vanish while they are read)."""
    count = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                count += os.readlink(fd).startswith("socket:")
    except FileNotFoundError:
        return 0
    return count


async def test_a_separate_worker_sigkilled_on_sqlite_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """`serve --no-worker` and a `worker` sharing the SQLite file (the writer lock, the doorbell); the worker dies
    mid-load and another takes its leases over."""
    port, events = free_port(), 600
    async with receiver() as crm:
        config = configure(tmp_path, port, crm.url)
        command = [sys.executable, "-m", "gateway", "-c", str(config), "worker"]
        acknowledged: set[str] = set()
        delivered_at_kill = 0
        with (
            gateway_process(config, port, tmp_path / "serve.log", "--no-worker"),
            (tmp_path / "worker.log").open("ab") as log,
        ):
            worker = await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT)
            async with httpx.AsyncClient(timeout=10) as client:
                limit = anyio.Semaphore(16)

                async def post(n: int) -> None:
                    raw, headers = signed(n)
                    async with limit:
                        response = await client.post(
                            f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                        )
                    assert response.status_code == 202
                    acknowledged.add(f"evt_{n}")

                async def kill_midway() -> None:
                    nonlocal delivered_at_kill
                    await until(lambda: len(crm.requests) >= events // 3, "a third delivered", 60)
                    worker.kill()
                    delivered_at_kill = len(delivered_ids(crm.requests))

                async with anyio.create_task_group() as load:
                    load.start_soon(kill_midway)
                    for n in range(events):
                        load.start_soon(post, n)
            await worker.wait()
            await worker.aclose()
            with sqlite3.connect(tmp_path / "gateway.db") as db:
                in_flight = {
                    row[0]
                    for row in db.execute(
                        "SELECT e.provider_event_id FROM deliveries d JOIN events e ON e.id = d.event_id "
                        "WHERE d.lease_owner IS NOT NULL AND d.status = 'pending'"
                    )
                }
            async with await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT) as successor:
                await until(lambda: acknowledged <= set(delivered_ids(crm.requests)), "every acknowledged event", 60)
                successor.terminate()
        received = delivered_ids(crm.requests)
    duplicated = more_than_once(received)
    print(
        f"\nsent {events}, acknowledged {len(acknowledged)}, delivered {len(received)} distinct "
        f"({sum(received.values())} requests), duplicated {len(duplicated)}, leased by the killed worker "
        f"{len(in_flight)}, delivered when the kill landed {delivered_at_kill}"
    )
    assert 0 < delivered_at_kill < events and in_flight, "the kill did not land mid-delivery"
    assert len(acknowledged) == events
    assert acknowledged <= set(received)
    assert duplicated <= in_flight


async def test_a_sink_outage_delays_nothing_but_its_deliveries(tmp_path: Path) -> None:
    port, sink_port, events = free_port(), free_port(), 60
    config = configure(tmp_path, port, f"http://127.0.0.1:{sink_port}/", retry="{schedule: [200ms], give_up_after: 1h}")
    with gateway_process(config, port, tmp_path / "gateway.log"):
        async with httpx.AsyncClient(timeout=10) as client:
            latencies: dict[str, list[float]] = {"503": [], "refused": []}

            async def post(n: int, phase: str) -> None:
                raw, headers = signed(n)
                began = time.perf_counter()
                response = await client.post(
                    f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                )
                latencies[phase].append(time.perf_counter() - began)
                assert response.status_code == 202

            # phase 1: the sink answers 503 to everything
            async with receiver(sink_port) as failing:
                failing.default = Answer(503)
                for n in range(events // 2):
                    await post(n, "503")
                await until(lambda: len(failing.requests) > events, "retries against the failing sink", 30)
            # phase 2: nothing listens any more: connections are refused
            for n in range(events // 2, events):
                await post(n, "refused")
            await anyio.sleep(0.5)  # a few retry rounds against the closed port, by design of this phase
            # phase 3: the sink is back
            async with receiver(sink_port) as healthy:
                await until(
                    lambda: set(delivered_ids(healthy.requests)) >= {f"evt_{n}" for n in range(events)},
                    "every event delivered after recovery",
                    60,
                )
                received = delivered_ids(healthy.requests)
    slowest = {phase: max(values) for phase, values in latencies.items()}
    print(
        f"\n{events} events acknowledged during the outage (slowest ack: 503 phase {slowest['503'] * 1000:.0f} ms, "
        f"refused phase {slowest['refused'] * 1000:.0f} ms); {len(failing.requests)} attempts refused with 503; "
        f"{len(received)} delivered after recovery"
    )
    assert set(received) == {f"evt_{n}" for n in range(events)}
    assert max(slowest.values()) < 1.0  # acknowledging never waited for the sink


def _hostile_requests(port: int) -> list[tuple[str, bytes]]:
    raw, _ = signed(1)
    good = "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)

    def request(body: bytes, headers: dict[str, str], length: int | None = None) -> bytes:
        lines = [
            "POST /webhooks/moncreneau HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Connection: close",
            f"Content-Length: {len(body) if length is None else length}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    nested = b"[" * 5000 + b"]" * 5000
    return [
        ("no signature", request(raw, {"Content-Type": "application/json"})),
        ("wrong signature", request(raw, {"X-Moncreneau-Signature": "sha256=" + "0" * 64})),
        ("signature for another body", request(raw.replace(b"12345", b"54321"), {"X-Moncreneau-Signature": good})),
        ("garbage signature", request(raw, {"X-Moncreneau-Signature": "\x00\x01" * 40})),
        ("truncated body", request(raw[:100], {"X-Moncreneau-Signature": good}, length=len(raw))),
        ("huge body", request(b"{" + b" " * 200_000 + b"}", {"X-Moncreneau-Signature": good})),
        (
            "invalid utf-8",
            request(
                b"\xff\xfe\xfd{}",
                {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, b"\xff\xfe\xfd{}")},
            ),
        ),
        (
            "deep nesting",
            request(nested, {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, nested)}),
        ),
        ("wrong content type", request(raw, {"Content-Type": "text/xml", "X-Moncreneau-Signature": "sha256=00"})),
        ("not http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        ("header flood", b"POST /webhooks/moncreneau HTTP/1.1\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n"),
    ]


def _exchange(port: int, payload: bytes, *, trickle: bool = False) -> int | None:
    """Send raw bytes and return the HTTP status answered (None when the server just closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            if trickle:  # a slow sender: headers, then the body a byte at a time, slower than server.read_timeout
                head, _, body = payload.partition(b"\r\n\r\n")
                sock.sendall(head + b"\r\n\r\n")
                for byte in body[:60]:
                    if select.select([sock], [], [], 0.05)[0]:
                        break  # the server has answered (or closed): stop sending, read what it said
                    sock.sendall(bytes([byte]))
            else:
                sock.sendall(payload)
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            return None
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split()[1])


async def responsive(port: int) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200


async def test_hostile_bytes_never_get_a_5xx_nor_store_anything(tmp_path: Path) -> None:
    port = free_port()
    config = configure(tmp_path, port, "http://127.0.0.1:9/")
    answers: dict[str, int | None] = {}
    with gateway_process(config, port, tmp_path / "gateway.log"):
        for name, payload in _hostile_requests(port):
            answers[name] = await anyio.to_thread.run_sync(partial(_exchange, port, payload))
            assert await responsive(port), name
        raw, headers = signed(2)
        slow = (
            f"POST /webhooks/moncreneau HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n"
            f"X-Moncreneau-Signature: {headers['X-Moncreneau-Signature']}\r\n\r\n"
        ).encode() + raw
        answers["slow sender"] = await anyio.to_thread.run_sync(partial(_exchange, port, slow, trickle=True))
        assert await responsive(port)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        stored = db.execute("SELECT count(*) FROM events").fetchone()[0]
    print("\n" + "\n".join(f"{name:28} -> {status}" for name, status in answers.items()) + f"\nstored: {stored}")
    assert all(status is None or status < 500 for status in answers.values())
    assert answers["no signature"] == answers["wrong signature"] == answers["signature for another body"] == 401
    assert answers["huge body"] == 413 and answers["slow sender"] == 408
    assert answers["invalid utf-8"] == answers["deep nesting"] == 400
    assert stored == 0


@contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (needs root, as CI has): a disk that fills up on purpose."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full test needs root to mount a tmpfs")
        pytest.skip("the disk-full test needs root to mount a tmpfs")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_answers_503_never_2xx_and_recovers_by_itself(tmp_path: Path) -> None:
    port = free_port()
    with tiny_filesystem(tmp_path / "disk", "1m") as disk:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{disk}/gateway.db"}}
logging: {{level: ERROR}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  journal: {{type: file, options: {{path: "{tmp_path}/journal.jsonl"}}}}
routes:
  - sinks: [journal]
"""
        )
        statuses: Counter[int] = Counter()
        acknowledged: set[str] = set()
        with gateway_process(config, port, tmp_path / "gateway.log"):
            async with httpx.AsyncClient(timeout=10) as client:

                async def post(n: int) -> int:
                    raw, headers = signed(n)
                    response = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                    )
                    statuses[response.status_code] += 1
                    if response.is_success:
                        acknowledged.add(f"evt_{n}")
                    return response.status_code

                n = 0
                while await post(n) != 503:  # fill the disk
                    n += 1
                    assert n < 5000, "the disk never filled"
                full_at = n
                refused_while_full = [await post(full_at + k) for k in range(1, 6)]
                await anyio.run_process(["mount", "-o", "remount,size=64m", str(disk)])
                recovered = [await post(full_at + 100 + k) for k in range(5)]
            await until(lambda: _journal(tmp_path) >= acknowledged, "every acknowledged event in the journal", 30)
        with sqlite3.connect(disk / "gateway.db") as db:
            stored = {row[0] for row in db.execute("SELECT provider_event_id FROM events")}
    print(
        f"\nthe disk filled after {full_at} events; then answers {refused_while_full}; after growing it "
        f"{recovered}; statuses {dict(statuses)}; acknowledged {len(acknowledged)}, stored {len(stored)}"
    )
    assert set(refused_while_full) == {503}
    assert set(recovered) == {202}
    assert stored == acknowledged  # nothing acknowledged was lost, nothing unacknowledged was kept


def _journal(tmp_path: Path) -> set[str]:
    path = tmp_path / "journal.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["event"]["provider_event_id"] for line in path.read_text().splitlines()}


@pytest.mark.parametrize("stopped", ["serve", "worker"])
async def test_sigterm_with_an_attempt_in_flight_lets_it_finish_and_records_it(tmp_path: Path, stopped: str) -> None:
    """SIGTERM to `serve` (with its worker) or to a separate `worker` while the sink is answering: the attempt
    completes within worker.shutdown_grace, is recorded, and the process exits (the worker with 0; uvicorn ends
    `serve` by raising the signal again once it has shut down, as supervisors expect); nothing is sent twice."""
    port = free_port()
    async with receiver() as crm:
        release = anyio.Event()
        crm.script(Answer(hold=release))
        config = configure(tmp_path, port, crm.url)
        options = ("--no-worker",) if stopped == "worker" else ()
        with (
            gateway_process(config, port, tmp_path / "serve.log", *options) as serve,
            (tmp_path / "worker.log").open("ab") as log,
        ):
            worker = None
            if stopped == "worker":
                command = [sys.executable, "-m", "gateway", "-c", str(config), "worker"]
                worker = await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT)
            raw, headers = signed(1)
            async with httpx.AsyncClient(timeout=10) as client:
                posted = await client.post(f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers)
            assert posted.status_code == 202
            with anyio.fail_after(20):
                await crm.wait_for(1)
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
            else:
                serve.send_signal(signal.SIGTERM)
            await anyio.sleep(0.3)  # the process is stopping, the attempt still in flight
            release.set()
            with anyio.fail_after(20):
                if worker is not None:
                    exit_code = await worker.wait()
                else:
                    exit_code = await anyio.to_thread.run_sync(serve.wait)
        with sqlite3.connect(tmp_path / "gateway.db") as db:
            rows = db.execute("SELECT status, attempts, lease_owner FROM deliveries").fetchall()
    assert exit_code == (0 if stopped == "worker" else -signal.SIGTERM)
    assert rows == [("succeeded", 1, None)]
    assert len(crm.requests) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_sinks_rate_limit_holds_across_two_worker_processes(tmp_path: Path, backend: str) -> None:
    """Two `worker` processes and `serve --no-worker` on one store, a sink limited to 5/s with a burst of 5, a
    backlog of 10 s: the sink sees at most 5/s plus the burst, and about that much."""
    with contextlib.ExitStack() as stack:
        storage = None if backend == "sqlite" else stack.enter_context(postgres_database())
        await _rate_limited_by_two_workers(tmp_path, storage)


async def _rate_limited_by_two_workers(tmp_path: Path, storage: str | None) -> None:
    port, events, per_second, burst = free_port(), 55, 5, 5
    async with receiver() as crm:
        config = configure(tmp_path, port, crm.url)
        text = config.read_text().replace(
            "concurrency: 8,", f"concurrency: 8, rate_limit: {{per_second: {per_second}, burst: {burst}}},"
        )
        if storage is not None:
            text = text.replace(f"sqlite:///{tmp_path}/gateway.db", storage)
        config.write_text(text)
        if storage is not None:
            migrated = await anyio.run_process([sys.executable, "-m", "gateway", "-c", str(config), "migrate"])
            assert migrated.returncode == 0
        command = [sys.executable, "-m", "gateway", "-c", str(config), "worker"]
        with (
            gateway_process(config, port, tmp_path / "serve.log", "--no-worker"),
            (tmp_path / "worker.log").open("ab") as log,
        ):
            async with httpx.AsyncClient(timeout=10) as client:
                for n in range(events):  # the backlog, before any worker runs
                    raw, headers = signed(n)
                    response = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                    )
                    assert response.status_code == 202
            workers = [await anyio.open_process(command, stdout=log, stderr=subprocess.STDOUT) for _ in range(2)]
            try:
                await until(lambda: len(crm.requests) >= events, "the backlog to drain", 60)
            finally:
                for worker in workers:
                    worker.terminate()
                    await worker.wait()
    times = sorted(request.arrived_at for request in crm.requests)
    elapsed = times[-1] - times[0]
    worst = max(
        sum(1 for moment in times if start <= moment < start + 1.0) for start in times
    )  # the most requests in any one second
    print(
        f"\n{'SQLite' if storage is None else 'PostgreSQL'}: {len(times)} deliveries in {elapsed:.2f}s by two "
        f"processes: {(len(times) - burst) / elapsed:.2f}/s after "
        f"the burst (limit {per_second}/s, burst {burst}); at most {worst} in any one second"
    )
    assert len(times) <= per_second * elapsed + burst + 1  # within the rate plus the burst (the first one is free)
    assert worst <= per_second + burst
    assert elapsed >= (events - burst) / per_second - 1  # and it did wait for tokens: not much faster


async def test_a_sink_paused_under_load_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """`serve --processes 2` delivering under load; the sink is paused through the admin API mid-load: within a
    second no process sends to it, webhooks are still acknowledged, and after the resume every event arrives once."""
    port, events = free_port(), 300
    async with receiver() as crm:
        config = configure(tmp_path, port, crm.url)
        with gateway_process(config, port, tmp_path / "gateway.log", "--processes", "2"):
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=10) as client:
                limit = anyio.Semaphore(16)

                async def post(n: int) -> None:
                    raw, headers = signed(n)
                    async with limit:
                        response = await client.post(f"{base}/webhooks/moncreneau", content=raw, headers=headers)
                    assert response.status_code == 202

                async with anyio.create_task_group() as load:
                    for n in range(events // 2):
                        load.start_soon(post, n)
                await until(lambda: len(crm.requests) > 0, "deliveries to flow", 30)
                json_post = {"Content-Type": "application/json"}
                assert (await client.post(f"{base}/admin/v1/sinks/crm/pause", headers=json_post)).status_code == 200
                await anyio.sleep(1.5)  # every process obeys within a second; in-flight attempts finish
                sent_at_pause = len(crm.requests)
                async with anyio.create_task_group() as load:
                    for n in range(events // 2, events):
                        load.start_soon(post, n)
                await anyio.sleep(1.0)
                sent_while_paused = len(crm.requests) - sent_at_pause
                listed = (await client.get(f"{base}/admin/v1/sinks")).json()["sinks"][0]
                assert (await client.post(f"{base}/admin/v1/sinks/crm/resume", headers=json_post)).status_code == 200
                await until(lambda: len(delivered_ids(crm.requests)) == events, "every event delivered", 60)
    received = delivered_ids(crm.requests)
    print(
        f"\n{events} acknowledged; {sent_at_pause} delivered before the pause took hold, {sent_while_paused} while "
        f"paused ({listed['queue_depth']} waiting), then the rest; duplicated {len(more_than_once(received))}"
    )
    assert sent_while_paused == 0 and listed["state"] == "paused" and listed["queue_depth"] > 0
    assert len(received) == events and not more_than_once(received)


async def test_reminders_pending_through_a_sigkill_are_each_sent_once_and_on_time(tmp_path: Path) -> None:
    """Twelve appointments with a reminder due 5 to 10 s after their booking; the gateway is killed right after
    acknowledging them, and started again. The worker polls every 30 s: only its wait for the earliest due
    delivery can send them on time."""
    port, count = free_port(), 12
    async with receiver() as crm:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{tmp_path}/gateway.db"}}
worker: {{poll_interval: 30s}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "{crm.url}"}}}}
routes:
  - events: [appointment.created, appointment.updated]
    sinks: [crm]
    reminders: [24h]
"""
        )
        wall, clock = time.time(), time.monotonic()
        due = {str(n): float(int(wall) + 5 + n // 2) for n in range(count)}
        with gateway_process(config, port, tmp_path / "gateway.log") as process:
            async with httpx.AsyncClient(timeout=10) as client:
                for appointment, at in due.items():
                    body = json.loads(signed(int(appointment))[0])
                    body["data"]["object"]["dateTime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at + 86400))
                    raw = json.dumps(body).encode()
                    headers = {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)}
                    response = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/moncreneau", content=raw, headers=headers
                    )
                    assert response.status_code == 202, response.text
            process.kill()
            process.wait()
        assert time.time() < min(due.values()), "the machine was too slow: the kill came after a reminder was due"

        def reminders() -> list[tuple[str, float]]:
            bodies = [(json.loads(r.body), r.arrived_at) for r in crm.requests]
            return [(b["appointment"]["id"], arrived) for b, arrived in bodies if b["type"] == "appointment.reminder"]

        with gateway_process(config, port, tmp_path / "gateway.log"):
            await until(lambda: len(reminders()) >= count, "every reminder sent", 30)
            await until(lambda: len([r for r in crm.requests]) >= 2 * count, "every booking and reminder", 30)
    sent = reminders()
    lateness = sorted(arrived - clock - (due[appointment] - wall) for appointment, arrived in sent)
    print(f"{len(sent)} reminders after a SIGKILL; lateness min {lateness[0]:.3f}s, max {lateness[-1]:.3f}s")
    assert sorted(appointment for appointment, _ in sent) == sorted(due)  # each once
    assert lateness[0] > -0.05 and lateness[-1] < 1.5
