"""The admin API (JSON under /admin/v1): events, replay, dead letters and purge, behind a bearer token.

Its OpenAPI document is built from the same parameter models the endpoints validate with, so it cannot drift.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.exceptions import StorageError
from gateway.operations import (
    DeadLetterFilter,
    DeadLetterReplay,
    EventFilter,
    OperationError,
    Operations,
    Params,
    Pause,
    Purge,
    Replay,
    parse,
)

PREFIX = "/admin/v1"
Handler = Callable[[Request, Operations], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    query: type[Params] | None = None
    body: type[Params] | None = None


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise OperationError(400, "invalid_json", "the request body is not JSON") from None


ENDPOINTS = (
    Endpoint(
        "GET",
        "/events",
        "List events, newest first, filtered and paginated",
        lambda r, ops: ops.list_events(parse(EventFilter, dict(r.query_params))),
        query=EventFilter,
    ),
    Endpoint(
        "GET",
        "/events/{event_id}",
        "One event: canonical form, raw body, headers, deliveries and every attempt",
        lambda r, ops: ops.show_event(r.path_params["event_id"]),
    ),
    Endpoint(
        "GET",
        "/appointments/{source}/{appointment_id}",
        "An appointment's timeline: its events, every message with its status, its reminders pending and withdrawn",
        lambda r, ops: ops.show_appointment(r.path_params["source"], r.path_params["appointment_id"]),
    ),
    Endpoint(
        "POST",
        "/events/{event_id}/replay",
        "Queue an event's finished deliveries again (all, or one sink's)",
        lambda r, ops: _replay(r, ops),
        body=Replay,
    ),
    Endpoint(
        "GET",
        "/dead-letters",
        "List dead letters, most recent first",
        lambda r, ops: ops.list_dead_letters(parse(DeadLetterFilter, dict(r.query_params))),
        query=DeadLetterFilter,
    ),
    Endpoint(
        "POST",
        "/dead-letters/replay",
        "Queue matching dead letters again, or count them (dry_run)",
        lambda r, ops: _replay_dead_letters(r, ops),
        body=DeadLetterReplay,
    ),
    Endpoint(
        "POST",
        "/dead-letters/{delivery_id}/retry",
        "Queue one dead letter again",
        lambda r, ops: ops.retry_dead_letter(r.path_params["delivery_id"]),
    ),
    Endpoint(
        "DELETE",
        "/dead-letters/{delivery_id}",
        "Discard one dead letter",
        lambda r, ops: ops.discard_dead_letter(r.path_params["delivery_id"]),
    ),
    Endpoint(
        "GET",
        "/overview",
        "Webhooks acknowledged and refused per source (last hour and day), the sinks (as /sinks), recent failures",
        lambda r, ops: ops.overview(),
    ),
    Endpoint(
        "GET",
        "/sinks",
        "Every sink: running or paused (and why), circuit, queue depth, due, oldest due, dead letters, attempts and "
        "success rate over the last hour",
        lambda r, ops: ops.list_sinks(),
    ),
    Endpoint(
        "POST",
        "/sinks/{sink}/pause",
        "Pause a sink: no process attempts its deliveries (within a second); they wait, spending no attempt",
        lambda r, ops: _pause(r, ops),
        body=Pause,
    ),
    Endpoint(
        "POST",
        "/sinks/{sink}/resume",
        "Resume a sink: its deliveries are attempted again, in order",
        lambda r, ops: ops.resume_sink(r.path_params["sink"]),
    ),
    Endpoint(
        "POST",
        "/purge",
        "Delete events older than the retention (or older_than) whose deliveries are finished",
        lambda r, ops: _purge(r, ops),
        body=Purge,
    ),
)


async def _replay(request: Request, operations: Operations) -> dict[str, Any]:
    return await operations.replay(request.path_params["event_id"], parse(Replay, await _body(request)))


async def _replay_dead_letters(request: Request, operations: Operations) -> dict[str, Any]:
    return await operations.replay_dead_letters(parse(DeadLetterReplay, await _body(request)))


async def _pause(request: Request, operations: Operations) -> dict[str, Any]:
    return await operations.pause_sink(request.path_params["sink"], parse(Pause, await _body(request)))


async def _purge(request: Request, operations: Operations) -> dict[str, Any]:
    return await operations.purge(parse(Purge, await _body(request)))


def from_another_site(request: Request) -> str | None:
    """Why the request looks sent by a web page of another site (cross-site request forgery), else None: its
    Origin is not this host, or the browser marks it cross-site. The admin API and the console refuse those."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        return f"requests from {origin[:100]} are refused"
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "cross-site requests are refused"
    return None


def browser_refusal(request: Request) -> JSONResponse | None:
    """Refuse what a web page on another site could make a browser send: a request from another site, and a POST
    that is not JSON (a form or a `text/plain` fetch needs no CORS preflight; `application/json` does, and the
    gateway answers none)."""
    if (foreign := from_another_site(request)) is not None:
        return _refused(403, "cross_origin", f"{foreign}: the admin API is no page")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and media != "application/json":
        return _refused(415, "unsupported_media_type", "send Content-Type: application/json (even with no body)")
    return None


def _refused(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status)


def admin_routes(operations: Operations, token: str | None) -> list[Route]:
    """The admin endpoints, each refusing requests without the bearer token (when one is set) and requests a
    browser could have been made to send from another site."""
    expected = f"Bearer {token}".encode() if token else None

    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def respond(request: Request) -> Response:
            if expected is not None:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return JSONResponse(
                        {"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"},
                        401,
                        headers={"WWW-Authenticate": 'Bearer realm="appointment-gateway admin"'},
                    )
            if (refusal := browser_refusal(request)) is not None:
                return refusal
            try:
                return JSONResponse(await handler(request, operations))
            except OperationError as error:
                return JSONResponse({"error": error.reason, "detail": error.detail}, error.status_code)
            except StorageError as error:
                return JSONResponse({"error": "storage_unavailable", "detail": str(error)}, 503)

        return respond

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    routes = [Route(PREFIX + e.path, endpoint(e.handler), methods=[e.method]) for e in ENDPOINTS]
    return [*routes, Route(f"{PREFIX}/openapi.json", openapi, methods=["GET"])]


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the admin API, from the endpoints' own parameter models."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for e in ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": e.summary,
            "security": [{"bearer": []}],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_parameters(e.path)
            ],
            "responses": {
                "200": {"description": "Done", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{
                    code: {"description": text, "content": {"application/json": {"schema": error}}}
                    for code, text in (
                        ("400", "Invalid parameters or body"),
                        ("401", "Missing or wrong bearer token"),
                        ("404", "Unknown id"),
                        ("409", "Nothing to do in the current state"),
                        ("503", "Storage unavailable"),
                    )
                },
            },
        }
        if e.query is not None:
            for name, schema in e.query.model_json_schema()["properties"].items():
                operation["parameters"].append({"name": name, "in": "query", "required": False, "schema": schema})
        if e.body is not None:
            schemas[e.body.__name__] = e.body.model_json_schema()
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.body.__name__}"}}},
            }
        paths.setdefault(PREFIX + e.path, {})[e.method.lower()] = operation
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "appointment-gateway admin API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
