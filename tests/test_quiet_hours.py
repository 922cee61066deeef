from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from gateway.quiet_hours import QuietHours

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
