"""The portable stream route: ``GET /sse/connect/{user_id}`` through ASGI, and disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from ssehub.api._errors import error_response, error_responses, json_response
from ssehub.api._params import UserIdPath
from ssehub.auth import Authenticator, Grant
from ssehub.connection import Connection
from ssehub.events import is_event_id, retry_frame
from ssehub.exceptions import (
    AuthenticationFailed,
    InvalidInput,
    PermissionDenied,
    StoreUnavailable,
)
from ssehub.hub import Hub
from ssehub.limits import check_user_id

STREAM_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}

STREAM_DESCRIPTION = """\
Opens a `text/event-stream` for the user. The first event is `User '{user_id}' connected`,
then a `keepalive` event (`<3: Keep alive`) every few seconds, and every message sent to
the user, each with an `id:`. Reconnecting with `Last-Event-ID` (header, or the
`last_event_id` query parameter) replays what was missed; without it, messages sent
while the user had no stream open are delivered first.

Swagger cannot show a stream; watch it with curl:

    curl -N http://127.0.0.1:8000/sse/connect/alice

or in a browser with `new EventSource('/sse/connect/alice')`.
"""


class AsgiSink:
    """A bounded queue of bytes drained by the stream's ASGI task.

    The bound applies once the response has started (`live`): the greeting and the
    replay are queued whole, as the fast path holds them until its head is written.
    When the queue overflows (the client does not read), the hub closes the sink and
    the stream's task is cancelled even if it is blocked in ``send``: a client that
    never reads must not hold its stream forever.
    """

    __slots__ = (
        "_chunks", "_limit", "_size", "_wakeup", "closed", "limit", "overflowed", "sender"
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = 1 << 62  # unbounded until `live`
        self.limit = limit
        self._wakeup = asyncio.Event()
        self.closed = False
        self.overflowed = False
        self.sender: asyncio.Task[Any] | None = None

    def write(self, data: bytes) -> bool:
        if self.closed:
            return True
        if self._size + len(data) > self._limit:
            self.overflowed = True
            return False
        self._chunks.append(data)
        self._size += len(data)
        self._wakeup.set()
        return True

    def close(self, final: bytes | None = None) -> None:
        if not self.closed:
            if final:
                self._chunks.append(final)
            self.closed = True
            self._wakeup.set()
            if self.overflowed and self.sender is not None:
                self.sender.cancel()  # blocked in send() to a client that does not read

    def live(self) -> None:
        """The response has started: bound the queue from now on."""
        self._limit = self.limit

    async def take(self) -> bytes:
        """Wait for bytes (or the close) and return everything queued."""
        await self._wakeup.wait()
        self._wakeup.clear()
        return self.take_nowait()

    def take_nowait(self) -> bytes:
        """Return everything queued, without waiting."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        return b"".join(chunks)


class EventStreamResponse(Response):
    """Streams a registered `Connection` until either side ends it."""

    def __init__(self, hub: Hub, connection: Connection, sink: AsgiSink) -> None:
        # Not Response.__init__: it would add "content-length: 0" for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.encode(), v.encode()) for k, v in STREAM_HEADERS.items()]
        self._hub = hub
        self._connection = connection
        self._sink = sink

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self._sink.live()
            await self._pump(send, watcher)
        except OSError:
            pass  # the client went away mid-write; the watcher notices too
        finally:
            self._sink.sender = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._hub.release(self._connection)

    async def _pump(self, send: Any, watcher: asyncio.Task[None]) -> None:
        sink = self._sink
        task = asyncio.current_task()
        try:
            while True:
                body = await sink.take()
                if sink.overflowed:
                    break
                sink.sender = task
                if sink.closed:
                    body += sink.take_nowait()
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                sink.sender = None
        except asyncio.CancelledError:
            if not sink.overflowed or task is None or task.uncancel() > 0:
                raise
        # A client that does not read. ASGI cannot drop a connection, and ending the
        # response would wait for the client to read what is buffered: free the
        # stream's place in the hub now, then wait for the client to go.
        sink.sender = None
        sink.take_nowait()
        self._hub.release(self._connection)
        await watcher

    async def _watch_disconnect(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._sink.close()
                return


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


Identify = Callable[..., str | None] | Callable[..., Awaitable[str | None]]


def subscriber_dependency(
    hub: Hub, auth: Authenticator, identify: Identify | None = None
) -> Callable[..., Awaitable[Grant]]:
    """A dependency that allows a stream of the path's user, or raises.

    With ``identify`` (the host application's own dependency that returns the signed-in
    user's id, or None) it decides instead of the authenticator's tokens.

    Raises:
        InvalidInput: a bad user id.
        AuthenticationFailed: nobody is signed in (401).
        PermissionDenied: someone else is (403).
    """
    if identify is None:

        async def by_token(request: Request, user_id: UserIdPath) -> Grant:
            check_user_id(user_id, max_length=hub.limits.max_user_id_length)
            return auth.subscriber(user_id, request.headers, request.query_params)

        return by_token

    # Depends() as a default, not in Annotated: with postponed annotations FastAPI
    # resolves names in the module's globals, and these dependencies are local.
    async def by_host_app(
        user_id: UserIdPath,
        identity: str | None = Depends(identify),
    ) -> Grant:
        check_user_id(user_id, max_length=hub.limits.max_user_id_length)
        if not identity:
            raise AuthenticationFailed("sign in to open a stream")
        if identity != user_id:
            raise PermissionDenied("this stream belongs to another user")
        return Grant(user_id=identity)

    return by_host_app


def add_stream_routes(
    router: APIRouter, hub: Hub, auth: Authenticator, *, identify: Identify | None = None
) -> None:
    """Add the connect and disconnect routes (``identify``: see `subscriber_dependency`)."""
    subscriber = subscriber_dependency(hub, auth, identify)

    @router.get(
        "/sse/connect/{user_id}",
        summary="Open the user's event stream",
        description=STREAM_DESCRIPTION,
        response_class=Response,
        responses={
            200: {"content": {"text/event-stream": {"example": "data: User 'alice' connected\n\n"}},
                  "description": "The event stream (never ends by itself)."},
            **error_responses(400, 401, 403, 429, 503),
        },
        tags=["streams"],
    )  # fmt: skip
    async def connect(
        user_id: UserIdPath,
        grant: Grant = Depends(subscriber),  # noqa: B008
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", description="resume after this id")
        ] = None,
        last_event_id: Annotated[
            str | None, Query(description="resume after this id (for a first connect)")
        ] = None,
        access_token: Annotated[
            str | None, Query(description="token, where headers cannot be set")
        ] = None,
        accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        resume = check_last_event_id(last_event_id_header, last_event_id)
        remaining = grant.remaining()
        expires_at = None if remaining is None else time.monotonic() + remaining
        sink = AsgiSink(hub.limits.buffer_bytes)
        try:
            connection = await hub.open(user_id, sink, last_event_id=resume, expires_at=expires_at)
        except StoreUnavailable as exc:
            return unavailable_answer(exc, accept, hub.retry_ms)
        return EventStreamResponse(hub, connection, sink)

    @router.get(
        "/sse/disconnect/{user_id}",
        summary="Disconnect a user",
        description="Closes every open stream of the user, on every node, and marks the "
        "user disconnected. Answers 200 with an empty body, as the sample did.",
        response_class=Response,
        responses={
            200: {"description": "The user's streams were closed."},
            **error_responses(400, 401, 403, 503),
        },
        tags=["streams"],
    )
    async def disconnect(request: Request, user_id: UserIdPath) -> Response:
        check_user_id(user_id, max_length=hub.limits.max_user_id_length)
        auth.user_or_publisher(user_id, request.headers, request.query_params)
        await hub.disconnect(user_id)
        return Response(status_code=200)


__all__ = ["AsgiSink", "EventStreamResponse", "add_stream_routes", "json_response"]
