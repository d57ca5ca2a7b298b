"""The composition root: settings in, a ready FastAPI app out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ssehub import __version__
from ssehub._telemetry import app_options
from ssehub.api import routes_of
from ssehub.api._publishing import Publishing
from ssehub.api.health import add_health_routes
from ssehub.api.metrics import add_metrics_route
from ssehub.api.presence import add_presence_routes
from ssehub.api.web import add_web_routes
from ssehub.auth import create_authenticator
from ssehub.exceptions import ConfigurationError
from ssehub.front.portable import StreamEndpoint, StreamFront
from ssehub.hub import Hub
from ssehub.settings import Settings
from ssehub.stores import open_store
from ssehub.webhooks import create_sender

logger = logging.getLogger("ssehub.app")

DESCRIPTION = """\
Server-Sent Events to specific users. Open a stream with `GET /sse/connect/{user_id}`
(watch it with `curl -N`), send to it with `POST /sse/users/{user_id}/messages`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the hub and its app from settings (read from the environment if omitted).

    The app's state holds ``hub`` (the `Messenger`) and ``settings``.

    Raises:
        ConfigurationError: the settings are invalid.
    """
    settings = settings or Settings.from_env()
    settings.validate()
    auth = create_authenticator(settings)
    cors_origins = cors_allowed_origins(settings)
    store = open_store(settings.store_url, retention=settings.retention)
    hub = Hub(
        store,
        keepalive=settings.keepalive,
        limits=settings.limits,
        retry_ms=settings.retry_ms,
        offline_grace=settings.offline_grace,
        undelivered_after=settings.undelivered_after,
    )
    webhooks = create_sender(settings, store)
    if webhooks is not None:
        hub.presence.subscribe(webhooks, flush=webhooks.flush)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.running(), webhooks.running() if webhooks else contextlib.nullcontext():
            logger.info("ssehub ready, store %s", store.__class__.__name__)
            yield

    app = FastAPI(
        title="ssehub",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        **app_options(),
    )
    app.state.hub = hub
    app.state.settings = settings
    app.state.auth = auth
    # Streams and publish requests are answered before routing, inside the middleware
    # added below.
    publishing = Publishing(hub, auth)
    app.add_middleware(StreamFront, endpoint=StreamEndpoint(hub, auth), posts=publishing.door)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_credentials=settings.cors_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-API-Key"],
        )
    # create_router(publish=True, demo=True), with the front door's `Publishing`.
    router = routes_of(hub, auth, publishing=publishing, demo=True, demo_step=settings.demo_step)
    add_health_routes(router, hub)
    add_web_routes(router)
    add_metrics_route(router, hub, webhooks=webhooks.stats if webhooks else None)
    add_presence_routes(router, hub, auth)
    # The routes go into the app's own router rather than through `include_router`:
    # they need nothing it adds (no prefix, dependencies or tags), and newer FastAPI
    # releases route an included router's requests through a second matching pass
    # (about 25 us of each publish request, in-process).
    app.router.routes.extend(router.routes)
    return app


def cors_allowed_origins(settings: Settings) -> list[str]:
    """The origins browsers may call the hub from.

    As configured; when nothing is configured, any origin in ``open`` mode (which is
    open anyway, as the sample was) and none in ``jwt`` mode.

    Raises:
        ConfigurationError: credentials allowed for any origin (``*``), which would let
            every web site act with a visitor's cookies.
    """
    origins = list(settings.cors_origin)
    if settings.cors_credentials and "*" in origins:
        raise ConfigurationError("--cors-credentials cannot be used with --cors-origin '*'")
    if not origins and settings.auth == "open" and not settings.cors_credentials:
        origins = ["*"]
    return origins
