"""How ssehub's exceptions become HTTP answers: a JSON ``{"detail": ...}`` and a 4xx/503."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from ssehub.exceptions import (
    AuthenticationFailed,
    InvalidInput,
    LimitExceeded,
    PayloadTooLarge,
    PermissionDenied,
    ServerFull,
    SsehubError,
    StoreUnavailable,
)

logger = logging.getLogger("ssehub.api")


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    """A JSON response, encoded with orjson."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(exc: SsehubError) -> Response:
    """Map an ssehub exception to its HTTP answer."""
    headers: dict[str, str] | None = None
    if isinstance(exc, PayloadTooLarge):
        status = 413
    elif isinstance(exc, InvalidInput):
        status = 400
    elif isinstance(exc, AuthenticationFailed):
        status = 401
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, PermissionDenied):
        status = 403
    elif isinstance(exc, ServerFull):
        status = 503
        headers = {"Retry-After": "1"}
    elif isinstance(exc, LimitExceeded):
        status = 429
        headers = {"Retry-After": "1"}
    elif isinstance(exc, StoreUnavailable):
        status = 503
        headers = {"Retry-After": "1"}
        logger.warning("store unavailable: %s", exc)
    else:
        status = 500
    return json_response(status, {"detail": str(exc)}, headers)


class SsehubRoute(APIRoute):
    """An APIRoute that answers ssehub's exceptions itself, in any host application."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SsehubError as exc:
                return error_response(exc)

        return handle
