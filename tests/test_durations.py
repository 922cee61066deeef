from __future__ import annotations

import pytest

from gateway.durations import parse_duration


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1.5h", 5400), (12, 12), ("7", 7), (0, 0)],
)
def test_durations_read_as_seconds(written: object, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["5 minutes", "-1s", -3, "", "m", True, None, [1]])
def test_other_forms_are_refused_with_the_accepted_ones(written: object) -> None:
    with pytest.raises(ValueError, match=r"30s|zero or more"):
        parse_duration(written)
