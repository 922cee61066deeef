from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from gateway.config import Config
from gateway.exceptions import StorageError
from gateway.quiet_hours import QuietHours
from gateway.store.base import DeliveryRow, Store
from gateway.store.postgres import PostgresStore
from gateway.testing.receiver import Receiver
from tests.conftest import MONCRENEAU_SECRET, TWILIO_SMS, Running, running_gateway
from tests.helpers import metric, sample
from tests.peers import postgres_database

NIGHT = QuietHours.model_validate({"from": "21:00", "to": "08:00"})


def local(text: str, zone: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def shown(timestamp: float | None, zone: str) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, ZoneInfo(zone)).isoformat()


@pytest.mark.parametrize(
    ("now", "zone", "ends"),
    [
        ("2026-06-10T20:59:59", "Europe/Paris", None),
        ("2026-06-10T21:00:00", "Europe/Paris", "2026-06-11T08:00:00+02:00"),
        ("2026-06-11T07:59:00", "Europe/Paris", "2026-06-11T08:00:00+02:00"),
        ("2026-06-11T08:00:00", "Europe/Paris", None),
        # the night the clocks go forward (28 March 2027, 02:00 -> 03:00): it ends at 08:00 summer time
        ("2027-03-27T22:00:00", "Europe/Paris", "2027-03-28T08:00:00+02:00"),
        ("2027-03-28T01:30:00", "Europe/Paris", "2027-03-28T08:00:00+02:00"),
        # and back (31 October 2027, 03:00 -> 02:00): at 08:00 winter time, an hour longer
        ("2027-10-30T23:00:00", "Europe/Paris", "2027-10-31T08:00:00+01:00"),
        # Conakry keeps UTC all year
        ("2026-03-29T21:30:00", "Africa/Conakry", "2026-03-30T08:00:00+00:00"),
        ("2026-03-30T12:00:00", "Africa/Conakry", None),
    ],
)
def test_quiet_hours_end_at_the_local_time_whatever_the_offset_did_overnight(
    now: str, zone: str, ends: str | None
) -> None:
    assert shown(NIGHT.end(local(now, zone), zone), zone) == ends


def test_a_night_across_a_daylight_saving_change_is_an_hour_shorter_or_longer() -> None:
    spring = NIGHT.end(local("2027-03-27T21:00:00", "Europe/Paris"), "Europe/Paris")
    autumn = NIGHT.end(local("2027-10-30T21:00:00", "Europe/Paris"), "Europe/Paris")
    assert spring is not None and autumn is not None
    assert spring - local("2027-03-27T21:00:00", "Europe/Paris") == 10 * 3600
    assert autumn - local("2027-10-30T21:00:00", "Europe/Paris") == 12 * 3600


def test_daytime_quiet_hours_and_the_default_zone() -> None:
    lunch = QuietHours.model_validate({"from": "12:00", "to": "14:00", "timezone": "Africa/Conakry"})
    assert shown(lunch.end(local("2026-05-04T12:30:00", "UTC"), None), "UTC") == "2026-05-04T14:00:00+00:00"
    assert lunch.end(local("2026-05-04T11:30:00", "UTC"), None) is None


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"from": "21:00", "to": "21:00"}, "from and to are the same time"),
        ({"from": "25:00", "to": "08:00"}, "from"),
        ({"from": "21:00", "to": "08:00", "timezone": "../../etc/passwd"}, "is not an IANA time zone"),
        ({"from": "21:00", "to": "08:00", "until": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_quiet_hours_are_refused(given: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        QuietHours.model_validate(given)


QUIET = (
    """
sources:
  moncreneau:
    type: moncreneau
    secrets: [{secret}]
    timezone: {zone}
    default_region: GN
sinks:
"""
    + TWILIO_SMS
    + """      api_url: {url}
      expire_before_start: 30m
    quiet_hours: {{from: "21:00", to: "08:00"}}
routes:
  - events: [appointment.created, appointment.updated]
    sinks: [sms]
    reminders: [2h]
"""
)


def quiet(write_config: Callable[..., Config], twilio: Receiver, zone: str) -> Config:
    text = QUIET.format(secret=MONCRENEAU_SECRET, zone=zone, url=twilio.url)
    return write_config(text, with_sources=False)


def booked(event: str, *, occurred: float, starts: str, appointment: int = 1) -> dict[str, Any]:
    body = sample("moncreneau.json", "appointment.created")
    body["id"], body["created"] = event, datetime.fromtimestamp(occurred, UTC).isoformat()
    body["data"]["object"].update(id=appointment, dateTime=starts)
    return body


async def sms_deliveries(gateway: Running, event_id: str) -> list[DeliveryRow]:
    return sorted(await gateway.store.deliveries(event_id), key=lambda row: row.reminder or 0)


@pytest.mark.anyio
async def test_a_message_due_at_night_waits_for_the_morning_and_a_reminder_too_late_for_it_is_skipped(
    write_config: Callable[..., Config], twilio: Receiver
) -> None:
    async with running_gateway(quiet(write_config, twilio, "Africa/Conakry")) as gateway:
        gateway.clock.advance(local("2026-01-21T22:00:00", "UTC") - gateway.clock.now())
        first = (
            await gateway.post_moncreneau(booked("e1", occurred=gateway.clock.now(), starts="2026-01-23T09:00:00"))
        ).json()
        second = (
            await gateway.post_moncreneau(
                booked("e2", occurred=gateway.clock.now(), starts="2026-01-23T08:15:00", appointment=2)
            )
        ).json()
        assert await gateway.worker.run_due() == 2 and twilio.requests == []
        confirmation, reminder = await sms_deliveries(gateway, first["event_id"])
        assert (confirmation.status, confirmation.attempts, shown(confirmation.next_attempt_at, "UTC")) == (
            "pending",
            0,
            "2026-01-22T08:00:00+00:00",
        )
        assert confirmation.last_error == "quiet hours: waits until 2026-01-22T08:00:00+00:00"
        gateway.clock.advance(local("2026-01-22T08:00:00", "UTC") - gateway.clock.now())
        assert await gateway.worker.run_due() == 2 and len(twilio.requests) == 2  # both confirmations, at 08:00
        gateway.clock.advance(local("2026-01-23T06:15:00", "UTC") - gateway.clock.now())
        assert await gateway.worker.run_due() == 1  # the 08:15 appointment's reminder: 08:00 is past 07:45
        (_, early) = await sms_deliveries(gateway, second["event_id"])
        assert (early.status, early.dead_reason, early.attempts) == ("skipped", "quiet hours", 0)
        gateway.clock.advance(local("2026-01-23T07:00:00", "UTC") - gateway.clock.now())
        assert await gateway.worker.run_due() == 1  # the 09:00 one's: waits until 08:00, before 08:30
        gateway.clock.advance(local("2026-01-23T08:00:00", "UTC") - gateway.clock.now())
        assert await gateway.worker.run_due() == 1
        (_, reminder) = await sms_deliveries(gateway, first["event_id"])
        assert (reminder.status, reminder.attempts) == ("succeeded", 1)
        assert (
            metric(gateway, "gateway_deliveries_withheld_total", sink="sms", status="skipped", reason="quiet hours")
            == 1
        )
    assert len(twilio.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_night_the_clocks_go_forward_ends_at_eight_summer_time(
    write_config: Callable[..., Config], twilio: Receiver, backend: str
) -> None:
    config = quiet(write_config, twilio, "Europe/Paris")
    with ExitStack() as cleanup:
        store: Store | None = None
        if backend == "postgres":
            store = PostgresStore(cleanup.enter_context(postgres_database()))
            await store.migrate()
        async with running_gateway(config, store=store) as gateway:  # type: ignore[arg-type]
            gateway.clock.advance(local("2027-03-27T22:00:00", "Europe/Paris") - gateway.clock.now())
            sent = (
                await gateway.post_moncreneau(booked("e1", occurred=gateway.clock.now(), starts="2027-03-29T10:00:00"))
            ).json()
            assert await gateway.worker.run_due() == 1
            confirmation, _ = await sms_deliveries(gateway, sent["event_id"])
            assert shown(confirmation.next_attempt_at, "Europe/Paris") == "2027-03-28T08:00:00+02:00"
            gateway.clock.advance(confirmation.next_attempt_at - gateway.clock.now() - 1)
            assert await gateway.worker.run_due() == 0
            gateway.clock.advance(1)
            assert await gateway.worker.run_due() == 1 and len(twilio.requests) == 1


@pytest.mark.anyio
async def test_quiet_hours_the_store_cannot_record_send_nothing_and_spend_no_attempt(
    write_config: Callable[..., Config], twilio: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(quiet(write_config, twilio, "Africa/Conakry")) as gateway:
        gateway.clock.advance(local("2026-01-21T22:00:00", "UTC") - gateway.clock.now())
        sent = (
            await gateway.post_moncreneau(booked("e1", occurred=gateway.clock.now(), starts="2026-01-23T09:00:00"))
        ).json()

        async def storage_down(*args: object, **kwargs: object) -> None:
            raise StorageError("database is locked")

        monkeypatch.setattr(gateway.store, "settle", storage_down)
        assert await gateway.worker.run_due() == 1
        confirmation, _ = await sms_deliveries(gateway, sent["event_id"])
        assert (confirmation.status, confirmation.attempts, confirmation.lease_owner is not None) == (
            "pending",
            0,
            True,
        )
        assert twilio.requests == []  # the night is kept; the lease expires and the next worker settles it
