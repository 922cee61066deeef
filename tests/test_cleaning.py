from __future__ import annotations

import json

import pytest
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


def test_an_email_read_again_is_remembered_valid_or_not() -> None:
    email_address.cache_clear()
    for _ in range(3):
        assert email_address("Ana@Example.GN") == "Ana@example.gn"
        assert email_address("ana@") is None
    assert (email_address.cache_info().hits, email_address.cache_info().misses) == (4, 2)
    assert email_address.cache_info().maxsize == PARSED_KEPT
