"""A sink's rate limit held in the store, so that every process sharing the sink shares it: a token bucket per
sink, refilled at `per_second` up to `burst`, from which workers take tokens for what they claim. A provider's
Retry-After (or 429) blocks the whole bucket until then."""

from __future__ import annotations

import math
from dataclasses import dataclass

CREATE = "INSERT INTO sink_buckets (sink, tokens, updated_at, blocked_until) VALUES (?, ?, ?, 0) ON CONFLICT DO NOTHING"
READ = "SELECT tokens, updated_at, blocked_until FROM sink_buckets WHERE sink = ?"
WRITE = "UPDATE sink_buckets SET tokens = ?, updated_at = ? WHERE sink = ?"
BLOCK = """
INSERT INTO sink_buckets (sink, tokens, updated_at, blocked_until) VALUES (?, 0, ?, ?)
ON CONFLICT (sink) DO UPDATE SET blocked_until = {greatest}(sink_buckets.blocked_until, excluded.blocked_until)
"""
"""With the dialect's two-argument maximum: max in SQLite, GREATEST in PostgreSQL."""


@dataclass(frozen=True)
class Taken:
    granted: int
    tokens: float
    """What the bucket holds afterwards."""
    wait: float
    """When nothing was granted: seconds until a token is there (or the block ends)."""


def take(
    tokens: float, updated_at: float, blocked_until: float, *, want: int, per_second: float, burst: int, now: float
) -> Taken:
    """Up to `want` whole tokens from a bucket last seen holding `tokens` at `updated_at`."""
    if blocked_until > now:
        return Taken(0, tokens, blocked_until - now)
    tokens = min(float(burst), tokens + max(0.0, now - updated_at) * per_second)
    granted = min(want, math.floor(tokens))
    if granted == 0:
        return Taken(0, tokens, (1 - tokens) / per_second)
    return Taken(granted, tokens - granted, 0.0)
