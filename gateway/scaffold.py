"""`appointment-gateway new-plugin NAME --kind sink|source`: a plugin package that passes its test and
`mypy --strict` as generated: a chat-webhook sink, or an HMAC-signed booking source, to edit into your own."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

PYPROJECT = Template("""[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "gateway-$dashed"
version = "0.1.0"
description = "A $kind for the appointment gateway"
requires-python = ">=3.11"
# Install the gateway first (pip install -e /path/to/appointment-gateway): it is not on PyPI.
dependencies = ["appointment-gateway", "httpx>=0.27"]

[project.optional-dependencies]
test = ["pytest>=8.2", "mypy>=1.10"]

[project.entry-points.appointment_gateway]
gateway_$name = "gateway_$name"

[tool.setuptools]
py-modules = ["gateway_$name"]

[tool.mypy]
strict = true
plugins = ["pydantic.mypy"]
""")

SINK = Template('''"""`$name` sink: each appointment event as a line POSTed to a chat webhook (Slack, Mattermost...)."""

import httpx
from pydantic import AnyHttpUrl

import gateway


class ${camel}Options(gateway.SinkOptions):
    url: AnyHttpUrl
    text: gateway.JinjaTemplate = "{{ event.type }} {{ appointment.id if appointment }}"  # appointment may be None


class ${camel}Sink(gateway.Sink):
    type_name = "$name"
    Options = ${camel}Options
    options: ${camel}Options  # what __init__ was given: this sink's own model

    async def deliver(self, event: gateway.AppointmentEvent, delivery: gateway.Delivery) -> gateway.Receipt:
        context = gateway.event_context(event, delivery)
        text = gateway.render(self.options.text, f"sinks.{self.name}.options.text", context)
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                answer = await client.post(str(self.options.url), json={"text": text})
        except httpx.HTTPError as error:  # unreachable, reset, timed out: it may pass
            raise gateway.RetryableDeliveryError(f"{self.options.url.host}: {error!r}") from None
        status = answer.status_code
        if status == 429 or status >= 500:
            wait = gateway.parse_retry_after(answer.headers.get("Retry-After"), now=delivery.attempted_at)
            raise gateway.RetryableDeliveryError(f"answered {status}", status_code=status, retry_after=wait)
        if answer.is_error:  # refused: trying again cannot help
            raise gateway.PermanentDeliveryError(f"refused: {answer.text[:200]}", status_code=status)
        return gateway.Receipt(status_code=status)


@gateway.hookimpl
def register_sinks() -> list[type[gateway.Sink]]:
    return [${camel}Sink]
''')

SINK_TEST = Template('''"""One good test of the $name sink: the gateway's kit (gateway.testing), a real HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from gateway.testing import options_from_yaml, run_sink, sample_event
from gateway.testing.receiver import Answer, Receiver, receiver
from gateway_$name import ${camel}Options, ${camel}Sink


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def chat() -> AsyncIterator[Receiver]:
    async with receiver() as server:
        yield server


@pytest.mark.anyio
async def test_an_event_is_posted_and_failures_are_classified(chat: Receiver) -> None:
    sink = ${camel}Sink("$name", options_from_yaml(${camel}Options, f"url: {chat.url}/hook"), timeout=5.0)
    event = sample_event("moncreneau", "appointment.cancelled")
    chat.script(Answer(503), Answer(400))
    outcomes = [await run_sink(sink, event) for _ in range(3)]
    assert [outcome.status for outcome in outcomes] == ["retryable", "permanent", "succeeded"]
    assert json.loads(chat.requests[-1].body) == {"text": "appointment.cancelled 12345"}
''')

SOURCE = Template('''"""`$name` source: a booking platform posting JSON, HMAC-SHA256 (hex) in $header."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway import (
    Appointment, AppointmentEvent, EventType, ProviderId, ProviderText, ProviderTime, Source, Webhook,
    WebhookRejected, hmac_sha256_hex, hookimpl, matches_any, validated,
)

TYPES: dict[str, EventType] = {"booking.created": "appointment.created", "booking.cancelled": "appointment.cancelled"}


class ${camel}Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the platform may add fields

    id: ProviderId
    type: ProviderText
    booking: ProviderId
    starts_at: ProviderTime
    created_at: ProviderTime


class ${camel}Source(Source):
    type_name = "$name"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if not matches_any(headers.get("$header_lower", ""), body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "$header does not match the body")

    def parse(self, body: Any, headers: Mapping[str, str], *, event_id: str, received_at: datetime) -> Webhook:
        data = validated(${camel}Body, body)
        occurred_at = self.local_time(data.created_at) or received_at
        kind = TYPES.get(data.type)
        event = None if kind is None else AppointmentEvent(
            id=event_id, type=kind, source=self.name, provider=self.type_name, provider_event_id=data.id,
            provider_event_type=data.type, occurred_at=occurred_at, received_at=received_at,
            appointment=Appointment(id=data.booking, starts_at=self.local_time(data.starts_at)),
        )
        return Webhook(provider_event_id=data.id, provider_event_type=data.type, occurred_at=occurred_at, event=event)

    def signed_headers(self, body: bytes, event_type: str) -> dict[str, str]:
        return {"$header": hmac_sha256_hex(self.options.secrets[0], body)}

    def sample(self, event_type: str, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
        at = occurred_at.isoformat()
        return {"id": event_id, "type": event_type, "booking": "b-1", "starts_at": at, "created_at": at}

    def sample_types(self) -> list[str]:
        return list(TYPES)


@hookimpl
def register_sources() -> list[type[Source]]:
    return [${camel}Source]
''')

SOURCE_TEST = Template('''"""One good test of the $name source, through the gateway's real app (gateway.testing)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.testing import post_webhook
from gateway_$name import ${camel}Source


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_signed_booking_is_stored_as_a_canonical_event() -> None:
    body = {"id": "e-1", "type": "booking.created", "booking": "b-7", "starts_at": "2030-01-02T09:30:00Z",
            "created_at": datetime.now(UTC).isoformat()}
    posted = await post_webhook(${camel}Source, body)
    assert (posted.status_code, posted.answer["status"]) == (202, "accepted")
    assert posted.event is not None and posted.event.appointment is not None
    assert (posted.event.type, posted.event.appointment.id) == ("appointment.created", "b-7")
    refused = await post_webhook(${camel}Source, {**body, "booking": None})
    assert (refused.status_code, refused.answer["error"]) == (400, "invalid_payload")
''')

README = Template("""# gateway-$dashed

A $kind for the [appointment gateway](https://example.invalid/appointment-gateway), generated by
`appointment-gateway new-plugin $name --kind $kind`.

    pip install -e /path/to/appointment-gateway   # first: the gateway is not on PyPI
    pip install -e '.[test]'
    python -m pytest
    MYPYPATH=/path/to/appointment-gateway python -m mypy --strict gateway_$name.py test_gateway_$name.py

`appointment-gateway plugins` then lists it; configure it under `${section}.<name>` with `type: $name`.
""")


def new_plugin(name: str, kind: str, where: Path) -> Path:
    """Write the plugin package `gateway-NAME` in `where`; return its folder. ValueError for a bad name, an
    unknown kind, or a folder that exists."""
    if not NAME.match(name):
        raise ValueError(f"{name!r}: a plugin name is a lower-case identifier (letters, digits, _), e.g. chat")
    if kind not in ("sink", "source"):
        raise ValueError(f"{kind!r}: the kind is sink or source")
    folder = where / f"gateway-{name.replace('_', '-')}"
    if folder.exists():
        raise ValueError(f"{folder} exists already")
    values = {
        "name": name,
        "dashed": name.replace("_", "-"),
        "camel": "".join(part.title() for part in name.split("_")),
        "kind": kind,
        "section": f"{kind}s",
    }
    values["header"] = f"X-{values['camel']}-Signature"
    values["header_lower"] = values["header"].lower()
    module, test = (SINK, SINK_TEST) if kind == "sink" else (SOURCE, SOURCE_TEST)
    folder.mkdir(parents=True)
    for filename, template in (
        ("pyproject.toml", PYPROJECT),
        (f"gateway_{name}.py", module),
        (f"test_gateway_{name}.py", test),
        ("README.md", README),
    ):
        (folder / filename).write_text(template.substitute(values))
    return folder
