from __future__ import annotations

import pytest

from gateway.store.queries import (
    DeadLetterQuery,
    EventQuery,
    dead_letter_conditions,
    decode_cursor,
    encode_cursor,
    event_conditions,
)


def test_event_filters_become_conditions_with_their_parameters_in_each_dialect() -> None:
    where = event_conditions(EventQuery(source="mc", customer="Jean@Example.GN", status="dead"), "%s")
    assert where.parameters == ["mc", "Jean@Example.GN", "jean@example.gn", "dead"]
    assert "?" not in where.sql and where.sql.count("%s") == 4
    assert event_conditions(EventQuery(), "?").parameters == []


def test_dead_letter_filters_always_select_dead_deliveries() -> None:
    where = dead_letter_conditions(DeadLetterQuery(sink="crm", since=10.0), "?")
    assert where.sql.startswith("d.status = 'dead'") and where.parameters == ["crm", 10.0]


def test_a_cursor_reads_back_as_the_position_it_was_made_from() -> None:
    assert decode_cursor(encode_cursor((1767225600.25, "e-1"))) == (1767225600.25, "e-1")
    with pytest.raises(ValueError, match="is not a cursor this gateway gave out"):
        decode_cursor("not-a-cursor!")
