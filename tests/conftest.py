from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.clock import ManualClock
from gateway.config import Config, load_config
from gateway.delivery import Worker
from gateway.logs import LIBRARIES
from gateway.plugins import plugin_manager
from gateway.signing import hmac_sha256_hex
from gateway.store.sqlite import SQLiteStore
from gateway.testing.receiver import Answer, Receiver, receiver
from tests.peers import postgres_database, prism

if TYPE_CHECKING:
    from tests.helpers import Mailbox

MONCRENEAU_SECRET = "mc-secret-current"
YAPP_SECRET = "yapp-secret"

SOURCES = f"""
sources:
  moncreneau:
    type: moncreneau
    secrets: [{MONCRENEAU_SECRET}, mc-secret-previous]
    timezone: Africa/Conakry
    default_region: GN
  yapp:
    type: yappointment
    secrets: [{YAPP_SECRET}]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Config]:
    """Write YAML (dedented; the sources above prepended unless it has its own) and load it. The test runs in its
    temporary folder, so that relative paths in the YAML (a journal) never land in the checkout."""
    monkeypatch.chdir(tmp_path)

    def write(text: str, *, with_sources: bool = True) -> Config:
        text = textwrap.dedent(text)
        body = f"storage:\n  url: sqlite:///{tmp_path}/gateway.db\n{SOURCES if with_sources else ''}{text}"
        path = tmp_path / "config.yaml"
        path.write_text(body)
        return load_config(path, plugin_manager())

    return write


def moncreneau_request(body: dict[str, Any], secret: str = MONCRENEAU_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {
        "Content-Type": "application/json",
        "X-Moncreneau-Event": str(body.get("type")),
        "X-Moncreneau-Delivery": "550e8400-e29b-41d4-a716-446655440000",
        "X-Moncreneau-Signature": "sha256=" + hmac_sha256_hex(secret, raw),
    }


def yapp_request(body: dict[str, Any], secret: str = YAPP_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {"Content-Type": "application/json", "X-Webhook-Signature": hmac_sha256_hex(secret, raw)}


@dataclass
class Running:
    """A gateway app in its lifespan, an HTTP client on it, and its store, worker and clock."""

    app: Starlette
    client: httpx.AsyncClient
    store: SQLiteStore
    worker: Worker
    clock: ManualClock

    async def post_moncreneau(self, body: dict[str, Any], secret: str = MONCRENEAU_SECRET) -> httpx.Response:
        raw, headers = moncreneau_request(body, secret)
        return await self.client.post("/webhooks/moncreneau", content=raw, headers=headers)

    async def post_yapp(self, body: dict[str, Any], secret: str = YAPP_SECRET) -> httpx.Response:
        raw, headers = yapp_request(body, secret)
        return await self.client.post("/webhooks/yapp", content=raw, headers=headers)


ROUTED = """
server: {max_body_bytes: 4096}
sinks:
  journal: {type: file, options: {path: journal.jsonl}}
  crm: {type: http, options: {url: "http://127.0.0.1:9/crm"}}
routes:
  - events: ["appointment.*"]
    sinks: [journal]
  - sources: [moncreneau]
    events: [appointment.cancelled]
    sinks: [crm]
"""
"""Sinks and routes for webhook-path tests: a journal for every appointment event, a CRM for moncreneau's
cancellations (at a closed port: deliveries stay pending)."""


@pytest.fixture
async def gateway(write_config: Callable[[str], Config]) -> AsyncIterator[Running]:
    """A gateway with the ROUTED sinks, its worker driven by the test."""
    async with running_gateway(write_config(ROUTED)) as running:
        yield running


TWILIO_SMS = """  sms:
    type: twilio_sms
    options:
      account_sid: AC0123456789abcdef0123456789abcdef
      auth_token: t
      from: "+15005550006"
"""
"""The head of a sink named `sms` (Twilio, test credentials) for a `sinks:` block; its options go on at six spaces."""


@pytest.fixture
async def twilio() -> AsyncIterator[Receiver]:
    """A real HTTP server standing in for Twilio's API: it answers every message 201 with a sid."""
    async with receiver() as endpoint:
        endpoint.default = Answer(201, {"Content-Type": "application/json"}, json.dumps({"sid": "SM1"}).encode())
        yield endpoint


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on a loopback port, keeping what it accepts; yield it and its port."""
    from tests.helpers import Mailbox, free_port  # helpers import this module

    handler = Mailbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """`main()` sets up logging for a process (root handlers, levels); a test that calls it gets the test run's
    logging back afterwards, so that no handler writes to a stream pytest has closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)


@asynccontextmanager
async def running_gateway(
    config: Config, *, run_worker: bool = False, store: SQLiteStore | None = None
) -> AsyncIterator[Running]:
    """The app with its lifespan entered; by default the worker is driven by the test (`worker.run_due()`)."""
    clock = ManualClock()
    store = store or SQLiteStore.from_url(
        config.settings.storage.url, busy_timeout=config.settings.storage.busy_timeout
    )
    app = create_app(config, store=store, clock=clock, run_worker=run_worker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Running(app, client, store, app.state.worker, clock)


@pytest.fixture(scope="session")
def twilio_api() -> Iterator[str]:
    """Base URL of a server enforcing Twilio's official OpenAPI spec."""
    with prism("twilio") as url:
        yield url


@pytest.fixture(scope="session")
def sendgrid_api() -> Iterator[str]:
    """Base URL of a server enforcing SendGrid's official Mail Send OpenAPI spec."""
    with prism("sendgrid") as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    with postgres_database() as url:
        yield url
