"""The response heads the fast path writes, and what it needs to open streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.datastructures import Headers as RequestHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from ssehub.auth import Authenticator
from ssehub.front.answers import RAW_STREAM_HEADERS
from ssehub.front.writes import WriteBatch
from ssehub.hub import Hub

RawHeaders = Sequence[tuple[bytes, bytes]]


def header_lines(headers: RawHeaders) -> bytes:
    """``name: value`` lines, as in a response head."""
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


# A stream is its connection's last response (a request pipelined behind it is never
# answered), so its head says so, on HTTP/1.0 and 1.1 alike.
_STREAM_HEAD = header_lines(RAW_STREAM_HEADERS) + b"connection: close\r\n"
_HEADS_KEPT = 64  # stream heads kept (per CORS answer and framing); others made each time


class CorsHeaders:
    """The CORS headers the app's ``CORSMiddleware`` adds to an answer, as bytes.

    The middleware itself computes them (its ``send`` hook, run on a bare response
    start), so a stream gets exactly what any other route gets from the installed
    Starlette; the answer depends only on the request's ``Origin`` (and, in older
    Starlette, on whether it sent a cookie), so it is kept per origin.
    """

    _KEPT = 256  # origins remembered; others are computed each time

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._middleware = CORSMiddleware(_no_app, **options)
        self._kept: dict[tuple[str | None, bool], bytes] = {}

    def __call__(self, headers: Mapping[str, str]) -> bytes:
        key = (headers.get("origin"), "cookie" in headers)
        found = self._kept.get(key)
        if found is None:
            found = self._compute(headers)
            if len(self._kept) < self._KEPT:
                self._kept[key] = found
        return found

    def _compute(self, headers: Mapping[str, str]) -> bytes:
        message: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": []}
        request = RequestHeaders(
            headers={name: headers[name] for name in ("origin", "cookie") if name in headers}
        )
        hook = self._middleware.send(message, _drop, request)
        try:
            hook.send(None)  # it awaits only _drop, which never waits
        except StopIteration:
            return header_lines(message["headers"])
        except KeyError:
            # Older Starlette reads request_headers["Origin"] here, as its
            # middleware passes a request without Origin through untouched: no headers.
            return b""
        hook.close()
        return b""


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the fast path only borrows CORSMiddleware's headers")


async def _drop(message: Message) -> None:
    pass


class FastStreams:
    """What the fast path needs to open streams: the hub, the authenticator, CORS.

    Args:
        hub: the hub streams are registered with.
        auth: who may subscribe.
        cors: the options of the app's ``CORSMiddleware``; None if it has none.
    """

    def __init__(
        self, hub: Hub, auth: Authenticator, *, cors: Mapping[str, Any] | None = None
    ) -> None:
        self.hub = hub
        self.auth = auth
        self.batch = WriteBatch()
        self._cors = CorsHeaders(cors) if cors is not None else None
        self._heads: dict[tuple[bytes, bool], bytes] = {}  # by (CORS headers, chunked)
        self._heads_for: RawHeaders | None = None  # the default headers they were made with

    def cors_headers(self, headers: Mapping[str, str]) -> bytes:
        """The CORS headers of an answer, as the app's ``CORSMiddleware`` adds them."""
        return b"" if self._cors is None else self._cors(headers)

    def stream_head(self, default_headers: RawHeaders, cors: bytes, chunked: bool) -> bytes:
        """The status line and headers of a stream: chunked, or close-delimited.

        Kept until uvicorn's default headers change (a new list, with its ``date``,
        each second): every stream opened meanwhile gets the same bytes.
        """
        if default_headers is not self._heads_for:
            self._heads_for = default_headers
            self._heads.clear()
        key = (cors, chunked)
        head = self._heads.get(key)
        if head is None:
            framing = b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n"
            head = b"".join(
                (STATUS_LINE[200], header_lines(default_headers), _STREAM_HEAD, cors, framing)
            )
            if len(self._heads) < _HEADS_KEPT:
                self._heads[key] = head
        return head

    @staticmethod
    def answer(default_headers: RawHeaders, response: Response, cors: bytes) -> bytes:
        """``response`` (a refusal, with its length) as bytes, closing the connection."""
        return b"".join(
            (
                STATUS_LINE[response.status_code],
                header_lines(default_headers),
                header_lines(response.raw_headers),
                cors,
                b"connection: close\r\n\r\n",
                bytes(response.body),
            )
        )
