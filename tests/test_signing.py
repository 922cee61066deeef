from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.signing import hmac_sha256_hex, matches_any

secrets = st.text(min_size=1, max_size=40)


@given(body=st.binary(max_size=2048), secret=secrets, others=st.lists(secrets, max_size=3))
def test_a_body_signed_with_any_accepted_secret_verifies(body: bytes, secret: str, others: list[str]) -> None:
    assert matches_any(hmac_sha256_hex(secret, body), body, [*others, secret])


@given(body=st.binary(min_size=1, max_size=2048), secret=secrets, flip=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_altered_body_fails(body: bytes, secret: str, flip: int, bit: int) -> None:
    altered = bytearray(body)
    altered[flip % len(body)] ^= 1 << bit
    assert not matches_any(hmac_sha256_hex(secret, body), bytes(altered), [secret])


@given(body=st.binary(max_size=512), secret=secrets, wrong=secrets)
def test_a_signature_under_another_secret_fails(body: bytes, secret: str, wrong: str) -> None:
    if wrong != secret:
        assert not matches_any(hmac_sha256_hex(wrong, body), body, [secret])


@given(body=st.binary(max_size=512), secret=secrets, signature=st.text(max_size=80))
def test_arbitrary_signature_text_never_raises(body: bytes, secret: str, signature: str) -> None:
    expected = hmac_sha256_hex(secret, body)
    assert matches_any(signature, body, [secret]) == (signature.strip().lower() == expected)


def test_no_secret_accepts_nothing() -> None:
    assert not matches_any(hmac_sha256_hex("s", b"x"), b"x", [])


def test_the_published_hmac_sha256_vectors() -> None:
    """RFC 4231, test cases 1 and 2: the primitive both providers' signatures are made of."""
    key = bytes([0x0B] * 20).decode("latin-1")
    assert hmac_sha256_hex("Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert hmac_sha256_hex(key, b"Hi There") == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
