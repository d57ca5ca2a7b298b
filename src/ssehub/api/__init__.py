"""The HTTP surface: stream routes, publish and state routes, the sample's demo routes."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from ssehub.api._errors import SsehubRoute, error_response
from ssehub.api._publishing import Publishing
from ssehub.api.demo import add_demo_routes
from ssehub.api.publish import add_publish_routes, add_state_routes
from ssehub.api.streams import (
    STREAM_HEADERS,
    AsgiSink,
    EventStreamResponse,
    Identify,
    add_disconnect_route,
    add_stream_routes,
)
from ssehub.auth import Authenticator
from ssehub.hub import Hub
from ssehub.messenger import Messenger

__all__ = [
    "STREAM_HEADERS",
    "AsgiSink",
    "EventStreamResponse",
    "create_router",
    "error_response",
    "messenger_dependency",
]


def create_router(
    hub: Hub,
    *,
    auth: Authenticator | None = None,
    publish: bool = False,
    demo: bool = False,
    demo_step: float = 1.0,
    identify: Identify | None = None,
) -> APIRouter:
    """ssehub's routes, ready to include in a FastAPI app.

    With no other argument: the stream (``GET /sse/connect/{user_id}``) and the
    read-only state routes (``GET /sse/users``, ``GET /sse/users/{user_id}``). Nothing
    that sends or closes anything is mounted unless asked for, so mounting the router
    does not let anyone who reaches the app message, or cut off, its users; the host
    app's own code sends through the hub (the `Messenger`).

    Args:
        hub: the hub the routes serve; the host app starts and closes it.
        auth: who may subscribe and publish; open to all by default.
        publish: also mount the routes that send and close: a message, a batch,
            a broadcast, and ``GET /sse/disconnect/{user_id}``. They take ``auth``'s
            publisher credentials, and in its default (open) mode anyone's.
        demo: also mount the sample's demo task routes (they send to any user).
        demo_step: seconds between the demo tasks' messages.
        identify: the host application's own FastAPI dependency that returns the
            signed-in user's id (or None); when given, it decides who may open
            ``/sse/connect/{user_id}`` (401 if None, 403 if another user) instead of
            ``auth``'s tokens. The other routes still follow ``auth``.
    """
    authenticator = auth or Authenticator()
    publishing = Publishing(hub, authenticator) if publish else None
    return routes_of(
        hub, authenticator, publishing=publishing, demo=demo, demo_step=demo_step, identify=identify
    )


def routes_of(
    hub: Hub,
    auth: Authenticator,
    *,
    publishing: Publishing | None,
    demo: bool,
    demo_step: float,
    identify: Identify | None = None,
) -> APIRouter:
    """`create_router`'s routes; the publish routes (and the disconnect route) only with
    ``publishing``, whose work they call (``ssehub serve`` shares it with its front
    door)."""
    router = APIRouter(route_class=SsehubRoute)
    add_stream_routes(router, hub, auth, identify=identify)
    add_state_routes(router, hub, auth)
    if publishing is not None:
        add_publish_routes(router, publishing)
        add_disconnect_route(router, hub, auth)
    if demo:
        add_demo_routes(router, hub, auth, step=demo_step)
    return router


def messenger_dependency(hub: Hub) -> Callable[[], Messenger]:
    """A FastAPI dependency that gives route handlers the hub as a `Messenger`."""

    def get_messenger() -> Messenger:
        return hub

    return get_messenger
