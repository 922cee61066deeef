"""The benchmark's sink: counts the distinct provider event ids it receives (GET /count), and how late each reminder
arrived after its due time (GET /lateness, seconds)."""

from __future__ import annotations

import json
import time
from datetime import datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

seen: set[str] = set()
received = 0
lateness: list[float] = []


async def deliver(request: Request) -> Response:
    global received
    received += 1
    payload = json.loads(await request.body())
    seen.add(payload.get("provider_event_id", str(received)))
    if payload.get("type") == "appointment.reminder":
        lateness.append(time.time() - datetime.fromisoformat(payload["reminder"]["due_at"]).timestamp())
    return Response(status_code=204)


async def count(request: Request) -> Response:
    return JSONResponse({"distinct": len(seen), "received": received})


async def late(request: Request) -> Response:
    return JSONResponse(lateness)


app = Starlette(routes=[Route("/", deliver, methods=["POST"]), Route("/count", count), Route("/lateness", late)])
