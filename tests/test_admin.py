from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.admin import ENDPOINTS, PREFIX, openapi_document
from gateway.app import build_worker
from gateway.config import Config
from gateway.exceptions import ConfigError
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.conftest import Running, running_gateway
from tests.helpers import metric, until

pytestmark = pytest.mark.anyio
TOKEN = "admin-token-9f2c-0d1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


@pytest.fixture
async def gateway(write_config: Callable[[str], Config], crm: Receiver, tmp_path: Path) -> AsyncIterator[Running]:
    config = write_config(
        f"""
        admin: {{token: {TOKEN}}}
        sinks:
          crm: {{type: http, options: {{url: "{crm.url}"}}, retry: {{schedule: [1m], max_attempts: 2}}}}
          journal: {{type: file, options: {{path: "{tmp_path / "journal.jsonl"}"}}}}
        routes:
          - sinks: [crm]
          - sources: [moncreneau]
            events: [appointment.cancelled]
            sinks: [journal]
        """
    )
    async with running_gateway(config) as running:
        yield running


def event(event_type: str, event_id: str, appointment: int = 12345, phone: str | None = None) -> dict[str, Any]:
    body = load_samples("moncreneau.json")[event_type]
    body["id"] = event_id
    body["data"]["object"]["id"] = appointment
    if phone:
        body["data"]["object"]["phone"] = phone
    return body


async def admin(gateway: Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request as the CLI's peers send it: with the token, and JSON on writes (the body optional)."""
    headers = {**AUTH, **(JSON if method == "POST" else {})}
    return await gateway.client.request(method, PREFIX + path, headers=headers, **kwargs)


async def accepted(gateway: Running, body: dict[str, Any]) -> str:
    response = await gateway.post_moncreneau(body)
    assert response.status_code == 202
    return str(response.json()["event_id"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (e.method, e.path.format(event_id="x", delivery_id="y", sink="z", source="s", appointment_id="a"))
        for e in ENDPOINTS
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_every_endpoint_refuses_a_missing_or_wrong_token(
    gateway: Running, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await gateway.client.request(method, PREFIX + path, headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({"Origin": "https://evil.test", **JSON}, 403, "cross_origin"),
        ({"Origin": "null", **JSON}, 403, "cross_origin"),
        ({"Sec-Fetch-Site": "cross-site", **JSON}, 403, "cross_origin"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({}, 415, "unsupported_media_type"),
    ],
)
async def test_what_a_page_on_another_site_could_send_purges_nothing(
    write_config: Callable[[str], Config], headers: dict[str, str], status: int, reason: str
) -> None:
    async with running_gateway(write_config("retention: {max_age: 1d}\n")) as running:  # no token: loopback
        await accepted(running, event("appointment.created", "evt_old"))
        running.clock.advance(2 * 86400)
        response = await running.client.post(f"{PREFIX}/purge", content=b'{"older_than": "1d"}', headers=headers)
        assert (response.status_code, response.json()["error"]) == (status, reason)
        assert await running.store.count_events() == 1
        same_origin = {"Origin": "http://gateway", **JSON}  # the gateway's own pages may post
        assert (await running.client.post(f"{PREFIX}/purge", headers=same_origin)).json()["deleted"] == 1


async def test_events_are_listed_filtered_and_paged(gateway: Running) -> None:
    for n in range(5):
        await accepted(gateway, event("appointment.created", f"evt_{n}", appointment=n, phone=f"+22462123456{n}"))
        gateway.clock.advance(1)
    await accepted(gateway, event("appointment.cancelled", "evt_cancel", appointment=2))
    page = (await admin(gateway, "GET", "/events", params={"limit": 4})).json()
    assert [e["provider_event_id"] for e in page["events"]] == ["evt_cancel", "evt_4", "evt_3", "evt_2"]
    assert page["events"][0]["deliveries"] == {"crm": "pending", "journal": "pending"}
    rest = (await admin(gateway, "GET", "/events", params={"limit": 4, "cursor": page["next_cursor"]})).json()
    assert [e["provider_event_id"] for e in rest["events"]] == ["evt_1", "evt_0"] and rest["next_cursor"] is None

    async def ids(**filters: str) -> list[str]:
        response = await admin(gateway, "GET", "/events", params=filters)
        assert response.status_code == 200, response.text
        return [e["provider_event_id"] for e in response.json()["events"]]

    assert await ids(appointment="2") == ["evt_cancel", "evt_2"]
    assert await ids(customer="+224621234563") == ["evt_3"]
    assert await ids(type="appointment.cancelled") == ["evt_cancel"]
    assert await ids(since="2026-01-01T00:00:03+00:00", until="2026-01-01T00:00:05Z") == ["evt_4", "evt_3"]
    assert await ids(status="succeeded") == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"since": "yesterday"}, "since: Input should be a valid datetime"),
        ({"since": "2026-01-01T00:00:00"}, "since: Input should have timezone info"),
        (
            {"status": "lost"},
            "status: Input should be 'pending', 'succeeded', 'dead', 'discarded', 'skipped' or 'superseded'",
        ),
        ({"limit": "0"}, "limit: Input should be greater than or equal to 1"),
        ({"sorce": "moncreneau"}, "sorce: Extra inputs are not permitted"),
        ({"cursor": "not-a-cursor"}, "cursor: 'not-a-cursor' is not a cursor this gateway gave out"),
    ],
)
async def test_an_invalid_filter_is_a_400_naming_it(gateway: Running, params: dict[str, str], detail: str) -> None:
    response = await admin(gateway, "GET", "/events", params=params)
    assert response.status_code == 400 and response.json()["error"] == "invalid_parameters"
    assert detail in response.json()["detail"]


async def test_one_event_shows_its_canonical_form_raw_body_deliveries_and_every_attempt(
    gateway: Running, crm: Receiver
) -> None:
    crm.script(Answer(503, body=b"busy"))
    event_id = await accepted(gateway, event("appointment.created", "evt_show"))
    await gateway.worker.run_due()
    gateway.clock.advance(60)
    await gateway.worker.run_due()
    shown = (await admin(gateway, "GET", f"/events/{event_id}")).json()
    assert shown["canonical"]["customer"]["phone"] == "+224621234567"
    assert '"evt_show"' in shown["raw_body"] and shown["headers"]["x-moncreneau-event"] == "appointment.created"
    assert shown["provider_delivery_id"] == "550e8400-e29b-41d4-a716-446655440000"
    (delivery,) = shown["deliveries"]
    assert (delivery["sink"], delivery["status"], delivery["attempts"]) == ("crm", "succeeded", 2)
    first, second = delivery["attempt_log"]
    assert (first["outcome"], first["status_code"], second["outcome"], second["status_code"]) == (
        "retryable",
        503,
        "succeeded",
        200,
    )
    assert "answered 503: busy" in first["detail"] and first["started_at"] == "2026-01-01T00:00:00+00:00"
    missing = await admin(gateway, "GET", "/events/no-such-event")
    assert missing.status_code == 404 and missing.json() == {
        "error": "unknown_event",
        "detail": "no event with id 'no-such-event'",
    }


async def test_a_replay_is_a_new_attempt_on_the_same_delivery(gateway: Running, crm: Receiver) -> None:
    event_id = await accepted(gateway, event("appointment.cancelled", "evt_replay"))
    assert (await admin(gateway, "POST", f"/events/{event_id}/replay")).status_code == 409  # still pending
    await gateway.worker.run_due()
    only_crm = await admin(gateway, "POST", f"/events/{event_id}/replay", json={"sink": "crm"})
    assert only_crm.status_code == 200 and len(only_crm.json()["requeued"]) == 1
    assert await gateway.worker.run_due() == 1
    everything = await admin(gateway, "POST", f"/events/{event_id}/replay")
    assert len(everything.json()["requeued"]) == 2
    unknown_sink = await admin(gateway, "POST", f"/events/{event_id}/replay", json={"sink": "sms"})
    assert unknown_sink.status_code == 404 and "has crm, journal" in unknown_sink.json()["detail"]
    bad_body = await admin(gateway, "POST", f"/events/{event_id}/replay", content=b"{not json")
    assert bad_body.status_code == 400 and bad_body.json()["error"] == "invalid_json"
    assert (await admin(gateway, "POST", "/events/nope/replay")).status_code == 404
    shown = (await admin(gateway, "GET", f"/events/{event_id}")).json()
    crm_delivery = next(d for d in shown["deliveries"] if d["sink"] == "crm")
    assert [a["number"] for a in crm_delivery["attempt_log"]] == [1, 2]
    assert len(crm.requests) == 2


async def test_dead_letters_are_listed_replayed_retried_and_discarded(gateway: Running, crm: Receiver) -> None:
    crm.default = Answer(400, body=b"unknown customer")
    ids = [await accepted(gateway, event("appointment.created", f"evt_{n}", appointment=n)) for n in range(3)]
    await gateway.worker.run_due()
    letters = (await admin(gateway, "GET", "/dead-letters", params={"sink": "crm"})).json()["dead_letters"]
    assert {letter["event_id"] for letter in letters} == set(ids)
    assert letters[0]["reason"] == "permanent error" and "unknown customer" in letters[0]["last_error"]
    assert {(letter["source"], letter["provider_event_id"], letter["provider_event_type"]) for letter in letters} == {
        ("moncreneau", f"evt_{n}", "appointment.created") for n in range(3)
    }
    dry = await admin(gateway, "POST", "/dead-letters/replay", json={"sink": "crm", "dry_run": True})
    assert dry.json() == {"dry_run": True, "matched": 3, "requeued": 0}
    assert (await admin(gateway, "GET", "/dead-letters")).json()["dead_letters"] != []  # a dry run changes nothing
    crm.default = Answer(200)
    retried = await admin(gateway, "POST", f"/dead-letters/{letters[0]['delivery_id']}/retry")
    discarded = await admin(gateway, "DELETE", f"/dead-letters/{letters[1]['delivery_id']}")
    assert (retried.status_code, discarded.status_code) == (200, 200)
    replayed = await admin(gateway, "POST", "/dead-letters/replay", json={"source": "moncreneau"})
    assert replayed.json() == {"dry_run": False, "matched": 1, "requeued": 1}
    assert await gateway.worker.run_due() == 2
    assert (await admin(gateway, "GET", "/dead-letters")).json()["dead_letters"] == []
    for method, path in (("POST", "/dead-letters/nope/retry"), ("DELETE", "/dead-letters/nope")):
        response = await admin(gateway, method, path)
        assert response.status_code == 404 and response.json()["error"] == "unknown_dead_letter"
    bad = await admin(gateway, "POST", "/dead-letters/replay", json={"sinks": ["crm"]})
    assert bad.status_code == 400 and "sinks: Extra inputs are not permitted" in bad.json()["detail"]


async def test_purge_deletes_only_what_is_older_than_asked(gateway: Running) -> None:
    await accepted(gateway, event("appointment.created", "evt_old"))
    await gateway.worker.run_due()
    gateway.clock.advance(3 * 86400)
    await accepted(gateway, event("appointment.created", "evt_new", appointment=2))
    assert (await admin(gateway, "POST", "/purge", json={"older_than": "2d"})).json()["deleted"] == 1
    assert (await admin(gateway, "POST", "/purge")).json() == {"deleted": 0, "older_than_seconds": 30 * 86400}
    left = (await admin(gateway, "GET", "/events")).json()["events"]
    assert [e["provider_event_id"] for e in left] == ["evt_new"]
    bad = await admin(gateway, "POST", "/purge", json={"older_than": "soon"})
    assert bad.status_code == 400 and "older_than: Value error, 'soon' is not a duration" in bad.json()["detail"]


async def test_purging_takes_dead_letters_older_than_the_retention_and_keeps_pending_deliveries(
    gateway: Running, crm: Receiver
) -> None:
    crm.default = Answer(400, body=b"refused")
    dead = await accepted(gateway, event("appointment.created", "evt_dead", appointment=1))
    await gateway.worker.run_due()
    crm.default = Answer(503)
    pending = await accepted(gateway, event("appointment.created", "evt_pending", appointment=2))
    await gateway.worker.run_due()
    assert len((await admin(gateway, "GET", "/dead-letters")).json()["dead_letters"]) == 1
    gateway.clock.advance(31 * 86400)
    assert (await admin(gateway, "POST", "/purge")).json()["deleted"] == 1
    assert (await admin(gateway, "GET", "/dead-letters")).json()["dead_letters"] == []
    assert (await admin(gateway, "GET", f"/events/{dead}")).status_code == 404
    assert (await admin(gateway, "GET", f"/events/{pending}")).status_code == 200


async def test_sinks_are_listed_paused_and_resumed(gateway: Running) -> None:
    listed = (await admin(gateway, "GET", "/sinks")).json()["sinks"]
    assert [(row["sink"], row["state"]) for row in listed] == [("crm", "running"), ("journal", "running")]
    paused = await admin(gateway, "POST", "/sinks/crm/pause", json={"reason": "CRM upgrade until 14:00"})
    assert paused.json() == {"sink": "crm", "state": "paused"}
    await accepted(gateway, event("appointment.created", "evt_paused"))
    assert await gateway.worker.run_due() == 0
    crm = (await admin(gateway, "GET", "/sinks")).json()["sinks"][0]
    assert (crm["state"], crm["paused_because"], crm["queue_depth"], crm["due"]) == (
        "paused",
        "CRM upgrade until 14:00",
        1,
        1,
    )
    await gateway.client.get("/metrics")
    assert metric(gateway, "gateway_sink_paused", sink="crm") == 1
    assert (await admin(gateway, "POST", "/sinks/crm/resume")).json() == {"sink": "crm", "state": "running"}
    assert await gateway.worker.run_due() == 1
    unknown = await admin(gateway, "POST", "/sinks/sms/pause")
    assert unknown.status_code == 404 and "sinks: crm, journal" in unknown.json()["detail"]


async def test_another_process_obeys_a_pause_within_a_second(gateway: Running) -> None:
    other = build_worker(gateway.app.state.config, gateway.store, gateway.clock)  # as another process would
    assert await other.run_due() == 0  # it has read the pauses (none), and trusts them for a second
    await admin(gateway, "POST", "/sinks/crm/pause")
    paused_at = time.monotonic()

    async def obeys() -> bool:
        return await other._is_paused("crm")

    await until(obeys, "the other worker to see the pause", 1.5)
    assert time.monotonic() - paused_at <= 1.1
    await accepted(gateway, event("appointment.created", "evt_paused"))
    assert await other.run_due() == 0


async def test_storage_trouble_is_a_503_not_a_crash(gateway: Running) -> None:
    await gateway.store.close()
    response = await admin(gateway, "GET", "/events")
    assert response.status_code == 503 and response.json()["error"] == "storage_unavailable"


async def test_the_openapi_document_describes_every_endpoint(gateway: Running) -> None:
    document = (await gateway.client.get(f"{PREFIX}/openapi.json")).json()
    assert document == openapi_document() and document["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert described == {(e.method, PREFIX + e.path) for e in ENDPOINTS}
    parameters = {p["name"] for p in document["paths"][f"{PREFIX}/events"]["get"]["parameters"]}
    assert parameters == {"source", "type", "appointment", "customer", "since", "until", "status", "limit", "cursor"}
    assert "dry_run" in document["components"]["schemas"]["DeadLetterReplay"]["properties"]


async def test_readyz_reports_storage_and_worker(gateway: Running) -> None:
    assert (await gateway.client.get("/readyz")).json() == {"status": "ready"}  # the worker is not asked to run here
    await gateway.store.close()
    response = await gateway.client.get("/readyz")
    assert response.status_code == 503 and response.json()["problems"][0].startswith("storage:")


async def test_readyz_says_when_the_worker_does_not_run(write_config: Callable[[str], Config]) -> None:
    async with running_gateway(write_config(""), run_worker=True) as running:
        assert (await running.client.get("/readyz")).status_code == 200
        running.worker.stop()
        with anyio.fail_after(5):
            await running.worker.finished.wait()
        response = await running.client.get("/readyz")
    assert response.status_code == 503 and response.json()["problems"] == ["worker: not running"]


def test_an_admin_api_without_a_token_is_refused_off_loopback(write_config: Callable[[str], Config]) -> None:
    with pytest.raises(ConfigError, match=r"admin\.token: the admin API would be reachable on 0\.0\.0\.0 without"):
        write_config("server: {host: 0.0.0.0}\n")
    with pytest.raises(ConfigError, match=r"reachable through server\.trusted_proxies without a token"):
        write_config("server: {trusted_proxies: [10.0.0.0/8]}\n")
    with pytest.raises(ConfigError, match=r"admin\.token: 6 characters is too weak .* reachable on 0\.0\.0\.0"):
        write_config("server: {host: 0.0.0.0}\nadmin: {token: secret}\n")
    assert write_config("admin: {token: short}\n").settings.admin.token == "short"  # loopback only
    assert write_config("server: {host: 0.0.0.0}\nadmin: {enabled: false}\n").settings.admin.enabled is False
    assert write_config("server: {host: '::1'}\n").settings.admin.token is None


async def test_a_disabled_admin_api_is_not_there(write_config: Callable[[str], Config]) -> None:
    async with running_gateway(write_config("admin: {enabled: false}\n")) as running:
        assert (await running.client.get(f"{PREFIX}/events")).status_code == 404


async def test_the_periodic_task_purges_what_outlived_the_retention(write_config: Callable[[str], Config]) -> None:
    config = write_config("retention: {max_age: 1d, interval: 20ms}\n")
    async with running_gateway(config) as running:
        await accepted(running, event("appointment.created", "evt_old"))  # routed nowhere: nothing pending
        running.clock.advance(2 * 86400)
        with anyio.fail_after(5):
            while await running.store.count_events():  # noqa: ASYNC110  the purge runs on its own timer
                await anyio.sleep(0.02)


def test_serve_refuses_to_expose_the_admin_api_without_a_token(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    config = write_config("")
    assert main(["-c", str(config.path), "serve", "--host", "0.0.0.0"]) == 2
    assert "admin.token: the admin API would be reachable on 0.0.0.0 without a token" in capsys.readouterr().err
