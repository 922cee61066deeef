"""What a source is: it verifies a provider's request and maps its payload onto the canonical event.

Built-in sources and third-party ones are registered alike, through the `register_sources` hook.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from gateway.cleaning import CONTROL, MAX_PHONE, PARSED_KEPT, single_line
from gateway.durations import Duration
from gateway.events import AppointmentEvent
from gateway.exceptions import WebhookRejected
from gateway.ingress import RateLimit

M = TypeVar("M", bound=BaseModel)
ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
MAX_ID = 200
MAX_HEADER = 200
HTTP_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f-\x9f\u2028\u2029\"'<>\\]{1,2000}\Z", re.IGNORECASE)


def _iso_text(value: Any) -> Any:
    """pydantic would read a number (or a numeric text) as seconds since 1970: a provider's date-time is text."""
    if isinstance(value, str) and ISO_DATETIME.match(value):
        return value
    raise ValueError("expected an ISO 8601 date-time text such as 2026-01-25T14:30:00")


def _identifier(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected an identifier: text or an integer")
    text = str(value)
    if not text or len(text) > MAX_ID or CONTROL.search(text):
        raise ValueError(f"expected an identifier of 1 to {MAX_ID} characters without control characters")
    return text


def _zone_name(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name[:60]!r} is not an IANA time zone") from None
    return name


# Strict types for provider payloads: a signed body is still customer-typed input, so nothing is coerced.
ProviderTime = Annotated[datetime, BeforeValidator(_iso_text)]
"""An ISO 8601 date-time, never a number."""
ProviderInt = StrictInt
ProviderId = Annotated[str, BeforeValidator(_identifier)]
"""An id as text: an integer or a string, 1-200 characters, no control characters."""
ProviderText = Annotated[StrictStr, AfterValidator(single_line)]
"""One line of text: control characters (CR, LF...) become a space."""
ProviderZone = Annotated[StrictStr, AfterValidator(_zone_name)]
ProviderUrl = Annotated[StrictStr, AfterValidator(lambda url: url if HTTP_URL.match(url) else None)]
"""An absolute http(s) URL without spaces or control characters; anything else is dropped (None)."""


class SourceOptions(BaseModel):
    """Options every source has; a source with more subclasses this as its `Options`."""

    model_config = ConfigDict(extra="forbid")

    type: str
    secrets: list[str] = Field(min_length=1, description="Signing secrets; several are accepted during rotation")
    timezone: str = Field("UTC", description="IANA zone in which the provider's local times are read")
    default_region: str | None = Field(None, description="ISO 3166 region for phone numbers without +country code")
    allow_ips: list[IPvAnyNetwork] | None = Field(None, description="CIDR ranges allowed to post; anyone when unset")
    rate_limit: RateLimit | None = Field(None, description="Per client: {per_second, burst}; 429 beyond it")
    stale_after: Duration | None = Field(
        None,
        description="Events whose provider time is older than this are acknowledged and delivered nowhere "
        "(recorded with their deliveries skipped, reason stale): a captured request replayed later does nothing",
    )

    @field_validator("secrets")
    @classmethod
    def _secrets_not_empty(cls, secrets: list[str]) -> list[str]:
        if any(not secret for secret in secrets):
            raise ValueError("a secret is empty; is its environment variable set to an empty string?")
        return secrets

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            return _zone_name(name)
        except ValueError as error:
            raise ValueError(f"{error}; write e.g. Africa/Conakry or Europe/Paris") from None

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, region: str | None) -> str | None:
        if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region phonenumbers knows; write an ISO 3166 code such as GN or FR")
        return region.upper() if region else region


@dataclass(frozen=True)
class Webhook:
    """A verified request, parsed: the canonical event, or None when the provider's type is not mapped."""

    provider_event_id: str
    provider_event_type: str
    occurred_at: datetime
    event: AppointmentEvent | None
    provider_delivery_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Source(ABC):
    """A booking platform's webhooks, received at `/webhooks/<name>`."""

    type_name: ClassVar[str]
    Options: ClassVar[type[SourceOptions]] = SourceOptions
    kept_headers: ClassVar[tuple[str, ...]] = ()
    """Request headers stored with the event (lower-case names)."""

    def __init__(self, name: str, options: SourceOptions) -> None:
        self.name = name
        self.options = options
        self.zone = ZoneInfo(options.timezone)

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise WebhookRejected(401) unless the request is signed with one of the source's secrets."""

    @abstractmethod
    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        """Map a verified JSON body; raise WebhookRejected(400) naming the field the provider's schema refuses."""

    @abstractmethod
    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        """The headers the provider would send with `body`, signed with the first secret (for test events)."""

    @abstractmethod
    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        """A realistic body of the provider's `event_type`, as its "send test event" button would post."""

    def sample_types(self) -> list[str]:
        """The provider event types `sample` knows (check-config renders templates with them); none by default."""
        return []

    def kept(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The `kept_headers` present, each cut to MAX_HEADER characters: they are not signed, and are logged."""
        return {name: headers[name][:MAX_HEADER] for name in self.kept_headers if name in headers}

    def phone(self, raw: str | None) -> str | None:
        """E.164 form of a provider's number, read with the source's default region; None when unparseable."""
        return e164(raw, self.options.default_region) if raw else None

    def local_time(self, value: datetime | None) -> datetime | None:
        """An aware time: a naive provider time is read in the source's zone."""
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=self.zone)


def validated(model: type[M], payload: Any, *, prefix: str = "") -> M:
    """`model` read from `payload`, or a 400 naming every field the provider's schema refuses."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join([*([prefix] if prefix else []), *(str(part) for part in item["loc"])])
            problems.append(f"{where or '(body)'}: {item['msg'].removeprefix('Value error, ')}")
        raise WebhookRejected(400, "invalid_payload", "; ".join(problems)) from None


def load_samples(filename: str, package: str = "gateway.samples") -> dict[str, dict[str, Any]]:
    """Sample bodies by provider event type, shipped in `package` (a plugin passes its own)."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    samples: dict[str, dict[str, Any]] = json.loads(text)
    return samples


@functools.lru_cache(maxsize=PARSED_KEPT)
def e164(raw: str, region: str | None) -> str | None:
    """`raw` in E.164 form, read in `region` when it has no country code; None when unparseable. Remembered, as
    emails are (gateway.cleaning): phonenumbers took 11% of the webhook path's CPU."""
    if len(raw) > MAX_PHONE:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_request(source: Source, event_type: str, *, occurred_at: datetime) -> tuple[bytes, dict[str, str]]:
    """A sample of `event_type` under a fresh id, and the headers that sign it, as the provider's "send test event"
    would post it (`send-test-event`, the console); KeyError names the types the source knows."""
    body = source.sample(event_type, event_id=f"evt_test_{uuid.uuid4().hex[:16]}", occurred_at=occurred_at)
    raw = json.dumps(body).encode()
    return raw, source.signed_headers(raw, event_type)


def sample_from(filename: str, event_type: str, *, package: str = "gateway.samples", **fields: str) -> dict[str, Any]:
    """The shipped sample body of `event_type`, with top-level `fields` replaced; KeyError lists the known types."""
    samples = load_samples(filename, package)
    if event_type not in samples:
        provider = filename.removesuffix(".json")
        raise KeyError(f"no {provider} sample of type {event_type!r}; known: {', '.join(sorted(samples))}")
    return {**samples[event_type], **fields}


def zulu(moment: datetime) -> str:
    """ISO 8601 the way providers write UTC: `2026-01-21T14:30:00Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
