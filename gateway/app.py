"""The ASGI application: the webhook endpoint, and a lifespan that runs the store, the sinks and the worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.admin import admin_routes
from gateway.alerts import Alerts
from gateway.clock import Clock, SystemClock
from gateway.config import Config
from gateway.console import console_routes
from gateway.delivery import Lane, StoreState, Worker
from gateway.exceptions import StorageError
from gateway.ingest import Ingest
from gateway.ingress import Guard
from gateway.metrics import Metrics
from gateway.operations import Operations, Purge
from gateway.routing import Router
from gateway.store import store_for
from gateway.store.base import Store
from gateway.webhooks import Webhooks, webhook_source

logger = logging.getLogger(__name__)


def build_worker(config: Config, store: Store, clock: Clock, metrics: Metrics | None = None) -> Worker:
    settings = config.settings
    lanes = {
        name: Lane(
            sink=sink,
            retry=settings.sinks[name].retry,
            concurrency=settings.sinks[name].concurrency,
            timeout=settings.sinks[name].timeout,
            circuit=settings.sinks[name].circuit,
            rate_limit=settings.sinks[name].rate_limit,
            quiet_hours=settings.sinks[name].quiet_hours,
            fallback=settings.sinks[name].fallback,
            skip_no_recipient=settings.sinks[name].on_no_recipient == "skip",
        )
        for name, sink in config.sinks.items()
    }
    metrics = metrics or Metrics(clock)
    alerts = Alerts(store, Router(settings.routes), clock, metrics, debounce=settings.alerts.debounce)
    worker = Worker(
        store,
        lanes,
        clock=clock,
        poll_interval=settings.worker.poll_interval,
        lease=settings.worker.lease,
        shutdown_grace=settings.worker.shutdown_grace,
        metrics=metrics,
        alerts=alerts,
        backlog_late_after=settings.alerts.backlog_late_after,
    )
    alerts.on_stored = worker.wake
    return worker


def withdrawing(config: Config) -> list[str]:
    """The sinks whose stale messages are withdrawn: as `supersede` says, else as the sink's kind does."""
    return [
        name
        for name, sink in config.sinks.items()
        if (config.settings.sinks[name].supersede is None and sink.withdraws_stale)
        or config.settings.sinks[name].supersede
    ]


def build_operations(config: Config, store: Store, clock: Clock, worker: Worker) -> Operations:
    retention = config.settings.retention
    return Operations(
        store,
        clock,
        retention=retention.max_age,
        tombstones=retention.tombstones,
        wake=worker.wake,
        sinks=list(config.sinks),
        sources=list(config.sources),
        circuits=worker.circuit_states,
        traffic=worker.metrics.traffic,
        alerts=worker.alerts,
    )


@asynccontextmanager
async def running(config: Config, store: Store, worker: Worker, *, deliver: bool = True) -> AsyncIterator[None]:
    """The store open, the sinks open, old events purged periodically, and (unless `deliver` is false) the worker
    delivering, for as long as the block runs."""
    await store.open()
    try:
        async with AsyncExitStack() as sinks:
            for sink in config.sinks.values():
                await sink.open()
                sinks.push_async_callback(sink.aclose)
            async with anyio.create_task_group() as delivering:
                if deliver:
                    await delivering.start(worker.run)
                async with anyio.create_task_group() as housekeeping:
                    operations = build_operations(config, store, worker.clock, worker)
                    housekeeping.start_soon(_purge_periodically, config, operations)
                    housekeeping.start_soon(worker.metrics.traffic.run, store)
                    try:
                        yield
                    finally:
                        housekeeping.cancel_scope.cancel()
                        worker.stop()  # in-flight attempts get the grace period, outside the cancelled scope
    finally:
        await store.close()


async def _purge_periodically(config: Config, operations: Operations) -> None:
    """Retention: every `retention.interval`, delete what is older than `retention.max_age`, batch by batch."""
    retention = config.settings.retention
    while True:
        await anyio.sleep(retention.interval)
        try:
            purged = await operations.purge(Purge(), batch=retention.batch)
        except StorageError as error:
            logger.error("retention purge failed (it will be tried again): %s", error)
            continue
        if purged["deleted"]:
            logger.info("retention purge deleted %d events older than %gs", purged["deleted"], retention.max_age)


class GatewayApp(Starlette):
    """The Starlette application, with webhook posts answered ahead of its middleware and router."""

    webhooks: Webhooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (source := webhook_source(scope)) is not None:
            await self.webhooks(scope, receive, send, source)
        else:
            await super().__call__(scope, receive, send)


def probe_routes(
    config: Config, store: Store, worker: Worker, metrics: Metrics, clock: Clock, *, with_worker: bool
) -> list[Route]:
    """/healthz, /readyz and /metrics: served by `serve`, and by `worker --port` for its own probes and scrapes."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        problems = []
        try:
            await store.ping()
        except StorageError as error:
            problems.append(f"storage: {error}")
        if with_worker and not worker.running:
            problems.append("worker: not running")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, 503)
        return JSONResponse({"status": "ready"})

    async def prometheus(request: Request) -> Response:
        try:
            stats, paused = await store.sink_stats(list(config.sinks), now=clock.now()), await store.paused_sinks()
            metrics.observe_queues(config.sinks, stats, paused)
            metrics.storage_up.set(1)
        except StorageError as error:
            logger.warning("metrics: cannot read the queues: %s", error)
            metrics.storage_up.set(0)
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]


def create_app(
    config: Config, *, store: Store | None = None, clock: Clock | None = None, run_worker: bool | None = None
) -> GatewayApp:
    clock = clock or SystemClock()
    store = store or store_for(config.settings.storage)
    metrics = Metrics(clock)
    worker = build_worker(config, store, clock, metrics)
    operations = build_operations(config, store, clock, worker)
    ingest = Ingest(
        config.sources,
        Router(config.settings.routes),
        store,
        clock=clock,
        metrics=metrics,
        deliverer=worker,
        withdrawing=withdrawing(config),
    )
    server = config.settings.server
    guards = {
        name: Guard(source.options.allow_ips, source.options.rate_limit, server.trusted_proxies, clock)
        for name, source in config.sources.items()
    }
    with_worker = config.settings.worker.enabled if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(config, store, worker, deliver=with_worker):
            yield

    app = GatewayApp(
        routes=[
            *probe_routes(config, store, worker, metrics, clock, with_worker=with_worker),
            *(admin_routes(operations, config.settings.admin.token) if config.settings.admin.enabled else []),
            *(
                console_routes(config.settings, operations, ingest, clock)
                if config.settings.admin.enabled and config.settings.console.enabled
                else []
            ),
            *(route for name, sink in config.sinks.items() for route in sink.routes(StoreState(store, name, clock))),
        ],
        lifespan=lifespan,
    )
    app.webhooks = Webhooks(
        ingest, guards, metrics, max_body_bytes=server.max_body_bytes, read_timeout=server.read_timeout
    )
    app.state.config = config
    app.state.store = store
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.operations = operations
    return app
