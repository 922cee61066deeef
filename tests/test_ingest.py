"""The webhook path from a posted body to committed rows: parsing, what is stored, answered and counted."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config import Config
from tests.conftest import MONCRENEAU_SECRET, ROUTED, Running, moncreneau_request, running_gateway
from tests.helpers import metric, sample, stored

pytestmark = pytest.mark.anyio


async def test_a_lone_surrogate_is_accepted_as_a_replacement_character(gateway: Running) -> None:
    body = sample("moncreneau.json", "appointment.created")
    body["data"]["object"]["name"] = "Jean \ud800 Dupont"
    raw = json.dumps(body).encode()  # ensure_ascii writes the escape "\ud800", as a provider would
    assert b"\\ud800" in raw
    response = await gateway.client.post("/webhooks/moncreneau", content=raw, headers=moncreneau_request(body)[1])
    assert response.status_code == 202, response.text
    record = await gateway.store.get_event(response.json()["event_id"])
    assert record is not None and record.canonical is not None
    assert json.loads(record.canonical)["customer"]["name"] == "Jean \ufffd Dupont"


@pytest.mark.parametrize("created", [20260125, "20260125", 1769351400.5])
async def test_a_number_where_a_date_time_belongs_gets_400_naming_the_field(gateway: Running, created: Any) -> None:
    body = sample("moncreneau.json", "appointment.created")
    body["created"] = created
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("created: expected an ISO 8601 date-time")
    assert await stored(gateway) == 0


async def test_types_the_gateway_does_not_map_share_one_metric_label(gateway: Running) -> None:
    for n in range(30):
        body = {"id": f"evt_t{n}", "type": f"made.up.{n}", "created": "2026-01-21T14:30:00Z", "data": {"object": {}}}
        assert (await gateway.post_moncreneau(body)).status_code == 202
    exposition = (await gateway.client.get("/metrics")).text
    assert "made.up" not in exposition
    assert metric(gateway, "gateway_webhooks_total", source="moncreneau", type="other", outcome="unmapped") == 30


async def test_an_event_older_than_the_sources_window_is_acknowledged_and_delivered_nowhere(
    write_config: Callable[..., Config],
) -> None:
    window = f"sources:\n  moncreneau: {{type: moncreneau, secrets: [{MONCRENEAU_SECRET}], stale_after: 1d}}\n"
    config = write_config(window + ROUTED, with_sources=False)
    async with running_gateway(config) as gateway:
        gateway.clock.advance(datetime(2026, 1, 24, 16, 46, tzinfo=UTC).timestamp() - gateway.clock.now())
        old = await gateway.post_moncreneau(sample("moncreneau.json", "appointment.cancelled"))
        assert old.status_code == 202 and old.json()["status"] == "stale"
        deliveries = await gateway.store.deliveries(old.json()["event_id"])
        assert {(d.sink, d.status, d.dead_reason) for d in deliveries} == {
            ("journal", "skipped", "stale"),
            ("crm", "skipped", "stale"),
        }
        assert await gateway.worker.run_due() == 0
        labels = {"source": "moncreneau", "type": "appointment.cancelled", "outcome": "stale"}
        assert metric(gateway, "gateway_webhooks_total", **labels) == 1
        created = sample("moncreneau.json", "appointment.created")
        created["created"] = "2026-01-24T12:00:00Z"  # five hours ago: within the window
        assert (await gateway.post_moncreneau(created)).json()["status"] == "accepted"
