"""Store benchmark: what the SQLite store costs per delivered event in steady state, CPU and bytes written.

    .venv/bin/python bench/store.py [--prefill 50000] [--events 10000] [--rounds 3]
                                    [--baseline DIR | --postgres URL]

A fresh store is filled with `--prefill` delivered events (its indexes as a store in service has them); then 64
tasks each ingest an event, handed off to a worker as the webhook path does, and record its successful attempt at
once, `--events` in all, in the store's group commits. Printed per event: wall time, the process's user and system
CPU (the engine's threads included) and the bytes it wrote (the write-ahead log and the checkpoints into the file),
median of the rounds. With `--baseline DIR` (a checkout of another version, from the handoff on, its store's API),
the two alternate in separate processes and their ratios are printed. With `--postgres URL` (a database this may fill;
`pip install -e '.[postgres]'`), this checkout's PostgreSQL store alternates with its SQLite store instead: the
gateway's own CPU per event on each (the server's is not counted, nor what it writes), each round adding to the
database what it ingests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
TASKS = 64
RAW = b'{"raw": "' + b"x" * 900 + b'"}'
CANONICAL = json.dumps({"canonical": "x" * 1200})


def written_bytes() -> int:
    """Bytes this process has caused to be written to storage so far (/proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"])


async def measure(prefill: int, events: int, postgres: str | None) -> dict[str, float]:
    """One run, in this process, of the checkout first on sys.path: on a fresh SQLite file, or on `postgres`."""
    from gateway.routing import Target
    from gateway.store.base import AttemptRecord, EventRecord, Handoff, Store, Transition
    from gateway.store.sqlite import SQLiteStore

    def record(n: int) -> EventRecord:
        """Event `n`, of a random appointment and customer: in service they arrive in no order of their ids."""
        now = time.time()
        appointment, customer = random.randrange(10**9), random.randrange(10**8)
        return EventRecord(
            id=str(uuid.uuid4()),
            source="moncreneau",
            provider_event_id=f"evt_{uuid.uuid4().hex}",  # as random as providers' ids are
            provider_event_type="appointment.created",
            provider_delivery_id="d",
            type="appointment.created",
            occurred_at=now,
            received_at=now,
            ordering_key=f"moncreneau:appointment:{appointment}",
            canonical=CANONICAL,
            raw_body=RAW,
            headers={"x-moncreneau-event": "appointment.created"},
            appointment_id=str(appointment),
            customer_phone=f"+2246{customer:08d}",
            customer_email=f"customer.{customer}@example.gn",
        )

    async def deliver(store: Store, n: int) -> None:
        handoff = Handoff("bench", time.time() + 60, frozenset({"crm"}))
        stored = await store.ingest(record(n), [Target("crm")], handoff=handoff)
        for claimed in stored.leased:
            attempt = AttemptRecord(1, time.time(), 1.0, "succeeded", 200)
            await store.record_attempt(claimed.id, "bench", attempt, Transition("succeeded"), now=time.time())

    async def load(store: Store, first: int, count: int) -> None:
        async def task(k: int) -> None:
            for n in range(first + k, first + count, TASKS):
                await deliver(store, n)

        async with anyio.create_task_group() as tasks:
            for k in range(TASKS):
                tasks.start_soon(task, k)

    store: Store
    if postgres is None:
        store = SQLiteStore(Path(tempfile.mkdtemp(prefix="gateway-store-bench-")) / "gateway.db")
    else:
        from gateway.store.postgres import PostgresStore

        store = PostgresStore(postgres)
        await store.migrate()
    await store.open()
    try:
        await load(store, 0, prefill)
        usage, written, began = resource.getrusage(resource.RUSAGE_SELF), written_bytes(), time.perf_counter()
        await load(store, prefill, events)
        after = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "wall us": (time.perf_counter() - began) * 1e6 / events,
            "user CPU us": (after.ru_utime - usage.ru_utime) * 1e6 / events,
            "system CPU us": (after.ru_stime - usage.ru_stime) * 1e6 / events,
            "KiB written": (written_bytes() - written) / 1024 / events,
        }
    finally:
        await store.close()


def run_in(checkout: Path, args: argparse.Namespace, postgres: str | None = None) -> dict[str, float]:
    """One run in a process of its own, importing the gateway of `checkout` (on `postgres`, when given)."""
    command = [sys.executable, "-P", __file__, "--one", "--prefill", str(args.prefill), "--events", str(args.events)]
    command += ["--postgres", postgres] if postgres else []
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=environment).stdout
    figures: dict[str, float] = json.loads(output.splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prefill", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", type=Path, help="a checkout of another version to alternate with")
    baseline.add_argument("--postgres", help="a PostgreSQL database to run this checkout's store on, beside SQLite")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop  # as `serve` runs

        print(json.dumps(uvloop.run(measure(args.prefill, args.events, args.postgres))))
        return 0
    if args.postgres:
        installs = {"postgres": (ROOT, args.postgres), "sqlite": (ROOT, None)}
    else:
        installs = {"this": (ROOT, None), **({"baseline": (args.baseline.resolve(), None)} if args.baseline else {})}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in installs}
    for number in range(args.rounds):
        order = list(installs) if number % 2 == 0 else list(reversed(installs))
        for name in order:
            checkout, postgres = installs[name]
            figures = run_in(checkout, args, postgres)
            runs[name].append(figures)
            print(f"round {number + 1}, {name}: " + ", ".join(f"{key} {value:.1f}" for key, value in figures.items()))
    print(f"\nmedian of {args.rounds}, per event ({args.prefill} delivered before, {args.events} measured)")
    names = list(installs)
    print(f"{'':<16}" + "".join(f"{name:>12}" for name in names) + ("       ratio" if len(names) == 2 else ""))
    for key in runs[names[0]][0]:
        medians = [statistics.median(run[key] for run in runs[name]) for name in names]
        ratio = f"{medians[0] / medians[1]:>12.2f}" if len(names) == 2 and medians[1] else ""
        print(f"{key:<16}" + "".join(f"{value:>12.1f}" for value in medians) + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
