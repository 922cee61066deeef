"""Prometheus metrics, one registry per application so that several gateways (or tests) never share counts.

`serve --processes N` puts prometheus_client in its multiprocess mode: each process writes its values to files in a
directory they share, and whichever process answers a scrape reads them all.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.clock import Clock, SystemClock
from gateway.store.base import Outcome, SinkStats
from gateway.traffic import Traffic

LATEST: Final = "mostrecent"  # the gauges are read from the store at each scrape: the last process to read it is right
SHARED_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before prometheus_client is imported) to a fresh directory, it turns on the multiprocess mode."""


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, clock: Clock | None = None) -> None:
        self.traffic = Traffic(clock or SystemClock())
        """The same webhooks and attempts, per minute, for the console's overview."""
        self.registry = registry = CollectorRegistry()
        self.webhooks = Counter(
            "gateway_webhooks",
            "Webhooks answered, by source, provider event type (empty before it is known) and outcome: accepted, "
            "duplicate, unmapped, storage_unavailable, or the reason it was rejected.",
            ["source", "type", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "gateway_delivery_attempts",
            "Delivery attempts by sink and outcome (succeeded, retryable, permanent).",
            ["sink", "outcome"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "gateway_dead_lettered",
            "Deliveries moved to the dead letters by this process, by sink.",
            ["sink"],
            registry=registry,
        )
        self.withheld = Counter(
            "gateway_deliveries_withheld",
            "Deliveries skipped (too late, quiet hours, no recipient...) or superseded (withdrawn as stale) by this "
            "process, by sink, status and reason; never dead letters.",
            ["sink", "status", "reason"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "gateway_attempt_duration_seconds",
            "How long delivery attempts take, by sink.",
            ["sink"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Deliveries not yet done (waiting or in flight), by sink.",
            ["sink"],
            registry=registry,
            multiprocess_mode=LATEST,
        )
        self.queue_due = Gauge(
            "gateway_queue_due",
            "Deliveries due now and not claimed, by sink.",
            ["sink"],
            registry=registry,
            multiprocess_mode=LATEST,
        )
        self.oldest_due = Gauge(
            "gateway_oldest_due_seconds",
            "How long the oldest due, unclaimed delivery has waited past its due time, by sink.",
            ["sink"],
            registry=registry,
            multiprocess_mode=LATEST,
        )
        self.dead_letters = Gauge(
            "gateway_dead_letters",
            "Dead letters currently kept, by sink.",
            ["sink"],
            registry=registry,
            multiprocess_mode=LATEST,
        )
        self.alerts = Counter(
            "gateway_alerts_total",
            "The gateway's own events (gateway.*) emitted, by type.",
            ["type"],
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "gateway_rate_limit_waits_total",
            "Claims cut short because the sink's shared rate limit had no token, by sink.",
            ["sink"],
            registry=registry,
        )
        self.circuit_open = Gauge(
            "gateway_sink_circuit_open",
            "1 while the sink's circuit is open in this worker process (failing: probed, not used), else 0.",
            ["sink"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.sink_paused = Gauge(
            "gateway_sink_paused",
            "1 while the sink is paused (by an operator, or after its credentials were refused), else 0.",
            ["sink"],
            registry=registry,
            multiprocess_mode=LATEST,
        )
        self.storage_up = Gauge(
            "gateway_storage_up",
            "1 when the last scrape could read the store, else 0.",
            registry=registry,
            multiprocess_mode=LATEST,
        )

    def answered(self, source: str, provider_type: str, outcome: str) -> None:
        """A webhook of `source` answered with `outcome` (accepted, duplicate, or why it was refused)."""
        self.webhooks.labels(source, provider_type, outcome).inc()
        self.traffic.count("webhook", source, outcome)

    def attempted(self, sink: str, outcome: Outcome, seconds: float) -> None:
        self.attempts.labels(sink, outcome).inc()
        self.attempt_seconds.labels(sink).observe(seconds)
        self.traffic.count("attempt", sink, outcome)

    def observe_queues(
        self, sinks: Iterable[str], stats: dict[str, SinkStats], paused: Container[str] = frozenset()
    ) -> None:
        """Set the queue and state gauges of every configured sink (zero for a sink with nothing queued)."""
        for sink in sinks:
            self.sink_paused.labels(sink).set(1 if sink in paused else 0)
            current = stats.get(sink, SinkStats(0, 0, 0.0, 0))
            self.queue_depth.labels(sink).set(current.pending)
            self.queue_due.labels(sink).set(current.due)
            self.oldest_due.labels(sink).set(current.oldest_due_age)
            self.dead_letters.labels(sink).set(current.dead)

    def exposition(self) -> bytes:
        if shared := os.environ.get(SHARED_DIRECTORY):
            every_process = CollectorRegistry()
            MultiProcessCollector(every_process, path=shared)  # type: ignore[no-untyped-call]
            return generate_latest(every_process)
        return generate_latest(self.registry)
