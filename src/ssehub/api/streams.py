"""The stream routes: ``GET /sse/connect/{user_id}`` documented in FastAPI, and disconnect.

The stream itself is served by the portable door (`ssehub.front.portable`); these routes
give it its OpenAPI entry, and the host application's own dependency when it has one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.types import Receive, Scope, Send

from ssehub.api._errors import SsehubRoute, error_responses
from ssehub.api._params import UserIdPath
from ssehub.auth import Authenticator, Grant
from ssehub.exceptions import AuthenticationFailed, PermissionDenied
from ssehub.front.answers import STREAM_HEADERS
from ssehub.front.checks import check_stream_request
from ssehub.front.portable import AsgiSink, EventStreamResponse, StreamEndpoint, StreamFront
from ssehub.hub import Hub
from ssehub.limits import check_user_id

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
    "STREAM_HEADERS",
    "AsgiSink",
    "EventStreamResponse",
    "StreamEndpoint",
    "StreamFront",
    "add_disconnect_route",
    "add_stream_routes",
    "check_stream_request",
]
