"""The shipped provider samples as canonical events, for sink and template tests."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.events import AppointmentEvent
from gateway.sources.base import Source, SourceOptions, load_samples
from gateway.sources.moncreneau import Moncreneau
from gateway.sources.yappointment import YAppointment

RECEIVED = datetime(2026, 1, 20, tzinfo=UTC)
SOURCES: dict[str, tuple[Source, str]] = {
    "moncreneau": (
        Moncreneau(
            "moncreneau",
            SourceOptions(type="moncreneau", secrets=["s"], timezone="Africa/Conakry", default_region="GN"),
        ),
        "moncreneau.json",
    ),
    "yappointment": (
        YAppointment("yapp", SourceOptions(type="yappointment", secrets=["s"], default_region="US")),
        "yappointment.json",
    ),
}


def sample_event(provider: str, provider_type: str) -> AppointmentEvent:
    source, filename = SOURCES[provider]
    event = source.parse(
        load_samples(filename)[provider_type], {}, event_id=f"evt-{provider_type}", received_at=RECEIVED
    ).event
    assert event is not None
    return event


def appointment_event(provider_type: str = "appointment.created") -> AppointmentEvent:
    return sample_event("moncreneau", provider_type)


ALL_SAMPLES = [(provider, kind) for provider, (_, filename) in SOURCES.items() for kind in load_samples(filename)]
