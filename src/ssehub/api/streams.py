"""The portable stream route: ``GET /sse/connect/{user_id}`` through ASGI, and disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssehub.api._errors import SsehubRoute, error_response, error_responses, json_response
from ssehub.api._params import UserIdPath
from ssehub.auth import Authenticator, Grant
from ssehub.events import is_event_id, retry_frame
from ssehub.exceptions import (
    AuthenticationFailed,
    InvalidInput,
    PermissionDenied,
    SsehubError,
    StoreUnavailable,
)
from ssehub.hub import Hub
from ssehub.limits import check_user_id

STREAM_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
CONNECT_PATH = "/sse/connect/"
_RAW_HEADERS = tuple((name.encode(), value.encode()) for name, value in STREAM_HEADERS.items())

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
        "_chunks", "_limit", "_size", "_waiter", "closed", "limit", "overflowed", "sender"
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = 1 << 62  # unbounded until `live`
        self.limit = limit
        self._waiter: asyncio.Future[None] | None = None
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
        self.wake()
        return True

    def close(self, final: bytes | None = None) -> None:
        if not self.closed:
            if final:
                self._chunks.append(final)
            self.closed = True
            self.wake()
            if self.overflowed and self.sender is not None:
                self.sender.cancel()  # blocked in send() to a client that does not read

    def live(self) -> None:
        """The response has started: bound the queue from now on."""
        self._limit = self.limit

    @property
    def ready(self) -> bool:
        """Whether there is something to send: bytes, or the end of the response."""
        return self.closed or bool(self._chunks)

    def wake(self, _: object = None) -> None:
        """Wake the task in `wait` (also a future's done callback)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future the next `wake` resolves: a write, the close, or the client's side."""
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        return waiter

    def take_nowait(self) -> bytes:
        """Return everything queued, without waiting."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        return b"".join(chunks)


class ClientWatch:
    """Notices ``http.disconnect`` without a task of its own.

    An ASGI server reports a client that left only through ``receive()``, which a
    stream would otherwise await in a second task. Here the stream's one task runs the
    ``receive()`` awaitable itself, a step at a time: `left` advances it as far as it
    goes without waiting, and whatever it then waits on wakes the sink's `waiter` when
    done. Between steps the task pumps frames, so one task both writes and listens.
    """

    __slots__ = ("_blocked", "_receive", "_steps", "_wake", "gone")

    def __init__(self, receive: Receive, wake: Callable[[object], None]) -> None:
        self._receive = receive
        self._wake = wake
        self._steps: Coroutine[Any, Any, Message] | Generator[Any, None, Message] | None = None
        self._blocked: asyncio.Future[Any] | None = None
        self.gone = False

    def left(self) -> bool:
        """Run ``receive()`` until it waits; True once it said ``http.disconnect``."""
        while not self.gone and (self._blocked is None or self._blocked.done()):
            if self._steps is None:
                awaitable = self._receive()
                if isinstance(awaitable, Coroutine):
                    self._steps = awaitable  # stepped as is: no wrapper to keep
                else:
                    self._steps = awaitable.__await__()
            self._blocked = None
            try:
                yielded = self._steps.send(None)
            except StopIteration as stop:
                self._steps = None
                self.gone = stop.value["type"] == "http.disconnect"
                continue  # "http.request" (the request's body): receive again
            if yielded is None:  # a bare yield: go on at the loop's next turn
                loop = asyncio.get_running_loop()
                yielded = loop.create_future()
                loop.call_soon(yielded.set_result, None)
            else:  # what a Task does with a future its coroutine waits on
                yielded._asyncio_future_blocking = False
            yielded.add_done_callback(self._wake)
            self._blocked = yielded
        return self.gone

    def close(self) -> None:
        """Stop listening: close the pending ``receive()`` (its ``finally`` blocks run)."""
        if self._blocked is not None:
            self._blocked.remove_done_callback(self._wake)
            self._blocked = None
        if self._steps is not None:
            steps, self._steps = self._steps, None
            with contextlib.suppress(RuntimeError):
                steps.close()


class TaskWatch:
    """Notices ``http.disconnect`` in a task of its own: for any ``receive()``.

    What `ClientWatch` does without a task is only safe for a server's own
    ``receive()``; one wrapped by the host application's middleware may hold anyio task
    groups or cancel scopes that must stay in the task that awaits them.
    """

    __slots__ = ("_task", "gone")

    def __init__(self, receive: Receive, wake: Callable[[object], None]) -> None:
        self.gone = False
        self._task = asyncio.get_running_loop().create_task(self._watch(receive, wake))

    async def _watch(self, receive: Receive, wake: Callable[[object], None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # "http.request": the request's (empty) body
        self.gone = True
        wake(None)

    def left(self) -> bool:
        """True once the client has left."""
        return self.gone

    def close(self) -> None:
        """Stop listening."""
        self._task.cancel()


def watch_client(receive: Receive, wake: Callable[[object], None]) -> ClientWatch | TaskWatch:
    """`ClientWatch` for uvicorn's own ``receive()``, else a `TaskWatch`."""
    owner = getattr(receive, "__self__", None)
    if type(owner).__module__.startswith("uvicorn.protocols.http."):
        return ClientWatch(receive, wake)
    return TaskWatch(receive, wake)


StreamOpening = tuple[str | None, float | None, str | None]
"""What a stream request asks once checked: ``(last_event_id, expires_at, accept)``."""


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
        await unavailable_answer(exc, accept, hub.retry_ms)(scope, receive, send)
        return
    except SsehubError as exc:
        await error_response(exc)(scope, receive, send)
        return
    task = asyncio.current_task()
    client = watch_client(receive, sink.wake)
    released = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": list(_RAW_HEADERS)})
        sink.live()
        while True:
            if client.left():
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
                await sink.waiter()
            elif sink.ready:
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
                await sink.waiter()
    except OSError:
        pass  # the client went away mid-write
    finally:
        client.close()
        hub.release(connection)


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


class EventStreamResponse(Response):
    """Opens and streams a checked stream request (see `serve_stream`)."""

    def __init__(self, hub: Hub, user_id: str, opening: StreamOpening) -> None:
        # Not Response.__init__: it would add "content-length: 0" for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_RAW_HEADERS)
        self._hub = hub
        self._user_id = user_id
        self._opening = opening

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        return serve_stream(self._hub, self._user_id, self._opening, scope, receive, send)


class StreamEndpoint:
    """``GET /sse/connect/{user_id}`` as a bare ASGI application.

    It checks the user id, the credentials (`Authenticator.subscriber`) and
    ``Last-Event-ID`` as the documented FastAPI route does and answers the same JSON
    errors; the stream is then the request's own coroutine, `serve_stream`. No
    ``Request``, dependency results or exit stacks are held while it is open, and
    calling the endpoint adds no coroutine of its own (`stream_route`).
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
            return error_response(exc)(scope, receive, send)
        return serve_stream(self._hub, user_id, opening, scope, receive, send)


class StreamFront:
    """ASGI middleware that answers ``GET /sse/connect/{user_id}`` before the app routes.

    `ssehub serve` adds it inside the app's own middleware (CORS included), so a stream
    still passes through them, but not through FastAPI's routing, exception handling
    and exit stacks, which would otherwise stay suspended for the stream's whole life.
    Any other request, and a path that is not one segment after ``/sse/connect/``,
    goes on to the app, whose route documents the stream and answers the same way.
    """

    def __init__(self, app: ASGIApp, endpoint: StreamEndpoint) -> None:
        self.app = app
        self._endpoint = endpoint

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            root_path: str = scope.get("root_path", "")
            if root_path and path.startswith(root_path + "/"):
                path = path[len(root_path) :]
            if path.startswith(CONNECT_PATH):
                user_id = path[len(CONNECT_PATH) :]
                if user_id and "/" not in user_id:
                    return self._endpoint.serve(user_id, scope, receive, send)
        return self.app(scope, receive, send)


def stream_route(endpoint: StreamEndpoint) -> type[SsehubRoute]:
    """A route class: documented as its FastAPI endpoint, served by ``endpoint``.

    The route keeps FastAPI's OpenAPI entry (parameters, responses, tag), while a
    request is handed straight to the bare ASGI ``endpoint``, so an open stream holds
    no FastAPI request chain. A class per endpoint, as FastAPI may rebuild a route
    from its class when a router is included.
    """

    class StreamRoute(SsehubRoute):
        def handle(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
            if self.methods is None or scope["method"] in self.methods:
                return endpoint(scope, receive, send)
            return super().handle(scope, receive, send)  # 405

    return StreamRoute


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
    """Add the connect route (``identify``: see `subscriber_dependency`)."""
    subscriber = subscriber_dependency(hub, auth, identify)
    # Without a host-app dependency to run, requests are served by the bare ASGI
    # endpoint and the FastAPI endpoint below only documents the route.
    route_class = SsehubRoute if identify is not None else stream_route(StreamEndpoint(hub, auth))

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
        opening = check_stream_request(grant, last_event_id_header, last_event_id, accept)
        return EventStreamResponse(hub, user_id, opening)

    router.add_api_route(
        "/sse/connect/{user_id}",
        connect,
        methods=["GET"],
        summary="Open the user's event stream",
        description=STREAM_DESCRIPTION,
        response_class=Response,
        responses={
            200: {"content": {"text/event-stream": {"example": "data: User 'alice' connected\n\n"}},
                  "description": "The event stream (never ends by itself)."},
            **error_responses(400, 401, 403, 429, 503),
        },
        tags=["streams"],
        route_class_override=route_class,
    )  # fmt: skip


def add_disconnect_route(router: APIRouter, hub: Hub, auth: Authenticator) -> None:
    """Add ``GET /sse/disconnect/{user_id}``: close every stream of a user."""

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


__all__ = [
    "AsgiSink",
    "ClientWatch",
    "EventStreamResponse",
    "StreamEndpoint",
    "StreamFront",
    "TaskWatch",
    "add_disconnect_route",
    "add_stream_routes",
    "json_response",
    "serve_stream",
]
