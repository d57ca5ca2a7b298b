"""What a request's head decides: does the fast path take it, or the app?

Which door answers each kind of request, under ``ssehub serve`` (the fast path's
`EntryProtocol` reads a connection's first head; `FastHttpProtocol`, uvicorn's protocol
with ssehub's corrections, reads the rest):

=====================================================  ====================================
request                                                answered by
=====================================================  ====================================
``GET /sse/connect/<one segment>``, HTTP/1.1           fast path: chunked stream
the same over HTTP/1.0                                 fast path: close-delimited stream
the same with ``Upgrade: h2c`` (any but websocket)     fast path: the upgrade is ignored
                                                       (RFC 9110, 7.8)
the same with anything pipelined behind it             fast path: the stream; what follows
                                                       is read and never answered
the same on a kept-alive connection                    fast path (`FastHttpProtocol`)
the same pipelined behind an unanswered request        app, in turn (uvicorn's pipeline)
``Upgrade: websocket``                                 uvicorn's websocket protocol (the
                                                       app has no websocket route: 403)
``HEAD /sse/connect/...``                              app: stream headers, no stream
invalid framing (see `checks.bad_framing`), a          `front.http1`: 400, connection
malformed head, ``CONNECT``                            closed
a head over 64 KiB                                     `front.http1`: 414 or 431
an HTTP/0.9 or HTTP/2.0 request line                   `front.http1`: 505
a 33rd request queued behind an unfinished answer      `front.http1`: 400, in its turn
a path of more segments, a ``root_path``, any other    app
method or route
=====================================================  ====================================
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

import httptools

from ssehub.front.checks import CONNECT_PATH, bad_framing

_CONNECT_PREFIX = CONNECT_PATH.encode()


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a head asks for a websocket, as uvicorn decides it (it answers those)."""
    connection: list[bytes] = []
    upgrade = b""
    for name, value in headers:
        name = name.lower()
        if name == b"connection":
            connection = [token.strip().lower() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade = value.strip().lower()
    return upgrade == b"websocket" and b"upgrade" in connection


def stream_target(
    url: bytes,
    method: bytes,
    http_version: str,
    headers: list[tuple[bytes, bytes]],
    root_path: str,
) -> tuple[str, bytes] | None:
    """``(user_id, query)`` if a request whose head is parsed opens a fast stream."""
    if not url.startswith(_CONNECT_PREFIX) or root_path or method != b"GET":
        return None
    if http_version not in ("1.1", "1.0") or bad_framing(headers, http_version):
        return None
    if is_websocket_upgrade(headers):
        return None
    try:
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    user_id = path[len(CONNECT_PATH) :]
    if not user_id or "/" in user_id:
        return None  # the app answers with its 404 or redirect
    return user_id, parsed.query or b""
