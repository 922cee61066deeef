"""Events: search and list them, read one (canonical form, raw body, headers, every attempt), replay it, and an
appointment's timeline."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.routing import Route

from gateway.console.pages import PREFIX, Form, Page, Problem, Screen, notice
from gateway.operations import EventFilter, Operations, Replay, parse

FILTERS = ("source", "type", "status", "appointment", "customer", "since", "until")


def routes(screen: Screen, operations: Operations) -> list[Route]:
    async def events(request: Request) -> Page:
        query = filters(request.query_params, screen.zone, FILTERS)
        query["limit"] = "50"
        if cursor := request.query_params.get("cursor"):
            query["cursor"] = cursor
        listed = await operations.list_events(parse(EventFilter, query))
        return Page("events.html", {**listed, "sources": operations.sources, "statuses": STATUSES})

    async def event(request: Request) -> Page:
        shown = await operations.show_event(request.path_params["event_id"])
        return Page("event.html", {"event": shown, "raw": formatted(shown)})

    async def replay(request: Request, form: Form) -> str:
        event_id = request.path_params["event_id"]
        done = await operations.replay(event_id, parse(Replay, {"sink": form.get("sink") or None}))
        return notice(f"{PREFIX}/events/{event_id}", "requeued", len(done["requeued"]))

    async def appointment(request: Request) -> Page:
        timeline = await operations.show_appointment(request.path_params["source"], request.path_params["id"])
        return Page("appointment.html", {"timeline": timeline})

    return [
        Route("/events", screen.page(events), methods=["GET"]),
        Route("/events/{event_id}", screen.page(event), methods=["GET"]),
        Route("/events/{event_id}/replay", screen.action(replay), methods=["POST"]),
        Route("/appointments/{source}/{id}", screen.page(appointment), methods=["GET"]),
    ]


STATUSES = ("pending", "succeeded", "dead", "discarded", "skipped", "superseded")


def filters(given: Any, zone: ZoneInfo, names: tuple[str, ...]) -> dict[str, str]:
    """The filters a form sent, without its empty fields; a time without a zone (a browser's datetime-local) is
    read in the console's zone."""
    chosen = {name: given[name].strip() for name in names if given.get(name, "").strip()}
    for name in ("since", "until"):
        if name in chosen:
            try:
                moment = datetime.fromisoformat(chosen[name])
            except ValueError:
                raise Problem(400, "Not done", f"{name}: {chosen[name][:40]!r} is not a date and time") from None
            chosen[name] = (moment if moment.tzinfo else moment.replace(tzinfo=zone)).isoformat()
    return chosen


def formatted(event: dict[str, Any]) -> str:
    """The raw body as the provider sent it, indented when it is JSON (base64 when it was not text)."""
    raw = event.get("raw_body")
    if raw is None:
        return f"(base64) {event.get('raw_body_base64', '')}"
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return str(raw)
