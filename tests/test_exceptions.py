from __future__ import annotations

import pytest

from gateway.exceptions import BadEventData, PermanentDeliveryError, RetryableDeliveryError


def test_bad_event_data_is_permanent_names_the_field_and_says_bad_data() -> None:
    error = BadEventData("appointment.starts_at", "out of range")
    assert isinstance(error, PermanentDeliveryError)
    assert (error.reason, error.field, str(error)) == (
        "bad data",
        "appointment.starts_at",
        "bad data in appointment.starts_at: out of range",
    )


def test_a_negative_retry_after_is_refused() -> None:
    with pytest.raises(ValueError, match="retry_after must be >= 0"):
        RetryableDeliveryError("x", retry_after=-1)
