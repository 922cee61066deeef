"""Prometheus metrics, one registry per application so that several gateways (or tests) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "gateway_webhooks",
            "Webhooks answered, by source and outcome (accepted, duplicate, unmapped, or the rejection reason).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.unmapped = Counter(
            "gateway_unmapped_events",
            "Verified events stored but routed nowhere because their type is not mapped, by provider type.",
            ["source", "provider_event_type"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
