"""Logs: one JSON object per line, with customers' names, phones and emails redacted unless told otherwise.

The gateway logs ids, never payloads. What it cannot control (a sink's error text echoing a phone number, a
library's message, a traceback) goes through `redact`: emails, international phone numbers and, where the caller
knows them, the event's own customer values are replaced. The configuration's secrets (webhook secrets, tokens, API
keys, passwords) are masked in every line, redacted or not, and the libraries that log requests (twilio, sendgrid,
httpx, aiohttp...) stay at WARNING unless `logging.libraries` says otherwise.

The patterns are linear: a 40,000-character header value once took 6 s to redact (the old email pattern tried every
start position), so a logged value is also cut to MAX_FIELD characters.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
PHONE = re.compile(r"(?<![\w+])\+\d[\d\s().-]{6,24}\d")
MAX_FIELD = 1000
"""Characters of one logged field (a header value, a sink's error text) kept; the rest is counted, not written."""
LIBRARIES = (
    "aiohttp",
    "aiosmtplib",
    "caldav",
    "httpcore",
    "httpx",
    "psycopg",
    "python_http_client",
    "sendgrid",
    "twilio",
    "urllib3",
)
"""Loggers of the libraries the sinks use: at DEBUG some write request headers (SendGrid's Authorization) and
payloads, at INFO twilio writes nine lines per SMS."""
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


def redact(text: str, known: Iterable[str | None] = ()) -> str:
    """`text` without emails, international phone numbers, or any of the `known` values (a customer's name...)."""
    for value in known:
        if value and len(value) >= 3:
            text = text.replace(value, "[redacted]")
    return PHONE.sub("[phone]", EMAIL.sub("[email]", text))


def capped(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more characters]"


class Redactor(logging.Filter):
    """Masks customers' contacts (unless `contacts` is false) and the configured `secrets` in the message, the
    extra fields and the traceback of every record."""

    def __init__(self, secrets: Iterable[str] = (), *, contacts: bool = True) -> None:
        super().__init__()
        self.secrets = sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)
        self.contacts = contacts

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.clean(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.clean(capped(value)))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        return redact(text) if self.contacts else text


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", ...the record's extra fields, "error" with the traceback}."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info or record.exc_text:
            line["error"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` with the record's extra fields, for humans."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = [
            f"{key}={_text_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and value is not None
        ]
        return " ".join([super().formatMessage(record), *fields])


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=\n') else text


def configure_logging(
    *,
    format: Literal["json", "text"],
    level: str,
    redacted: bool,
    secrets: Iterable[str] = (),
    libraries: str = "WARNING",
) -> None:
    """Send every logger (uvicorn's and the libraries' too) to stderr, in this format, redacted or not, secrets
    always masked; the sinks' libraries log at `libraries` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(Redactor(secrets, contacts=redacted))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries.upper())
