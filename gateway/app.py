"""The ASGI application: the webhook endpoint, and a lifespan that runs the store, the sinks and the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin import admin_routes
from gateway.clock import Clock, SystemClock
from gateway.config import Config
from gateway.delivery import Lane, StoreState, Worker
from gateway.exceptions import StorageError, WebhookRejected
from gateway.ingest import Ingest
from gateway.ingress import Guard, RateLimited
from gateway.metrics import Metrics
from gateway.operations import Operations, Purge
from gateway.routing import Router
from gateway.store import store_for
from gateway.store.base import Store

logger = logging.getLogger(__name__)


def build_worker(config: Config, store: Store, clock: Clock, metrics: Metrics | None = None) -> Worker:
    settings = config.settings
    lanes = {
        name: Lane(
            sink=sink,
            retry=settings.sinks[name].retry,
            concurrency=settings.sinks[name].concurrency,
            timeout=settings.sinks[name].timeout,
        )
        for name, sink in config.sinks.items()
    }
    return Worker(
        store,
        lanes,
        clock=clock,
        poll_interval=settings.worker.poll_interval,
        lease_margin=settings.worker.lease_margin,
        shutdown_grace=settings.worker.shutdown_grace,
        metrics=metrics,
    )


def build_operations(config: Config, store: Store, clock: Clock, worker: Worker) -> Operations:
    return Operations(store, clock, retention=config.settings.retention.max_age, wake=worker.wake)


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


def create_app(
    config: Config, *, store: Store | None = None, clock: Clock | None = None, run_worker: bool | None = None
) -> Starlette:
    clock = clock or SystemClock()
    store = store or store_for(config.settings.storage)
    metrics = Metrics()
    worker = build_worker(config, store, clock, metrics)
    operations = build_operations(config, store, clock, worker)
    ingest = Ingest(
        config.sources, Router(config.settings.routes), store, clock=clock, metrics=metrics, on_stored=worker.wake
    )
    server = config.settings.server
    guards = {
        name: Guard(source.options.allow_ips, source.options.rate_limit, server.trusted_proxies, clock)
        for name, source in config.sources.items()
    }
    with_worker = config.settings.worker.enabled if run_worker is None else run_worker

    async def receive_webhook(request: Request) -> Response:
        source = request.path_params["source"]
        if source not in config.sources:
            detail = f"no source named {source!r} is configured"
            return JSONResponse({"error": "unknown_source", "detail": detail}, 404)
        try:
            guards[source].check(request.client.host if request.client else None, request.headers)
            async with asyncio.timeout(server.read_timeout):  # cheaper than a cancel scope on this hot path
                body = await _read_body(request, server.max_body_bytes)
            ack = await ingest.receive(source, request.headers, body)
        except TimeoutError:
            metrics.webhooks.labels(source, "", "request_timeout").inc()
            detail = f"the body did not arrive within {server.read_timeout:g}s"
            return JSONResponse({"error": "request_timeout", "detail": detail}, 408, headers={"Connection": "close"})
        except WebhookRejected as rejected:
            metrics.webhooks.labels(source, "", rejected.reason).inc()
            logger.info(
                "webhook rejected",
                extra={
                    "source": source,
                    "outcome": rejected.reason,
                    "status": rejected.status_code,
                    "detail": rejected.detail,
                },
            )
            headers = {"Retry-After": str(rejected.retry_after)} if isinstance(rejected, RateLimited) else None
            return JSONResponse({"error": rejected.reason, "detail": rejected.detail}, rejected.status_code, headers)
        except StorageError as error:
            logger.error(
                "webhook not acknowledged: storage failed",
                extra={"source": source, "outcome": "storage_unavailable", "status": 503, "detail": str(error)},
            )
            metrics.webhooks.labels(source, "", "storage_unavailable").inc()
            return JSONResponse(
                {"error": "storage_unavailable", "detail": "the event could not be stored; retry later"},
                503,
                headers={"Retry-After": "30"},
            )
        return JSONResponse(ack.body, ack.status_code)

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
            metrics.observe_queues(config.sinks, await store.sink_stats(now=clock.now()))
            metrics.storage_up.set(1)
        except StorageError as error:
            logger.warning("metrics: cannot read the queues: %s", error)
            metrics.storage_up.set(0)
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(config, store, worker, deliver=with_worker):
            yield

    app = Starlette(
        routes=[
            Route("/webhooks/{source}", receive_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            *(admin_routes(operations, config.settings.admin.token) if config.settings.admin.enabled else []),
            *(route for name, sink in config.sinks.items() for route in sink.routes(StoreState(store, name, clock))),
        ],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.operations = operations
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(413, "body_too_large", f"the body is larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise WebhookRejected(413, "body_too_large", f"the body is larger than {limit} bytes")
    except ClientDisconnect:
        raise WebhookRejected(
            400, "client_disconnected", "the client went away before sending the whole body"
        ) from None
    return bytes(body)
