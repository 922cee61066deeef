from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from gateway.exceptions import WebhookRejected
from gateway.sources.base import ProviderId, ProviderTime, ProviderUrl, ProviderZone, SourceOptions, e164, validated


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


@pytest.mark.parametrize(
    ("raw", "region", "number"),
    [
        ("622 12 34 56", "GN", "+224622123456"),
        ("+33 6 12 34 56 78", "GN", "+33612345678"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("06 12 34 56 78", None, None),  # no country code and no region to read it in
        ("12", "GN", None),
        ("call me", "GN", None),
        ("+" + "1" * 300, "GN", None),
    ],
)
def test_e164_reads_a_number_in_its_region_and_remembers_it(raw: str, region: str | None, number: str | None) -> None:
    e164.cache_clear()
    assert e164(raw, region) == number
    assert e164(raw, region) == number
    assert e164.cache_info().hits == 1
