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
MAX_LOCAL = 64
PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
"""RFC 5322's dot-atom in ASCII: a local part valid at any valid domain, which normalisation leaves as it is."""
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
    reminders) carry the same customer. An address with a plain ASCII local part (nearly all) is checked by
    email-validator only for its domain, remembered apart: domains repeat far more than addresses, and
    email-validator took 9% of the webhook path's CPU."""
    if len(text) > MAX_EMAIL:
        return None
    local, at, domain = text.rpartition("@")
    if at and len(local) <= MAX_LOCAL and domain.isascii() and PLAIN_LOCAL_PART.fullmatch(local):
        normalised = _domain(domain)
        return f"{local}@{normalised}" if normalised is not None else None
    return _validated(text)


@functools.lru_cache(maxsize=PARSED_KEPT)
def _domain(domain: str) -> str | None:
    """The domain as email-validator normalises it, or None when it takes no address there."""
    address = _validated(f"a@{domain}")
    return address.rpartition("@")[2] if address is not None else None


def _validated(text: str) -> str | None:
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
