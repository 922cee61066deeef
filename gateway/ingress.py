"""Who may post webhooks, and how fast: per-source IP allow-lists and rate limits, checked before the body is read.

The client's address is the TCP peer's, unless the peer is a trusted proxy: then X-Forwarded-For is read from the
right, skipping trusted proxies, and the first address that is not one is the client (anything further left could
have been written by the client itself).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pydantic import BaseModel, ConfigDict, Field

from gateway.clock import Clock
from gateway.exceptions import WebhookRejected

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
MAX_TRACKED_CLIENTS = 10_000


class RateLimit(BaseModel):
    """A token bucket per source and client: `burst` requests at once, refilled at `per_second`."""

    model_config = ConfigDict(extra="forbid")

    per_second: float = Field(gt=0)
    burst: int = Field(10, ge=1)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> Address | None:
    try:
        address = ipaddress.ip_address(peer) if peer else None
    except ValueError:
        return None
    if address is None or not forwarded_for or not _within(address, trusted):
        return address
    try:
        hops = [ipaddress.ip_address(hop.strip()) for hop in forwarded_for.split(",")]
    except ValueError:
        return address  # a malformed header from behind our own proxy: trust only what we saw
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0]


def from_trusted_proxy(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Whether the TCP peer is one of the trusted proxies (whose X-Forwarded-* headers are believed)."""
    try:
        return peer is not None and _within(ipaddress.ip_address(peer), trusted)
    except ValueError:
        return False


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


class Buckets:
    """Token buckets by key, forgetting the least recently seen keys beyond MAX_TRACKED_CLIENTS."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when a request may pass (and spends a token), else the seconds until the next token."""
        now = self.clock.now()
        tokens, last = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.per_second)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.limit.per_second
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


class Guard:
    """A source's ingress rules: 403 outside its allow-list, 429 (with Retry-After) over its rate limit."""

    def __init__(
        self, allow: Sequence[Network] | None, rate_limit: RateLimit | None, trusted: Sequence[Network], clock: Clock
    ) -> None:
        self.allow = allow
        self.trusted = trusted
        self.buckets = Buckets(rate_limit, clock) if rate_limit else None

    def check(self, peer: str | None, forwarded_for: Sequence[str]) -> None:
        """`forwarded_for`: every X-Forwarded-For line, in order; a proxy may append its own line rather than
        extend the client's, so they are read as one list, from the right."""
        client = client_address(peer, ", ".join(forwarded_for), self.trusted)
        if self.allow is not None and (client is None or not _within(client, self.allow)):
            raise WebhookRejected(403, "forbidden", f"{client or 'this client'} may not post to this source")
        if self.buckets is not None:
            wait = self.buckets.take(str(client))
            if wait:
                raise RateLimited(math.ceil(wait))


class RateLimited(WebhookRejected):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "rate_limited", f"too many webhooks from this client; retry in {retry_after}s")
        self.retry_after = retry_after
