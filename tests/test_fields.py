from __future__ import annotations

from gateway._fields import annotation_at, model_in
from gateway.config import GatewayConfig, SinkConfig
from gateway.events import AppointmentEvent, Customer


def test_paths_step_into_models_optionals_dicts_and_lists() -> None:
    assert annotation_at(AppointmentEvent, ["customer", "email"]) == (str | None)
    assert model_in(annotation_at(GatewayConfig, ["sinks", "crm"])) is SinkConfig
    assert annotation_at(GatewayConfig, ["routes", 0, "sinks"]) == list[str]
    assert model_in(Customer | None) is Customer


def test_unknown_paths_are_none() -> None:
    assert annotation_at(AppointmentEvent, ["customer", "no_such_field"]) is None
    assert annotation_at(AppointmentEvent, ["type", "deeper"]) is None
    assert model_in(int) is None
