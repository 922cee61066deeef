from __future__ import annotations

from pathlib import Path

import pytest

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError
from gateway.messages import DEFAULT_LANGUAGES, Messages, TemplateText, sms_segments
from gateway.reminders import reminder_event
from gateway.sinks import Delivery
from tests.helpers import matches_golden
from tests.samples import ALL_SAMPLES, appointment_event, sample_event

GOLDEN = Path(__file__).parent / "golden" / "messages"
APPOINTMENT_SAMPLES = [sample for sample in ALL_SAMPLES if sample[1] != "customer.updated"]


def delivery(locale: str | None = None) -> Delivery:
    return Delivery(id="dlv-1", sink="notify", attempt=1, locale=locale)


@pytest.mark.parametrize("locale", DEFAULT_LANGUAGES)
@pytest.mark.parametrize(("provider", "event_type"), APPOINTMENT_SAMPLES)
def test_default_templates_render_every_sample_as_reviewed(provider: str, event_type: str, locale: str) -> None:
    """Golden files, read by a person for language quality; UPDATE_GOLDEN=1 rewrites them after a deliberate change."""
    render_golden(sample_event(provider, event_type), delivery(), locale, f"{provider}.{event_type}.txt")


def render_golden(event: AppointmentEvent, sent: Delivery, locale: str, name: str) -> None:
    sms = Messages("sms", "notify", locale, {}).render(event, sent)
    mail = Messages("email", "notify", locale, {}).render(event, sent)
    rendered = f"SMS ({sms_segments(sms.body).count} segment(s), {sms_segments(sms.body).encoding}):\n{sms.body}\n\n"
    rendered += f"Subject: {mail.subject}\n\n{mail.body}\n"
    matches_golden(rendered, GOLDEN / locale / name)


@pytest.mark.parametrize("locale", DEFAULT_LANGUAGES)
@pytest.mark.parametrize(
    ("provider", "event_type"), [("moncreneau", "appointment.created"), ("yappointment", "booking.created")]
)
@pytest.mark.parametrize("before", [86400.0, 7200.0, 3 * 86400.0])
def test_default_reminders_say_today_tomorrow_or_the_date(
    provider: str, event_type: str, locale: str, before: float
) -> None:
    booked = sample_event(provider, event_type)
    assert booked.appointment is not None and booked.appointment.starts_at is not None
    due_at = booked.appointment.starts_at.timestamp() - before
    event = reminder_event(booked, delivery_id="dlv-r", before=before, due_at=due_at)
    sent = Delivery(id="dlv-r", sink="notify", attempt=1, attempted_at=due_at)
    render_golden(event, sent, locale, f"{provider}.appointment.reminder.{before:.0f}.txt")


def test_dates_are_said_in_the_appointments_own_zone_and_language() -> None:
    booking = sample_event("yappointment", "booking.created")  # 10:00 UTC, in America/New_York
    assert "Sunday, April 20, 2025 at 6:00 AM" in Messages("sms", "s", "en", {}).render(booking, delivery()).body
    assert "dimanche 20 avril 2025 à 06:00" in Messages("sms", "s", "fr", {}).render(booking, delivery()).body


def test_the_routes_locale_wins_over_the_sinks_and_regions_fall_back_to_their_language() -> None:
    messages = Messages("sms", "s", "fr", {})
    assert messages.render(appointment_event(), delivery("en")).body.startswith("Hello Jean Dupont")
    assert messages.render(appointment_event(), delivery("fr_GN")).body.startswith("Bonjour Jean Dupont")


def test_a_language_without_defaults_still_formats_dates_with_babel() -> None:
    own = {"appointment.created": TemplateText(body="Cita: {{ when }}")}
    body = Messages("sms", "s", "es", own).render(appointment_event(), delivery()).body
    assert body == "Cita: domingo, 25 de enero de 2026 14:30"


def test_own_templates_replace_the_defaults_and_may_use_the_date_filters() -> None:
    own = {
        "appointment.created": TemplateText(
            subject="RDV {{ appointment.id }}",
            body="{{ appointment.starts_at | date('short') }} {{ appointment.starts_at | time }} - "
            "{{ appointment.starts_at | datetime('EEE d MMM') }}",
        )
    }
    message = Messages("email", "s", "fr", own).render(appointment_event(), delivery())
    assert message.subject == "RDV 12345"
    assert message.body == "25/01/2026 14:30 - dim. 25 janv."


def test_templates_may_come_from_files_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "created.j2").write_text("Bienvenue {{ customer.name }}")
    text = TemplateText.model_validate({"body_file": "created.j2"}, context={"config_dir": tmp_path})
    assert text.body == "Bienvenue {{ customer.name }}"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"body_file": "missing.j2"}, "cannot read body_file"),
        ({"body": "x", "body_file": "x.j2"}, "set body or body_file, not both"),
        ({"body": "{% if %}"}, "template syntax error"),
        ({"subject": "{{ unclosed"}, "template syntax error"),
    ],
)
def test_template_mistakes_are_configuration_errors(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemplateText.model_validate(settings, context={"config_dir": tmp_path})


def test_a_template_failing_at_render_time_is_permanent_and_named() -> None:
    own = {"appointment.created": TemplateText(body="{{ customer.nickname }}")}
    with pytest.raises(PermanentDeliveryError, match=r"sinks\.s\.options\.templates\.appointment\.created\.body") as e:
        Messages("sms", "s", "fr", own).render(appointment_event(), delivery())
    assert e.value.reason == "template error"


def test_an_event_type_without_a_template_is_permanent_and_says_how_to_add_one() -> None:
    customer = sample_event("yappointment", "customer.updated")
    with pytest.raises(PermanentDeliveryError, match=r"add sinks\.s\.options\.templates\.customer\.updated\.body"):
        Messages("sms", "s", "fr", {}).render(customer, delivery())


@pytest.mark.parametrize(
    ("text", "encoding", "units", "count"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("Rendez-vous confirmé à 14:30 !", "GSM-7", 30, 1),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 162, 2),
        ("août", "UCS-2", 4, 1),  # û is not in GSM 03.38
        ("ç" + "a" * 69, "UCS-2", 70, 1),
        ("ç" + "a" * 70, "UCS-2", 71, 2),
        ("👍" * 35, "UCS-2", 70, 1),  # outside the BMP: two UTF-16 units each
    ],
)
def test_sms_segments(text: str, encoding: str, units: int, count: int) -> None:
    segments = sms_segments(text)
    assert (segments.encoding, segments.units, segments.count) == (encoding, units, count)
