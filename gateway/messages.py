"""Messages to people: a subject and body per event type, from the sink's templates or the shipped defaults
(gateway/locales/<language>.yaml), rendered in the delivery's locale; and SMS segment counting."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

from gateway.events import EVENT_TYPES, AppointmentEvent
from gateway.exceptions import PermanentDeliveryError
from gateway.sinks import Delivery
from gateway.templates import check_syntax, event_context, render

Kind = Literal["sms", "email"]
DEFAULT_LANGUAGES = ("fr", "en")


class TemplateText(BaseModel):
    """One message's templates, inline or read from files (paths relative to the configuration file)."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = None
    subject_file: Path | None = None
    body: str | None = None
    body_file: Path | None = None

    @model_validator(mode="after")
    def _read_files_and_check(self, info: ValidationInfo) -> TemplateText:
        base = Path((info.context or {}).get("config_dir", "."))
        for part in ("subject", "body"):
            inline, file = getattr(self, part), getattr(self, f"{part}_file")
            if inline is not None and file is not None:
                raise ValueError(f"set {part} or {part}_file, not both")
            if file is not None:
                path = file if file.is_absolute() else base / file
                try:
                    inline = path.read_text(encoding="utf-8")
                except OSError as error:
                    raise ValueError(f"cannot read {part}_file {path}: {error.strerror}") from None
                setattr(self, part, inline)
            if inline is not None:
                check_syntax(inline)
        return self


@dataclass(frozen=True)
class Message:
    subject: str | None
    body: str


@dataclass(frozen=True)
class Segments:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    count: int


_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def sms_segments(text: str) -> Segments:
    """How many SMS segments `text` takes: GSM-7 (160 per single SMS, 153 per part; extension characters count
    twice) when every character is in the GSM 03.38 alphabet, else UCS-2 (70, 67 per part; UTF-16 code units)."""
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENSION for char in text):
        units = sum(2 if char in _GSM7_EXTENSION else 1 for char in text)
        return Segments("GSM-7", units, 1 if units <= 160 else math.ceil(units / 153))
    units = len(text.encode("utf-16-le")) // 2
    return Segments("UCS-2", units, 1 if units <= 70 else math.ceil(units / 67))


def _defaults(language: str) -> dict[str, Any]:
    text = resources.files("gateway.locales").joinpath(f"{language}.yaml").read_text(encoding="utf-8")
    defaults: dict[str, Any] = yaml.safe_load(text)
    return defaults


_DEFAULTS = {language: _defaults(language) for language in DEFAULT_LANGUAGES}


class Messages:
    """The messages one sink sends: its own templates per event type, else the defaults of the locale's language."""

    def __init__(self, kind: Kind, sink: str, locale: str, templates: dict[str, TemplateText]) -> None:
        self.kind = kind
        self.sink = sink
        self.locale = locale
        self.templates = templates

    def render(self, event: AppointmentEvent, delivery: Delivery) -> Message:
        """The message for this event in the delivery's locale (the route's, else the sink's); a missing or
        failing template is a permanent delivery error naming it."""
        locale = delivery.locale or self.locale
        subject, body, name = self._sources(event.type, locale)
        context = event_context(event, delivery, locale)
        rendered_subject = None
        if self.kind == "email":
            if subject is None:
                raise self._missing(event.type, locale, "subject")
            rendered_subject = " ".join(render(subject, f"{name}.subject", context).split())
        if body is None:
            raise self._missing(event.type, locale, "body")
        return Message(rendered_subject, render(body, f"{name}.body", context).strip())

    def _sources(self, event_type: str, locale: str) -> tuple[str | None, str | None, str]:
        own = self.templates.get(event_type)
        if own is not None and (own.body is not None or own.subject is not None):
            return own.subject, own.body, f"sinks.{self.sink}.options.templates.{event_type}"
        default = _DEFAULTS.get(locale.split("_")[0], {}).get(self.kind, {}).get(event_type)
        name = f"default {self.kind} template {event_type} ({locale})"
        if isinstance(default, dict):
            return default.get("subject"), default.get("body"), name
        return None, default, name

    def _missing(self, event_type: str, locale: str, part: str) -> PermanentDeliveryError:
        return PermanentDeliveryError(
            f"no {self.kind} {part} template for {event_type} in locale {locale}; "
            f"add sinks.{self.sink}.options.templates.{event_type}.{part}",
            reason="no template",
        )


def check_event_types(keys: Iterable[str]) -> None:
    """Per event type settings must name canonical event types (for options validators)."""
    for key in keys:
        if key not in EVENT_TYPES:
            raise ValueError(f"{key!r} is not an event type; known: {', '.join(EVENT_TYPES)}")
