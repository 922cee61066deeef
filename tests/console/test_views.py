"""The console's pages and actions, through HTTP on the app (the browser tests drive the same pages in Chromium)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.console.events import formatted
from gateway.console.masking import masked
from gateway.exceptions import StorageError, WebhookRejected
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, receiver
from tests.conftest import Running, running_gateway

pytestmark = pytest.mark.anyio
TOKEN = "console-token-4b1d-88e0"
PHONE = "+224622123456"


@pytest.fixture
async def gateway(write_config: Callable[[str], Config], tmp_path: Path) -> AsyncIterator[Running]:
    config = write_config(
        f"""
        admin: {{token: {TOKEN}}}
        sinks:
          journal: {{type: file, options: {{path: "{tmp_path / "journal.jsonl"}"}}}}
          crm: {{type: http, options: {{url: "http://127.0.0.1:9/crm"}}, retry: {{max_attempts: 1}}}}
        routes:
          - sinks: [journal, crm]
        """
    )
    async with running_gateway(config) as running:
        yield running


def event(event_type: str, event_id: str, *, phone: str = PHONE, **fields: Any) -> dict[str, Any]:
    body = load_samples("moncreneau.json")[event_type]
    body["id"] = event_id
    body["data"]["object"].update(phone=phone, **fields)
    return body


async def signed_in(gateway: Running) -> httpx.AsyncClient:
    answer = await gateway.client.post("/console/sign-in", data={"token": TOKEN, "next": "/console/events"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/events"
    return gateway.client


async def csrf(client: httpx.AsyncClient, page: str = "/console/sinks") -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', (await client.get(page)).text)
    assert found, "the page has no form"
    return found.group(1)


async def stored_event(gateway: Running, body: dict[str, Any]) -> str:
    answer = await gateway.post_moncreneau(body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["event_id"])


def text(html: str) -> str:
    """The page's words, without tags, for assertions on what a reader sees."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_every_page_asks_for_the_token_first_then_returns_where_it_was_going(gateway: Running) -> None:
    for page in ("/console/", "/console/events?customer=%2B224", "/console/dead-letters", "/console/sinks"):
        answer = await gateway.client.get(page)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/sign-in?next=")
    form = await gateway.client.get(answer.headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text and 'value="/console/sinks"' in form.text
    wrong = await gateway.client.post("/console/sign-in", data={"token": "guess", "next": "/console/sinks"})
    assert wrong.status_code == 401 and "That is not the admin token." in wrong.text
    assert "set-cookie" not in wrong.headers
    right = await gateway.client.post("/console/sign-in", data={"token": TOKEN, "next": "/console/sinks"})
    assert right.headers["location"] == "/console/sinks"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain HTTP here; behind TLS the cookie is Secure (next test)
    assert (await gateway.client.get("/console/sinks")).status_code == 200


async def test_the_session_cookie_is_secure_behind_tls(gateway: Running) -> None:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway") as client:
        answer = await client.post("/console/sign-in", data={"token": TOKEN})
    assert "secure" in answer.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/console", "/console/../../x", "/elsewhere"]
)
async def test_sign_in_never_sends_the_operator_to_another_site(gateway: Running, target: str) -> None:
    answer = await gateway.client.post("/console/sign-in", data={"token": TOKEN, "next": target})
    assert answer.headers["location"] == "/console/"


async def test_a_session_ends_after_its_lifetime_and_with_sign_out(gateway: Running) -> None:
    client = await signed_in(gateway)
    gateway.clock.advance(12 * 3600 + 1)
    assert (await client.get("/console/")).status_code == 303
    client = await signed_in(gateway)
    out = await client.post("/console/sign-out", data={"csrf": await csrf(client)})
    assert out.headers["location"] == "/console/sign-in?notice=signed_out"
    assert (await client.get("/console/")).status_code == 303


async def test_a_forged_or_cross_site_post_is_refused_and_changes_nothing(gateway: Running) -> None:
    client = await signed_in(gateway)
    token = await csrf(client)
    refused = [
        await client.post("/console/sinks/crm/pause", data={"reason": "no token"}),
        await client.post("/console/sinks/crm/pause", data={"csrf": "0" * 64}),
        await client.post("/console/sinks/crm/pause", data={"csrf": token}, headers={"origin": "https://evil.example"}),
        await client.post("/console/sinks/crm/pause", data={"csrf": token}, headers={"sec-fetch-site": "cross-site"}),
        await client.post("/console/sinks/crm/pause", json={"csrf": token}),
    ]
    assert [answer.status_code for answer in refused] == [403, 403, 403, 403, 415]
    assert "did not come from this console" in refused[0].text
    assert await gateway.store.paused_sinks() == {}
    client.cookies.clear()
    assert (await client.post("/console/sinks/crm/pause", data={"csrf": token})).status_code == 403
    assert await gateway.store.paused_sinks() == {}


async def test_find_an_event_by_phone_masked_in_the_list_whole_on_its_page(gateway: Running) -> None:
    mine = await stored_event(gateway, event("appointment.created", "evt_mine"))
    await stored_event(gateway, event("appointment.created", "evt_other", phone="+224655000111", id=777))
    client = await signed_in(gateway)
    listed = await client.get("/console/events", params={"customer": PHONE})
    assert listed.status_code == 200
    assert f"/console/events/{mine}" in listed.text and "evt_other" not in listed.text
    table = listed.text[listed.text.index("<table") :]
    assert PHONE not in table and "+224•••56" in table
    shown = await client.get(f"/console/events/{mine}")
    assert PHONE in shown.text and "evt_mine" in shown.text


async def test_an_event_page_shows_its_attempts_and_replays_one_sink(gateway: Running) -> None:
    event_id = await stored_event(gateway, event("appointment.created", "evt_1"))
    await gateway.worker.run_due()
    client = await signed_in(gateway)
    shown = text((await client.get(f"/console/events/{event_id}")).text)
    assert "journal succeeded" in shown and "crm dead" in shown
    assert "Cannot connect to host 127.0.0.1:9" in shown  # the crm attempt's response excerpt
    replayed = await client.post(
        f"/console/events/{event_id}/replay", data={"csrf": await csrf(client), "sink": "journal"}
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/console/events/{event_id}?notice=requeued&n=1"
    assert "1 deliveries queued again." in (await client.get(replayed.headers["location"])).text
    statuses = {row.sink: row.status for row in await gateway.store.deliveries(event_id)}
    assert statuses == {"journal": "pending", "crm": "dead"}


async def test_dead_letters_retry_discard_and_replay_after_a_dry_run(gateway: Running) -> None:
    ids = [await stored_event(gateway, event("appointment.created", f"evt_{n}", id=n)) for n in range(3)]
    await gateway.worker.run_due()
    client = await signed_in(gateway)
    listed = await client.get("/console/dead-letters", params={"sink": "crm"})
    dead = re.findall(r"/console/dead-letters/([0-9a-f-]{36})/retry", listed.text)
    assert len(dead) == 3
    token = await csrf(client)
    retried = await client.post(f"/console/dead-letters/{dead[0]}/retry", data={"csrf": token})
    assert retried.headers["location"] == "/console/dead-letters?notice=requeued&n=1"
    discarded = await client.post(
        f"/console/dead-letters/{dead[1]}/discard", data={"csrf": token, "back": f"/console/events/{ids[1]}"}
    )
    assert discarded.headers["location"] == f"/console/events/{ids[1]}?notice=discarded"
    preview = await client.get("/console/dead-letters/replay", params={"sink": "crm"})
    assert "1 dead letters will be queued again." in text(preview.text)
    confirmed = await client.post("/console/dead-letters/replay", data={"csrf": token, "sink": "crm"})
    assert confirmed.headers["location"] == "/console/dead-letters?notice=requeued&n=1"
    statuses = []
    for event_id in ids:
        statuses += [row.status for row in await gateway.store.deliveries(event_id) if row.sink == "crm"]
    statuses.sort()
    assert statuses == ["discarded", "pending", "pending"]
    empty = await client.get("/console/dead-letters/replay", params={"sink": "crm"})
    assert "nothing to replay" in empty.text


async def test_an_action_on_something_gone_says_so(gateway: Running) -> None:
    client = await signed_in(gateway)
    token = await csrf(client)
    missing = await client.post("/console/dead-letters/nope/retry", data={"csrf": token})
    assert missing.status_code == 404 and "no dead letter with delivery id" in missing.text
    unknown = await client.post("/console/sinks/nope/pause", data={"csrf": token})
    assert unknown.status_code == 404
    assert (await client.get("/console/events/nope")).status_code == 404
    assert (await client.get("/console/appointments/moncreneau/nope")).status_code == 404
    bad = await client.get("/console/events", params={"since": "yesterday"})
    assert bad.status_code == 400 and "is not a date and time" in bad.text


async def test_pause_and_resume_a_sink(gateway: Running) -> None:
    client = await signed_in(gateway)
    paused = await client.post("/console/sinks/crm/pause", data={"csrf": await csrf(client), "reason": "CRM upgrade"})
    assert paused.headers["location"] == "/console/sinks?notice=paused"
    assert await gateway.store.paused_sinks() == {"crm": "CRM upgrade"}
    page = text((await client.get("/console/sinks")).text)
    assert "crm paused CRM upgrade" in page
    resumed = await client.post("/console/sinks/crm/resume", data={"csrf": await csrf(client)})
    assert resumed.headers["location"] == "/console/sinks?notice=resumed"
    assert await gateway.store.paused_sinks() == {}


async def test_the_overview_counts_webhooks_by_outcome_and_attempts_by_sink(gateway: Running) -> None:
    await stored_event(gateway, event("appointment.created", "evt_1"))
    await stored_event(gateway, event("appointment.updated", "evt_2"))
    assert (await gateway.post_moncreneau(event("appointment.created", "evt_3"), secret="wrong")).status_code == 401
    while await gateway.worker.run_due():
        pass
    client = await signed_in(gateway)
    page = text((await client.get("/console/")).text)
    assert "moncreneau 2 2 1 1 invalid_signature: 1 / 1" in page
    assert "crm running 0 0 — 0% (2 attempts)" in page
    assert "journal running 0 0 — 100% (2 attempts)" in page
    assert "Recent failures" in page and "Cannot connect to host" in page
    gateway.clock.advance(3600)
    later = text((await client.get("/console/")).text)
    assert "moncreneau 0 2 0 1 invalid_signature: 0 / 1" in later
    assert "crm running 0 0 — — (0 attempts)" in later


async def test_send_a_test_event_and_see_where_it_went(gateway: Running) -> None:
    client = await signed_in(gateway)
    page = await client.get("/console/test-event")
    assert "appointment.cancelled" in page.text and "booking.created" in page.text
    sent = await client.post(
        "/console/test-event", data={"csrf": await csrf(client), "source": "yapp", "type": "booking.created"}
    )
    location = sent.headers["location"]
    assert location.startswith("/console/test-event?status=202&outcome=accepted&event=")
    shown = text((await client.get(location)).text)
    assert "202 accepted" in shown and "crm pending" in shown and "journal pending" in shown
    unknown = await client.post("/console/test-event", data={"csrf": await csrf(client), "source": "yapp", "type": "x"})
    assert unknown.status_code == 400


@pytest.mark.parametrize(
    ("failure", "answer"),
    [
        (WebhookRejected(401, "invalid_signature", "no secret matches"), "401 invalid_signature"),
        (StorageError("disk full"), "503 storage_unavailable"),
    ],
)
async def test_a_test_event_refused_shows_the_answer_and_is_counted(
    gateway: Running, monkeypatch: pytest.MonkeyPatch, failure: Exception, answer: str
) -> None:
    """A plugin source whose test signature its own verification refuses, or a store that is down: the console
    shows the answer the provider would have had, and the overview counts it as the webhook path would."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise failure

    target = gateway.store if isinstance(failure, StorageError) else gateway.app.state.config.sources["yapp"]
    monkeypatch.setattr(target, "ingest" if isinstance(failure, StorageError) else "verify", refuse)
    client = await signed_in(gateway)
    sent = await client.post(
        "/console/test-event", data={"csrf": await csrf(client), "source": "yapp", "type": "booking.created"}
    )
    shown = text((await client.get(sent.headers["location"])).text)
    assert answer in shown and "Open the event" not in shown
    monkeypatch.undo()
    reason = answer.split()[1]
    assert f"yapp 0 0 1 1 {reason}: 1 / 1" in text((await client.get("/console/")).text)


async def test_an_appointment_timeline_lists_its_events_messages_and_reminders(gateway: Running) -> None:
    await stored_event(gateway, event("appointment.created", "evt_1"))
    await stored_event(gateway, event("appointment.cancelled", "evt_2"))
    client = await signed_in(gateway)
    page = text((await client.get("/console/appointments/moncreneau/12345")).text)
    assert page.index("appointment.created") < page.index("appointment.cancelled")
    assert "No reminder." in page


async def test_hostile_values_in_a_signed_event_are_shown_as_text(gateway: Running) -> None:
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'"
    event_id = await stored_event(gateway, event("appointment.created", "evt_x", name=hostile, id=hostile))
    client = await signed_in(gateway)
    for page in (f"/console/events/{event_id}", "/console/events", f"/console/appointments/moncreneau/{hostile}"):
        html = (await client.get(page)).text
        assert "<script>alert" not in html and "<img src=x" not in html, page
    answer = await client.get(f"/console/events/{event_id}")
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_french_by_choice_or_by_the_browser(gateway: Running) -> None:
    client = await signed_in(gateway)
    assert (
        "<h1>Vue d&#39;ensemble</h1>"
        in (await client.get("/console/", headers={"accept-language": "fr-FR,fr;q=0.9"})).text
    )
    assert "<h1>Overview</h1>" in (await client.get("/console/", headers={"accept-language": "de, en;q=0.5"})).text
    chosen = await client.get("/console/sinks?lang=fr")
    assert 'lang="fr"' in chosen.text and "gateway_console_lang=fr" in chosen.headers["set-cookie"]
    assert "<h1>Destinations</h1>" in (await client.get("/console/sinks")).text  # the choice is remembered
    assert "<h1>Sinks</h1>" in (await client.get("/console/sinks?lang=en")).text


async def test_storage_down_shows_a_503_page(gateway: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await signed_in(gateway)

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("disk I/O error")

    monkeypatch.setattr(gateway.store, "list_events", unavailable)
    answer = await client.get("/console/events")
    assert answer.status_code == 503 and "The store cannot be read now" in answer.text
    assert "disk I/O error" not in answer.text


async def test_the_stylesheet_ships_in_the_package(gateway: Running) -> None:
    answer = await gateway.client.get("/console/static/console.css")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/css")


async def test_without_a_token_the_console_is_open_as_the_admin_api_but_still_needs_its_forms(
    write_config: Callable[[str], Config],
) -> None:
    async with running_gateway(write_config("sinks: {}")) as gateway:
        client = gateway.client
        assert (await client.get("/console/")).status_code == 200
        assert "Sign out" not in (await client.get("/console/")).text
        assert (await client.post("/console/sign-in", data={"token": "anything"})).status_code == 401
        assert (await client.get("/console/sign-in")).headers["location"] == "/console/"
        assert (
            await client.post("/console/test-event", data={"source": "yapp", "type": "booking.created"})
        ).status_code == 403
        token = await csrf(client, "/console/test-event")
        sent = await client.post(
            "/console/test-event", data={"csrf": token, "source": "yapp", "type": "booking.created"}
        )
        assert sent.status_code == 303


@pytest.mark.parametrize("settings", ["admin: {enabled: false}", "console: {enabled: false}"])
async def test_the_console_can_be_turned_off(write_config: Callable[[str], Config], settings: str) -> None:
    async with running_gateway(write_config(settings)) as gateway:
        assert (await gateway.client.get("/console/")).status_code == 404


async def test_events_come_fifty_a_page_newest_first(gateway: Running) -> None:
    for n in range(53):
        await stored_event(gateway, event("appointment.created", f"evt_{n}", id=n))
        gateway.clock.advance(1)
    client = await signed_in(gateway)
    first = await client.get("/console/events", params={"source": "moncreneau"})
    assert first.text.count('<td class="customer">') == 50 and "Newest" not in text(first.text)
    older = re.search(r'href="(\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert older and "source=moncreneau" in older.group(1)
    second = await client.get("/console/events" + older.group(1).replace("&amp;", "&"))
    assert second.text.count('<td class="customer">') == 3 and "Newest" in text(second.text)
    assert 'rel="next"' not in second.text


async def test_the_overview_has_a_json_twin_in_the_admin_api(gateway: Running) -> None:
    await stored_event(gateway, event("appointment.created", "evt_1"))
    answer = await gateway.client.get("/admin/v1/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    overview = answer.json()
    assert overview["sources"][0] == {
        "source": "moncreneau",
        "acknowledged": {"hour": 1, "day": 1},
        "refused": {"hour": 0, "day": 0},
        "refusals": {},
    }
    assert [row["sink"] for row in overview["sinks"]] == ["journal", "crm"]
    assert overview["sinks"][0]["queue_depth"] == 1 and overview["sinks"][0]["success_rate_last_hour"] is None


async def test_a_sink_whose_circuit_opened_says_so(write_config: Callable[[str], Config]) -> None:
    config = write_config(
        """
        admin: {token: console-token-4b1d-88e0}
        sinks:
          crm:
            type: http
            options: {url: "http://127.0.0.1:9/crm"}
            circuit: {failures: 1, probe_every: 1h}
        routes:
          - sinks: [crm]
        """
    )
    async with running_gateway(config) as gateway:
        await stored_event(gateway, event("appointment.created", "evt_1"))
        await gateway.worker.run_due()
        client = await signed_in(gateway)
        assert "crm running circuit open" in text((await client.get("/console/sinks")).text)


async def test_a_sinks_error_text_is_redacted_in_lists_and_whole_on_the_event(
    write_config: Callable[[str], Config],
) -> None:
    """A CRM that refuses a contact and says which: lists show "[phone]", the event's page the number."""
    async with receiver() as crm:
        crm.default = Answer(422, {"Content-Type": "text/plain"}, f"unknown contact {PHONE}".encode())
        config = write_config(
            f"""
            admin: {{token: {TOKEN}}}
            sinks:
              crm: {{type: http, options: {{url: "{crm.url}"}}}}
            routes:
              - sinks: [crm]
            """
        )
        async with running_gateway(config) as gateway:
            event_id = await stored_event(gateway, event("appointment.created", "evt_1"))
            await gateway.worker.run_due()
            client = await signed_in(gateway)
            for page in ("/console/", "/console/dead-letters"):
                shown = (await client.get(page)).text
                assert "unknown contact [phone]" in shown and PHONE not in shown, page
            assert f"unknown contact {PHONE}" in (await client.get(f"/console/events/{event_id}")).text


async def test_times_typed_without_a_zone_are_read_in_the_consoles(write_config: Callable[[str], Config]) -> None:
    """A browser's datetime-local has no zone: 00:30 in Paris is 23:30 UTC the day before."""
    config = write_config(f"admin: {{token: {TOKEN}}}\nconsole: {{timezone: Europe/Paris}}\n")
    async with running_gateway(config) as gateway:  # its clock: 2026-01-01T00:00:00Z, 01:00 in Paris
        event_id = await stored_event(gateway, event("appointment.created", "evt_1"))
        client = await signed_in(gateway)
        since = await client.get("/console/events", params={"since": "2026-01-01T00:30"})
        until = await client.get("/console/events", params={"until": "2026-01-01T00:30"})
        assert event_id in since.text and event_id not in until.text
        assert "Jan 1, 2026, 1:00:00" in text(since.text)  # shown in Paris time too
        utc = await client.get("/console/events", params={"until": "2026-01-01T00:30:00+00:00"})
        assert event_id in utc.text


async def test_a_bad_cursor_or_filter_is_a_400_page(gateway: Running) -> None:
    client = await signed_in(gateway)
    for page in ("/console/dead-letters?cursor=garbage", "/console/events?cursor=garbage"):
        answer = await client.get(page)
        assert answer.status_code == 400, page
    assert "is not a cursor this gateway gave out" in (await client.get("/console/events?cursor=x")).text


async def test_sign_in_and_sign_out_refuse_what_a_foreign_page_or_a_stranger_sends(gateway: Running) -> None:
    foreign = await gateway.client.post(
        "/console/sign-in", data={"token": TOKEN}, headers={"origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    client = await signed_in(gateway)
    assert (await client.post("/console/sign-out", data={"csrf": "nope"})).status_code == 403
    assert (await client.get("/console/")).status_code == 200  # still signed in


async def test_a_form_too_large_or_unreadable_is_refused(gateway: Running) -> None:
    client = await signed_in(gateway)
    form = {"content-type": "application/x-www-form-urlencoded"}
    large = await client.post("/console/sinks/crm/pause", content=b"reason=" + b"x" * 20_000, headers=form)
    unreadable = await client.post("/console/sinks/crm/pause", content=b"reason=\xff\xfe", headers=form)
    assert (large.status_code, unreadable.status_code) == (413, 400)
    assert await gateway.store.paused_sinks() == {}


def test_a_raw_body_is_shown_indented_as_sent_or_in_base64() -> None:
    assert formatted({"raw_body": '{"a": [1]}'}) == '{\n  "a": [\n    1\n  ]\n}'
    assert formatted({"raw_body": "not json"}) == "not json"
    assert formatted({"raw_body_base64": "/w=="}) == "(base64) /w=="


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, ""), ("", ""), ("+33612", "•••"), ("+33612345678", "+336•••78"), ("ana@example.org", "a•••@example.org")],
)
def test_masked(value: str | None, shown: str) -> None:
    assert masked(value) == shown


@pytest.mark.parametrize(
    ("trusted", "proto", "secure"),
    [("[127.0.0.1/32]", "https", True), ("[127.0.0.1/32]", "http", False), ("[]", "https", False)],
)
async def test_the_cookie_is_secure_behind_a_trusted_proxy_that_terminated_tls(
    write_config: Callable[[str], Config], trusted: str, proto: str, secure: bool
) -> None:
    """TLS ends at the proxy: only a trusted proxy's X-Forwarded-Proto says the browser used HTTPS."""
    config = write_config(f"admin: {{token: {TOKEN}}}\nserver: {{trusted_proxies: {trusted}}}\n")
    async with running_gateway(config) as gateway:
        answer = await gateway.client.post(
            "/console/sign-in", data={"token": TOKEN}, headers={"x-forwarded-proto": proto}
        )
        assert ("secure" in answer.headers["set-cookie"].lower()) is secure


async def test_storage_down_during_an_action_or_the_overview_is_a_503_page_and_nothing_is_claimed_done(
    gateway: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await signed_in(gateway)
    token = await csrf(client)
    await stored_event(gateway, event("appointment.created", "evt_1"))  # counted, not yet flushed

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("database is locked")

    monkeypatch.setattr(gateway.store, "set_paused", unavailable)
    monkeypatch.setattr(gateway.store, "add_traffic", unavailable)
    paused = await client.post("/console/sinks/crm/pause", data={"csrf": token})
    assert paused.status_code == 503 and "The sink is paused." not in paused.text
    overview = await client.get("/console/")
    assert overview.status_code == 503 and "The store cannot be read now" in overview.text
    monkeypatch.undo()
    assert await gateway.store.paused_sinks() == {}
    assert "moncreneau 1 1 0 0" in text((await client.get("/console/")).text)  # the counts were kept for later
