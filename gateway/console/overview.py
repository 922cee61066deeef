"""The overview: what came in per source, how each sink is doing, and what failed last. It refreshes itself."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.console.pages import Page, Screen
from gateway.operations import Operations


def routes(screen: Screen, operations: Operations) -> list[Route]:
    async def overview(request: Request) -> Page:
        return Page("overview.html", await operations.overview())

    return [Route("/", screen.page(overview), methods=["GET"], name="overview")]
