from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.config import Config
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, receiver
from tests.conftest import running_gateway
from tests.helpers import metric

pytestmark = pytest.mark.anyio


async def test_metrics_after_known_traffic(write_config: Callable[[str], Config]) -> None:
    async with receiver() as crm:
        crm.script(Answer(503), Answer(400, body=b"no"))
        config = write_config(
            f"""
            sinks:
              crm: {{type: http, options: {{url: "{crm.url}"}}, retry: {{schedule: [1m]}}, concurrency: 1}}
              idle: {{type: file, options: {{path: unused.jsonl}}}}
            routes:
              - sinks: [crm]
            """
        )
        async with running_gateway(config) as gateway:
            for n in range(3):
                body = load_samples("moncreneau.json")["appointment.created"]
                body["id"], body["data"]["object"]["id"] = f"evt_{n}", n
                assert (await gateway.post_moncreneau(body)).status_code == 202
            await gateway.post_yapp(load_samples("yappointment.json")["booking.created"])
            assert await gateway.worker.run_due() == 1  # 503: retry in a minute
            assert await gateway.worker.run_due() == 1  # 400: dead
            gateway.clock.advance(30)
            await gateway.client.get("/metrics")  # the gauges are read from the store at scrape time
            assert metric(gateway, "gateway_queue_depth", sink="crm") == 3  # evt_0 retrying, evt_2 and yApp's due
            assert metric(gateway, "gateway_queue_due", sink="crm") == 2
            assert metric(gateway, "gateway_oldest_due_seconds", sink="crm") == 30
            assert metric(gateway, "gateway_dead_letters", sink="crm") == 1
            assert metric(gateway, "gateway_queue_depth", sink="idle") == 0
            assert metric(gateway, "gateway_storage_up") == 1
            gateway.clock.advance(30)
            assert await gateway.worker.run_due() == 1
            counts = {
                outcome: metric(gateway, "gateway_delivery_attempts_total", sink="crm", outcome=outcome)
                for outcome in ("succeeded", "retryable", "permanent")
            }
            assert counts == {"succeeded": 1, "retryable": 1, "permanent": 1}
            assert metric(gateway, "gateway_dead_lettered_total", sink="crm") == 1
            assert metric(gateway, "gateway_attempt_duration_seconds_count", sink="crm") == 3
            assert (
                metric(
                    gateway,
                    "gateway_webhooks_total",
                    source="moncreneau",
                    type="appointment.created",
                    outcome="accepted",
                )
                == 3
            )
            assert (
                metric(gateway, "gateway_webhooks_total", source="yapp", type="booking.created", outcome="accepted")
                == 1
            )
            await gateway.store.close()
            await gateway.client.get("/metrics")
            assert metric(gateway, "gateway_storage_up") == 0
