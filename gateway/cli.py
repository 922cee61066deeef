"""`appointment-gateway` (also `python -m gateway`): serve, worker, check-config, send-test-event."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import httpx
import uvicorn

from gateway.clock import SystemClock
from gateway.config import Config, load_config
from gateway.events import AppointmentEvent
from gateway.exceptions import ConfigError, StorageError
from gateway.plugins import plugin_manager
from gateway.routing import Router

CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, plugin_manager())
    except ConfigError as error:
        print(error, file=sys.stderr)
        return CONFIG_ERROR
    result: int = args.command(config, args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appointment-gateway", description=__doc__)
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("GATEWAY_CONFIG", "config.yaml"),
        help="YAML configuration file (default: $GATEWAY_CONFIG or config.yaml)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="receive webhooks (and deliver them, unless --no-worker)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--no-worker", action="store_true", help="ingest only; run `worker` processes to deliver")
    serve.set_defaults(command=_serve)

    worker = commands.add_parser("worker", help="deliver stored events, without receiving webhooks")
    worker.set_defaults(command=_worker)

    migrate = commands.add_parser("migrate", help="bring the database schema to this gateway's version")
    migrate.set_defaults(command=_migrate)

    check = commands.add_parser("check-config", help="validate the configuration and print what it sets up")
    check.set_defaults(command=_check_config)

    test = commands.add_parser("send-test-event", help="sign a sample event as the provider would and post it")
    test.add_argument("source", help="a configured source name, e.g. moncreneau")
    test.add_argument("type", help="the provider's event type, e.g. appointment.created or booking.created")
    test.add_argument("--url", help="the gateway's base URL (default: from server.host and server.port)")
    test.set_defaults(command=_send_test_event)
    return parser


def _serve(config: Config, args: argparse.Namespace) -> int:
    from gateway.app import create_app

    server = config.settings.server
    app = create_app(config, run_worker=False if args.no_worker else None)
    uvicorn.run(
        app,
        host=args.host or server.host,
        port=args.port or server.port,
        log_level="info",
        timeout_graceful_shutdown=int(config.settings.worker.shutdown_grace) + 5,
    )
    return 0


def _worker(config: Config, args: argparse.Namespace) -> int:
    from gateway.app import build_worker, running
    from gateway.store import store_for

    async def work() -> None:
        store = store_for(config.settings.storage)
        worker = build_worker(config, store, SystemClock())
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with running(config, store, worker):
                async for received in signals:
                    logging.getLogger(__name__).info("%s received: stopping the worker", signal.Signals(received).name)
                    return

    try:
        anyio.run(work)
    except StorageError as error:
        print(f"storage: {error}", file=sys.stderr)
        return 1
    return 0


def _migrate(config: Config, args: argparse.Namespace) -> int:
    from gateway.store import store_for

    store = store_for(config.settings.storage)

    async def migrate() -> list[str]:
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = anyio.run(migrate)
    except StorageError as error:
        print(f"storage: {error}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
    return 0


def _check_config(config: Config, args: argparse.Namespace) -> int:
    settings = config.settings
    print(f"{config.path}: OK")
    for name, source in config.sources.items():
        print(f"  source {name}: {source.type_name} at POST /webhooks/{name} ({len(source.options.secrets)} secret(s))")
    for name, sink in config.sinks.items():
        spec = settings.sinks[name]
        print(f"  sink {name}: {sink.type_name}, concurrency {spec.concurrency}, timeout {spec.timeout:g}s")
    for index, route in enumerate(settings.routes):
        sources = ", ".join(route.sources) if route.sources else "any source"
        print(f"  route {route.name or index}: {sources}, {', '.join(route.events)} -> {', '.join(route.sinks)}")
    unrouted = sorted(set(config.sinks) - {sink for route in settings.routes for sink in route.sinks})
    if unrouted:
        print(f"  warning: no route delivers to {', '.join(unrouted)}")
    routed: dict[str, list[tuple[AppointmentEvent, str | None]]] = {name: [] for name in config.sinks}
    router = Router(settings.routes)
    for event in _sample_events(config):
        for target in router.targets(event):
            routed[target.sink].append((event, target.locale))
    for name, sink in config.sinks.items():
        for problem in sink.check(routed[name]):
            print(f"  warning: sink {name}: {problem}")
    return 0


def _sample_events(config: Config) -> list[AppointmentEvent]:
    """Every configured source's sample bodies, mapped: what check-config tries the sinks on."""
    events = []
    now = datetime.now(UTC)
    for source in config.sources.values():
        for event_type in source.sample_types():
            body = source.sample(event_type, event_id=f"evt_check_{event_type}", occurred_at=now)
            event = source.parse(body, {}, event_id="check", received_at=now).event
            if event is not None:
                events.append(event)
    return events


def _send_test_event(config: Config, args: argparse.Namespace) -> int:
    source = config.sources.get(args.source)
    if source is None:
        print(f"no source named {args.source!r}; configured: {', '.join(config.sources) or 'none'}", file=sys.stderr)
        return CONFIG_ERROR
    try:
        body = source.sample(args.type, event_id=f"evt_test_{uuid.uuid4().hex[:16]}", occurred_at=datetime.now(UTC))
    except KeyError as error:
        print(error.args[0], file=sys.stderr)
        return CONFIG_ERROR
    raw = json.dumps(body).encode()
    headers = source.signed_headers(raw, args.type)
    server = config.settings.server
    base = args.url or f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    url = f"{base.rstrip('/')}/webhooks/{args.source}"
    try:
        response = httpx.post(url, content=raw, headers=headers, timeout=10.0)
    except httpx.HTTPError as error:
        print(f"POST {url} failed: {error}", file=sys.stderr)
        return 1
    print(f"POST {url} -> {response.status_code} {response.text}")
    return 0 if response.is_success else 1
