"""`appointment-gateway` (also `python -m gateway`): receive webhooks, deliver them, and operate the gateway."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from gateway.clock import SystemClock
from gateway.config import PLACEHOLDER, Config, admin_exposure, load_config, secret_keys, secret_values
from gateway.events import AppointmentEvent
from gateway.exceptions import ConfigError, StorageError
from gateway.http_protocol import GuardedHttpToolsProtocol, Limits, connections_allowed
from gateway.logs import configure_logging
from gateway.metrics import SHARED_DIRECTORY
from gateway.operations import (
    DeadLetterFilter,
    DeadLetterReplay,
    EventFilter,
    OperationError,
    Operations,
    P,
    Params,
    Pause,
    Purge,
    Replay,
    parse,
)
from gateway.plugins import installed, plugin_manager, sink_types, source_types
from gateway.reminders import reminder_event
from gateway.routing import Router
from gateway.scaffold import new_plugin
from gateway.sources.base import test_request

if TYPE_CHECKING:
    from gateway.app import GatewayApp

CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.without_config:  # what is installed, whatever the configuration
        listed: int = args.command(args)
        return listed
    try:
        config = _configured(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return CONFIG_ERROR
    result: int = args.command(config, args)
    return result


def _configured(path: str) -> Config:
    """The configuration at `path`, with logging set up as it says."""
    config = load_config(path, plugin_manager())
    settings = config.settings.logging
    configure_logging(
        format=settings.format,
        level=os.environ.get("GATEWAY_LOG_LEVEL", settings.level),
        redacted=settings.redact,
        secrets=secret_values(config.settings),
        libraries=settings.libraries,
    )
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appointment-gateway", description=__doc__)
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("GATEWAY_CONFIG", "config.yaml"),
        help="YAML configuration file (default: $GATEWAY_CONFIG or config.yaml)",
    )
    parser.set_defaults(without_config=False)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="receive webhooks (and deliver them, unless --no-worker)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--processes", type=int, help="override server.processes")
    serve.add_argument("--no-worker", action="store_true", help="ingest only; run `worker` processes to deliver")
    serve.set_defaults(command=_serve)

    worker = commands.add_parser("worker", help="deliver stored events, without receiving webhooks")
    worker.add_argument("--host", default="127.0.0.1", help="interface of --port (default 127.0.0.1)")
    worker.add_argument("--port", type=int, help="serve /healthz, /readyz and /metrics on this port")
    worker.set_defaults(command=_worker)

    migrate = commands.add_parser("migrate", help="bring the database schema to this gateway's version")
    migrate.set_defaults(command=_migrate)

    events = commands.add_parser("events", help="look up stored events").add_subparsers(required=True, metavar="ACTION")
    listing = events.add_parser("list", help="list events, newest first")
    _filters(listing, EventFilter)
    listing.set_defaults(command=_admin(lambda ops, a: ops.list_events(_params(EventFilter, a))))
    show = events.add_parser("show", help="one event with its deliveries and every attempt")
    show.add_argument("event_id")
    show.set_defaults(command=_admin(lambda ops, a: ops.show_event(a.event_id)))

    appointments = commands.add_parser("appointments", help="look up appointments").add_subparsers(
        required=True, metavar="ACTION"
    )
    timeline = appointments.add_parser("show", help="an appointment's events, messages and reminders")
    timeline.add_argument("source", help="the configured source, e.g. moncreneau")
    timeline.add_argument("appointment_id", help="the provider's appointment id")
    timeline.set_defaults(command=_admin(lambda ops, a: ops.show_appointment(a.source, a.appointment_id)))

    replay = commands.add_parser("replay", help="queue an event's finished deliveries again")
    replay.add_argument("event_id")
    replay.add_argument("--sink", help="only the delivery to this sink")
    replay.set_defaults(command=_admin(lambda ops, a: ops.replay(a.event_id, _params(Replay, a))))

    dead = commands.add_parser("dead-letters", help="dead letters").add_subparsers(required=True, metavar="ACTION")
    dead_list = dead.add_parser("list", help="list dead letters, most recent first")
    _filters(dead_list, DeadLetterFilter)
    dead_list.set_defaults(command=_admin(lambda ops, a: ops.list_dead_letters(_params(DeadLetterFilter, a))))
    dead_replay = dead.add_parser("replay", help="queue matching dead letters again")
    _filters(dead_replay, DeadLetterReplay)
    dead_replay.set_defaults(command=_admin(lambda ops, a: ops.replay_dead_letters(_params(DeadLetterReplay, a))))
    retry = dead.add_parser("retry", help="queue one dead letter again")
    retry.add_argument("delivery_id")
    retry.set_defaults(command=_admin(lambda ops, a: ops.retry_dead_letter(a.delivery_id)))
    discard = dead.add_parser("discard", help="discard one dead letter")
    discard.add_argument("delivery_id")
    discard.set_defaults(command=_admin(lambda ops, a: ops.discard_dead_letter(a.delivery_id)))

    sinks = commands.add_parser("sinks", help="sinks: state and queues; pause, resume")
    sink_actions = sinks.add_subparsers(required=True, metavar="ACTION")
    listed = sink_actions.add_parser(
        "list", help="every sink: running or paused, queue depth, due, dead letters, success rate over the last hour"
    )
    listed.set_defaults(command=_admin(lambda ops, a: ops.list_sinks()))
    pause = sink_actions.add_parser("pause", help="stop attempting a sink's deliveries (every process, within 1 s)")
    pause.add_argument("sink")
    pause.add_argument("--reason", help="why, for the other operators")
    pause.set_defaults(command=_admin(lambda ops, a: ops.pause_sink(a.sink, _params(Pause, a))))
    resume = sink_actions.add_parser("resume", help="attempt a paused sink's deliveries again, in order")
    resume.add_argument("sink")
    resume.set_defaults(command=_admin(lambda ops, a: ops.resume_sink(a.sink)))

    purge = commands.add_parser("purge", help="delete events older than the retention whose deliveries are done")
    purge.add_argument("--older-than", help="a duration such as 30d (default: retention.max_age)")
    purge.set_defaults(command=_admin(lambda ops, a: ops.purge(_params(Purge, a))))

    scaffold = commands.add_parser("new-plugin", help="write a plugin package that passes its test as generated")
    scaffold.add_argument("name", help="the sink or source type name, e.g. chat")
    scaffold.add_argument("--kind", choices=["sink", "source"], required=True)
    scaffold.add_argument("--directory", default=".", help="where to write gateway-NAME/ (default: here)")
    scaffold.set_defaults(command=_new_plugin, without_config=True)

    plugins = commands.add_parser("plugins", help="the installed plugins, their distributions and what they register")
    plugins.set_defaults(command=_plugins, without_config=True)

    check = commands.add_parser("check-config", help="validate the configuration and print what it sets up")
    check.add_argument("--host", help="check as `serve --host H` would run (the admin API's exposure)")
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
    host = args.host or server.host
    if (exposed := admin_exposure(config.settings.admin, server, host)) is not None:
        print(f"{config.path}: {exposed}", file=sys.stderr)
        return CONFIG_ERROR
    processes = server.processes if args.processes is None else args.processes
    if processes < 1:
        print(f"--processes {processes}: serve needs at least one process", file=sys.stderr)
        return CONFIG_ERROR
    options: dict[str, Any] = {
        "host": host,
        "port": args.port or server.port,
        "log_level": config.settings.logging.level.lower(),
        "access_log": False,  # the gateway logs one line per webhook itself, with more to say
        "proxy_headers": False,  # X-Forwarded-For is read by the gateway itself, from server.trusted_proxies only
        "timeout_graceful_shutdown": int(config.settings.worker.shutdown_grace) + 5,
        "log_config": None,  # uvicorn's loggers go through ours: JSON, redacted
        "http": GuardedHttpToolsProtocol,  # header timeout and size, connections bounded
    }
    if processes == 1:
        _bound_connections(config)
        app = create_app(config, run_worker=False if args.no_worker else None)
        _collect_less()
        uvicorn.run(app, **options)
        return 0
    # uvicorn's supervisor: one listening socket, the processes spawned on it, restarted when one dies
    os.environ[SERVED_CONFIG], os.environ[SERVED_WITHOUT_WORKER] = str(config.path.absolute()), str(args.no_worker)
    settings = uvicorn.Config(f"{__name__}:{served_app.__name__}", factory=True, workers=processes, **options)
    with tempfile.TemporaryDirectory(prefix="appointment-gateway-metrics-") as metrics:
        os.environ[SHARED_DIRECTORY] = metrics  # counted by every process, scraped from any
        supervisor = Multiprocess(settings, sockets=[settings.bind_socket()])
        supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0  # as uvicorn exits when its one process cannot start


SERVED_CONFIG, SERVED_WITHOUT_WORKER = "GATEWAY_SERVED_CONFIG", "GATEWAY_SERVED_WITHOUT_WORKER"


def served_app() -> GatewayApp:
    """The application one of `serve --processes N`'s processes runs: spawned, it reads the configuration again."""
    from gateway.app import create_app

    config = _configured(os.environ[SERVED_CONFIG])
    _bound_connections(config)
    app = create_app(config, run_worker=False if os.environ[SERVED_WITHOUT_WORKER] == "True" else None)
    _collect_less()
    return app


def _bound_connections(config: Config) -> None:
    """This process's HTTP limits (uvicorn builds its protocol objects itself, in each serving process)."""
    server = config.settings.server
    GuardedHttpToolsProtocol.limits = Limits(
        header_timeout=server.header_timeout,
        max_header_bytes=server.max_header_bytes,
        max_connections=connections_allowed(server.max_connections),
    )


def _collect_less() -> None:
    """What is built by start-up (modules, configuration, the app) lives as long as the process: frozen, a full
    garbage collection no longer walks it; and young collections run every 50,000 allocations instead of 700. With
    Python's defaults, collections paused webhooks under load: bench p99 45 ms, 27 ms after this, 4% more taken."""
    gc.freeze()
    gc.set_threshold(50_000)


def _worker(config: Config, args: argparse.Namespace) -> int:
    from gateway.app import build_worker, probe_routes, running
    from gateway.metrics import Metrics
    from gateway.store import store_for

    async def work() -> None:
        store, clock, metrics = store_for(config.settings.storage), SystemClock(), Metrics()
        worker = build_worker(config, store, clock, metrics)
        probes = None
        if args.port is not None:
            app = Starlette(routes=probe_routes(config, store, worker, metrics, clock, with_worker=True))
            probes = _ProbeServer(uvicorn.Config(app, host=args.host, port=args.port, log_config=None, lifespan="off"))
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with running(config, store, worker), anyio.create_task_group() as serving:
                if probes is not None:
                    serving.start_soon(probes.serve)
                async for received in signals:
                    logging.getLogger(__name__).info("%s received: stopping the worker", signal.Signals(received).name)
                    if probes is not None:
                        probes.should_exit = True
                    return

    _collect_less()
    try:
        anyio.run(work, backend_options={"use_uvloop": importlib.util.find_spec("uvloop") is not None})
    except StorageError as error:
        print(f"storage: {error}", file=sys.stderr)
        return 1
    return 0


class _ProbeServer(uvicorn.Server):
    """uvicorn serving the worker's probes inside its event loop; the worker handles the signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


def _filters(parser: argparse.ArgumentParser, model: type[Params]) -> None:
    """One --option per field of the operation's parameter model (e.g. --since, --dry-run)."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", help=field.description)
        else:
            parser.add_argument(flag, help=field.description)


def _params(model: type[P], args: argparse.Namespace) -> P:
    given = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) not in (None, False)}
    return parse(model, given)


def _admin(
    action: Callable[[Operations, argparse.Namespace], Awaitable[dict[str, Any]]],
) -> Callable[[Config, argparse.Namespace], int]:
    """A CLI command running an admin operation against the configured store, printing its JSON answer."""

    def command(config: Config, args: argparse.Namespace) -> int:
        from gateway.app import build_operations, build_worker
        from gateway.store import store_for

        async def run() -> dict[str, Any]:
            store = store_for(config.settings.storage)
            await store.open()
            try:
                clock = SystemClock()
                return await action(build_operations(config, store, clock, build_worker(config, store, clock)), args)
            finally:
                await store.close()

        try:
            result = anyio.run(run)
        except OperationError as error:
            print(f"{error.reason}: {error.detail}", file=sys.stderr)
            return 1
        except StorageError as error:
            print(f"storage: {error}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0

    return command


def _new_plugin(args: argparse.Namespace) -> int:
    try:
        folder = new_plugin(args.name, args.kind, Path(args.directory))
    except ValueError as error:
        print(error, file=sys.stderr)
        return CONFIG_ERROR
    print(f"{folder}: pip install -e '{folder}[test]', then run its test (see its README.md)")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    manager = plugin_manager()
    try:
        sink_types(manager), source_types(manager)
    except ConfigError as error:  # two plugins claiming one type name
        print(error, file=sys.stderr)
        return CONFIG_ERROR
    print(json.dumps({"plugins": installed(manager)}, indent=2))
    return 0


def _check_config(config: Config, args: argparse.Namespace) -> int:
    settings = config.settings
    if (exposed := admin_exposure(settings.admin, settings.server, args.host)) is not None:
        print(f"{config.path}: {exposed}", file=sys.stderr)
        return CONFIG_ERROR
    print(f"{config.path}: OK")
    if placeholders := sorted({key for key, value in secret_keys(settings) if PLACEHOLDER.search(value)}):
        print(f"  warning: placeholder secrets, replace them before going live: {', '.join(placeholders)}")
    for name, source in config.sources.items():
        print(f"  source {name}: {source.type_name} at POST /webhooks/{name} ({len(source.options.secrets)} secret(s))")
    for name, sink in config.sinks.items():
        spec = settings.sinks[name]
        print(f"  sink {name}: {sink.type_name}, concurrency {spec.concurrency}, timeout {spec.timeout:g}s")
    for index, route in enumerate(settings.routes):
        sources = ", ".join(route.sources) if route.sources else "any source"
        reminders = f", reminders {', '.join(f'{before:g}s' for before in route.reminders)}" if route.reminders else ""
        targets = f"{', '.join(route.events)} -> {', '.join(route.sinks)}"
        print(f"  route {route.name or index}: {sources}, {targets}{reminders}")
    unrouted = sorted(set(config.sinks) - {sink for route in settings.routes for sink in route.sinks})
    if unrouted:
        print(f"  warning: no route delivers to {', '.join(unrouted)}")
    routed: dict[str, list[tuple[AppointmentEvent, str | None]]] = {name: [] for name in config.sinks}
    router = Router(settings.routes)
    for event in _sample_events(config):
        destinations = router.route(event)
        for target in destinations.targets:
            routed[target.sink].append((event, target.locale))
        for reminder in destinations.reminders if event.type == "appointment.created" else ():
            due_at = event.received_at.timestamp()
            sample = reminder_event(event, delivery_id="check", before=reminder.before, due_at=due_at)
            routed[reminder.sink].append((sample, reminder.locale))
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
        raw, headers = test_request(source, args.type, occurred_at=datetime.now(UTC))
    except KeyError as error:
        print(error.args[0], file=sys.stderr)
        return CONFIG_ERROR
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
