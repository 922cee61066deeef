"""Reminders and stale messages end to end: signed webhooks in, the store's deliveries, and what real receivers get."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.exceptions import StorageError
from gateway.store.base import DeliveryRow
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.conftest import TWILIO_SMS, Running, running_gateway
from tests.helpers import metric, sample

pytestmark = pytest.mark.anyio
HOUR = 3600.0
DAY = 86400.0

CLINIC = (
    """
sinks:
"""
    + TWILIO_SMS
    + """      api_url: {twilio}
    retry: {{schedule: [1m, 5m]}}
  crm:
    type: http
    options: {{url: "{crm}/hooks"}}
routes:
  - events: [appointment.created, appointment.updated, appointment.cancelled]
    sinks: [sms]
    reminders: [24h, 2h]
  - events: ["appointment.*"]
    sinks: [crm]
"""
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def booking(kind: str, *, event: str, occurred: str, starts: str, appointment: int = 12345) -> dict[str, Any]:
    """A moncreneau webhook of `kind` (created, updated, cancelled...) about `appointment`, sent at `occurred`,
    starting at `starts` (Africa/Conakry, UTC+0)."""
    body = sample("moncreneau.json", f"appointment.{kind}")
    body["id"], body["created"] = event, occurred
    body["data"]["object"].update(id=appointment, dateTime=starts)
    body["data"]["object"].pop("changes", None)
    return body


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async with receiver() as endpoint:
        yield endpoint


@pytest.fixture
async def clinic(write_config: Callable[[str], Config], twilio: Receiver, crm: Receiver) -> AsyncIterator[Running]:
    async with running_gateway(write_config(CLINIC.format(twilio=twilio.url, crm=crm.url))) as gateway:
        gateway.clock.advance(at("2026-01-21T09:00:00") - gateway.clock.now())
        yield gateway


async def post(gateway: Running, body: dict[str, Any]) -> str:
    response = await gateway.post_moncreneau(body)
    assert response.status_code in (200, 202), response.text
    return str(response.json()["event_id"])


async def reminders(gateway: Running, *event_ids: str) -> list[tuple[str, float, float | None, str, str | None]]:
    """(sink, before, due_at, status, reason) of every reminder of these events."""
    rows: list[DeliveryRow] = [row for event_id in event_ids for row in await gateway.store.deliveries(event_id)]
    return sorted(
        (row.sink, row.reminder, row.due_at, row.status, row.dead_reason) for row in rows if row.reminder is not None
    )


async def test_a_booking_schedules_its_reminders_with_the_event(clinic: Running) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    starts = at("2026-01-25T14:30:00")
    assert await reminders(clinic, created) == [
        ("sms", 2 * HOUR, starts - 2 * HOUR, "pending", None),
        ("sms", 24 * HOUR, starts - 24 * HOUR, "pending", None),
    ]


async def test_a_reminder_already_past_is_skipped_too_late_unless_within_the_grace(clinic: Running) -> None:
    clinic.clock.advance(at("2026-01-25T12:25:00") - clinic.clock.now())  # 2 h 05 before: the 2 h one is ahead
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-25T12:25:00Z", starts="2026-01-25T14:30:00")
    )
    starts = at("2026-01-25T14:30:00")
    assert await reminders(clinic, created) == [
        ("sms", 2 * HOUR, starts - 2 * HOUR, "pending", None),
        ("sms", 24 * HOUR, starts - 24 * HOUR, "skipped", "too late"),
    ]
    assert metric(clinic, "gateway_deliveries_withheld_total", sink="sms", status="skipped", reason="too late") == 1
    clinic.clock.advance(15 * 60)  # 5 minutes past the 2 h reminder's time, within the default 10 minutes' grace
    late = await post(
        clinic,
        booking("created", event="e2", occurred="2026-01-25T12:40:00Z", starts="2026-01-25T14:30:00", appointment=7),
    )
    assert [status for *_, status, _ in await reminders(clinic, late)] == ["pending", "skipped"]


async def test_a_reschedule_moves_the_reminders_and_a_cancellation_withdraws_them(clinic: Running) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    moved = await post(
        clinic, booking("updated", event="e2", occurred="2026-01-22T09:00:00Z", starts="2026-01-26T10:00:00")
    )
    new_start = at("2026-01-26T10:00:00")
    assert await reminders(clinic, created, moved) == [
        ("sms", 2 * HOUR, at("2026-01-25T12:30:00"), "superseded", "rescheduled"),
        ("sms", 2 * HOUR, new_start - 2 * HOUR, "pending", None),
        ("sms", 24 * HOUR, at("2026-01-24T14:30:00"), "superseded", "rescheduled"),
        ("sms", 24 * HOUR, new_start - 24 * HOUR, "pending", None),
    ]
    cancelled = await post(
        clinic, booking("cancelled", event="e3", occurred="2026-01-23T09:00:00Z", starts="2026-01-26T10:00:00")
    )
    assert [row[3:] for row in await reminders(clinic, created, moved, cancelled)] == [
        ("superseded", "rescheduled"),
        ("superseded", "appointment cancelled"),
        ("superseded", "rescheduled"),
        ("superseded", "appointment cancelled"),
    ]


async def test_an_update_that_keeps_the_time_keeps_the_reminders_and_they_carry_its_state(
    clinic: Running, twilio: Receiver, crm: Receiver
) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    renamed = booking("updated", event="e2", occurred="2026-01-22T09:00:00Z", starts="2026-01-25T14:30:00")
    renamed["data"]["object"]["name"] = "Mariama Diallo"  # and, as moncreneau's updates do, no department
    updated = await post(clinic, renamed)
    assert await reminders(clinic, created) == []  # not withdrawn and made again: moved to the latest event
    assert [row[3] for row in await reminders(clinic, updated)] == ["pending", "pending"]
    assert await clinic.worker.run_due() == 2  # the change notice (the confirmation is stale) and the CRM's first
    assert await clinic.worker.run_due() == 1  # the CRM's second
    twilio.requests.clear()
    crm.requests.clear()
    clinic.clock.advance(at("2026-01-24T14:30:00") - clinic.clock.now())  # 24 h before: a Saturday, the day before
    assert await clinic.worker.run_due() == 1
    (sms,) = twilio.requests
    assert (
        "Rappel : Mariama Diallo, votre rendez-vous (Passport Service) est demain à 14:30." in _form(sms.body)["Body"]
    )
    assert crm.requests == []  # reminders go where a route schedules them, nowhere else


async def test_an_http_sink_receives_a_reminder_as_a_canonical_event(
    write_config: Callable[[str], Config], crm: Receiver
) -> None:
    config = write_config(
        f"""
        sinks:
          crm: {{type: http, options: {{url: "{crm.url}/hooks"}}}}
        routes:
          - events: [appointment.created, appointment.updated]
            sinks: [crm]
            reminders: [2h]
        """
    )
    async with running_gateway(config) as gateway:
        gateway.clock.advance(at("2026-01-21T09:00:00") - gateway.clock.now())
        created = await post(
            gateway, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
        )
        assert await gateway.worker.run_due() == 1
        gateway.clock.advance(at("2026-01-25T12:30:00") - gateway.clock.now())
        assert await gateway.worker.run_due() == 1
        (reminder,) = [row for row in await gateway.store.deliveries(created) if row.reminder is not None]
    booked, reminded = (json.loads(request.body) for request in crm.requests)
    assert reminded["type"] == "appointment.reminder" and booked["type"] == "appointment.created"
    assert reminded["id"] == reminder.id == crm.requests[1].headers["idempotency-key"]
    assert reminded["reminder"] == {"before_seconds": 7200.0, "due_at": "2026-01-25T12:30:00Z", "event_id": created}
    assert reminded["appointment"] == booked["appointment"] and reminded["customer"] == booked["customer"]


async def test_an_older_event_arriving_late_changes_nothing_and_duplicates_change_nothing(
    clinic: Running, twilio: Receiver, crm: Receiver
) -> None:
    moved = booking("updated", event="e2", occurred="2026-01-22T09:00:00Z", starts="2026-01-26T10:00:00")
    created = booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    moved_id = await post(clinic, moved)
    before = await reminders(clinic, moved_id)
    created_id = await post(clinic, created)  # sent first, arrived last
    await post(clinic, moved)  # a duplicate
    assert await reminders(clinic, moved_id) == before and [row[3] for row in before] == ["pending", "pending"]
    assert await reminders(clinic, created_id) == []
    statuses = {row.sink: (row.status, row.dead_reason) for row in await clinic.store.deliveries(created_id)}
    # its confirmation would announce the old time: stale from the start; the CRM gets every event, in order
    assert statuses == {"sms": ("superseded", "a later event came first"), "crm": ("pending", None)}
    assert await clinic.worker.run_due() == 2
    assert await clinic.worker.run_due() == 1  # the CRM's second event, once its first is delivered
    assert [json.loads(request.body)["id"] for request in crm.requests] == [created_id, moved_id]


async def test_a_cancellation_withdraws_the_stale_messages_still_waiting_but_never_a_cancellation_notice(
    clinic: Running, twilio: Receiver
) -> None:
    twilio.script(Answer(503))  # the confirmation fails once and waits for its retry
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    assert await clinic.worker.run_due() == 2
    twilio.script(Answer(503))
    cancelled = await post(
        clinic, booking("cancelled", event="e2", occurred="2026-01-21T10:00:00Z", starts="2026-01-25T14:30:00")
    )
    assert await clinic.worker.run_due() == 2  # the cancellation notice fails once too; the CRM's goes
    rebooked = await post(
        clinic, booking("updated", event="e3", occurred="2026-01-21T11:00:00Z", starts="2026-01-27T09:00:00")
    )
    sms = {
        event_id: next(
            row for row in await clinic.store.deliveries(event_id) if row.sink == "sms" and row.reminder is None
        )
        for event_id in (created, cancelled, rebooked)
    }
    assert (sms[created].status, sms[created].dead_reason) == ("superseded", "superseded by appointment.cancelled")
    assert (sms[cancelled].status, sms[cancelled].attempts) == ("pending", 1)  # never withdrawn
    assert sms[rebooked].status == "pending"
    assert (
        metric(
            clinic,
            "gateway_deliveries_withheld_total",
            sink="sms",
            status="superseded",
            reason="superseded by appointment.cancelled",
        )
        == 1
    )


def _form(body: bytes) -> dict[str, str]:
    from urllib.parse import parse_qs

    return {key: values[0] for key, values in parse_qs(body.decode()).items()}


async def test_the_appointment_timeline_shows_its_events_messages_and_reminders(clinic: Running) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    moved = await post(
        clinic, booking("updated", event="e2", occurred="2026-01-22T09:00:00Z", starts="2026-01-26T10:00:00")
    )
    response = await clinic.client.get("/admin/v1/appointments/moncreneau/12345")
    assert response.status_code == 200, response.text
    timeline = response.json()
    assert [(e["id"], e["type"]) for e in timeline["events"]] == [
        (created, "appointment.created"),
        (moved, "appointment.updated"),
    ]
    assert [(d["sink"], d["status"], d["reason"]) for d in timeline["events"][0]["deliveries"]] == [
        ("crm", "pending", None),
        ("sms", "superseded", "superseded by appointment.updated"),
    ]
    assert [(r["status"], r["reminder_before_seconds"], r["due_at"], r["reason"]) for r in timeline["reminders"]] == [
        ("pending", 86400.0, "2026-01-25T10:00:00+00:00", None),
        ("pending", 7200.0, "2026-01-26T08:00:00+00:00", None),
        ("superseded", 86400.0, "2026-01-24T14:30:00+00:00", "rescheduled"),
        ("superseded", 7200.0, "2026-01-25T12:30:00+00:00", "rescheduled"),
    ]
    shown = (await clinic.client.get(f"/admin/v1/events/{moved}")).json()
    assert sorted((d["reminder_before_seconds"] or 0, d["status"]) for d in shown["deliveries"]) == [
        (0, "pending"),
        (0, "pending"),
        (7200.0, "pending"),
        (86400.0, "pending"),
    ]
    assert (await clinic.client.get("/admin/v1/appointments/moncreneau/404")).status_code == 404


REMINDING_CRM = """
sinks:
  crm:
    type: http
    options: {{url: "{crm}/hooks"}}
routes:
  - events: [appointment.created, appointment.updated, appointment.cancelled]
    sinks: [crm]
    reminders: [24h, 2h]
"""
appointments = itertools.count(1000)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[int], list[int], list[bool]]:
    """An appointment's events in provider order (kind, start in hours after the first day), the order they arrive
    in (duplicates included), the minutes between arrivals, and whether the worker runs after each."""
    starts = draw(st.lists(st.integers(0, 72), min_size=1, max_size=4))
    history = [("created", starts[0])] + [("updated", start) for start in starts[1:]]
    if draw(st.booleans()):
        history.append(("cancelled", starts[-1]))
    arrivals = list(draw(st.permutations(range(len(history)))))
    for again in draw(st.lists(st.integers(0, len(history) - 1), max_size=3)):
        arrivals.insert(draw(st.integers(0, len(arrivals))), again)
    gaps = draw(st.lists(st.integers(0, 90), min_size=len(arrivals), max_size=len(arrivals)))
    runs = draw(st.lists(st.booleans(), min_size=len(arrivals), max_size=len(arrivals)))
    return history, arrivals, gaps, runs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(story=histories())
async def test_the_reminders_sent_are_those_of_the_final_state_whatever_the_arrival_order(
    write_config: Callable[[str], Config],
    crm: Receiver,
    story: tuple[list[tuple[str, int]], list[int], list[int], list[bool]],
) -> None:
    history, arrivals, gaps, runs = story
    appointment = next(appointments)
    async with running_gateway(write_config(REMINDING_CRM.format(crm=crm.url))) as gateway:
        base = gateway.clock.now()
        first_day = base + 4 * DAY

        def body(index: int) -> dict[str, Any]:
            kind, start = history[index]
            occurred = datetime.fromtimestamp(base - HOUR + 60 * index, UTC).isoformat()
            starts = datetime.fromtimestamp(first_day + start * HOUR, UTC).replace(tzinfo=None).isoformat()
            return booking(
                kind, event=f"a{appointment}-{index}", occurred=occurred, starts=starts, appointment=appointment
            )

        for index, gap, run in zip(arrivals, gaps, runs, strict=True):
            gateway.clock.advance(gap * 60)
            await post(gateway, body(index))
            if run:
                await gateway.worker.run_due()
        for due in sorted({first_day + start * HOUR - before for _, start in history for before in (DAY, 2 * HOUR)}):
            gateway.clock.advance(max(0.0, due - gateway.clock.now()))
            while await gateway.worker.run_due():
                pass
    sent = [
        json.loads(request.body)
        for request in crm.requests
        if json.loads(request.body)["type"] == "appointment.reminder"
        and json.loads(request.body)["appointment"]["id"] == str(appointment)
    ]
    final_kind, final_start = history[-1]
    expected = [] if final_kind == "cancelled" else sorted([(2 * HOUR, final_start), (DAY, final_start)])
    starts_at = [
        (r["reminder"]["before_seconds"], (at(r["appointment"]["starts_at"][:19]) - first_day) / HOUR) for r in sent
    ]
    assert sorted(starts_at) == expected


async def test_a_reminder_failing_days_after_its_booking_is_retried_not_given_up(
    clinic: Running, twilio: Receiver
) -> None:
    """The retry policy's clock (give_up_after, 24 h by default) starts when the reminder falls due."""
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    while await clinic.worker.run_due():
        pass
    clinic.clock.advance(at("2026-01-25T12:30:00") - clinic.clock.now())  # four days later: the 2 h reminder
    twilio.script(Answer(503), Answer(503))
    assert await clinic.worker.run_due() == 2  # the 24 h one, late (the gateway was down), and the 2 h one fail
    reminded = sorted(
        (row for row in await clinic.store.deliveries(created) if row.reminder), key=lambda r: r.reminder or 0
    )
    assert [(row.status, row.attempts, row.next_attempt_at) for row in reminded] == [
        ("pending", 1, at("2026-01-25T12:31:00"))
    ] * 2


@pytest.mark.parametrize("ending", ["validated", "completed"])
async def test_a_validation_or_a_completion_withdraws_the_reminders_left(clinic: Running, ending: str) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    ended = await post(
        clinic, booking(ending, event="e2", occurred="2026-01-24T20:00:00Z", starts="2026-01-25T14:30:00")
    )
    assert [row[3:] for row in await reminders(clinic, created, ended)] == [
        ("superseded", f"appointment {ending}"),
        ("superseded", f"appointment {ending}"),
    ]


async def test_a_reminder_whose_appointment_cannot_be_read_is_retried(
    clinic: Running, twilio: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await post(
        clinic, booking("created", event="e1", occurred="2026-01-21T09:00:00Z", starts="2026-01-25T14:30:00")
    )
    while await clinic.worker.run_due():
        pass
    requests = len(twilio.requests)

    async def storage_down(*args: object, **kwargs: object) -> None:
        raise StorageError("database is locked")

    monkeypatch.setattr(clinic.store, "list_events", storage_down)
    clinic.clock.advance(at("2026-01-24T14:30:00") - clinic.clock.now())
    assert await clinic.worker.run_due() == 1
    (day,) = [row for row in await clinic.store.deliveries(created) if row.reminder == DAY]
    assert (day.status, day.attempts) == ("pending", 1) and len(twilio.requests) == requests
    assert day.last_error == "cannot read the appointment's events: database is locked"
