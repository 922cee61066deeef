"""The gateway's own events, routed like any event: to staff by email (a real SMTP server, aiosmtpd)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config import Config
from gateway.operations import DeadLetterFilter, EventFilter, Pause
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.conftest import Running, running_gateway
from tests.helpers import Mailbox, free_port, metric

pytestmark = pytest.mark.anyio


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


def alerting(crm_url: str, smtp_port: int, debounce: str = "15m") -> str:
    return f"""
alerts: {{debounce: {debounce}}}
sinks:
  crm:
    type: http
    options: {{url: "{crm_url}"}}
    retry: {{schedule: [1s], max_attempts: 2}}
    circuit: {{failures: 2, within: 1m, probe_every: 30s}}
  staff:
    type: smtp_email
    options:
      host: 127.0.0.1
      port: {smtp_port}
      security: none
      from_email: gw@example.gn
      to: [ops@example.gn]
      locale: en
  journal: {{type: file, options: {{path: journal.jsonl}}}}
routes:
  - {{sources: [moncreneau], sinks: [crm]}}
  - {{sinks: [journal]}}
  - {{events: ["gateway.*"], sinks: [staff]}}
"""


async def post(gateway: Running, n: int) -> str:
    body = load_samples("moncreneau.json")["appointment.created"]
    body["id"], body["data"]["object"]["id"] = f"evt_{n}", n
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 202
    return str(response.json()["event_id"])


async def test_a_circuit_opening_and_closing_is_mailed_to_the_staff_and_only_to_them(
    write_config: Callable[[str], Config], crm: Receiver, mailbox: tuple[Mailbox, int]
) -> None:
    handler, port = mailbox
    crm.default = Answer(503)
    async with running_gateway(write_config(alerting(crm.url, port))) as gateway:
        for n in range(3):
            await post(gateway, n)
        await gateway.worker.run_due()  # three crm deliveries fail: the circuit opens; the journal takes all
        await gateway.worker.run_due()  # the alert goes to the staff
        crm.default = Answer(200)
        gateway.clock.advance(30)
        await gateway.worker.run_due()  # the probe succeeds: closed
        await gateway.worker.run_due()
        alerts = [
            e
            for e in (await gateway.app.state.operations.list_events(EventFilter()))["events"]
            if e["source"] == "gateway"
        ]
        routed = {sink for e in alerts for sink in e["deliveries"]}
        emitted = metric(gateway, "gateway_alerts_total", type="gateway.sink.circuit_opened")
    subjects = [message["Subject"] for _, message in handler.received]
    assert subjects == ["Gateway alert: sink crm is failing", "Gateway: sink crm works again"]
    assert [recipients for recipients, _ in handler.received] == [["ops@example.gn"]] * 2
    assert "2 failures in a row, the last:" in handler.received[0][1].get_content()
    assert emitted == 1
    assert len(alerts) == 2 and routed == {"staff"}  # `*` routes never take the gateway's events


async def test_alerts_are_debounced_and_a_failing_alert_raises_no_alert(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    crm.default = Answer(400, body=b"refused")
    closed_port = free_port()  # the staff's mail server is down: their alerts fail
    config = alerting(crm.url, closed_port).replace(
        "retry: {schedule: [1s], max_attempts: 2}", "retry: {schedule: [1s]}"
    )
    config = config.replace("  staff:\n", "  staff:\n    retry: {schedule: [1s], max_attempts: 1}\n")
    async with running_gateway(write_config(config)) as gateway:
        for n in range(3):
            await post(gateway, n)
        await gateway.worker.run_due()  # three dead letters: one alert (debounced)
        await gateway.worker.run_due()  # the alert fails at the closed port and is dead-lettered: no new alert
        await gateway.worker.run_due()
        dead = metric(gateway, "gateway_alerts_total", type="gateway.delivery.dead_lettered")
        letters = (await gateway.app.state.operations.list_dead_letters(DeadLetterFilter()))["dead_letters"]
    assert dead == 1
    assert sorted(letter["sink"] for letter in letters) == ["crm", "crm", "crm", "staff"]


async def test_pauses_resumes_and_late_backlogs_are_alerts_too(
    write_config: Callable[[str], Config], crm: Receiver, mailbox: tuple[Mailbox, int]
) -> None:
    handler, port = mailbox
    async with running_gateway(write_config(alerting(crm.url, port, debounce="0s"))) as gateway:
        operations = gateway.app.state.operations
        await operations.pause_sink("crm", Pause(reason="CRM upgrade"))
        await post(gateway, 1)
        assert await gateway.worker.run_due() == 2  # the journal's delivery and the pause alert; crm waits
        gateway.clock.advance(3600)
        await gateway.worker.check_backlogs(900)
        # alerts carry no ordering key: sent before the resume, the late one cannot race the resumed one's email
        assert await gateway.worker.run_due() == 1
        await operations.resume_sink("crm")
        while await gateway.worker.run_due():
            pass
    subjects = [message["Subject"] for _, message in handler.received]
    assert subjects == [
        "Gateway alert: sink crm is paused",
        "Gateway alert: sink crm is late",
        "Gateway: sink crm was resumed",
    ]
    assert "CRM upgrade" in handler.received[0][1].get_content()
    assert "1 deliveries due, the oldest for 3600s" in handler.received[1][1].get_content()
