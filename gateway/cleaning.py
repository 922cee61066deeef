"""Customer-typed text made safe to carry: a signature proves who sent an event, not that its fields are harmless.

Booking platforms pass on whatever their customers type. Names, phones and emails therefore lose their control
characters (a CR LF in an email would become a header in an SMTP message or a CRM's request), emails are read as
exactly one address or not at all, and lone UTF-16 surrogates (valid JSON, not text) become U+FFFD.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from email_validator import EmailNotValidError, validate_email

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
"""C0 and C1 controls (CR, LF, NUL, tab...), DEL, and the Unicode line and paragraph separators."""
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
MAX_EMAIL = 254
MAX_PHONE = 250
"""phonenumbers' own limit: a longer text is no number."""
PARSED_KEPT = 4096
"""Emails and phone numbers whose parsing each process remembers (each at most 254 characters: about 2 MiB)."""


def single_line(text: str) -> str:
    """`text` with each run of control characters replaced by one space, trimmed."""
    return CONTROL.sub(" ", text).strip() if CONTROL.search(text) else text


@functools.lru_cache(maxsize=PARSED_KEPT)
def email_address(text: str) -> str | None:
    """`text` as one email address (normalised domain), or None when it is not exactly one valid address.

    Remembered for the latest PARSED_KEPT addresses: an appointment's events (booked, moved, cancelled, and its
    reminders) carry the same customer, and email-validator took 9% of the webhook path's CPU."""
    if len(text) > MAX_EMAIL:
        return None
    try:
        return validate_email(text, check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError:
        return None


def without_surrogates(value: Any) -> Any:
    """A parsed JSON value whose strings (keys too) hold no lone surrogate: each becomes U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_surrogates(key): without_surrogates(item) for key, item in value.items()}
    return value


def may_hold_surrogates(body: bytes) -> bool:
    """Whether a JSON body escapes a surrogate (`\\ud800`), paired or not: only then is it worth walking."""
    return b"\\u" in body and SURROGATE_ESCAPE.search(body) is not None
