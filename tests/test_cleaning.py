from __future__ import annotations

import json

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given
from hypothesis import strategies as st

from gateway.cleaning import PARSED_KEPT, email_address, may_hold_surrogates, single_line, without_surrogates


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("Jean Dupont", "Jean Dupont"),
        ("Jean\r\nBcc: x@evil.test", "Jean Bcc: x@evil.test"),
        ("\tJean\x00\x7f\x85Dupont\u2028", "Jean Dupont"),
        ("a\u2029b", "a b"),
    ],
)
def test_control_characters_become_one_space(text: str, cleaned: str) -> None:
    assert single_line(text) == cleaned


@given(st.text(st.characters(exclude_categories=())))
def test_nothing_single_line_returns_holds_a_line_break(text: str) -> None:
    assert not any(character in single_line(text) for character in "\r\n\x00\u2028\u2029\x85")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("jean.dupont@example.gn", "jean.dupont@example.gn"),
        ("Jean@Example.GN", "Jean@example.gn"),
        ("a@example.gn, victim1@evil.test, victim2@evil.test", None),
        ("a@example.gn victim@evil.test", None),
        ("Jean <jean@example.gn>", None),
        ("jean@example.gn\r\nBcc: victim@evil.test", None),
        ("jean@", None),
        ("x" * 250 + "@example.gn", None),
    ],
)
def test_an_email_is_exactly_one_valid_address_or_none(text: str, address: str | None) -> None:
    assert email_address(text) == address


def test_lone_surrogates_become_replacement_characters_everywhere_paired_ones_stay() -> None:
    body = b'{"name": "A \\ud800 B", "\\udfff": ["\\ud83d\\ude00"]}'
    assert may_hold_surrogates(body) and not may_hold_surrogates(b'{"name": "\\u00e9"}')
    assert without_surrogates(json.loads(body)) == {"name": "A \ufffd B", "\ufffd": ["\U0001f600"]}


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"


@given(
    st.text(st.sampled_from([*ATEXT, ".", '"', " ", "@", "\\", "(", "é", "\u0130", "\u200b"]), max_size=70),
    st.lists(st.sampled_from([*"abcXYZ019-.", "xn--", "é", "_", " ", "@", "[1.2.3.4]"]), max_size=40).map("".join)
    | st.sampled_from(["example.gn", "Example.GN", "localhost", "test", "a.invalid", "123.45", "xn--dj-kia8a.fr"]),
)
def test_an_email_is_what_email_validator_makes_of_it(local: str, domain: str) -> None:
    """The shortcut for plain local parts (the domain validated alone, and remembered) changes no verdict."""
    text = f"{local}@{domain}"
    try:
        expected: str | None = validate_email(text, check_deliverability=False, allow_smtputf8=True).normalized
    except EmailNotValidError:
        expected = None
    assert email_address(text) == expected


def test_an_email_read_again_is_remembered_valid_or_not() -> None:
    email_address.cache_clear()
    for _ in range(3):
        assert email_address("Ana@Example.GN") == "Ana@example.gn"
        assert email_address("ana@") is None
    assert (email_address.cache_info().hits, email_address.cache_info().misses) == (4, 2)
    assert email_address.cache_info().maxsize == PARSED_KEPT
