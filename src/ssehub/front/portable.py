"""The portable door: a stream as an ASGI response, under any ASGI server.

`StreamFront` (``ssehub serve --portable``) or the stream route (ssehub mounted in
another app) hands a checked stream request to `serve_stream`: one coroutine that
registers the stream, writes what its `AsgiSink` queues, and notices the client
leaving (`ssehub.front.watch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ssehub.auth import Authenticator
from ssehub.exceptions import SsehubError, StoreUnavailable
from ssehub.front.answers import RAW_STREAM_HEADERS, error_response, unavailable_answer
from ssehub.front.checks import (
    CONNECT_PATH,
    StreamOpening,
    check_bare_stream_request,
    request_mappings,
)
from ssehub.front.hold import HoldUntilHead
from ssehub.front.http1 import BodySender
from ssehub.front.passthrough import body_sender
from ssehub.front.watch import watch_client
from ssehub.hub import Hub

# A stream is its connection's last response (as on the fast path): a request
# pipelined behind it is never answered. HTTP/2 has no such header, nor the need.
_HTTP1_STREAM_HEADERS = [*RAW_STREAM_HEADERS, (b"connection", b"close")]


def _http1(scope: Scope) -> bool:
    return str(scope.get("http_version", "1.1")).startswith("1")


def stream_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers of a stream answer to the request of ``scope``."""
    return list(_HTTP1_STREAM_HEADERS if _http1(scope) else RAW_STREAM_HEADERS)


def refusal(response: Response, scope: Scope) -> Response:
    """``response``, refusing a stream, closing the connection as the fast path does."""
    if _http1(scope):
        response.headers["connection"] = "close"
    return response


class AsgiSink(HoldUntilHead):
    """A bounded queue of bytes drained by the stream's ASGI task.

    Frames are held whole until the response has started (`live`, see
    `HoldUntilHead`); from then on the queue has its bound. When the queue overflows
    (the client does not read), the hub closes the sink and the stream's task is
    cancelled even if it is blocked in ``send``: a client that never reads must not
    hold its stream forever.

    With a `direct` sender (ssehub's own protocol under middleware that passes bodies
    on as they are, `ssehub.front.passthrough`), a frame goes to it at once, as a chunk
    sent at the end of the loop step, and the task is not woken: only when nothing is
    queued here nor being sent, so the order stays the hub's. Otherwise (the client
    does not read, or left) the frame is queued for the task as without one.
    """

    __slots__ = (
        "_chunks",
        "_size",
        "_waiter",
        "closed",
        "direct",
        "limit",
        "overflowed",
        "sender",
    )

    def __init__(self, limit: int) -> None:
        HoldUntilHead.__init__(self)
        self._chunks: list[bytes] = []
        self._size = 0
        self.limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.overflowed = False
        self.sender: asyncio.Task[Any] | None = None  # while it is in ``send``
        self.direct: BodySender | None = None

    def write(self, data: bytes) -> bool:
        if self.closed:
            return True
        if self._held is not None:
            return self.hold(data)
        direct = self.direct
        if direct is not None and not self._chunks and self.sender is None and direct.chunk(data):
            return True
        if self._size + len(data) > self.limit:
            self.overflowed = True
            return False
        self._chunks.append(data)
        self._size += len(data)
        waiter = self._waiter  # (the wake-up inline: this is the per-delivery path)
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def close(self, final: bytes | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if final is not None and self.hold(final):
            return
        if final:
            self._chunks.append(final)
        self.wake()
        if self.overflowed and self.sender is not None:
            self.sender.cancel()  # blocked in send() to a client that does not read

    def live(self, direct: BodySender | None = None) -> None:
        """The response has started: queue what was held, and bound the queue from now on.

        With ``direct`` (see the class), what was held goes to it at once if it can,
        and so do the frames that follow.
        """
        held = self.release()
        self.direct = direct
        if held and not (direct is not None and not self._chunks and direct.chunk(b"".join(held))):
            self._chunks[:0] = held
            self._size += sum(len(data) for data in held)

    @property
    def ready(self) -> bool:
        """Whether there is something to send: bytes, or the end of the response."""
        return self.closed or bool(self._chunks)

    def wake(self, _: object = None) -> None:
        """Wake the task in `wait` (also a future's done callback)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future the next `wake` resolves: a write, the close, or the client's side."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    def take_nowait(self) -> bytes:
        """Return everything queued, without waiting."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        return b"".join(chunks)


async def serve_stream(
    hub: Hub,
    user_id: str,
    opening: StreamOpening,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Open a stream with the hub and answer with it until either side ends it.

    The only coroutine a portable stream keeps of its own: it registers the stream
    (or answers the refusal), writes what the sink queues, notices the client leaving
    (`ClientWatch`) and releases the connection from the hub at the end.
    """
    resume, expires_at, accept = opening
    sink = AsgiSink(hub.limits.buffer_bytes)
    try:
        connection = await hub.open(user_id, sink, last_event_id=resume, expires_at=expires_at)
    except StoreUnavailable as exc:
        await refusal(unavailable_answer(exc, accept, hub.retry_ms), scope)(scope, receive, send)
        return
    except SsehubError as exc:
        await refusal(error_response(exc), scope)(scope, receive, send)
        return
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    client = watch_client(receive, sink.wake)
    left = client.left
    released = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": stream_headers(scope)})
        sink.live(body_sender(send))
        while True:
            if left():
                if sink.overflowed:
                    return
                sink.close()  # the client left: end the response
            if sink.overflowed:
                # A client that does not read. ASGI cannot drop a connection, and ending
                # the response would wait for the client to read what is buffered: free
                # the stream's place in the hub now, then wait for the client to go.
                if not released:
                    released = True
                    sink.take_nowait()
                    hub.release(connection)
                sink._waiter = waiter = loop.create_future()
                await waiter
            elif sink._chunks or sink.closed:  # (`ready`, inline: the per-delivery path)
                body = sink.take_nowait()
                final = sink.closed
                sink.sender = task
                try:
                    await send({"type": "http.response.body", "body": body, "more_body": not final})
                except asyncio.CancelledError:
                    if not sink.overflowed or task is None or task.uncancel() > 0:
                        raise
                finally:
                    sink.sender = None
                if final and not sink.overflowed:
                    return
            else:
                sink._waiter = waiter = loop.create_future()
                await waiter
    except OSError:
        pass  # the client went away mid-write
    except RuntimeError:
        # A server that did not tell the client left (uvicorn, when a request was
        # pipelined behind the stream) raises when asked to write to the closed
        # transport: the client is gone, which is no error of the application's.
        pass
    finally:
        client.close()
        hub.release(connection)


async def answer_head(scope: Scope, receive: Receive, send: Send) -> None:
    """``HEAD`` of an allowed stream: the stream's headers, and no stream (RFC 9110, 9.3.2)."""
    await send({"type": "http.response.start", "status": 200, "headers": list(RAW_STREAM_HEADERS)})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class EventStreamResponse(Response):
    """Opens and streams a checked stream request (see `serve_stream`)."""

    def __init__(self, hub: Hub, user_id: str, opening: StreamOpening) -> None:
        # Not Response.__init__: it would add "content-length: 0" for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(RAW_STREAM_HEADERS)
        self._hub = hub
        self._user_id = user_id
        self._opening = opening

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        if scope["method"] == "HEAD":
            return answer_head(scope, receive, send)
        return serve_stream(self._hub, self._user_id, self._opening, scope, receive, send)


class StreamEndpoint:
    """``GET /sse/connect/{user_id}`` (and ``HEAD``) as a bare ASGI application.

    It checks the user id, the credentials (`Authenticator.subscriber`) and
    ``Last-Event-ID`` as the documented FastAPI route does and answers the same JSON
    errors; the stream is then the request's own coroutine, `serve_stream`. No
    ``Request``, dependency results or exit stacks are held while it is open, and
    calling the endpoint adds no coroutine of its own. A ``HEAD`` is checked alike and
    answered with the stream's headers alone: it opens no stream.
    """

    __slots__ = ("_auth", "_hub")

    def __init__(self, hub: Hub, auth: Authenticator) -> None:
        self._hub = hub
        self._auth = auth

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        return self.serve(scope["path_params"]["user_id"], scope, receive, send)

    def serve(
        self, user_id: str, scope: Scope, receive: Receive, send: Send
    ) -> Coroutine[Any, Any, None]:
        """Answer the stream request of ``user_id`` (the path's, decoded)."""
        headers, query = request_mappings(scope["headers"], scope.get("query_string", b""))
        try:
            opening = check_bare_stream_request(self._hub, self._auth, user_id, headers, query)
        except SsehubError as exc:
            return refusal(error_response(exc), scope)(scope, receive, send)
        if scope["method"] == "HEAD":
            return answer_head(scope, receive, send)
        return serve_stream(self._hub, user_id, opening, scope, receive, send)


PostDoor = Callable[[str, Scope, Receive, Send], Awaitable[None] | None]
"""Answers a ``POST`` to an app-relative path before routing, or returns None."""


class StreamFront:
    """ASGI middleware that answers ``GET /sse/connect/{user_id}`` before the app routes.

    `ssehub serve` adds it inside the app's own middleware (CORS included), so a stream
    still passes through them, but not through FastAPI's routing, exception handling
    and exit stacks, which would otherwise stay suspended for the stream's whole life.
    Any other request, and a path that is not one segment after ``/sse/connect/``,
    goes on to the app, whose route documents the stream and answers the same way.
    With ``posts`` (`ssehub.api.Publishing.door`), a ``POST`` it takes is answered
    there, before routing, too.
    """

    def __init__(
        self, app: ASGIApp, endpoint: StreamEndpoint, posts: PostDoor | None = None
    ) -> None:
        self.app = app
        self._endpoint = endpoint
        self._posts = posts

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            method = scope["method"]
            if method in ("GET", "HEAD"):
                path = _app_path(scope)
                if path.startswith(CONNECT_PATH):
                    user_id = path[len(CONNECT_PATH) :]
                    if user_id and "/" not in user_id:
                        return self._endpoint.serve(user_id, scope, receive, send)
            elif method == "POST" and self._posts is not None:
                answer = self._posts(_app_path(scope), scope, receive, send)
                if answer is not None:
                    return answer
        return self.app(scope, receive, send)


def _app_path(scope: Scope) -> str:
    """The request's path inside the app (without the ``root_path`` it is mounted at)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        path = path[len(root_path) :]
    return path
