"""Answers both front doors give: JSON errors, and the stream's own headers."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from starlette.responses import Response

from ssehub.events import retry_frame
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

STREAM_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
"""The headers of every stream answer, on either door (and of a HEAD of one)."""

RAW_STREAM_HEADERS = tuple(
    (name.encode(), value.encode()) for name, value in STREAM_HEADERS.items()
)


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    """A JSON response, encoded with orjson."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(exc: SsehubError) -> Response:
    """Map an ssehub exception to its HTTP answer: ``{"detail": ...}`` and its status."""
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


def unavailable_answer(exc: StoreUnavailable, accept: str | None, retry_ms: int) -> Response:
    """The answer to a stream request the hub cannot serve now (store down, shutting down).

    ``EventSource`` gives up for good on any answer but a 200 event stream, so a client
    that asks for one (browsers send ``Accept: text/event-stream``) gets an empty stream
    with a ``retry:`` hint and reconnects by itself; other clients get the 503 JSON.
    """
    if accept is None or "text/event-stream" not in accept:
        return error_response(exc)
    return Response(
        b": unavailable, retry later\n" + retry_frame(retry_ms),
        200,
        headers=dict(STREAM_HEADERS),
    )
