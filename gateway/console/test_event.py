"""Send a test event: a sample of the chosen provider type, signed as the provider signs, taken through the same
verification, routing and storage as a real webhook; then the answer, and where the event went."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import urlencode

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route

from gateway.clock import to_datetime
from gateway.console.pages import PREFIX, Form, Page, Problem, Screen
from gateway.exceptions import StorageError, WebhookRejected
from gateway.ingest import Ingest
from gateway.operations import OperationError, Operations
from gateway.sources.base import test_request

REASON = re.compile(r"[a-z_]{1,40}")


def routes(screen: Screen, operations: Operations, ingest: Ingest) -> list[Route]:
    async def form(request: Request) -> Page:
        sent = request.query_params
        answer = None
        if sent.get("status", "").isdigit():
            answer = {
                "status": int(sent["status"]),
                "outcome": sent.get("outcome", "") if REASON.fullmatch(sent.get("outcome", "")) else "",
                "event": None,
            }
            if event_id := sent.get("event"):
                # purged since, or an id typed by hand: the answer is still worth showing
                with contextlib.suppress(OperationError):
                    answer["event"] = await operations.show_event(event_id)
        types = {name: source.sample_types() for name, source in ingest.sources.items()}
        return Page("test_event.html", {"types": types, "answer": answer})

    async def send(request: Request, form: Form) -> str:
        name, event_type = form.get("source", ""), form.get("type", "")
        source = ingest.sources.get(name)
        if source is None or event_type not in source.sample_types():
            raise Problem(400, "Not done", f"{name[:40]!r} has no sample of type {event_type[:60]!r}")
        raw, headers = test_request(source, event_type, occurred_at=to_datetime(ingest.clock.now()))
        try:
            answer = await ingest.receive(name, Headers(headers=headers), raw)
        except WebhookRejected as rejected:
            result = {"status": str(rejected.status_code), "outcome": rejected.reason}
        except StorageError:
            result = {"status": "503", "outcome": "storage_unavailable"}
        else:
            body = answer.body
            result = {"status": str(answer.status_code), "outcome": body["status"], "event": body["event_id"]}
        if "event" not in result:  # counted as the webhook path counts what it refuses
            ingest.metrics.answered(name, "", result["outcome"])
        return f"{PREFIX}/test-event?{urlencode(result)}"

    return [
        Route("/test-event", screen.page(form), methods=["GET"]),
        Route("/test-event", screen.action(send), methods=["POST"]),
    ]
