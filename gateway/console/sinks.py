"""The sinks: running, paused or failing (circuit open), their queues; pause and resume."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.console.pages import PREFIX, Form, Page, Screen, notice
from gateway.operations import Operations, Pause, parse


def routes(screen: Screen, operations: Operations) -> list[Route]:
    async def sinks(request: Request) -> Page:
        return Page("sinks.html", await operations.list_sinks())

    async def pause(request: Request, form: Form) -> str:
        reason = form.get("reason", "").strip() or None
        await operations.pause_sink(request.path_params["sink"], parse(Pause, {"reason": reason}))
        return notice(f"{PREFIX}/sinks", "paused")

    async def resume(request: Request, form: Form) -> str:
        await operations.resume_sink(request.path_params["sink"])
        return notice(f"{PREFIX}/sinks", "resumed")

    return [
        Route("/sinks", screen.page(sinks), methods=["GET"]),
        Route("/sinks/{sink}/pause", screen.action(pause), methods=["POST"]),
        Route("/sinks/{sink}/resume", screen.action(resume), methods=["POST"]),
    ]
