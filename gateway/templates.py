"""Jinja2 templates from YAML, sandboxed: a template can read the event but not reach into Python.

Templates see the canonical event and a few helpers; the `datetime`, `date` and `time` filters format a time in the
template's `locale`, in the appointment's own `timezone` (Babel).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime, format_time
from jinja2 import StrictUndefined, TemplateError, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from pydantic import AfterValidator

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError
from gateway.sinks import Delivery

WHEN_PATTERNS = {"fr": "EEEE d MMMM y 'à' HH:mm", "en": "EEEE, MMMM d, y 'at' h:mm a"}
"""How a start time reads in a sentence; other languages use Babel's full date and short time."""


def relative_day(moment: datetime, sent_at: datetime, locale: str, zone: ZoneInfo) -> str | None:
    """The word for the day of `moment` seen from the day of `sent_at` in `zone` ("aujourd'hui", "demain",
    "today", "tomorrow": Unicode CLDR's, through Babel), or None when it has no such word or is in the past."""
    days = (moment.astimezone(zone).date() - sent_at.astimezone(zone).date()).days
    if days < 0:
        return None
    words = Locale.parse(locale)._data["date_fields"]["day"]["relative"]  # Babel has no public accessor
    word = words.get(days)
    return word.replace("\u2019", "'") if word else None  # a typographic apostrophe would make an SMS UCS-2


def _moment(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _zone(context: Context) -> ZoneInfo:
    return ZoneInfo(context.get("timezone") or "UTC")


def when(value: datetime | str, locale: str, zone: ZoneInfo) -> str:
    """A moment as a sentence says it: "samedi 25 janvier 2026 à 14:30"."""
    moment = _moment(value)
    pattern = WHEN_PATTERNS.get(locale.split("_")[0])
    if pattern is None:
        return (
            f"{format_date(moment, 'full', locale=locale)} {format_time(moment, 'short', tzinfo=zone, locale=locale)}"
        )
    return format_datetime(moment, pattern, tzinfo=zone, locale=locale)


@pass_context
def _datetime_filter(context: Context, value: datetime | str, format: str = "when") -> str:
    locale = context.get("locale") or "en"
    if format == "when":
        return when(value, locale, _zone(context))
    return format_datetime(_moment(value), format, tzinfo=_zone(context), locale=locale)


@pass_context
def _date_filter(context: Context, value: datetime | str, format: str = "full") -> str:
    moment = _moment(value).astimezone(_zone(context))
    return format_date(moment, format, locale=context.get("locale") or "en")


@pass_context
def _time_filter(context: Context, value: datetime | str, format: str = "short") -> str:
    return format_time(_moment(value), format, tzinfo=_zone(context), locale=context.get("locale") or "en")


_environment = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True
)
_environment.filters.update(datetime=_datetime_filter, date=_date_filter, time=_time_filter)


def _inside_json_string(value: Any) -> Any:
    """What `{{ ... }}` writes in a JSON body: text escaped for a JSON string (quotes, backslashes, line breaks),
    so that a customer's `", "role": "admin"` stays inside the string it was put in; `| tojson` writes JSON."""
    if isinstance(value, Markup):  # tojson's output, already JSON
        return value
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


_json_environment = _environment.overlay(finalize=_inside_json_string)


def check_syntax(source: str) -> str:
    """`source` unchanged, or ValueError naming the line of its syntax error (for config validation)."""
    try:
        _environment.parse(source)
    except TemplateError as error:
        line = getattr(error, "lineno", None)
        raise ValueError(f"template syntax error{f' on line {line}' if line else ''}: {error}") from None
    return source


JinjaTemplate = Annotated[str, AfterValidator(check_syntax)]
"""A pydantic type for a template in a plugin's options: its syntax is checked when the configuration loads."""


def event_context(event: AppointmentEvent, delivery: Delivery, locale: str | None = None) -> dict[str, Any]:
    """What every template sees: `event` (the canonical event as JSON-ready data), its parts by name, `delivery`,
    `locale`, `timezone` (the appointment's), `when` / `previous_when` (its start, now and before a move), and
    `relative_day` (the start's day seen from the attempt's: today, tomorrow...)."""
    data = event.model_dump(mode="json", by_alias=True)
    appointment = event.appointment
    timezone = (appointment.timezone if appointment else None) or "UTC"
    context: dict[str, Any] = {
        "event": data,
        **{
            part: data[part]
            for part in (
                "appointment",
                "customer",
                "changes",
                "cancellation",
                "validation",
                "completion",
                "alert",
                "reminder",
            )
        },
        "delivery": {"id": delivery.id, "sink": delivery.sink, "attempt": delivery.attempt},
        "locale": locale,
        "timezone": timezone,
        "when": None,
        "previous_when": None,
        "relative_day": None,
        "place": None,
    }
    if locale is not None and appointment is not None:
        zone = ZoneInfo(timezone)
        if appointment.starts_at is not None:
            context["when"] = when(appointment.starts_at, locale, zone)
            sent_at = datetime.fromtimestamp(delivery.attempted_at, zone)
            context["relative_day"] = relative_day(appointment.starts_at, sent_at, locale, zone)
        moved = event.changes.get("appointment.starts_at")
        if moved is not None and moved.from_ is not None:
            context["previous_when"] = when(moved.from_, locale, zone)
        service, department = appointment.service, appointment.department
        context["place"] = (service.name if service else None) or (department.name if department else None)
    return context


def render(source: str, name: str, context: dict[str, Any], *, json_body: bool = False) -> str:
    """Render a template; a failure is a permanent delivery error naming the template. With `json_body`, every
    value is escaped for a JSON string, and the result must be JSON."""
    environment = _json_environment if json_body else _environment
    try:
        rendered = environment.from_string(source).render(context)
        if json_body:
            json.loads(rendered)
        return rendered
    except TemplateError as error:
        raise PermanentDeliveryError(f"template {name} failed: {error}", reason="template error") from None
    except (ValueError, TypeError, LookupError) as error:  # a filter given something that is not a time
        raise PermanentDeliveryError(f"template {name} failed: {error}", reason="template error") from None
