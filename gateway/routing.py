"""Routes from YAML: which sinks receive an event, by source, event type pattern and field conditions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from babel import Locale, UnknownLocaleError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway._fields import annotation_at
from gateway.durations import Duration
from gateway.events import EVENT_TYPES, REMINDER, AppointmentEvent

ALERTS = "gateway."
"""The gateway's own events: `*` and `appointment.*` never match them, `gateway.*` does."""
SCHEDULING = ("appointment.created", "appointment.updated")
"""The events whose appointment a route's reminders follow."""

Scalar = str | int | float | bool | None


class Route(BaseModel):
    """Deliver matching events to `sinks`. Every condition given must hold; omitted ones match anything."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    sources: list[str] | None = Field(None, description='Configured source names; any when omitted or ["*"]')
    events: list[str] = Field(["*"], min_length=1, description="Canonical event types; wildcards like appointment.*")
    where: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description="Dotted canonical field -> value (or list of accepted values), e.g. appointment.department.id: 5",
    )
    sinks: list[str] = Field(min_length=1)
    locale: str | None = Field(None, description="Language of the messages this route sends (fr, en...)")
    reminders: list[Duration] = Field(
        default_factory=list,
        description="Reminders to schedule before appointment.starts_at (e.g. [24h, 2h]), following reschedules "
        "and withdrawn on cancellation",
    )
    reminder_grace: Duration = Field(
        600.0, description="A reminder whose time passed less than this ago when it is scheduled is still sent"
    )

    @field_validator("sources")
    @classmethod
    def _star_is_any(cls, sources: list[str] | None) -> list[str] | None:
        return None if sources is not None and "*" in sources else sources

    @field_validator("events")
    @classmethod
    def _patterns_match_something(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not any(fnmatchcase(known, pattern) for known in EVENT_TYPES):
                raise ValueError(f"{pattern!r} matches no event type; known: {', '.join(EVENT_TYPES)}")
        return patterns

    @field_validator("events")
    @classmethod
    def _not_reminders(cls, patterns: list[str]) -> list[str]:
        if REMINDER in patterns:
            raise ValueError(f"{REMINDER} is made by the gateway, never received; schedule it with `reminders: [24h]`")
        return patterns

    @model_validator(mode="after")
    def _reminders_follow_the_appointment(self) -> Route:
        if self.reminders and not all(any(fnmatchcase(t, p) for p in self.events) for t in SCHEDULING):
            raise ValueError(
                "a route with reminders must match appointment.created and appointment.updated (add them to "
                "`events`): the latest event of an appointment decides its reminders, and an update no such route "
                "matched would withdraw them"
            )
        return self

    @field_validator("where")
    @classmethod
    def _fields_exist(cls, where: dict[str, Any]) -> dict[str, Any]:
        for path in where:
            if annotation_at(AppointmentEvent, path.split(".")) is None:
                raise ValueError(f"{path!r} is not a field of the canonical event; see docs/canonical-event.md")
        return where

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, locale: str | None) -> str | None:
        return None if locale is None else known_locale(locale)

    def matches(self, event: AppointmentEvent, fields: dict[str, Any]) -> bool:
        if self.sources is not None and event.source not in self.sources:
            return False
        patterns = self.events
        if event.type.startswith(ALERTS):  # the gateway's own events go only where a route names them
            patterns = [pattern for pattern in patterns if pattern.startswith(ALERTS)]
        if not any(fnmatchcase(event.type, pattern) for pattern in patterns):
            return False
        for path, wanted in self.where.items():
            accepted = wanted if isinstance(wanted, list) else [wanted]
            if _text(_lookup(fields, path)) not in {_text(value) for value in accepted}:
                return False
        return True


@dataclass(frozen=True)
class Target:
    """One delivery to create: a sink, and the locale its messages use when the route chose one."""

    sink: str
    locale: str | None = None


@dataclass(frozen=True)
class ReminderTarget:
    """A reminder a route schedules: to `sink`, `before` seconds before the start, unless later than `grace`."""

    sink: str
    locale: str | None
    before: float
    grace: float


@dataclass(frozen=True)
class Routed:
    targets: list[Target]
    reminders: list[ReminderTarget]
    """The reminders its routes schedule, were the event one that schedules them (gateway.reminders decides)."""


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._reads_fields = any(route.where for route in self.routes)
        self.schedules_reminders = any(route.reminders for route in self.routes)

    def targets(self, event: AppointmentEvent) -> list[Target]:
        """Every sink named by a matching route, once each, in the order the routes name them; the first route
        naming a sink decides its locale."""
        return self.route(event).targets

    def route(self, event: AppointmentEvent) -> Routed:
        """The event's targets and the reminders its routes schedule, in one pass over the routes (the event's
        fields are read once, only when a route has `where` conditions)."""
        fields = event.model_dump(mode="json", by_alias=True) if self._reads_fields else {}
        targets: dict[str, Target] = {}
        reminders: dict[tuple[str, float], ReminderTarget] = {}
        for route in self.routes:
            if not route.matches(event, fields):
                continue
            for sink in route.sinks:
                targets.setdefault(sink, Target(sink, route.locale))
                for before in route.reminders:  # once per sink and time; the first route decides locale and grace
                    reminders.setdefault(
                        (sink, before), ReminderTarget(sink, route.locale, before, route.reminder_grace)
                    )
        return Routed(list(targets.values()), list(reminders.values()))


def known_locale(locale: str) -> str:
    """`locale` if Babel knows it (fr, en, fr_GN...), else ValueError listing examples."""
    try:
        Locale.parse(locale)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"{locale!r} is not a locale Babel knows; write e.g. fr, en or fr_GN") from None
    return locale


def _lookup(fields: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(fields, dict):
            return None
        fields = fields.get(part)
    return fields


def _text(value: Any) -> str:
    """Compare YAML and JSON values by their text, so that `5` matches the id "5" and `true` matches True."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
