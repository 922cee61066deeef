from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_sinks.caldav import CalDAVOptions, CalDAVSink, resource_name
from icalendar import Calendar

from gateway.config import Config
from gateway.events import AppointmentEvent
from gateway.exceptions import BadEventData, PermanentDeliveryError, RetryableDeliveryError
from gateway.reminders import reminder_event
from gateway.sinks import Delivery, MemoryState, Receipt
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, receiver
from tests.conftest import running_gateway
from tests.helpers import free_port
from tests.samples import SOURCES

pytestmark = pytest.mark.anyio
FEED_TOKEN = "feed-token-0123456789abcdef"


@contextmanager
def radicale(folder: Path, port: int) -> Iterator[str]:
    """A Radicale server on a loopback port, with the `gateway` user's calendar home; yield the home's URL."""
    command = [
        sys.executable,
        "-m",
        "radicale",
        "--server-hosts",
        f"127.0.0.1:{port}",
        "--auth-type",
        "none",
        "--storage-filesystem-folder",
        str(folder),
        "--logging-level",
        "error",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.request("MKCOL", f"http://127.0.0.1:{port}/gateway/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("radicale did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/gateway/"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with radicale(tmp_path_factory.mktemp("radicale"), free_port()) as url:
        yield url


def story(appointment: int | str, kind: str, created: str, starts: str, **fields: Any) -> AppointmentEvent:
    """A moncreneau event of one appointment's story, told consistently."""
    body = load_samples("moncreneau.json")[f"appointment.{kind}"]
    body["id"] = f"evt_{appointment}_{kind}_{created}"
    body["created"] = created
    body["data"]["object"].update(id=appointment, dateTime=starts, **fields)
    source, _ = SOURCES["moncreneau"]
    event = source.parse(body, {}, event_id=body["id"], received_at=datetime(2026, 1, 1, tzinfo=UTC)).event
    assert event is not None
    return event


def sink(url: str | None, **options: Any) -> CalDAVSink:
    return CalDAVSink("calendar", CalDAVOptions.model_validate({"url": url, **options}), timeout=5.0)


async def deliver(target: CalDAVSink, state: MemoryState, *events: AppointmentEvent) -> list[Receipt | None]:
    await target.open()
    try:
        return [
            await target.deliver(e, Delivery(id=f"d-{e.id}", sink="calendar", attempt=1, state=state)) for e in events
        ]
    finally:
        await target.aclose()


def stored(home: str, appointment: int, calendar: str = "appointments") -> Any:
    """The VEVENT the server holds for the appointment, or None."""
    response = httpx.get(f"{home}{calendar}/moncreneau-{appointment}_at_appointment-gateway.ics")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    (vevent,) = Calendar.from_ical(response.text).walk("VEVENT")
    return vevent


def start(vevent: Any) -> datetime:
    moment: datetime = vevent.decoded("dtstart")
    return moment


CREATED = ("created", "2026-01-21T14:30:00Z", "2026-01-25T14:30:00")
UPDATED = ("updated", "2026-01-22T10:15:00Z", "2026-01-26T10:00:00")
CANCELLED = ("cancelled", "2026-01-23T16:45:00Z", "2026-01-26T10:00:00")


async def test_created_rescheduled_cancelled_and_completed_appointments_are_mirrored(home: str) -> None:
    calendar, state = sink(home, create_calendars=True), MemoryState()
    await deliver(calendar, state, story(1, *CREATED))
    created = stored(home, 1)
    assert str(created["uid"]) == "moncreneau-1@appointment-gateway"
    assert str(created["summary"]) == "Jean Dupont (Passport Service)" and str(created["status"]) == "CONFIRMED"
    assert start(created) == datetime(2026, 1, 25, 14, 30, tzinfo=UTC)
    assert "Phone: +224621234567" in str(created["description"]) and str(created["location"]) == "Passport Service"
    await deliver(calendar, state, story(1, *UPDATED))
    moved = stored(home, 1)
    assert start(moved) == datetime(2026, 1, 26, 10, tzinfo=UTC)
    assert moved["sequence"] > created["sequence"]
    assert str(moved["summary"]) == "Jean Dupont (Passport Service)"  # carried forward: the update lacks the name
    await deliver(
        calendar, state, story(2, *CREATED), story(2, "validated", "2026-01-25T14:35:00Z", "2026-01-25T14:30:00")
    )
    validated = stored(home, 2)
    assert [str(c) for c in validated["categories"].cats] == ["VALIDATED"]
    assert "Validated by: Agent Martin" in str(validated["description"])
    await deliver(calendar, state, story(2, "completed", "2026-01-25T15:00:00Z", "2026-01-25T14:30:00"))
    completed = stored(home, 2)
    assert [str(c) for c in completed["categories"].cats] == ["COMPLETED"]
    description = str(completed["description"])
    assert "Duration: 30 min" in description and "Notes: Document issued" in description
    assert "Validated by: Agent Martin" in description  # carried forward from the validation
    assert completed.decoded("dtend") - start(completed) == (datetime(2026, 1, 1, 0, 30) - datetime(2026, 1, 1))
    await deliver(calendar, state, story(1, *CANCELLED))
    assert str(stored(home, 1)["status"]) == "CANCELLED"


ORDERS = list(itertools.permutations([CREATED, UPDATED, CANCELLED]))


@pytest.mark.parametrize("on_cancel", ["mark", "delete"])
@pytest.mark.parametrize("order", ORDERS)
async def test_every_arrival_order_ends_in_the_same_state(home: str, on_cancel: str, order: tuple[Any, ...]) -> None:
    appointment = 100 + ORDERS.index(order) + (10 if on_cancel == "delete" else 0)
    calendar, state = sink(home, create_calendars=True, on_cancel=on_cancel), MemoryState()
    await deliver(calendar, state, *(story(appointment, *step) for step in order))
    final = stored(home, appointment)
    if on_cancel == "delete":
        assert final is None
    else:
        assert str(final["status"]) == "CANCELLED" and start(final) == datetime(2026, 1, 26, 10, tzinfo=UTC)


async def test_duplicates_and_replays_are_harmless(home: str) -> None:
    calendar, state = sink(home, create_calendars=True), MemoryState()
    created, updated = story(3, *CREATED), story(3, *UPDATED)
    receipts = await deliver(calendar, state, created, updated, updated, created, updated)
    assert [r.detail.split(":")[0] for r in receipts if r and r.detail] == [
        "wrote moncreneau-3@appointment-gateway in appointments",
        "wrote moncreneau-3@appointment-gateway in appointments",
        "wrote moncreneau-3@appointment-gateway in appointments",
        "stale",
        "wrote moncreneau-3@appointment-gateway in appointments",
    ]
    assert start(stored(home, 3)) == datetime(2026, 1, 26, 10, tzinfo=UTC)


async def test_an_old_reschedule_never_overwrites_a_newer_one(home: str) -> None:
    calendar, state = sink(home, create_calendars=True), MemoryState()
    newer = story(4, "updated", "2026-01-24T08:00:00Z", "2026-01-27T09:00:00")
    await deliver(calendar, state, story(4, *CREATED), newer, story(4, *UPDATED))
    assert start(stored(home, 4)) == datetime(2026, 1, 27, 9, tzinfo=UTC)


async def test_calendars_are_chosen_by_department_and_created_only_when_allowed(home: str) -> None:
    by_department = {"calendars_by_department": {"5": "passports"}}
    with pytest.raises(PermanentDeliveryError, match="passports/ does not exist") as error:
        await deliver(sink(home, **by_department), MemoryState(), story(5, *CREATED))
    assert error.value.reason == "no calendar"
    await deliver(sink(home, create_calendars=True, **by_department), MemoryState(), story(5, *CREATED))
    assert stored(home, 5, "passports") is not None and stored(home, 5) is None


async def test_a_server_that_is_down_is_retried_and_then_written(tmp_path: Path) -> None:
    port = free_port()
    calendar, state = sink(f"http://127.0.0.1:{port}/gateway/", create_calendars=True), MemoryState()
    with pytest.raises(RetryableDeliveryError, match=r"Connect(ion)?Error"):
        await deliver(calendar, state, story(6, *CREATED))
    with radicale(tmp_path / "data", port) as home:
        await deliver(calendar, state, story(6, *CREATED))
        assert stored(home, 6) is not None


@pytest.mark.parametrize(
    "appointment_id",
    ["../../../private/keep.ics?", "..%2F..%2Fprivate%2Fkeep.ics", "a/../../private/keep", "x#../private", ".."],
)
async def test_an_appointment_id_never_names_another_object_or_calendar(home: str, appointment_id: str) -> None:
    keep = f"{home}private/keep.ics"
    document = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\nUID:keep\r\n"
        "DTSTAMP:20260101T000000Z\r\nDTSTART:20260101T100000Z\r\nSUMMARY:keep\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    uid = f"moncreneau-{appointment_id}@appointment-gateway"
    calendar, state = sink(home, create_calendars=True, on_cancel="delete"), MemoryState()
    async with httpx.AsyncClient() as client:
        assert (await client.request("MKCALENDAR", f"{home}private/")).status_code in (201, 405, 409)
        put = await client.put(keep, content=document, headers={"Content-Type": "text/calendar"})
        assert put.status_code in (201, 204)
        await deliver(calendar, state, story(appointment_id, *CREATED))
        written = await client.get(f"{home}appointments/{resource_name(uid)}")
        assert written.status_code == 200 and f"UID:{uid}" in written.text.replace("\r\n ", "")
        await deliver(calendar, state, story(appointment_id, *CANCELLED))
        assert (await client.get(keep)).status_code == 200, "the cancellation deleted an object it does not own"
        assert (await client.get(f"{home}appointments/{resource_name(uid)}")).status_code == 404


def test_plain_ids_keep_their_readable_resource_names() -> None:
    assert resource_name("moncreneau-12345@appointment-gateway") == "moncreneau-12345_at_appointment-gateway.ics"
    assert resource_name("moncreneau-a/b@appointment-gateway") != resource_name("moncreneau-a%2Fb@appointment-gateway")
    assert all(len(resource_name(f"moncreneau-{i}@x")) == 68 for i in ("a?b", "a%2e", "é", "a/b"))


async def test_data_no_calendar_can_hold_is_a_permanent_bad_data_error(home: str) -> None:
    calendar = sink(home, create_calendars=True)
    with pytest.raises(BadEventData, match=r"appointment\.starts_at") as year_9999:
        await deliver(calendar, MemoryState(), story(9, "created", "2026-01-21T14:30:00Z", "9999-12-31T23:50:00"))
    assert year_9999.value.reason == "bad data"
    event = story(10, *CREATED)
    assert event.appointment is not None
    hostile = event.model_copy(  # a plugin source that does not clean its URLs
        update={"appointment": event.appointment.model_copy(update={"qr_code_url": "https://x.gn/q\r\nX: y"})}
    )
    with pytest.raises(BadEventData, match=r"appointment\.qr_code_url"):
        await deliver(calendar, MemoryState(), hostile)


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (Answer(503, {"Retry-After": "120"}), RetryableDeliveryError, 120),
        (Answer(429), RetryableDeliveryError, None),
        (Answer(500), RetryableDeliveryError, None),
        (Answer(403), PermanentDeliveryError, None),
        (Answer(400), PermanentDeliveryError, None),
    ],
)
async def test_server_errors_are_classified(answer: Answer, error: type[Exception], retry_after: float | None) -> None:
    async with receiver() as server:
        server.default = answer
        with pytest.raises(error) as raised:
            await deliver(sink(server.url + "/gateway/"), MemoryState(), story(7, *CREATED))
    assert getattr(raised.value, "retry_after", None) == retry_after


async def test_the_feed_serves_the_same_events_behind_a_secret_token(
    home: str, write_config: Callable[[str], Config]
) -> None:
    config = write_config(
        f"""
        sinks:
          calendar:
            type: caldav
            options:
              url: "{home}"
              create_calendars: true
              calendar: feedtest
              feeds: {{feedtest: {FEED_TOKEN}}}
              feed_past: 3650d
        routes:
          - events: ["appointment.*"]
            sinks: [calendar]
        """
    )
    async with running_gateway(config) as gateway:
        body = load_samples("moncreneau.json")["appointment.created"]
        assert (await gateway.post_moncreneau(body)).status_code == 202
        assert await gateway.worker.run_due() == 1
        feed = await gateway.client.get(f"/calendars/calendar/{FEED_TOKEN}.ics")
        wrong = await gateway.client.get("/calendars/calendar/feed-token-guessed-wrong.ics")
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("text/calendar")
    assert feed.headers["cache-control"] == "private, no-store"
    (served,) = Calendar.from_ical(feed.text).walk("VEVENT")
    on_server = stored(home, 12345, "feedtest")
    assert served.to_ical() == on_server.to_ical()
    assert wrong.status_code == 404


async def test_the_feed_serves_only_appointments_within_its_window(write_config: Callable[[str], Config]) -> None:
    config = write_config(
        f"""
        sinks:
          calendar:
            type: caldav
            options: {{feeds: {{appointments: {FEED_TOKEN}}}, feed_past: 1d, feed_future: 30d}}
        routes:
          - events: ["appointment.*"]
            sinks: [calendar]
        """
    )
    today = datetime.now(UTC)
    async with running_gateway(config) as gateway:
        for appointment, starts in (
            (1, today - timedelta(days=3)),
            (2, today + timedelta(days=2)),
            (3, today + timedelta(days=60)),
        ):
            event = story(appointment, "created", "2026-01-21T14:30:00Z", starts.strftime("%Y-%m-%dT%H:%M:%S"))
            await gateway.store.set_state(
                "calendar",
                f"appointment:{appointment}",
                json.dumps(
                    {
                        "occurred_at": 0,
                        "event_id": event.id,
                        "calendar": "appointments",
                        "vevent": f"BEGIN:VEVENT\r\nUID:{appointment}\r\nDTSTAMP:20260101T000000Z\r\nEND:VEVENT\r\n",
                        "snapshot": event.model_dump(mode="json", by_alias=True),
                    }
                ),
                now=0,
            )
        feed = await gateway.client.get(f"/calendars/calendar/{FEED_TOKEN}.ics")
    assert [str(vevent["uid"]) for vevent in Calendar.from_ical(feed.text).walk("VEVENT")] == ["2"]


async def test_without_a_server_the_sink_still_feeds(write_config: Callable[[str], Config]) -> None:
    state = MemoryState()
    await deliver(sink(None, feeds={"appointments": FEED_TOKEN}), state, story(8, *CREATED))
    (remembered,) = [json.loads(v) for v in (await state.items("appointment:")).values()]
    assert "BEGIN:VEVENT" in remembered["vevent"] and remembered["calendar"] == "appointments"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feeds": {"appointments": "short"}}, "at least 16 random characters"),
        ({"calendar": "../escape"}, "String should match pattern"),
        ({"calendars_by_department": {"5": "a/b"}}, "String should match pattern"),
        ({"summary": "{{ broken"}, "template syntax error"),
        ({"on_cancel": "archive"}, "Input should be 'mark' or 'delete'"),
    ],
)
def test_impossible_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CalDAVOptions.model_validate(options)


async def test_a_reminder_changes_nothing_in_the_calendar(home: str) -> None:
    created = story(31, *CREATED)
    reminder = reminder_event(created, delivery_id="d-reminder", before=7200.0, due_at=1.0)
    state = MemoryState()
    (receipt,) = await deliver(sink(home), state, reminder)
    assert receipt is not None and receipt.detail == "appointment.reminder: nothing to put in a calendar"
    assert stored(home, 31) is None and state.values == {}
