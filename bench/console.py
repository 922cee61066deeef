"""Console benchmark: how long each console page takes on a store of a million events, beside the same page on an
empty store, in one sitting.

    .venv/bin/python bench/console.py [--events 1000000] [--repeat 9]

The big store is SQLite, filled directly (the webhook path's own rate is bench/run.py's business): `--events`
events over the last 30 days, from two sources, a third of each type (created, updated, cancelled), three per
appointment, each with a varied customer phone and email, and two deliveries (crm, journal), succeeded but for 1% of
the CRM's, dead letters with their attempt; plus a day of traffic counts. `serve` runs on it with its worker off
(nothing moves while pages are timed), then on an empty store; each page is fetched `--repeat` times, signed in,
and its median and slowest times are printed with the ratio to the empty store's median. The target is every page
under 300 ms.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PYTHON, free_port, start, stop  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402

TOKEN = "bench-console-token-0123"
TYPES = ("appointment.created", "appointment.updated", "appointment.cancelled")
DAY = 86400.0
CHUNK = 50_000


def configure(work: Path, name: str, port: int) -> Path:
    config = work / f"{name}.yaml"
    config.write_text(
        f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{work}/{name}.db"}}
admin: {{token: {TOKEN}}}
worker: {{enabled: false}}
sources:
  moncreneau: {{type: moncreneau, secrets: [s]}}
  yapp: {{type: yappointment, secrets: [s]}}
sinks:
  crm: {{type: http, options: {{url: "http://127.0.0.1:9/crm"}}}}
  journal: {{type: file, options: {{path: "{work}/journal.jsonl"}}}}
routes:
  - sinks: [crm, journal]
"""
    )
    return config


def fill(path: Path, events: int) -> dict[str, str]:
    """`events` events with their deliveries, written straight into the schema; what the timed pages look up."""
    anyio.run(_create_schema, path)
    now = time.time()
    db = sqlite3.connect(path)
    picked: dict[str, str] = {}
    for first in range(0, events, CHUNK):
        rows, deliveries, attempts = [], [], []
        for n in range(first, min(events, first + CHUNK)):
            event_id, source = str(uuid.uuid4()), ("moncreneau", "yapp")[n % 2]
            received = now - 30 * DAY * (events - n) / events
            phone, appointment = f"+2246{n:08d}", str(n // 3)
            rows.append(
                (
                    event_id,
                    source,
                    f"evt_{n}",
                    TYPES[n % 3],
                    TYPES[n % 3],
                    received - 1,
                    received,
                    f"{source}:appointment:{appointment}",
                    json.dumps({"type": TYPES[n % 3]}),
                    b"{}",
                    "{}",
                    appointment,
                    phone,
                    f"customer{n}@example.org",
                )
            )
            for sink in ("crm", "journal"):
                dead = sink == "crm" and n % 100 == 7
                delivery_id = str(uuid.uuid4())
                deliveries.append(
                    (
                        delivery_id,
                        event_id,
                        sink,
                        received - 1,
                        received,
                        "dead" if dead else "succeeded",
                        1,
                        received,
                        "max_attempts: 1 attempts made" if dead else None,
                        received + 1,
                    )
                )
                attempts.append(
                    (
                        delivery_id,
                        1,
                        received,
                        12.5,
                        "retryable" if dead else "succeeded",
                        503 if dead else 200,
                        "503 Service Unavailable" if dead else None,
                    )
                )
            if n == events // 2:
                picked = {"event": event_id, "phone": phone, "appointment": appointment, "source": source}
        with db:
            db.executemany(
                "INSERT INTO events (id, source, provider_event_id, provider_event_type, type, occurred_at,"
                " received_at, ordering_key, canonical, raw_body, headers, appointment_id, customer_phone,"
                " customer_email) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO deliveries (id, event_id, sink, occurred_at, created_at, status, attempts,"
                " next_attempt_at, dead_reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                deliveries,
            )
            db.executemany(
                "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, status_code, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                attempts,
            )
        print(f"  filled {min(events, first + CHUNK):,} events", end="\r", flush=True)
    minute = int(now // 60)
    with db:
        db.executemany(
            "INSERT INTO traffic (minute, kind, name, outcome, count) VALUES (?, ?, ?, ?, ?)",
            [
                (m, kind, name, outcome, 23)
                for m in range(minute - 1440, minute + 1)
                for kind, name, outcome in (
                    ("webhook", "moncreneau", "accepted"),
                    ("webhook", "yapp", "accepted"),
                    ("webhook", "yapp", "invalid_signature"),
                    ("attempt", "crm", "succeeded"),
                    ("attempt", "crm", "retryable"),
                    ("attempt", "journal", "succeeded"),
                )
            ],
        )
    db.execute("ANALYZE")
    db.close()
    print()
    return picked


async def _create_schema(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def pages(picked: dict[str, str]) -> dict[str, str]:
    source, appointment = picked.get("source", "moncreneau"), picked.get("appointment", "0")
    return {
        "overview": "/console/",
        "events": "/console/events",
        "events, 2nd page": "/console/events?cursor={cursor}",
        "events by phone": f"/console/events?customer=%2B{picked.get('phone', '+0')[1:]}",
        "events by source and type": "/console/events?source=yapp&type=appointment.cancelled",
        "events with a dead letter": "/console/events?status=dead",
        "events pending (none is)": "/console/events?status=pending",
        "events of a type none has": "/console/events?type=booking.rescheduled",
        "events of a day, a month ago": "/console/events?since={since}&until={until}",
        "event detail": f"/console/events/{picked.get('event', 'none')}",
        "appointment timeline": f"/console/appointments/{source}/{appointment}",
        "dead letters": "/console/dead-letters",
        "dead letters of crm": "/console/dead-letters?sink=crm",
        "bulk replay dry run": "/console/dead-letters/replay?sink=crm",
        "sinks": "/console/sinks",
        "send test event": "/console/test-event",
    }


def timed(url: str, paths: dict[str, str], repeat: int) -> dict[str, list[float]]:
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/console/sign-in", data={"token": TOKEN})
        first = client.get("/console/events").text
        cursor = re.search(r'cursor=([^"&]+)"', first)
        month_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 29 * DAY))
        day_later = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 28 * DAY))
        values = {"cursor": cursor.group(1) if cursor else "", "since": month_ago, "until": day_later}
        times: dict[str, list[float]] = {}
        for name, path in paths.items():
            target = path.format(**values)
            for _ in range(repeat):
                began = time.perf_counter()
                answer = client.get(target)
                times.setdefault(name, []).append((time.perf_counter() - began) * 1000)
                if answer.status_code not in (200, 404):
                    raise RuntimeError(f"{target}: {answer.status_code} {answer.text[:300]}")
        return times


def measure(work: Path, name: str, picked: dict[str, str], repeat: int) -> dict[str, list[float]]:
    port = free_port()
    gateway = start(
        [PYTHON, "-m", "gateway", "-c", str(configure(work, name, port)), "serve"], port, work / f"{name}.log"
    )
    try:
        return timed(f"http://127.0.0.1:{port}", pages(picked), repeat)
    finally:
        stop([gateway])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        work = Path(folder)
        began = time.monotonic()
        picked = fill(work / "big.db", args.events)
        print(f"filled {args.events:,} events in {time.monotonic() - began:.0f} s")
        anyio.run(_create_schema, work / "empty.db")
        big = measure(work, "big", picked, args.repeat)
        empty = measure(work, "empty", {}, args.repeat)
    print(f"\n{'page':32} {'median ms':>10} {'max ms':>8} {'empty ms':>9} {'ratio':>6}")
    worst = 0.0
    for name, samples in big.items():
        median, baseline = statistics.median(samples), statistics.median(empty[name])
        worst = max(worst, median)
        print(f"{name:32} {median:10.1f} {max(samples):8.1f} {baseline:9.1f} {median / baseline:6.1f}")
    print(f"\nslowest median: {worst:.1f} ms (target: under 300 ms)")
    return 0 if worst < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
