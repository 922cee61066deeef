"""Logs: one JSON object per line, with customers' names, phones and emails redacted unless told otherwise.

The gateway logs ids, never payloads. What it cannot control (a sink's error text echoing a phone number, a
library's message) goes through `redact`: emails, international phone numbers and, where the caller knows them, the
event's own customer values are replaced. Secrets (webhook secrets, tokens, API keys) are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"(?<![\w+])\+\d[\d\s().-]{6,}\d")
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


def redact(text: str, known: Iterable[str | None] = ()) -> str:
    """`text` without emails, international phone numbers, or any of the `known` values (a customer's name...)."""
    for value in known:
        if value and len(value) >= 3:
            text = text.replace(value, "[redacted]")
    return PHONE.sub("[phone]", EMAIL.sub("[email]", text))


class Redactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


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
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(*, format: Literal["json", "text"], level: str, redacted: bool) -> None:
    """Send every logger (uvicorn's and the libraries' too) to stderr, in this format, redacted or not."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if redacted:
        handler.addFilter(Redactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
