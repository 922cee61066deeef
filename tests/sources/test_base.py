from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from gateway.exceptions import WebhookRejected
from gateway.sources.base import ProviderId, ProviderTime, ProviderUrl, ProviderZone, SourceOptions, validated


class Fields(BaseModel):
    at: ProviderTime | None = None
    id: ProviderId | None = None
    zone: ProviderZone | None = None
    url: ProviderUrl | None = None


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"at": 20260125}, "at: expected an ISO 8601 date-time"),
        ({"at": "20260125"}, "at: expected an ISO 8601 date-time"),
        ({"at": "1769351400"}, "at: expected an ISO 8601 date-time"),
        ({"id": 1.5}, "id: expected an identifier"),
        ({"id": False}, "id: expected an identifier"),
        ({"id": "a\nb"}, "id: expected an identifier"),
        ({"zone": "../../etc/passwd"}, "zone: '../../etc/passwd' is not an IANA time zone"),
    ],
)
def test_strict_provider_types_refuse_naming_the_field(given: dict[str, Any], problem: str) -> None:
    with pytest.raises(WebhookRejected) as rejected:
        validated(Fields, given, prefix="data")
    assert rejected.value.status_code == 400 and f"data.{problem}" in rejected.value.detail


def test_strict_provider_types_accept_what_providers_send() -> None:
    fields = validated(
        Fields, {"at": "2026-01-25T14:30:00", "id": 12345, "zone": "Africa/Conakry", "url": "https://x.gn/q"}
    )
    assert (fields.at is not None and fields.at.hour, fields.id, fields.zone, fields.url) == (
        14,
        "12345",
        "Africa/Conakry",
        "https://x.gn/q",
    )
    assert validated(Fields, {"url": "https://x.gn/q r"}).url is None


def test_kept_headers_are_cut_to_200_characters() -> None:
    from gateway.sources.moncreneau import Moncreneau

    source = Moncreneau("mc", SourceOptions(type="moncreneau", secrets=["s"]))
    assert source.kept({"x-moncreneau-delivery": "d" * 40000, "other": "x"}) == {"x-moncreneau-delivery": "d" * 200}
