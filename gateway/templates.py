"""Jinja2 templates from YAML, sandboxed: a template can read the event but not reach into Python."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.events import AppointmentEvent
from gateway.exceptions import PermanentDeliveryError
from gateway.sinks import Delivery

_environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def check_syntax(source: str) -> str:
    """`source` unchanged, or ValueError naming the line of its syntax error (for config validation)."""
    try:
        _environment.parse(source)
    except TemplateError as error:
        line = getattr(error, "lineno", None)
        raise ValueError(f"template syntax error{f' on line {line}' if line else ''}: {error}") from None
    return source


def render(source: str, name: str, event: AppointmentEvent, delivery: Delivery) -> str:
    """Render with `event` (the canonical event as JSON-ready data) and `delivery`; a failure is permanent."""
    context: dict[str, Any] = {
        "event": event.model_dump(mode="json", by_alias=True),
        "delivery": {"id": delivery.id, "sink": delivery.sink, "attempt": delivery.attempt},
    }
    try:
        return _environment.from_string(source).render(context)
    except TemplateError as error:
        raise PermanentDeliveryError(f"template {name} failed: {error}") from None
