"""`caldav` sink: mirrors appointments into CalDAV calendars (Nextcloud, Fastmail, iCloud, Radicale...), and
serves the same events as a read-only iCalendar feed from the gateway.

One VEVENT per appointment, UID `<source>-<appointment id>@appointment-gateway`, written whole with PUT through
the caldav library's async client (so the library never bumps SEQUENCE: the gateway owns it). SEQUENCE grows with
the provider's event time, and the sink remembers per appointment the time of the event the calendar reflects: an
older event arriving later (an `updated` after a `cancelled`, an old reschedule) changes nothing, and replaying
any event is harmless. Fields a later event lacks (moncreneau's cancellation has no department name) are carried
forward from the earlier ones.

Errors: connection errors, timeouts, 5xx and 429 (Retry-After honoured) are retryable; 401/403 (logged as an
alert) and other 4xx are permanent; a missing calendar is created when `create_calendars` allows it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio.to_thread
import httpx
from caldav.aio import AsyncDAVClient
from caldav.lib import error as dav_error
from icalendar import Calendar
from icalendar import Event as VEvent
from pydantic import AnyHttpUrl, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import (
    CONTROL,
    REMINDER,
    AppointmentEvent,
    BadEventData,
    Delivery,
    Duration,
    PermanentDeliveryError,
    Receipt,
    RetryableDeliveryError,
    Sink,
    SinkOptions,
    SinkState,
    carried_forward,
    check_syntax,
    event_context,
    hookimpl,
    known_locale,
    render,
)

logger = logging.getLogger(__name__)
SEQUENCE_EPOCH = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SAFE_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
DEFAULT_SUMMARY = "{{ customer.name or 'Appointment ' ~ appointment.id }}{% if place %} ({{ place }}){% endif %}"
DEFAULT_DESCRIPTION = """{% if customer.phone %}Phone: {{ customer.phone }}
{% endif %}{% if customer.email %}Email: {{ customer.email }}
{% endif %}{% if appointment.qr_code_url %}QR code: {{ appointment.qr_code_url }}
{% endif %}Status: {{ appointment.status }}
{% if cancellation and cancellation.reason %}Cancelled: {{ cancellation.reason }}
{% endif %}{% if validation and validation.by %}Validated by: {{ validation.by.name or validation.by.id }}
{% endif %}{% if completion and completion.duration_minutes %}Duration: {{ completion.duration_minutes }} min
{% endif %}{% if completion and completion.notes %}Notes: {{ completion.notes }}
{% endif %}"""


class CalDAVOptions(SinkOptions):
    url: AnyHttpUrl | None = Field(None, description="The calendar home (its calendars are below); none: feed only")
    username: str | None = None
    password: str | None = None
    calendar: str = Field("appointments", pattern=NAME, description="Calendar when no mapping matches")
    calendars_by_department: dict[str, str] = Field(default_factory=dict)
    calendars_by_organisation: dict[str, str] = Field(default_factory=dict)
    create_calendars: bool = Field(False, description="MKCALENDAR a missing calendar instead of failing")
    on_cancel: Literal["mark", "delete"] = Field("mark", description="STATUS:CANCELLED, or remove the event")
    default_duration: Duration = Field(1800.0, gt=0, description="When the provider gives no end time")
    locale: str = "fr"
    summary: str = DEFAULT_SUMMARY
    description: str = DEFAULT_DESCRIPTION
    location: str = "{{ place or '' }}"
    feeds: dict[str, str] = Field(
        default_factory=dict, description="Calendar name -> secret token: GET /calendars/<sink>/<token>.ics"
    )
    feed_past: Duration = Field(30 * 86400.0, ge=0, description="The feed serves appointments started since this")
    feed_future: Duration = Field(365 * 86400.0, ge=0, description="...and those starting within this")

    @field_validator("summary", "description", "location")
    @classmethod
    def _template(cls, source: str) -> str:
        return check_syntax(source)

    @field_validator("calendars_by_department", "calendars_by_organisation")
    @classmethod
    def _names(cls, mapping: dict[str, str]) -> dict[str, str]:
        for name in mapping.values():
            CalDAVOptions.model_validate({"calendar": name})
        return mapping

    @field_validator("feeds")
    @classmethod
    def _tokens(cls, feeds: dict[str, str]) -> dict[str, str]:
        if any(len(token) < 16 for token in feeds.values()):
            raise ValueError("a feed token is a secret in a URL: use at least 16 random characters")
        return feeds

    @field_validator("locale")
    @classmethod
    def _locale(cls, locale: str) -> str:
        return known_locale(locale)


class CalDAVSink(Sink):
    type_name = "caldav"
    Options = CalDAVOptions
    options: CalDAVOptions

    async def open(self) -> None:
        options = self.options
        self._client = (
            AsyncDAVClient(
                url=str(options.url),
                username=options.username,
                password=options.password,
                timeout=max(1, int(self.timeout)),
                enable_rfc6764=False,
            )
            if options.url
            else None
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        if event.appointment is None or event.type == REMINDER:
            return Receipt(detail=f"{event.type}: nothing to put in a calendar")
        uid = f"{event.source}-{event.appointment.id}@appointment-gateway"
        key = f"appointment:{uid}"
        remembered = json.loads(await delivery.state.get(key) or "null")
        if remembered is not None and remembered["occurred_at"] > event.occurred_at.timestamp():
            return Receipt(detail=f"stale: the calendar reflects a later event ({remembered['event_id']})")
        merged = carried_forward(remembered["snapshot"] if remembered else None, event)
        calendar = self._calendar_for(merged)
        delete = self.options.on_cancel == "delete" and _cancelled(merged)
        vevent = None if delete else self._vevent(merged, uid, delivery)
        if self._client is not None:
            if remembered and remembered["calendar"] != calendar and remembered["vevent"] is not None:
                await self._delete(remembered["calendar"], uid)  # the appointment moved to another calendar
            if vevent is None:
                await self._delete(calendar, uid)
            else:
                await self._put(calendar, uid, vevent)
        await delivery.state.set(
            key,
            json.dumps(
                {
                    "occurred_at": event.occurred_at.timestamp(),
                    "event_id": event.id,
                    "calendar": calendar,
                    "vevent": vevent,
                    "snapshot": merged.model_dump(mode="json", by_alias=True),
                }
            ),
        )
        return Receipt(detail=f"{'deleted' if vevent is None else 'wrote'} {uid} in {calendar}")

    def routes(self, state: SinkState) -> list[BaseRoute]:
        if not self.options.feeds:
            return []

        async def feed(request: Request) -> Response:
            given = request.path_params["token"].encode()
            calendar = next(
                (name for name, token in self.options.feeds.items() if hmac.compare_digest(given, token.encode())), None
            )
            if calendar is None:
                return Response("no such calendar feed\n", 404, media_type="text/plain")
            remembered = await state.items("appointment:")
            now = time.time()
            window = (now - self.options.feed_past, now + self.options.feed_future)
            document = await anyio.to_thread.run_sync(_feed, calendar, remembered.values(), window)
            return Response(
                document,
                media_type="text/calendar; charset=utf-8",
                headers={"Cache-Control": "private, no-store"},  # customers' names and phones
            )

        return [Route(f"/calendars/{self.name}/{{token}}.ics", feed, methods=["GET"])]

    def _calendar_for(self, event: AppointmentEvent) -> str:
        appointment = event.appointment
        department = appointment.department if appointment else None
        if department is not None and department.id in self.options.calendars_by_department:
            return self.options.calendars_by_department[department.id]
        organisation = department.organisation if department else None
        if organisation is not None and organisation.id in self.options.calendars_by_organisation:
            return self.options.calendars_by_organisation[organisation.id]
        return self.options.calendar

    def _vevent(self, event: AppointmentEvent, uid: str, delivery: Delivery) -> str:
        appointment = event.appointment
        assert appointment is not None
        if appointment.starts_at is None:
            raise PermanentDeliveryError(f"appointment {appointment.id} has no start time", reason="no start time")
        duration = event.completion.duration_minutes if event.completion else None
        try:
            starts = appointment.starts_at.astimezone(UTC)
            if appointment.ends_at is not None:
                ends = appointment.ends_at.astimezone(UTC)
            else:
                ends = starts + (
                    timedelta(minutes=duration) if duration else timedelta(seconds=self.options.default_duration)
                )
        except (OverflowError, ValueError) as error:
            raise BadEventData("appointment.starts_at", f"no calendar can hold this time ({error})") from None
        context = event_context(event, delivery, self.options.locale)
        name = f"sinks.{self.name}.options"
        vevent = VEvent()
        vevent.add("uid", uid)
        vevent.add("dtstamp", event.occurred_at.astimezone(UTC))
        vevent.add("dtstart", starts)
        vevent.add("dtend", ends)
        vevent.add("sequence", max(0, int(event.occurred_at.timestamp() - SEQUENCE_EPOCH)))
        vevent.add("status", "CANCELLED" if _cancelled(event) else "CONFIRMED")
        vevent.add("summary", render(self.options.summary, f"{name}.summary", context).strip())
        vevent.add("description", render(self.options.description, f"{name}.description", context).strip())
        if location := render(self.options.location, f"{name}.location", context).strip():
            vevent.add("location", location)
        if appointment.status:
            vevent.add("categories", [appointment.status.upper()])
        if appointment.qr_code_url:
            if CONTROL.search(appointment.qr_code_url):
                raise BadEventData("appointment.qr_code_url", "a URL with control characters (CR, LF...)")
            vevent.add("url", appointment.qr_code_url)
        vevent.add("x-appointment-gateway-event", event.id)
        return str(vevent.to_ical().decode())

    async def _put(self, calendar: str, uid: str, vevent: str) -> None:
        document = (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//appointment-gateway//caldav sink//EN\r\n"
            f"{vevent}END:VCALENDAR\r\n"
        )
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        status = await self._request("PUT", self._url(calendar, uid), document, headers)
        if status in (404, 409) and self.options.create_calendars:
            created = await self._request("MKCALENDAR", self._url(calendar))
            if created not in (200, 201):
                raise _classified(created, f"MKCALENDAR {self._url(calendar)}")
            status = await self._request("PUT", self._url(calendar, uid), document, headers)
        if status in (404, 409):
            raise PermanentDeliveryError(
                f"calendar {self._url(calendar)} does not exist (HTTP {status}); create it, or set create_calendars",
                status_code=status,
                reason="no calendar",
            )
        if status not in (200, 201, 204):
            raise _classified(status, f"PUT {self._url(calendar, uid)}")

    async def _delete(self, calendar: str, uid: str) -> None:
        status = await self._request("DELETE", self._url(calendar, uid))
        if status not in (200, 204, 404, 410):
            raise _classified(status, f"DELETE {self._url(calendar, uid)}")

    async def _request(self, method: str, url: str, body: str = "", headers: dict[str, str] | None = None) -> int:
        client = self._client
        assert client is not None
        try:
            response = await client.request(url, method, body, headers or {})
        except dav_error.RateLimitError as error:
            raise RetryableDeliveryError(
                f"{method} {url}: rate limited", status_code=error.status, retry_after=error.retry_after_seconds
            ) from None
        except dav_error.AuthorizationError as error:
            logger.error("ALERT sink %s: the CalDAV server refused the credentials: %s", self.name, error.reason)
            raise PermanentDeliveryError(
                f"{method} {url}: credentials refused", status_code=error.status, reason="authentication failed"
            ) from None
        except (httpx.HTTPError, OSError, TimeoutError) as error:
            raise RetryableDeliveryError(f"{method} {url}: {type(error).__name__}: {error}") from None
        return int(response.status)

    def _url(self, calendar: str, uid: str | None = None) -> str:
        base = f"{str(self.options.url).rstrip('/')}/{calendar}/"
        return base if uid is None else f"{base}{resource_name(uid)}"


def resource_name(uid: str) -> str:
    """The object's file name in its calendar. The UID carries the provider's appointment id, which the customer's
    platform chose: anything but plain characters (a `/`, `?`, `%` that a server would decode...) gives the SHA-256
    of the UID instead, so that no id can name another object or calendar."""
    name = uid.replace("@", "_at_")
    if SAFE_RESOURCE.match(name):
        return f"{name}.ics"
    return f"{hashlib.sha256(uid.encode()).hexdigest()}.ics"


def _feed(calendar: str, remembered: Iterable[str], window: tuple[float, float]) -> bytes:
    """The calendar's appointments starting within `window` as one iCalendar document (built in a thread: 20,000
    appointments took 12 s on the event loop)."""
    document = Calendar()
    document.add("prodid", "-//appointment-gateway//caldav feed//EN")
    document.add("version", "2.0")
    document.add("x-wr-calname", calendar)
    for value in remembered:
        entry = json.loads(value)
        starts_at = ((entry["snapshot"].get("appointment") or {}).get("starts_at")) if entry["vevent"] else None
        if entry["calendar"] != calendar or starts_at is None:
            continue
        if window[0] <= datetime.fromisoformat(starts_at).timestamp() <= window[1]:
            document.add_component(Calendar.from_ical(entry["vevent"]).walk("VEVENT")[0])
    return bytes(document.to_ical())


def _classified(status: int, what: str) -> PermanentDeliveryError | RetryableDeliveryError:
    if status >= 500 or status in (408, 429):
        return RetryableDeliveryError(f"{what}: HTTP {status}", status_code=status)
    return PermanentDeliveryError(f"{what}: HTTP {status}", status_code=status)


def _cancelled(event: AppointmentEvent) -> bool:
    status = event.appointment.status if event.appointment else None
    return event.type == "appointment.cancelled" or status == "cancelled"


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [CalDAVSink]
