from __future__ import annotations

import pytest

from gateway.clock import ManualClock
from gateway.console.sessions import Sessions

TOKEN = "console-token-4b1d-88e0"


def test_the_token_opens_a_session_that_expires() -> None:
    clock = ManualClock()
    sessions = Sessions(TOKEN, clock, lifetime=60)
    assert sessions.sign_in("wrong") is None and sessions.sign_in("") is None
    cookie = sessions.sign_in(TOKEN)
    assert cookie is not None and sessions.check(cookie) is not None
    clock.advance(60)
    assert sessions.check(cookie) is None


@pytest.mark.parametrize(
    "tampered",
    [
        lambda c: "",
        lambda c: "garbage",
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # the MAC
        lambda c: str(int(c.split(".")[0]) + 3600) + c[c.index(".") :],  # a later expiry
        lambda c: c.replace(c.split(".")[1], "other-nonce"),
        lambda c: c + "é",
    ],
)
def test_a_tampered_cookie_is_no_session(tampered: object) -> None:
    sessions = Sessions(TOKEN, ManualClock())
    cookie = sessions.new()
    assert callable(tampered)
    assert sessions.check(tampered(cookie)) is None


def test_a_new_token_ends_every_session_and_csrf_tokens_are_per_session() -> None:
    clock = ManualClock()
    first, second = Sessions(TOKEN, clock).new(), Sessions(TOKEN, clock).new()
    sessions = Sessions(TOKEN, clock)  # another process: the same key
    one, two = sessions.check(first), sessions.check(second)
    assert one is not None and two is not None
    assert sessions.csrf(one) != sessions.csrf(two)
    assert sessions.csrf_valid(one, sessions.csrf(one)) and not sessions.csrf_valid(one, sessions.csrf(two))
    assert not sessions.csrf_valid(one, "é")
    assert Sessions("a-new-token-0123456789", clock).check(first) is None


def test_without_a_token_no_sign_in_is_possible() -> None:
    sessions = Sessions(None, ManualClock())
    assert sessions.open and sessions.sign_in("") is None and sessions.sign_in("anything") is None
