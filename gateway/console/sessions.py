"""Console sign-in: the admin token exchanged for a session cookie, and the CSRF token every form carries.

A session is a signed cookie, `<expires>.<nonce>.<mac>`, keyed by the admin token: every process of the gateway
checks it without shared state, and changing the token signs everyone out. Each form's CSRF token is the MAC of
the session's nonce, so a page on another site, which can neither read the cookie nor guess the nonce, cannot
forge one. Without an admin token the console, as the admin API, is reachable from loopback only: every visitor is
signed in, and the session only carries the CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.clock import Clock

COOKIE = "gateway_console"
LIFETIME = 12 * 3600.0
"""A session lasts a working day; then the token is asked for again."""


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int


class Sessions:
    def __init__(self, token: str | None, clock: Clock, *, lifetime: float = LIFETIME) -> None:
        self.token = token
        self.clock = clock
        self.lifetime = lifetime
        # without a token nothing is secret but the nonce, which is all a CSRF token needs
        self._key = hashlib.sha256(b"appointment-gateway console session\0" + (token or "").encode()).digest()

    @property
    def open(self) -> bool:
        """True when no token is asked (the admin token is not set: loopback only)."""
        return self.token is None

    def sign_in(self, given: str) -> str | None:
        """A new session cookie if `given` is the admin token, else None."""
        if self.token is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return self.new()

    def new(self) -> str:
        expires = int(self.clock.now() + self.lifetime)
        nonce = secrets.token_urlsafe(18)
        return f"{expires}.{nonce}.{self._mac(f'{expires}.{nonce}')}"

    def check(self, cookie: str | None) -> Session | None:
        """The session this cookie carries, if it is signed with the current key and has not expired."""
        expires, _, rest = (cookie or "").partition(".")
        nonce, _, mac = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(mac.encode(), self._mac(f"{expires}.{nonce}").encode()):
            return None
        if int(expires) <= self.clock.now():
            return None
        return Session(nonce, int(expires))

    def csrf(self, session: Session) -> str:
        return self._mac(f"csrf.{session.nonce}")

    def csrf_valid(self, session: Session, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf(session).encode())

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
