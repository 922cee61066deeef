"""The console in French and English: texts written in English in the templates and translated from a YAML
catalog (locales/<language>.yaml, keyed by the English text), numbers and times formatted by Babel (CLDR), as the
messages are.

The language is the one the operator picked (a cookie set by `?lang=`), else the browser's best match.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from babel import Locale
from babel.core import negotiate_locale
from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_decimal, format_percent

from gateway.clock import to_datetime

LANGUAGES = ("en", "fr")
LANGUAGE_COOKIE = "gateway_console_lang"


@functools.cache
def catalog(language: str) -> dict[str, str]:
    """English text -> its translation (empty for English)."""
    if language == "en":
        return {}
    text = resources.files(__package__).joinpath("locales", f"{language}.yaml").read_text(encoding="utf-8")
    loaded: dict[str, str] = yaml.safe_load(text)
    return loaded


def negotiate(chosen: str | None, accept_language: str) -> str:
    """The operator's language: `chosen` when it is one the console speaks, else the browser's best match."""
    if chosen in LANGUAGES:
        return chosen
    preferred = []
    for part in accept_language.split(",")[:20]:  # a header is what the client says: bounded work
        tag, _, quality = part.strip().partition(";q=")
        try:
            weight = float(quality) if quality else 1.0
        except ValueError:
            continue
        preferred.append((weight, tag.strip()))
    ordered = [tag for _, tag in sorted(preferred, key=lambda item: -item[0]) if tag]
    return negotiate_locale(ordered, list(LANGUAGES), sep="-") or "en"


class Translator:
    """What the templates call: `_` for texts, and Babel's formats in the operator's language and zone."""

    def __init__(self, language: str, zone: ZoneInfo) -> None:
        self.language = language
        self.locale = Locale.parse(language)
        self.zone = zone
        self._texts = catalog(language)

    def gettext(self, text: str, **values: Any) -> str:
        translated = self._texts.get(text, text)
        return translated.format(**values) if values else translated

    def when(self, moment: float | str | None) -> str:
        """A stored time (epoch seconds, or ISO 8601 as the operations answer) in the console's zone."""
        if moment is None or moment == "":
            return "—"
        value = datetime.fromisoformat(moment) if isinstance(moment, str) else to_datetime(moment)
        return format_datetime(value, "medium", tzinfo=self.zone, locale=self.locale)

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self.locale)

    def percent(self, value: float | None) -> str:
        """To a tenth of a percent, in the locale's pattern: 99.5% must not read as 100%."""
        if value is None:
            return "—"
        return format_percent(round(value, 3), locale=self.locale, decimal_quantization=False)

    def duration(self, seconds: float) -> str:
        return format_timedelta(timedelta(seconds=seconds), threshold=1.1, locale=self.locale)
