"""Durations written the way people write them in YAML: `500ms`, `30s`, `5m`, `2h`, `1d`, or plain seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Return seconds; raise ValueError with the accepted forms when the value is none of them."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 2h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. 500ms, 30s, 5m, 2h, 1d or a number of seconds")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; a duration is zero or more")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, read from `30s`-style strings or numbers."""
