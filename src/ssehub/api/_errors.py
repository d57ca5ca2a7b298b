"""How ssehub's exceptions become HTTP answers: a JSON ``{"detail": ...}`` and a 4xx/503."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ssehub.exceptions import SsehubError
from ssehub.front.answers import error_response, json_response

__all__ = ["SsehubRoute", "error_response", "error_responses", "json_response"]


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string", "description": "what is wrong"}},
}

_ERROR_DESCRIPTIONS = {
    400: "Malformed input: a bad user id, body, event name or Last-Event-ID.",
    401: "No valid credentials (jwt mode).",
    403: "Valid credentials that do not allow this.",
    413: "Payload, body or batch over its limit.",
    409: "The Idempotency-Key was used already for another request.",
    429: "Too many streams for the user.",
    503: "Store unavailable, or the server holds all the streams it may.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ssehub's JSON errors with these status codes."""
    return {
        code: {
            "description": _ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for code in codes
    }


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
