"""Liveness and readiness: ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from ssehub.api._errors import json_response
from ssehub.exceptions import StoreUnavailable
from ssehub.hub import Hub

_READY_TIMEOUT = 2.0


def add_health_routes(router: APIRouter, hub: Hub) -> None:
    """Add ``/healthz`` (the process answers) and ``/readyz`` (the store answers too)."""

    @router.get("/healthz", summary="Liveness", tags=["operations"], response_class=Response)
    async def healthz() -> Response:
        return json_response(200, {"status": "ok", "streams": hub.open_streams})

    @router.get(
        "/readyz",
        summary="Readiness: the store answers",
        description="200 when the store answers; 503 with status 'degraded' when it does not "
        "(open streams stay open, publishing answers 503 until it is back).",
        tags=["operations"],
        response_class=Response,
    )
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(hub.store.ping(), _READY_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            return json_response(503, {"status": "degraded", "store": "unavailable",
                                       "detail": str(exc) or "store timed out"})  # fmt: skip
        return json_response(200, {"status": "ok", "store": "ok"})
