"""Drain benchmark: how fast a worker empties a backlog of due deliveries, and whether that rate (and the worker's
memory) stays flat as the backlog grows.

    python bench/drain.py --backlog 10000 --backlog 100000

For each size: fill a fresh SQLite store with that many events routed to an http sink (through the store's own
ingest, in batches), then run `appointment-gateway worker` against a local receiver and time it to empty.
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
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, peak_rss_mib, start_receiver  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, action="append", help="backlog sizes to drain (repeatable)")
    args = parser.parse_args()
    sizes = args.backlog or [10_000, 100_000]
    print(f"{'backlog':>10}  {'fill (s)':>9}  {'drain (s)':>9}  {'delivered/s':>11}  {'worker peak RSS (MiB)':>22}")
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
worker: {{poll_interval: 100ms}}
logging: {{level: WARNING}}
sources:
  moncreneau: {{type: moncreneau, secrets: [bench-secret]}}
sinks:
  crm: {{type: http, options: {{url: "http://127.0.0.1:{receiver_port}/"}}, concurrency: 32, timeout: 10s}}
routes:
  - sinks: [crm]
"""
        )
        began = time.monotonic()
        worker = subprocess.Popen(
            [PYTHON, "-m", "gateway", "-c", str(config), "worker"],
            stdout=(work / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            while httpx.get(f"http://127.0.0.1:{receiver_port}/count").json()["received"] < size:
                time.sleep(0.2)
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker stopped; see {work / 'worker.log'}")
            drained = time.monotonic() - began
            rss = peak_rss_mib(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait()
            receiver.terminate()
            receiver.wait()
        print(f"{size:>10}  {filled:>9.1f}  {drained:>9.1f}  {size / drained:>11.0f}  {rss:>22.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
