from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import Config
from gateway.events import Appointment, AppointmentEvent, Department, Organisation
from gateway.routing import Route, Router, Target

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(
    event_type: str = "appointment.created", source: str = "moncreneau", department: str = "5"
) -> AppointmentEvent:
    return AppointmentEvent(
        id="e",
        type=event_type,
        source=source,
        provider="moncreneau",
        provider_event_id="p",
        provider_event_type=event_type,
        occurred_at=NOW,
        received_at=NOW,
        appointment=Appointment(
            id="1", status="scheduled", department=Department(id=department, organisation=Organisation(id="1"))
        ),
    )


def route(**settings: Any) -> Route:
    return Route.model_validate({"sinks": ["s"], **settings})


def test_wildcards_match_event_types() -> None:
    assert route(events=["appointment.*"]).matches(event(), {})
    assert not route(events=["appointment.*"]).matches(event("customer.updated"), {})
    assert route().matches(event("customer.updated"), {})


def test_sources_restrict_the_route() -> None:
    assert not route(sources=["yapp"]).matches(event(), {})
    assert route(sources=["yapp", "moncreneau"]).matches(event(), {})


def test_a_star_among_the_sources_is_any_source(write_config: Callable[..., Config]) -> None:
    assert route(sources=["*"]).matches(event(source="anything"), {})
    config = write_config(
        "sinks:\n  j: {type: file, options: {path: j.jsonl}}\nroutes:\n  - {sources: ['*'], sinks: [j]}\n"
    )
    assert config.settings.routes[0].sources is None


def test_field_conditions_compare_yaml_numbers_with_provider_ids() -> None:
    router = Router([route(where={"appointment.department.id": 5}, sinks=["sms"])])
    assert [t.sink for t in router.targets(event(department="5"))] == ["sms"]
    assert [t.sink for t in router.targets(event(department="6"))] == []


def test_a_list_of_values_accepts_any_of_them() -> None:
    router = Router(
        [route(where={"appointment.status": ["scheduled", "confirmed"], "appointment.department.id": [5, 7]})]
    )
    assert [t.sink for t in router.targets(event(department="7"))] == ["s"]
    assert [t.sink for t in router.targets(event(department="8"))] == []


def test_a_missing_field_matches_only_null() -> None:
    router = Router([route(where={"customer.email": None})])
    assert [t.sink for t in router.targets(event())] == ["s"]


def test_every_matching_route_adds_its_sinks_once() -> None:
    router = Router(
        [
            route(events=["appointment.created"], sinks=["crm", "sms"]),
            route(events=["appointment.*"], sinks=["sms", "calendar"]),
            route(events=["appointment.cancelled"], sinks=["audit"]),
        ]
    )
    assert [t.sink for t in router.targets(event())] == ["crm", "sms", "calendar"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"events": ["appointement.*"]}, "matches no event type"),
        ({"where": {"appointment.departement.id": 5}}, "not a field of the canonical event"),
        ({"sinks": []}, "at least 1 item"),
        ({"sink": ["crm"]}, "Extra inputs are not permitted"),
    ],
)
def test_routes_that_cannot_match_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Route.model_validate({"sinks": ["s"], **settings})


def test_the_first_route_naming_a_sink_chooses_its_locale() -> None:
    router = Router(
        [
            route(events=["appointment.created"], sinks=["sms"], locale="en"),
            route(sinks=["sms", "email"], locale="fr"),
            route(sinks=["crm"]),
        ]
    )
    assert router.targets(event()) == [Target("sms", "en"), Target("email", "fr"), Target("crm", None)]


def test_an_unknown_locale_is_refused() -> None:
    with pytest.raises(ValidationError, match="'xx_YY' is not a locale Babel knows"):
        route(locale="xx_YY")


def test_one_pass_gives_the_targets_and_each_reminder_once_the_first_route_deciding() -> None:
    scheduling = ["appointment.created", "appointment.updated"]
    router = Router(
        [
            Route(
                events=scheduling, where={"appointment.department.id": 9}, sinks=["sms"], reminders=[7200], locale="en"
            ),
            Route(events=scheduling, sinks=["sms", "email"], reminders=[86400, 7200], reminder_grace=60),
            Route(sinks=["crm"]),
        ]
    )
    routed = router.route(event(department="5"))
    assert routed.targets == [Target("sms"), Target("email"), Target("crm")]
    assert [(r.sink, r.before, r.locale, r.grace) for r in routed.reminders] == [
        ("sms", 86400.0, None, 60.0),
        ("sms", 7200.0, None, 60.0),
        ("email", 86400.0, None, 60.0),
        ("email", 7200.0, None, 60.0),
    ]
    first = router.route(event(department="9")).reminders[0]
    assert (first.sink, first.before, first.locale, first.grace) == ("sms", 7200.0, "en", 600.0)
