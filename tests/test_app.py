from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from gateway.config import Config
from gateway.operations import Purge
from gateway.signing import hmac_sha256_hex
from gateway.sources.base import load_samples
from tests.conftest import (
    MONCRENEAU_SECRET,
    ROUTED,
    YAPP_SECRET,
    Running,
    moncreneau_request,
    running_gateway,
    yapp_request,
)
from tests.helpers import metric, sample, stored

pytestmark = pytest.mark.anyio


async def test_a_signed_event_is_stored_with_one_delivery_per_routed_sink(gateway: Running) -> None:
    response = await gateway.post_moncreneau(sample("moncreneau.json", "appointment.cancelled"))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted" and body["sinks"] == ["journal", "crm"]
    record = await gateway.store.get_event(body["event_id"])
    assert record is not None
    assert record.provider_event_id == "evt_ghi789" and record.type == "appointment.cancelled"
    assert record.provider_delivery_id == "550e8400-e29b-41d4-a716-446655440000"
    assert record.headers["x-moncreneau-event"] == "appointment.cancelled"
    assert json.loads(record.raw_body) == sample("moncreneau.json", "appointment.cancelled")
    assert [(d.sink, d.status, d.attempts) for d in await gateway.store.deliveries(body["event_id"])] == [
        ("crm", "pending", 0),
        ("journal", "pending", 0),
    ]


async def test_the_previous_secret_is_accepted_during_rotation(gateway: Running) -> None:
    response = await gateway.post_moncreneau(
        sample("moncreneau.json", "appointment.created"), secret="mc-secret-previous"
    )
    assert response.status_code == 202


async def test_yappointment_events_are_accepted(gateway: Running) -> None:
    response = await gateway.post_yapp(sample("yappointment.json", "booking.created"))
    assert response.status_code == 202 and response.json()["sinks"] == ["journal"]
    response = await gateway.post_yapp(sample("yappointment.json", "customer.updated"))
    assert response.status_code == 202 and response.json()["sinks"] == []


async def test_the_same_provider_event_is_stored_and_delivered_once(gateway: Running) -> None:
    body = sample("moncreneau.json", "appointment.created")
    first = await gateway.post_moncreneau(body)
    again = await gateway.post_moncreneau(body)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"status": "duplicate", "event_id": first.json()["event_id"]}
    assert await stored(gateway) == 1
    assert len(await gateway.store.deliveries(first.json()["event_id"])) == 1


async def test_the_same_event_id_from_two_sources_is_two_events(gateway: Running) -> None:
    body = sample("yappointment.json", "booking.created")
    body["id"] = "evt_abc123"
    await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))
    assert (await gateway.post_yapp(body)).status_code == 202
    assert await stored(gateway) == 2


async def test_an_unknown_event_type_is_stored_acknowledged_and_routed_nowhere(gateway: Running) -> None:
    body = {
        "id": "evt_future",
        "type": "appointment.teleported",
        "created": "2026-01-21T14:30:00Z",
        "data": {"object": {}},
    }
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 202 and response.json()["status"] == "unmapped"
    record = await gateway.store.get_event(response.json()["event_id"])
    assert record is not None and record.type is None and record.canonical is None
    assert record.provider_event_type == "appointment.teleported"
    assert await gateway.store.deliveries(record.id) == []
    assert (await gateway.post_moncreneau(body)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_signature"),
        ({"X-Moncreneau-Signature": "sha256=" + "ab" * 32}, "invalid_signature"),
        ({"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex("wrong-secret", b"{}")}, "invalid_signature"),
    ],
)
async def test_unsigned_or_wrongly_signed_requests_get_401_and_store_nothing(
    gateway: Running, headers: dict[str, str], reason: str
) -> None:
    raw = json.dumps(sample("moncreneau.json", "appointment.created")).encode()
    response = await gateway.client.post("/webhooks/moncreneau", content=raw, headers=headers)
    assert response.status_code == 401 and response.json()["error"] == reason
    assert await stored(gateway) == 0


async def test_a_signature_for_another_body_is_refused(gateway: Running) -> None:
    raw, headers = moncreneau_request(sample("moncreneau.json", "appointment.created"))
    response = await gateway.client.post(
        "/webhooks/moncreneau", content=raw.replace(b"12345", b"12346"), headers=headers
    )
    assert response.status_code == 401
    assert await stored(gateway) == 0


async def test_a_signed_body_that_is_not_json_gets_400(gateway: Running) -> None:
    deeply_nested = b"[" * 2000 + b"]" * 2000  # deeper than Python's recursion limit
    for raw in (b"not json", b"\xff\xfe{", b"{", b"", deeply_nested):
        headers = {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)}
        response = await gateway.client.post("/webhooks/moncreneau", content=raw, headers=headers)
        assert response.status_code == 400, raw[:10]
    assert await stored(gateway) == 0


async def test_json_failing_the_provider_schema_gets_400_naming_the_field(gateway: Running) -> None:
    body = sample("moncreneau.json", "appointment.created")
    del body["data"]["object"]["dateTime"]
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_payload", "detail": "data.object.dateTime: Field required"}
    assert await stored(gateway) == 0


async def test_a_body_over_the_limit_gets_413_whether_declared_or_streamed(gateway: Running) -> None:
    raw = b"{" + b" " * 5000 + b"}"
    headers = {"X-Webhook-Signature": hmac_sha256_hex(YAPP_SECRET, raw)}
    declared = await gateway.client.post("/webhooks/yapp", content=raw, headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    streamed = await gateway.client.post("/webhooks/yapp", content=chunks(), headers=headers)
    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert await stored(gateway) == 0


async def test_an_unknown_source_gets_404(gateway: Running) -> None:
    response = await gateway.client.post("/webhooks/calendly", content=b"{}")
    assert response.status_code == 404 and "no source named 'calendly'" in response.json()["detail"]
    assert (await gateway.client.post("/webhooks/moncreneau/extra", content=b"{}")).status_code == 404
    assert (await gateway.client.post("/webhooks/", content=b"{}")).status_code == 404


async def test_only_post_is_allowed_on_the_webhook_endpoint(gateway: Running) -> None:
    response = await gateway.client.get("/webhooks/moncreneau")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


async def test_a_client_gone_before_the_end_of_its_body_gets_400_and_nothing_is_stored(gateway: Running) -> None:
    raw = json.dumps(sample("moncreneau.json", "appointment.created")).encode()
    headers = [(b"x-moncreneau-signature", b"sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw).encode())]
    scope = {"type": "http", "method": "POST", "path": "/webhooks/moncreneau", "headers": headers, "client": None}
    messages: list[Message] = [
        {"type": "http.request", "body": raw[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await gateway.app(scope, receive, send)
    assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["error"] == "client_disconnected"
    assert await stored(gateway) == 0


@pytest.mark.fault
async def test_storage_failure_answers_503_never_2xx_and_recovers(gateway: Running) -> None:
    connection = gateway.store.engine.writer
    assert connection is not None
    connection.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
    response = await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert response.json()["error"] == "storage_unavailable"
    assert metric(gateway, "gateway_webhooks_total", source="moncreneau", type="", outcome="storage_unavailable") == 1
    connection.execute("PRAGMA query_only = 0")
    assert (await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))).status_code == 202


@pytest.mark.fault
async def test_while_another_program_holds_the_write_lock_every_webhook_gets_503_within_3s(gateway: Running) -> None:
    holder = await anyio.open_process(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('held', flush=True); sys.stdin.read()",
            str(gateway.store.path),
        ]
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert await holder.stdout.receive() == b"held\n"
    answers: list[tuple[int, float]] = []

    async def post(number: int) -> None:
        body = sample("moncreneau.json", "appointment.created")
        body["id"] = f"evt-locked-{number}"
        began = time.monotonic()
        response = await gateway.post_moncreneau(body)
        answers.append((response.status_code, time.monotonic() - began))

    try:
        async with anyio.create_task_group() as posting:
            for number in range(6):
                posting.start_soon(post, number)
                await anyio.sleep(0.2)  # arriving one after another, queued behind each other's group commits
    finally:
        await holder.stdin.aclose()
        await holder.wait()
    print(f"answers while locked (status, seconds): {answers}")
    assert [status for status, _ in answers] == [503] * 6
    assert max(seconds for _, seconds in answers) < 3.0
    assert (await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))).status_code == 202


async def test_a_closed_store_answers_503(gateway: Running) -> None:
    await gateway.store.close()
    response = await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))
    assert response.status_code == 503


async def test_events_survive_a_restart(write_config: Callable[[str], Config]) -> None:
    config = write_config(ROUTED)
    async with running_gateway(config) as first:
        event_id = (await first.post_moncreneau(sample("moncreneau.json", "appointment.created"))).json()["event_id"]
    async with running_gateway(config) as second:
        assert (await second.store.get_event(event_id)) is not None
        assert (await second.post_moncreneau(sample("moncreneau.json", "appointment.created"))).status_code == 200


async def test_healthz(gateway: Running) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}


hostile_text = st.text(st.characters(exclude_categories=()), max_size=20) | st.sampled_from(
    ["\ud800", "a\r\nBcc: x@evil.test", "\x00", "20260125", "9999-12-31T23:59:00Z", "a@b.gn, c@evil.test"]
)
"""Any code point, lone surrogates and controls included, and a few known-hostile values."""
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
SAMPLES = [("moncreneau", body) for body in load_samples("moncreneau.json").values()] + [
    ("yapp", body) for body in load_samples("yappointment.json").values()
]


@st.composite
def damaged_samples(draw: st.DrawFn) -> tuple[str, Any]:
    """A real sample with a fresh id and a few fields (top level or payload) removed or replaced by any JSON."""
    source, body = draw(st.sampled_from(SAMPLES))
    body = json.loads(json.dumps(body))
    body["id"] = draw(st.text(min_size=1, max_size=12))
    payload = body["data"]["object"] if source == "moncreneau" else body["data"]
    for target in (body, payload):
        for key in draw(st.lists(st.sampled_from(sorted(target)), max_size=2, unique=True)):
            if draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(json_values)
    if source == "moncreneau" and draw(st.booleans()):
        keys = st.sampled_from(["dateTime", "status", "phone", "name", "departmentId", "somethingNew"])
        change = st.fixed_dictionaries({}, optional={"from": json_values, "to": json_values}) | json_values
        payload["changes"] = draw(st.dictionaries(keys, change, max_size=3) | json_values)
    return source, body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=damaged_samples() | st.tuples(st.sampled_from(["moncreneau", "yapp"]), json_values))
@pytest.mark.fault
async def test_no_signed_json_body_ever_gets_a_5xx(gateway: Running, request: tuple[str, Any]) -> None:
    source, body = request
    raw = json.dumps(body).encode()
    if source == "moncreneau":
        headers = {"X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(MONCRENEAU_SECRET, raw)}
    else:
        headers = {"X-Webhook-Signature": hmac_sha256_hex(YAPP_SECRET, raw)}
    response = await gateway.client.post(f"/webhooks/{source}", content=raw, headers=headers)
    event(f"{source} answered {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code in {200, 202, 400}, response.text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), signature=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70))
@pytest.mark.fault
async def test_arbitrary_bytes_and_signatures_never_get_a_5xx_nor_stored(
    gateway: Running, raw: bytes, signature: str
) -> None:
    response = await gateway.client.post(
        "/webhooks/moncreneau", content=raw, headers={"X-Moncreneau-Signature": signature}
    )
    assert response.status_code == 401
    assert await stored(gateway) == 0


async def test_outcomes_are_counted_by_source_and_type(gateway: Running) -> None:
    await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))
    await gateway.post_moncreneau(sample("moncreneau.json", "appointment.created"))
    unknown = {
        "id": "evt_u",
        "type": "appointment.teleported",
        "created": "2026-01-21T14:30:00Z",
        "data": {"object": {}},
    }
    await gateway.post_moncreneau(unknown)
    await gateway.client.post("/webhooks/moncreneau", content=b"{}")
    await gateway.client.post("/webhooks/nobody", content=b"{}")
    counts = {
        (kind, outcome): metric(gateway, "gateway_webhooks_total", source="moncreneau", type=kind, outcome=outcome)
        for kind, outcome in (
            ("appointment.created", "accepted"),
            ("appointment.created", "duplicate"),
            ("other", "unmapped"),
            ("", "missing_signature"),
        )
    }
    assert set(counts.values()) == {1.0}
    exposition = (await gateway.client.get("/metrics")).text
    assert 'gateway_webhooks_total{outcome="accepted",source="moncreneau",type="appointment.created"} 1.0' in exposition
    assert "nobody" not in exposition  # unknown sources do not create label values


async def test_a_captured_request_replayed_after_its_event_was_purged_is_a_duplicate(gateway: Running) -> None:
    raw, headers = yapp_request(sample("yappointment.json", "customer.updated"))  # routed nowhere: purgeable
    first = await gateway.client.post("/webhooks/yapp", content=raw, headers=headers)
    assert first.status_code == 202
    gateway.clock.advance(31 * 86400)
    purged = await gateway.app.state.operations.purge(Purge())
    assert purged["deleted"] == 1 and await stored(gateway) == 0
    replayed = await gateway.client.post("/webhooks/yapp", content=raw, headers=headers)
    assert replayed.status_code == 200
    assert replayed.json() == {"status": "duplicate", "event_id": first.json()["event_id"]}
    assert await stored(gateway) == 0 and await gateway.worker.run_due() == 0
