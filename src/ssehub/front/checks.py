"""What both front doors check of a stream request, with no framework in between.

The fast path reads a request off the socket and the portable path from an ASGI scope;
both turn it into plain mappings (`request_mappings`) and ask the same questions here,
so a request is allowed or refused alike whichever door it took.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable, Mapping

from ssehub.auth import Authenticator, Grant
from ssehub.events import is_event_id
from ssehub.exceptions import InvalidInput
from ssehub.hub import Hub
from ssehub.limits import check_user_id

CONNECT_PATH = "/sse/connect/"

StreamOpening = tuple[str | None, float | None, str | None]
"""What a stream request asks once checked: ``(last_event_id, expires_at, accept)``."""


def request_mappings(
    raw_headers: Iterable[tuple[bytes, bytes]], query_string: bytes
) -> tuple[dict[str, str], dict[str, str]]:
    """A request's headers (lower-case names, the first of each) and query (the last)."""
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    query: dict[str, str] = {}
    if query_string:
        query = dict(urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return headers, query


def check_last_event_id(header: str | None, query: str | None) -> str | None:
    """The resume point of a stream: the header wins over the query parameter.

    Raises:
        InvalidInput: the value is not an id ssehub gives out.
    """
    value = header if header is not None else query
    if value is None or value == "":
        return None
    if not is_event_id(value):
        raise InvalidInput("Last-Event-ID is not an event id given out by this hub")
    return value


def check_stream_request(
    grant: Grant,
    last_event_id_header: str | None,
    last_event_id: str | None,
    accept: str | None,
) -> StreamOpening:
    """The resume point and deadline of an allowed stream request.

    Raises:
        InvalidInput: a malformed ``Last-Event-ID``.
    """
    resume = check_last_event_id(last_event_id_header, last_event_id)
    remaining = grant.remaining()
    expires_at = None if remaining is None else time.monotonic() + remaining
    return resume, expires_at, accept


def check_bare_stream_request(
    hub: Hub,
    auth: Authenticator,
    user_id: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> StreamOpening:
    """Check a stream request read without FastAPI: user id, credentials, Last-Event-ID.

    Raises:
        SsehubError: the answer to give instead (400, 401, 403).
    """
    check_user_id(user_id, max_length=hub.limits.max_user_id_length)
    grant = auth.subscriber(user_id, headers, query)
    return check_stream_request(
        grant, headers.get("last-event-id"), query.get("last_event_id"), headers.get("accept")
    )


def bad_framing(raw_headers: Iterable[tuple[bytes, bytes]], http_version: str) -> bool:
    """Whether a request's body framing is one RFC 9112 (6.1, 6.3) says to reject (400).

    httptools rejects doubled or conflicting ``Content-Length`` and ``Transfer-Encoding``
    itself; what it leaves, or rejects only after the head is complete (when uvicorn has
    already started the request), is checked here: a ``Transfer-Encoding`` whose last
    coding is not ``chunked``, or any ``Transfer-Encoding`` in an HTTP/1.0 request.
    """
    for name, value in raw_headers:
        if name.lower() == b"transfer-encoding":
            if http_version == "1.0":
                return True
            if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                return True
    return False
