"""The HTTP surface: stream routes, publish and state routes, the sample's demo routes."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from ssehub.api._errors import SsehubRoute, error_response
from ssehub.api.demo import add_demo_routes
from ssehub.api.publish import add_publish_routes
from ssehub.api.streams import (
    STREAM_HEADERS,
    AsgiSink,
    EventStreamResponse,
    Identify,
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
    demo: bool = True,
    demo_step: float = 1.0,
    identify: Identify | None = None,
) -> APIRouter:
    """Every ssehub route, ready to include in a FastAPI app.

    Args:
        hub: the hub the routes serve; the host app starts and closes it.
        auth: who may subscribe and publish; open to all by default.
        identify: the host application's own FastAPI dependency that returns the
            signed-in user's id (or None); when given, it decides who may open
            ``/sse/connect/{user_id}`` (401 if None, 403 if another user) instead of
            ``auth``'s tokens. The other routes still follow ``auth``.
        demo: include the sample's demo task routes.
        demo_step: seconds between the demo tasks' messages.
    """
    router = APIRouter(route_class=SsehubRoute)
    authenticator = auth or Authenticator()
    add_stream_routes(router, hub, authenticator, identify=identify)
    add_publish_routes(router, hub, authenticator)
    if demo:
        add_demo_routes(router, hub, authenticator, step=demo_step)
    return router


def messenger_dependency(hub: Hub) -> Callable[[], Messenger]:
    """A FastAPI dependency that gives route handlers the hub as a `Messenger`."""

    def get_messenger() -> Messenger:
        return hub

    return get_messenger
