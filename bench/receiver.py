"""The benchmark's sink: counts the distinct provider event ids it receives (GET /count)."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

seen: set[str] = set()
received = 0


async def deliver(request: Request) -> Response:
    global received
    received += 1
    payload = json.loads(await request.body())
    seen.add(payload.get("provider_event_id", str(received)))
    return Response(status_code=204)


async def count(request: Request) -> Response:
    return JSONResponse({"distinct": len(seen), "received": received})


app = Starlette(routes=[Route("/", deliver, methods=["POST"]), Route("/count", count)])
