"""compose.yaml and the Dockerfile, without Docker: each service's own command, run as compose would run it against
deploy/config.yaml (a real PostgreSQL standing in for the `db` service), must start, answer its probes and work
together; the example configuration's header commands must run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from gateway.cli import _parser
from gateway.config import admin_exposure, load_config
from gateway.plugins import plugin_manager
from tests.helpers import free_port, healthy_process, signed
from tests.peers import postgres_database

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = {name: spec for name, spec in COMPOSE["services"].items() if spec.get("image") == "appointment-gateway"}


def test_compose_runs_each_gateway_service_of_the_image_with_a_named_data_volume() -> None:
    assert set(SERVICES) == {"migrate", "ingest-1", "ingest-2", "worker"}
    for spec in SERVICES.values():
        assert spec["command"][0] == "appointment-gateway"
        assert "gateway-data:/data" in spec["volumes"] and "gateway-data" in COMPOSE["volumes"]
    assert "GATEWAY_CONFIG=/config/config.yaml" in DOCKERFILE and "./deploy:/config:ro" in SERVICES["worker"]["volumes"]


def test_each_service_command_is_accepted_and_its_configuration_valid_without_a_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DB_PASSWORD", "MONCRENEAU_WEBHOOK_SECRET", "YAPP_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "admin-token-0123456789abcdef")
    config = load_config(ROOT / "deploy" / "config.yaml", plugin_manager())
    assert config.settings.storage.url == "postgresql://gateway:x@db:5432/gateway"
    for spec in SERVICES.values():
        args = _parser().parse_args(spec["command"][1:])  # exits on an unknown command or flag
        assert admin_exposure(config.settings.admin, config.settings.server, getattr(args, "host", None)) is None


def environment(spec: dict[str, Any], database: str, data: Path, port: int) -> dict[str, str]:
    """The service's environment as compose gives it (required variables set), its database on this machine."""
    given = {"DB_PASSWORD": "unused-with-trust", "GATEWAY_ADMIN_TOKEN": "admin-token-0123456789abcdef"}
    given |= {"MONCRENEAU_WEBHOOK_SECRET": "mc-secret-current", "YAPP_WEBHOOK_SECRET": "yapp-secret"}
    resolved = {}
    for name, value in spec["environment"].items():
        variable = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", value)
        assert variable is not None, f"{name}: compose requires it from the environment"
        resolved[name] = given[variable.group(1)]
    url = urlsplit(database)
    location = {"DB_HOST": url.hostname, "DB_PORT": str(url.port), "DB_USER": url.username, "DB_NAME": url.path[1:]}
    return {
        **os.environ,
        **resolved,
        **{key: str(value) for key, value in location.items()},
        "GATEWAY_CONFIG": str(ROOT / "deploy" / "config.yaml"),
        "GATEWAY_DATA": str(data),
        "GATEWAY_PORT": str(port),
    }


def command(spec: dict[str, Any], port: int) -> list[str]:
    argv = [sys.executable, "-m", "gateway", *spec["command"][1:]]
    return [str(port) if part == "8080" else part for part in argv]  # the worker's probe port, as published


@pytest.mark.fault
def test_each_compose_service_starts_with_its_own_command_and_they_deliver_together(tmp_path: Path) -> None:
    with postgres_database() as database:
        ingest_port, worker_port = free_port(), free_port()
        ingest_env = environment(SERVICES["ingest-1"], database, tmp_path, ingest_port)
        migrated = subprocess.run(
            command(SERVICES["migrate"], 0), env=ingest_env, capture_output=True, text=True, timeout=60
        )
        assert migrated.returncode == 0, migrated.stderr
        worker_env = environment(SERVICES["worker"], database, tmp_path, worker_port)
        with (
            healthy_process(
                command(SERVICES["ingest-1"], ingest_port), ingest_port, tmp_path / "ingest.log", ingest_env
            ),
            healthy_process(command(SERVICES["worker"], worker_port), worker_port, tmp_path / "worker.log", worker_env),
        ):
            raw, headers = signed(1)
            posted = httpx.post(f"http://127.0.0.1:{ingest_port}/webhooks/moncreneau", content=raw, headers=headers)
            assert posted.status_code == 202, posted.text
            journal = tmp_path / "events.jsonl"
            deadline = time.monotonic() + 20
            while not (journal.exists() and journal.read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert json.loads(journal.read_text())["event"]["provider_event_id"] == "evt_1"
            assert httpx.get(f"http://127.0.0.1:{worker_port}/readyz").json() == {"status": "ready"}
            scraped = httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text
            assert 'gateway_delivery_attempts_total{outcome="succeeded",sink="journal"} 1.0' in scraped
            refused = httpx.get(f"http://127.0.0.1:{ingest_port}/admin/v1/events")
            assert refused.status_code == 401  # served beyond loopback, with the token compose requires


def test_the_example_configurations_header_commands_run_as_written(tmp_path: Path) -> None:
    header = [line for line in (ROOT / "config.example.yaml").read_text().splitlines() if line.startswith("#   ")]
    check = next(line for line in header if "check-config" in line)
    argv = check.removeprefix("#   ").split("   (")[0].split()
    assert argv[:3] == ["appointment-gateway", "--config", "config.example.yaml"]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_WEBHOOK_SECRET")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "warning: placeholder secrets, replace them before going live: sources.moncreneau.secrets.0" in done.stdout
