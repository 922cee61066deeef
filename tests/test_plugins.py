from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import gateway
from gateway.cli import main
from gateway.config import Config
from gateway.exceptions import ConfigError
from gateway.plugins import plugin_manager, sink_types, source_types
from gateway.signing import hmac_sha256_hex
from tests.conftest import running_gateway

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
"""A third party's plugin: a pager sink and an "acme" booking platform."""
from __future__ import annotations

from typing import Any

from gateway import (
    Appointment, AppointmentEvent, Sink, SinkOptions, Source, Webhook, WebhookRejected, hmac_sha256_hex, hookimpl,
    matches_any, validated,
)
from pydantic import BaseModel

PAGED: list[tuple[str, str, int, str | None]] = []


class PagerOptions(SinkOptions):
    channel: str
    fail_first: int = 0


class Pager(Sink):
    type_name = "pager"
    Options = PagerOptions

    async def deliver(self, event, delivery):
        if delivery.attempt <= self.options.fail_first:
            raise ValueError("pager hiccup")
        PAGED.append((self.options.channel, event.provider_event_id, delivery.attempt, delivery.locale))


class AcmeBody(BaseModel):
    id: str
    booking: str
    at: str


class Acme(Source):
    type_name = "acme"

    def verify(self, headers, body):
        if not matches_any(headers.get("x-acme-signature", ""), body, self.options.secrets):
            raise WebhookRejected(401, "invalid_signature", "bad X-Acme-Signature")

    def parse(self, body: Any, headers, *, event_id, received_at):
        data = validated(AcmeBody, body)
        event = AppointmentEvent(
            id=event_id, type="appointment.created", source=self.name, provider="acme", provider_event_id=data.id,
            provider_event_type="booked", occurred_at=received_at, received_at=received_at,
            appointment=Appointment(id=data.booking),
        )
        return Webhook(provider_event_id=data.id, provider_event_type="booked", occurred_at=received_at, event=event)

    def signed_headers(self, body, event_type):
        return {"X-Acme-Signature": hmac_sha256_hex(self.options.secrets[0], body)}

    def sample(self, event_type, *, event_id, occurred_at):
        return {"id": event_id, "booking": "b-1", "at": occurred_at.isoformat()}


@hookimpl
def register_sinks():
    return [Pager]


@hookimpl
def register_sources():
    return [Acme]
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    """Install a throwaway distribution (module + entry point metadata) on sys.path, as pip would."""

    def install(module: str, source: str) -> None:
        site = tmp_path / "site"
        (site / f"{module}-1.0.dist-info").mkdir(parents=True)
        (site / f"{module}.py").write_text(source)
        (site / f"{module}-1.0.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n"
        )
        (site / f"{module}-1.0.dist-info" / "entry_points.txt").write_text(
            f"[appointment_gateway]\n{module} = {module}\n"
        )
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delitem(sys.modules, module, raising=False)

    return install


def test_builtin_sinks_come_through_the_entry_point_group() -> None:
    manager = plugin_manager()
    assert {"file", "http"} <= set(sink_types(manager))
    registered_by_entry_point = {
        getattr(plugin, "__name__", None): dist.project_name for plugin, dist in manager.list_plugin_distinfo()
    }
    assert registered_by_entry_point["gateway_sinks.http"] == "appointment-gateway"
    assert registered_by_entry_point["gateway_sinks.file"] == "appointment-gateway"
    assert {"moncreneau", "yappointment"} <= set(source_types(manager))


@pytest.mark.anyio
async def test_a_third_party_plugin_is_configured_from_yaml_and_receives_events(
    installed: Callable[[str, str], None], write_config: Callable[..., Config]
) -> None:
    installed("gateway_test_pager", PLUGIN)
    config = write_config(
        """
        sources:
          acme: {type: acme, secrets: [acme-secret]}
        sinks:
          oncall:
            type: pager
            options: {channel: "#bookings", fail_first: 1}
            retry: {schedule: [30s]}
        routes:
          - sources: [acme]
            sinks: [oncall]
            locale: fr
        """,
        with_sources=False,
    )
    import gateway_test_pager  # type: ignore[import-not-found]

    raw = json.dumps({"id": "acme-1", "booking": "b-9", "at": "now"}).encode()
    async with running_gateway(config) as gateway:
        headers = {"X-Acme-Signature": hmac_sha256_hex("acme-secret", raw)}
        response = await gateway.client.post("/webhooks/acme", content=raw, headers=headers)
        assert response.status_code == 202 and response.json()["sinks"] == ["oncall"]
        assert await gateway.worker.run_due() == 1  # the plugin raises an unexpected error: retried, not fatal
        gateway.clock.advance(30)
        assert await gateway.worker.run_due() == 1
        (delivery,) = await gateway.store.deliveries(response.json()["event_id"])
        first, second = await gateway.store.attempts(delivery.id)
    assert gateway_test_pager.PAGED == [("#bookings", "acme-1", 2, "fr")]
    assert (first.outcome, first.detail) == ("retryable", "ValueError: pager hiccup")
    assert second.outcome == "succeeded"


def test_a_plugin_sinks_options_are_validated_by_its_own_model(
    installed: Callable[[str, str], None], write_config: Callable[..., Config]
) -> None:
    installed("gateway_test_pager", PLUGIN)
    with pytest.raises(ConfigError, match=r"sinks.oncall.options.chanel: unknown key; did you mean channel\?"):
        write_config("sinks:\n  oncall: {type: pager, options: {chanel: x}}\n")


def test_two_plugins_claiming_one_type_name_are_refused(installed: Callable[[str, str], None]) -> None:
    installed(
        "gateway_test_clash",
        textwrap.dedent(
            """
            from gateway import hookimpl
            from gateway_sinks.file import FileSink

            class Impostor(FileSink):
                type_name = "http"

            @hookimpl
            def register_sinks():
                return [Impostor]
            """
        ),
    )
    with pytest.raises(ConfigError, match=r"two plugins register the sink type 'http': .*HttpSink and .*Impostor"):
        sink_types(plugin_manager())


def test_the_built_in_plugins_import_the_core_only_through_its_public_face() -> None:
    """Third parties get what the built-in sinks use: `from gateway import ...`, nothing deeper."""
    deeper = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            deeper += [f"{path.relative_to(ROOT)}: {module}" for module in modules if module.startswith("gateway.")]
    assert deeper == []


def test_every_name_of_the_public_face_exists_and_is_documented() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    undocumented = [name for name in gateway.__all__ if f"`{name}`" not in docs]
    assert undocumented == []
    assert all(hasattr(gateway, name) for name in gateway.__all__)


def test_the_public_face_imports_first_in_a_fresh_interpreter() -> None:
    """A plugin's `from gateway import Sink` may be the first import of the gateway in its process."""
    run = subprocess.run([sys.executable, "-c", "from gateway import *"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def test_the_plugins_command_lists_each_plugin_its_distribution_and_what_it_registers(
    installed: Callable[[str, str], None], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    installed("gateway_acme", PLUGIN)
    assert main(["--config", str(tmp_path / "none.yaml"), "plugins"]) == 0  # no configuration needed
    plugins = {plugin["module"]: plugin for plugin in json.loads(capsys.readouterr().out)["plugins"]}
    assert plugins["gateway_acme"] == {
        "name": "gateway_acme",
        "module": "gateway_acme",
        "distribution": "gateway_acme",
        "version": "1.0",
        "sinks": ["pager"],
        "sources": ["acme"],
    }
    assert plugins["gateway_sinks.twilio_sms"]["sinks"] == ["twilio_sms"]
    assert plugins["gateway.sources.moncreneau"]["distribution"] == "appointment-gateway"
    installed(
        "gateway_impostor",
        "from gateway import hookimpl\nfrom gateway_sinks.http import HttpSink\n\n"
        "class Impostor(HttpSink):\n    pass\n\n@hookimpl\ndef register_sinks():\n    return [Impostor]\n",
    )
    assert main(["--config", str(tmp_path / "none.yaml"), "plugins"]) == 2
    assert "two plugins register the sink type 'http'" in capsys.readouterr().err
