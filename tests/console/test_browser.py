"""The console in a real browser: Debian's Chromium driven by Playwright, against `serve` in a process of its own
with a real worker delivering (a journal file, and a CRM at a closed port whose deliveries become dead letters).

Screenshots of the main pages go to CONSOLE_SCREENSHOTS (a folder) when it is set, else to the test's temporary
folder; docs/console.md shows the ones taken with CONSOLE_SCREENSHOTS=docs/console.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import SOURCES, moncreneau_request
from tests.helpers import free_port, gateway_process, sample
from tests.peers import chromium

TOKEN = "browser-token-5e7a-11c9"
PHONE = "+224622765432"


class Console:
    def __init__(self, url: str, browser: Browser, screenshots: Path) -> None:
        self.url = url
        self.browser = browser
        self.screenshots = screenshots

    def page(self, *, width: int = 1280, height: int = 860) -> Page:
        context = self.browser.new_context(viewport={"width": width, "height": height}, locale="en-GB")
        context.set_default_timeout(10_000)
        return context.new_page()

    def signed_in(self, **viewport: int) -> Page:
        page = self.page(**viewport)
        page.goto(f"{self.url}/console/")
        page.get_by_label("Admin token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        return page

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=self.screenshots / f"{name}.png", full_page=True)

    def dead_letters(self) -> int:
        answer = httpx.get(f"{self.url}/admin/v1/sinks", headers={"Authorization": f"Bearer {TOKEN}"})
        return int({row["sink"]: row for row in answer.json()["sinks"]}["crm"]["dead_letters"])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    port = free_port()
    config = folder / "config.yaml"
    config.write_text(
        f"""
server: {{port: {port}}}
storage: {{url: "sqlite:///{folder}/gateway.db"}}
admin: {{token: {TOKEN}}}
{SOURCES}
sinks:
  journal: {{type: file, options: {{path: "{folder}/journal.jsonl"}}}}
  crm: {{type: http, options: {{url: "http://127.0.0.1:9/crm"}}, retry: {{max_attempts: 1}}}}
routes:
  - sinks: [journal, crm]
"""
    )
    screenshots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or folder / "screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    executable = chromium()
    with gateway_process(config, port, folder / "serve.log"):
        url = f"http://127.0.0.1:{port}"
        for n, (event_type, phone) in enumerate(
            [("appointment.created", PHONE), ("appointment.created", "+224655000111"), ("appointment.cancelled", PHONE)]
        ):
            body = sample("moncreneau.json", event_type)
            body["id"] = f"evt_browser_{n}"
            body["data"]["object"].update(id=1000 + n % 2, phone=phone)
            raw, headers = moncreneau_request(body)
            assert httpx.post(f"{url}/webhooks/moncreneau", content=raw, headers=headers).status_code == 202
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            yield Console(url, browser, screenshots)
            browser.close()


LOW_CONTRAST = """() => {
    const rgb = text => text.match(/[\\d.]+/g).map(Number);
    const luminance = ([r, g, b]) => {
        const linear = c => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
        return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    };
    const background = element => {
        for (; element; element = element.parentElement) {
            const color = rgb(getComputedStyle(element).backgroundColor);
            if (color.length < 4 || color[3] > 0) return color.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const low = [];
    for (const element of document.querySelectorAll("body *")) {
        const own = [...element.childNodes].some(node => node.nodeType === 3 && node.textContent.trim());
        if (!own || element.closest(".visually-hidden, .skip")) continue;
        const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(background(element))];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        if (ratio < 4.5) low.push(`${element.tagName} ${element.textContent.trim().slice(0, 30)}: ${ratio.toFixed(2)}`);
    }
    return low;
}"""
"""Text whose contrast with its background is under WCAG's 4.5:1."""


def wait_for_dead_letters(console: Console, page: Page) -> None:
    """The worker in the other process dead-letters the CRM's deliveries within a moment; reload until then."""
    for _ in range(100):
        if console.dead_letters() >= 1:
            return
        page.wait_for_timeout(100)
    raise AssertionError("no dead letter after 10 s")


def test_sign_in_and_sign_out(console: Console) -> None:
    page = console.page()
    page.goto(f"{console.url}/console/events")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    console.shot(page, "sign-in")
    page.get_by_label("Admin token").fill("not the token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Events")  # where it was going
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto(f"{console.url}/console/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")


def test_find_an_event_by_phone_read_its_attempts_and_replay_it(console: Console) -> None:
    page = console.signed_in()
    wait_for_dead_letters(console, page)
    page.reload()
    console.shot(page, "overview")
    page.get_by_role("link", name="Events").click()
    page.get_by_label("Customer phone or email").fill(PHONE)
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(2)  # created and cancelled, not the other customer's
    expect(rows.first).to_contain_text("+224•••32")
    expect(page.locator("table.events")).not_to_contain_text(PHONE)
    console.shot(page, "events")
    rows.last.get_by_role("link").first.click()  # the oldest: the created event
    expect(page.get_by_role("heading", level=1)).to_contain_text("Event")
    expect(page.locator("dl.facts").first).to_contain_text(PHONE)  # whole on the detail page
    crm = page.locator("article.delivery-card", has_text="crm")
    expect(crm.get_by_role("table")).to_contain_text("Cannot connect to host")
    expect(crm.get_by_role("table").locator("tbody tr")).to_have_count(1)
    console.shot(page, "event")
    page.get_by_role("button", name="Replay to journal").click()
    expect(page.get_by_role("status")).to_have_text("1 deliveries queued again.")


def test_retry_a_dead_letter(console: Console) -> None:
    page = console.signed_in()
    wait_for_dead_letters(console, page)
    page.get_by_role("link", name="Dead letters").click()
    console.shot(page, "dead-letters")
    page.get_by_role("button", name=re.compile("^Retry")).first.click()
    expect(page.get_by_role("status")).to_have_text("1 deliveries queued again.")


def test_bulk_replay_shows_the_dry_run_count_before_it_queues(console: Console) -> None:
    page = console.signed_in()
    wait_for_dead_letters(console, page)
    page.get_by_role("link", name="Dead letters").click()
    page.get_by_label("Sink").select_option("crm")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name="Replay every matching dead letter…").click()
    count = console.dead_letters()
    expect(page.get_by_role("status")).to_have_text(f"{count} dead letters will be queued again.")
    console.shot(page, "replay-dry-run")
    page.get_by_role("button", name=f"Queue {count} dead letters again").click()
    expect(page.get_by_role("status")).to_have_text(f"{count} deliveries queued again.")


def test_a_forged_post_is_refused(console: Console) -> None:
    page = console.signed_in()
    forged = page.request.post(f"{console.url}/console/sinks/crm/pause", form={"reason": "forged"})
    assert forged.status == 403 and "did not come from this console" in forged.text()
    # a page of another site (localhost is not the site 127.0.0.1) posting the same form: the cookie stays home
    # (SameSite=Strict) and the origin is foreign
    page.goto(console.url.replace("127.0.0.1", "localhost") + "/healthz")
    page.set_content(
        f'<form method="post" action="{console.url}/console/sinks/crm/pause">'
        '<input name="reason" value="cross-site"><button>Go</button></form>'
    )
    page.get_by_role("button", name="Go").click()
    expect(page.get_by_role("alert")).to_have_text("This form was sent from another site.")
    state = httpx.get(f"{console.url}/admin/v1/sinks", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert {row["sink"]: row["state"] for row in state["sinks"]}["crm"] == "running"


def test_pause_and_resume_with_the_keyboard(console: Console) -> None:
    page = console.signed_in()
    page.goto(f"{console.url}/console/sinks")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    crm = page.locator("tr", has_text="crm")
    crm.get_by_label("Reason").fill("CRM maintenance")
    crm.get_by_label("Reason").press("Enter")
    expect(page.get_by_role("status")).to_have_text("The sink is paused.")
    expect(page.locator("tr", has_text="crm")).to_contain_text("CRM maintenance")
    console.shot(page, "sinks")
    page.get_by_role("button", name="Resume crm").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("The sink is running again.")


def test_send_a_test_event_in_french(console: Console) -> None:
    page = console.signed_in()
    page.goto(f"{console.url}/console/test-event?lang=fr")
    expect(page.get_by_role("heading", level=1)).to_have_text("Envoyer un événement de test")
    form = page.locator("form", has_text="yapp")
    form.get_by_label("Type").select_option("booking.created")
    form.get_by_role("button", name="Envoyer").click()
    expect(page.get_by_role("status")).to_contain_text("202 accepted")
    expect(page.get_by_role("link", name=re.compile("Ouvrir l'événement"))).to_be_visible()
    console.shot(page, "test-event-fr")


@pytest.mark.parametrize("path", ["/console/", "/console/events", "/console/dead-letters", "/console/sinks"])
def test_every_field_is_labelled_and_a_phone_needs_no_sideways_scroll(console: Console, path: str) -> None:
    page = console.signed_in(width=375, height=800)
    page.goto(console.url + path)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(field => field.labels.length === 0).map(field => field.name)"""
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # wide tables scroll alone
    assert page.locator("h1").count() == 1
    assert page.evaluate(LOW_CONTRAST) == []
    if path == "/console/":
        console.shot(page, "overview-phone")
