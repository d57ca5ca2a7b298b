"""Answers both front doors give: JSON errors, and the stream's own headers."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from starlette.responses import Response

from ssehub.events import retry_frame
from ssehub.exceptions import SsehubError, StoreUnavailable, http_status

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


# Headers of error answers: how to sign in; when to come back (a client retries a 429
# only when it is told when).
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "1"},
    503: {"Retry-After": "1"},
}


def error_response(exc: SsehubError) -> Response:
    """Map an ssehub exception to its HTTP answer: ``{"detail": ...}`` and its status.

    The status is `ssehub.exceptions.HTTP_STATUS`'s, the table the client reads back.
    """
    status = http_status(exc)
    if isinstance(exc, StoreUnavailable):
        logger.warning("store unavailable: %s", exc)
    return json_response(status, {"detail": str(exc)}, _ERROR_HEADERS.get(status))


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
