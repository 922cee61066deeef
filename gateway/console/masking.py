"""Customers' phones and emails as lists show them: enough to tell two apart, not enough to read one off a
screen. The event's own page shows them whole. Off with `logging.redact: false`, as in the logs."""

from __future__ import annotations

from gateway.logs import EMAIL

HIDDEN = "•••"


def masked(value: str | None) -> str:
    if not value:
        return ""
    if EMAIL.fullmatch(value):
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}{HIDDEN}@{domain}"
    return f"{value[:4]}{HIDDEN}{value[-2:]}" if len(value) > 8 else HIDDEN
