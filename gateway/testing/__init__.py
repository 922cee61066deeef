"""What a plugin author needs for one good test (docs/plugins.md, "Testing a plugin").

Canonical events from the shipped samples with parts replaced; a sink run as the core runs it, its outcome
classified as the core would; options read from YAML with the core's own error messages; and a source exercised
through the real ASGI app: a body signed as the provider would, posted, and read back from the store.
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import yaml
from pydantic import BaseModel, ValidationError

from gateway.app import create_app
from gateway.config import _problems, load_config
from gateway.events import AppointmentEvent
from gateway.exceptions import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from gateway.hookspecs import hookimpl
from gateway.plugins import plugin_manager, source_types
from gateway.sinks import Delivery, Receipt, Sink
from gateway.sources.base import Source, SourceOptions

SAMPLE_SOURCES = {
    "moncreneau": {"timezone": "Africa/Conakry", "default_region": "GN"},
    "yappointment": {"default_region": "US"},
}
"""The built-in sources whose samples `sample_event` reads, with the options their samples assume."""


def sample_event(provider: str, provider_type: str, **parts: Any) -> AppointmentEvent:
    """A canonical event mapped from a built-in source's shipped sample (`sample_event("moncreneau",
    "appointment.created")`); each keyword replaces a top-level part, a mapping merging into it:
    `customer={"phone": None}` keeps the sample's name and email."""
    source_class = source_types(plugin_manager())[provider]
    source = source_class(provider, SourceOptions(type=provider, secrets=["sample"], **SAMPLE_SOURCES[provider]))
    now = datetime.now(UTC)
    body = source.sample(provider_type, event_id=f"evt_{provider_type}", occurred_at=now)
    event = source.parse(body, {}, event_id=f"evt-{provider_type}", received_at=now).event
    if event is None:
        raise ValueError(f"{provider} does not map {provider_type!r} to a canonical event")
    data = event.model_dump(mode="json", by_alias=True)
    for name, value in parts.items():
        data[name] = {**data[name], **value} if isinstance(value, dict) and isinstance(data.get(name), dict) else value
    return AppointmentEvent.model_validate(data)


@dataclass(frozen=True)
class Outcome:
    """What came of one delivery, as the core classifies it: `succeeded` (with the sink's receipt), `retryable`
    (tried again per the sink's retry policy, not before `retry_after`) or `permanent` (dead-lettered, or skipped
    for a recipient reason, with its `reason`)."""

    status: Literal["succeeded", "retryable", "permanent"]
    receipt: Receipt | None = None
    error: BaseException | None = None
    reason: str | None = None
    retry_after: float | None = None


async def run_sink(sink: Sink, event: AppointmentEvent, delivery: Delivery | None = None) -> Outcome:
    """Open the sink, deliver the event within the sink's timeout, close the sink; what `deliver` raises is not
    raised, but classified as the core would."""
    await sink.open()
    try:
        with anyio.fail_after(sink.timeout):
            receipt = await sink.deliver(event, delivery or Delivery(id="dlv-test", sink=sink.name, attempt=1))
    except PermanentDeliveryError as error:
        return Outcome("permanent", error=error, reason=error.reason)
    except RetryableDeliveryError as error:
        return Outcome("retryable", error=error, retry_after=error.retry_after)
    except Exception as error:  # a timeout, or anything else: the core retries it
        return Outcome("retryable", error=error)
    finally:
        await sink.aclose()
    return Outcome("succeeded", receipt=receipt)


def options_from_yaml(model: type[BaseModel], text: str, *, where: str = "sinks.test.options") -> Any:
    """`model` (a sink's or source's `Options`) read from YAML text as the gateway reads it; a ConfigError names
    each wrong key under `where`, as `check-config` would."""
    raw = yaml.safe_load(textwrap.dedent(text)) or {}
    try:
        return model.model_validate(raw, context={"config_dir": Path.cwd()})
    except ValidationError as error:
        raise ConfigError("\n".join(_problems(error, model, tuple(where.split("."))))) from None


@dataclass(frozen=True)
class Posted:
    """A webhook's answer, and the event the gateway stored for it (None when it stored none or mapped none)."""

    status_code: int
    answer: dict[str, Any]
    event: AppointmentEvent | None


class _Provides:
    """Registers a source class that is not installed (yet): the one under test."""

    def __init__(self, cls: type[Source]) -> None:
        self.cls = cls

    @hookimpl
    def register_sources(self) -> list[type[Source]]:
        return [self.cls]


async def post_webhook(
    source: type[Source], body: Any, *, event_type: str = "", options: str = "secrets: [test-secret]"
) -> Posted:
    """Post `body` (JSON, or bytes as they are) to a gateway with one source of this class (its YAML `options`),
    on a fresh SQLite store, signed with the source's own `signed_headers`; read back what was stored."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with tempfile.TemporaryDirectory() as folder:
        entry = {"type": source.type_name, **(yaml.safe_load(textwrap.dedent(options)) or {})}
        path = Path(folder) / "config.yaml"
        storage = {"url": f"sqlite:///{folder}/gateway.db"}
        path.write_text(yaml.safe_dump({"storage": storage, "sources": {"test": entry}}))
        manager = plugin_manager()
        manager.register(_Provides(source))
        config = load_config(path, manager)
        app = create_app(config, run_worker=False)
        headers = {"Content-Type": "application/json", **config.sources["test"].signed_headers(raw, event_type)}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                response = await client.post("/webhooks/test", content=raw, headers=headers)
            answer = response.json()
            stored = await app.state.store.get_event(answer["event_id"]) if "event_id" in answer else None
    event = AppointmentEvent.model_validate_json(stored.canonical) if stored and stored.canonical else None
    return Posted(response.status_code, answer, event)
