"""HMAC-SHA256 signatures over raw bodies, as both providers compute them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def matches_any(signature: str, body: bytes, secrets: Iterable[str]) -> bool:
    """True when `signature` (hex) is the body's HMAC under one of `secrets`.

    Every secret is checked, in constant time each, so that the answer's timing says nothing about which secret
    (or how much of the signature) matched; several secrets allow rotating them without downtime.
    """
    given = signature.strip().lower().encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, hmac_sha256_hex(secret, body).encode())
    return found
