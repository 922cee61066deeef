"""Drain benchmark: how fast a worker empties a backlog of due deliveries, and whether that rate (and the worker's
memory) stays flat as the backlog grows.

    .venv/bin/python bench/drain.py --backlog 10000 --backlog 1000000

For each size: fill a fresh SQLite store with that many events routed to an http sink (through the store's own
ingest, in batches), then run `appointment-gateway worker` against a local receiver and time it to empty, from the
first delivery to the last. The rate over the first and the last tenth of the backlog, and the worker's resident
memory (MiB) at 10% and 90%, show whether either depends on the backlog's size; CPU ms is the worker's CPU time
per delivery (start-up included).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, cpu_seconds, rss_mib, start_receiver  # noqa: E402
from gateway.routing import Target  # noqa: E402
from gateway.sources.base import SourceOptions, load_samples  # noqa: E402
from gateway.sources.moncreneau import Moncreneau  # noqa: E402
from gateway.store.base import EventRecord  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402


async def fill(database: Path, count: int) -> None:
    """`count` real canonical events, one due delivery each, stored through the store's own ingest."""
    store = SQLiteStore(database)
    await store.open()
    now = datetime.now(UTC)
    source = Moncreneau("moncreneau", SourceOptions(type="moncreneau", secrets=["s"], timezone="Africa/Conakry"))
    sample = source.parse(load_samples("moncreneau.json")["appointment.created"], {}, event_id="x", received_at=now)
    assert sample.event is not None
    template = sample.event.model_dump(mode="json", by_alias=True)

    async def one(n: int) -> None:
        event_id = str(uuid.uuid4())
        canonical = {**template, "id": event_id, "provider_event_id": f"evt_{n}"}
        canonical["appointment"] = {**template["appointment"], "id": str(n)}
        record = EventRecord(
            id=event_id,
            source="moncreneau",
            provider_event_id=f"evt_{n}",
            provider_event_type="appointment.created",
            provider_delivery_id=None,
            type="appointment.created",
            occurred_at=now.timestamp(),
            received_at=now.timestamp(),
            ordering_key=f"moncreneau:appointment:{n}",
            canonical=json.dumps(canonical),
            raw_body=b"{}",
            headers={},
        )
        await store.ingest(record, [Target("crm")])

    for first in range(0, count, 2000):  # concurrent ingests share group commits
        async with anyio.create_task_group() as tasks:
            for n in range(first, min(count, first + 2000)):
                tasks.start_soon(one, n)
    await store.close()


@dataclass
class Drain:
    """Deliveries counted at the receiver over time, from the first one (the worker's start-up is not drain time),
    with the worker's resident memory at each reading."""

    size: int
    readings: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, received, RSS MiB)
    peak_rss: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.readings[-1][0] - self.readings[0][0]

    def _reading(self, fraction: float) -> tuple[float, int, float]:
        return next(r for r in self.readings if r[1] >= fraction * self.size)

    def rate(self, start: float, end: float) -> float:
        """Deliveries per second between two fractions of the backlog."""
        (t0, n0, _), (t1, n1, _) = self._reading(start), self._reading(end)
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")

    def rss_at(self, fraction: float) -> float:
        return self._reading(fraction)[2]


def watch(worker: subprocess.Popen[bytes], count_url: str, size: int, work: Path) -> Drain:
    drain = Drain(size)
    received = 0
    while received < size:
        time.sleep(0.1)
        if worker.poll() is not None:
            raise RuntimeError(f"the worker stopped; see {work / 'worker.log'}")
        received = httpx.get(count_url).json()["received"]
        if received:
            drain.readings.append((time.monotonic(), received, rss_mib(worker.pid, "VmRSS")))
    drain.peak_rss = rss_mib(worker.pid)
    drain.cpu_seconds = cpu_seconds(worker.pid)
    return drain


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, action="append", help="backlog sizes to drain (repeatable)")
    args = parser.parse_args()
    sizes = args.backlog or [10_000, 100_000]
    print(
        f"{'backlog':>10}  {'fill (s)':>9}  {'drain (s)':>9}  {'delivered/s':>11}  {'first 10%':>9}  {'last 10%':>9}"
        f"  {'RSS@10%':>9}  {'RSS@90%':>9}  {'peak RSS':>9}  {'CPU ms':>7}"
    )
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="gateway-drain-"))
        began = time.monotonic()
        anyio.run(fill, work / "gateway.db", size)
        filled = time.monotonic() - began
        receiver, receiver_port = start_receiver(work)
        config = work / "config.yaml"
        config.write_text(
            f"""
storage: {{url: "sqlite:///{work}/gateway.db"}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [bench-secret]}}
sinks:
  crm: {{type: http, options: {{url: "http://127.0.0.1:{receiver_port}/"}}, concurrency: 32, timeout: 10s}}
routes:
  - sinks: [crm]
"""
        )
        worker = subprocess.Popen(
            [PYTHON, "-m", "gateway", "-c", str(config), "worker"],
            stdout=(work / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            drain = watch(worker, f"http://127.0.0.1:{receiver_port}/count", size, work)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait()
            receiver.terminate()
            receiver.wait()
        rates = f"{drain.rate(0, 1):>11.0f}  {drain.rate(0, 0.1):>9.0f}  {drain.rate(0.9, 1):>9.0f}"
        memory = f"{drain.rss_at(0.1):>9.0f}  {drain.rss_at(0.9):>9.0f}  {drain.peak_rss:>9.0f}"
        cpu = f"{drain.cpu_seconds * 1000 / size:>7.2f}"
        print(f"{size:>10}  {filled:>9.1f}  {drain.seconds:>9.1f}  {rates}  {memory}  {cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
