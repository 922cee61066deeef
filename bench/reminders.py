"""Reminders benchmark: what a million scheduled reminders cost while they wait, against an empty store.

    .venv/bin/python bench/reminders.py [--reminders 1000000] [--duration 15] [--idle 30] [--due 200]
                                        [--postgres URL --processes 2]

Measured in one sitting, each figure beside its baseline:
- ingest: `serve` flat out under wrk with bookings whose route schedules four reminders each (72 h, 48 h, 24 h and
  2 h before, all far ahead), against the same load with a route scheduling none;
- then the store is filled to `--reminders` pending reminders through the store's own ingest (the HTTP rate is
  measured above; a million webhooks would only repeat it);
- idle: `serve` on that store, and on an empty one, doing nothing for `--idle` seconds: its CPU (% of one core) and
  resident memory;
- lateness: `--due` more bookings whose 24 h reminder falls due 5 to 10 s later, posted to each: how long after its
  due time each reminder reached the receiver (median, p99, max);
- a /metrics scrape's time (it counts each sink's pending deliveries, reminders included).

With `--postgres URL` (an empty database the benchmark may fill) the store is PostgreSQL and `serve` runs
`--processes` processes. Needs wrk (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    PYTHON,
    SECRET,
    cpu_seconds,
    free_port,
    rss_mib,
    scrape,
    start,
    start_receiver,
    stop,
    wrk,
)
from gateway.config import StorageConfig  # noqa: E402
from gateway.signing import hmac_sha256_hex  # noqa: E402
from gateway.sources.base import load_samples  # noqa: E402
from gateway.store import store_for  # noqa: E402
from gateway.store.base import EventRecord, FollowUp, ScheduledReminder, Store  # noqa: E402

OFFSETS = (72 * 3600.0, 48 * 3600.0, 24 * 3600.0, 2 * 3600.0)
AHEAD = timedelta(days=30)


def booking(n: int, starts: datetime) -> dict[str, object]:
    body = load_samples("moncreneau.json")["appointment.created"]
    body["id"], body["created"] = f"evt_{n}", datetime.now(UTC).isoformat()
    body["data"]["object"].update(id=n, dateTime=starts.strftime("%Y-%m-%dT%H:%M:%S"))
    return body


def signed(body: dict[str, object]) -> tuple[str, str]:
    """The body as sent, and its X-Moncreneau-Signature."""
    raw = json.dumps(body, separators=(",", ":"))
    return raw, f"sha256={hmac_sha256_hex(SECRET, raw.encode())}"


def signed_line(body: dict[str, object]) -> str:
    raw, signature = signed(body)
    return f"/webhooks/moncreneau\tX-Moncreneau-Signature\t{signature}\t{raw}\n"


def write_bookings(path: Path, count: int, first: int) -> None:
    """Bookings a month ahead, each a minute after the last: their reminders all wait."""
    start = datetime.now(UTC) + AHEAD
    with path.open("w") as out:
        for n in range(first, first + count):
            out.write(signed_line(booking(n, start + timedelta(minutes=n))))


def configure(work: Path, storage: str, receiver_port: int, port: int, *, reminders: bool) -> Path:
    config = work / f"config-{'reminders' if reminders else 'none'}.yaml"
    scheduled = f"\n    reminders: [{', '.join(f'{o:g}s' for o in OFFSETS)}]" if reminders else ""
    config.write_text(
        f"""
server: {{port: {port}}}
storage: {{url: "{storage}"}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [{SECRET}], timezone: Africa/Conakry}}
sinks:
  crm: {{type: http, options: {{url: "http://127.0.0.1:{receiver_port}/"}}, concurrency: 16}}
routes:
  - events: [appointment.created, appointment.updated]
    sinks: [crm]{scheduled}
"""
    )
    return config


async def fill(storage: str, bookings: int, first: int) -> None:
    """`bookings` more events with their four reminders, through the store's own ingest (concurrent ingests share
    group commits)."""
    store: Store = store_for(StorageConfig(url=storage, pool_max=16, busy_timeout=120))  # they queue for the pool
    await store.open()
    start = datetime.now(UTC) + AHEAD
    now = time.time()

    async def one(n: int) -> None:
        starts = (start + timedelta(minutes=n)).timestamp()
        record = EventRecord(
            id=str(uuid.uuid4()),
            source="moncreneau",
            provider_event_id=f"evt_{n}",
            provider_event_type="appointment.created",
            provider_delivery_id=None,
            type="appointment.created",
            occurred_at=now,
            received_at=now,
            ordering_key=f"moncreneau:appointment:{n}",
            canonical="{}",
            raw_body=b"{}",
            headers={},
            appointment_id=str(n),
        )
        reminders = tuple(ScheduledReminder("crm", None, offset, starts - offset) for offset in OFFSETS)
        await store.ingest(record, [], follow_up=FollowUp(reminders=reminders))

    try:
        for batch in range(first, first + bookings, 2000):
            async with anyio.create_task_group() as tasks:
                for n in range(batch, min(first + bookings, batch + 2000)):
                    tasks.start_soon(one, n)
    finally:
        await store.close()


def serve(config: Path, port: int, work: Path, processes: int) -> subprocess.Popen[bytes]:
    """`serve` on `config`, once it is ready."""
    command = [PYTHON, "-m", "gateway", "-c", str(config), "serve", "--processes", str(processes)]
    gateway = start(command, port, work / f"serve-{port}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not get ready; see {work}")


def idle_and_lateness(
    config: Path, port: int, work: Path, args: argparse.Namespace, receiver_url: str, first: int
) -> tuple[float, float, list[float], float]:
    """CPU (% of a core) and RSS (MiB) of an idle `serve`, the lateness of `--due` reminders due soon, and the
    median time of a /metrics scrape (which counts each sink's queue)."""
    gateway = serve(config, port, work, args.processes)
    try:
        time.sleep(3)  # start-up done
        cpu_before = cpu_seconds(gateway.pid)
        time.sleep(args.idle)
        cpu = (cpu_seconds(gateway.pid) - cpu_before) * 100 / args.idle
        rss = rss_mib(gateway.pid, "VmRSS")
        scrapes = []
        for _ in range(5):
            began = time.perf_counter()
            httpx.get(f"http://127.0.0.1:{port}/metrics").raise_for_status()
            scrapes.append(time.perf_counter() - began)
        before = len(httpx.get(f"{receiver_url}/lateness").json())
        soon = datetime.now(UTC) + timedelta(hours=24, seconds=5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for n in range(args.due):
                raw, signature = signed(booking(first + n, soon + timedelta(seconds=5 * n / args.due)))
                answer = client.post("/webhooks/moncreneau", content=raw, headers={"X-Moncreneau-Signature": signature})
                answer.raise_for_status()
        deadline = time.monotonic() + 60
        while len(late := httpx.get(f"{receiver_url}/lateness").json()) < before + args.due:
            if time.monotonic() > deadline:
                raise RuntimeError("the reminders due soon did not all arrive within a minute")
            time.sleep(0.2)
        return cpu, rss, late[before:], statistics.median(scrapes)
    finally:
        stop([gateway])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reminders", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=15, help="seconds of each ingest load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--idle", type=int, default=30)
    parser.add_argument("--due", type=int, default=200)
    parser.add_argument("--postgres", help="an empty PostgreSQL database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-reminders-"))
    receiver, receiver_port = start_receiver(work)
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    requests = work / "bookings.tsv"
    write_bookings(requests, 200_000, first=0)
    results = {}
    try:
        for label, reminders in (("no reminders", False), ("4 reminders each", True)):
            storage = args.postgres or f"sqlite:///{work}/{'reminders' if reminders else 'empty'}.db"
            port = free_port()
            config = configure(work, storage, receiver_port, port, reminders=reminders)
            if args.postgres:
                anyio.run(_reset, args.postgres)
            gateway = serve(config, port, work, args.processes)
            try:
                accepted_before = scrape(f"http://127.0.0.1:{port}/metrics")[0]
                load = wrk(f"http://127.0.0.1:{port}", requests, args.connections, args.duration)
                accepted = scrape(f"http://127.0.0.1:{port}/metrics")[0] - accepted_before
            finally:
                stop([gateway])
            results[label] = {"rps": load["rps"], "p99": load["p99"], "accepted": accepted}
            print(f"ingest, {label}: {load['rps']:.0f} requests/s, p99 {load['p99']:.1f} ms, {accepted} accepted")
        # the store with reminders: filled to the target, then idle and lateness on it and on an empty store
        pending = results["4 reminders each"]["accepted"] * len(OFFSETS)
        more = max(0, args.reminders - pending) // len(OFFSETS)
        storage = args.postgres or f"sqlite:///{work}/reminders.db"
        began = time.monotonic()
        anyio.run(fill, storage, more, 1_000_000)
        print(f"filled to {pending + more * len(OFFSETS)} pending reminders in {time.monotonic() - began:.0f}s")
        full = idle_and_lateness(
            configure(work, storage, receiver_port, port := free_port(), reminders=True),
            port,
            work,
            args,
            receiver_url,
            5_000_000,
        )
        if args.postgres:
            anyio.run(_reset, args.postgres)
        empty_storage = args.postgres or f"sqlite:///{work}/idle-empty.db"
        empty = idle_and_lateness(
            configure(work, empty_storage, receiver_port, port := free_port(), reminders=True),
            port,
            work,
            args,
            receiver_url,
            6_000_000,
        )
    finally:
        receiver.terminate()
        receiver.wait()
    base, loaded = results["no reminders"], results["4 reminders each"]
    print()
    print(f"{'':34}{'empty store':>14}{f'{pending + more * len(OFFSETS):,} reminders':>20}{'ratio':>8}")
    ratio = loaded["rps"] / base["rps"]
    print(f"{'ingest requests/s (wrk, flat out)':34}{base['rps']:>14.0f}{loaded['rps']:>20.0f}{ratio:>8.2f}")
    print(f"{'idle CPU, % of one core':34}{empty[0]:>14.2f}{full[0]:>20.2f}")
    print(f"{'resident memory, MiB':34}{empty[1]:>14.0f}{full[1]:>20.0f}{full[1] / empty[1]:>8.2f}")
    print(f"{'/metrics scrape, ms (median of 5)':34}{empty[3] * 1000:>14.1f}{full[3] * 1000:>20.1f}")
    for name, pick in (("median", statistics.median), ("p99", _p99), ("max", max)):
        print(f"{f'lateness {name}, ms':34}{pick(empty[2]) * 1000:>14.1f}{pick(full[2]) * 1000:>20.1f}")
    return 0


def _p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


async def _reset(url: str) -> None:
    """Empty the PostgreSQL database and bring its schema up (a fresh store for each measurement)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    store = store_for(StorageConfig(url=url))
    await store.migrate()


if __name__ == "__main__":
    raise SystemExit(main())
