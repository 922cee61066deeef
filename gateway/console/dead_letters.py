"""Dead letters: filter them, retry or discard one, and replay many after a dry run says how many."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.console.events import filters
from gateway.console.pages import PREFIX, Form, Page, Screen, notice, within_console
from gateway.operations import DeadLetterFilter, DeadLetterReplay, Operations, parse

FILTERS = ("sink", "source", "type", "since", "until")


def routes(screen: Screen, operations: Operations) -> list[Route]:
    async def dead_letters(request: Request) -> Page:
        query = filters(request.query_params, screen.zone, FILTERS)
        if cursor := request.query_params.get("cursor"):
            query["cursor"] = cursor
        listed = await operations.list_dead_letters(parse(DeadLetterFilter, query))
        return Page("dead_letters.html", {**listed, "sinks": operations.sinks, "sources": operations.sources})

    async def preview(request: Request) -> Page:
        """The dry run: how many dead letters the replay would queue again, and the button that does it."""
        chosen = filters(request.query_params, screen.zone, FILTERS)
        counted = await operations.replay_dead_letters(parse(DeadLetterReplay, {**chosen, "dry_run": True}))
        return Page("dead_letters_replay.html", {"matched": counted["matched"], "chosen": chosen})

    async def replay(request: Request, form: Form) -> str:
        chosen = filters(form, screen.zone, FILTERS)
        done = await operations.replay_dead_letters(parse(DeadLetterReplay, chosen))
        return notice(f"{PREFIX}/dead-letters", "requeued", done["requeued"])

    async def retry(request: Request, form: Form) -> str:
        await operations.retry_dead_letter(request.path_params["delivery_id"])
        return notice(within_console(form.get("back"), f"{PREFIX}/dead-letters"), "requeued", 1)

    async def discard(request: Request, form: Form) -> str:
        await operations.discard_dead_letter(request.path_params["delivery_id"])
        return notice(within_console(form.get("back"), f"{PREFIX}/dead-letters"), "discarded")

    return [
        Route("/dead-letters", screen.page(dead_letters), methods=["GET"]),
        Route("/dead-letters/replay", screen.page(preview), methods=["GET"]),
        Route("/dead-letters/replay", screen.action(replay), methods=["POST"]),
        Route("/dead-letters/{delivery_id}/retry", screen.action(retry), methods=["POST"]),
        Route("/dead-letters/{delivery_id}/discard", screen.action(discard), methods=["POST"]),
    ]
