"""The operator console at /console: server-rendered pages over the same operations as the admin API and the CLI.

One view module per page family (overview, events, dead letters, sinks, test event, sign-in); `pages` holds what
they share. It is served while the admin API is (admin.enabled and console.enabled), under the same rule: with no
admin.token, from loopback only (config checks refuse to serve it elsewhere).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.console import dead_letters, events, overview, sign_in, sinks, test_event
from gateway.console.masking import masked
from gateway.console.pages import PREFIX, Screen
from gateway.console.sessions import Sessions
from gateway.ingest import Ingest
from gateway.logs import redact
from gateway.operations import Operations


def console_routes(settings: GatewayConfig, operations: Operations, ingest: Ingest, clock: Clock) -> list[BaseRoute]:
    console = settings.console
    screen = Screen(
        Sessions(settings.admin.token, clock, lifetime=console.session_lifetime),
        ZoneInfo(console.timezone),
        settings.server.trusted_proxies,
    )
    screen.templates.filters["masked"] = masked if settings.logging.redact else str
    screen.templates.filters["redacted"] = redact if settings.logging.redact else str  # a sink's error text
    pages = [
        *overview.routes(screen, operations),
        *events.routes(screen, operations),
        *dead_letters.routes(screen, operations),
        *sinks.routes(screen, operations),
        *test_event.routes(screen, operations, ingest),
        *sign_in.routes(screen),
        Mount("/static", StaticFiles(packages=[("gateway.console", "static")]), name="static"),
    ]
    return [Mount(PREFIX, routes=pages)]
