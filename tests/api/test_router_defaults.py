"""What `create_router` mounts by default, and what only an explicit argument adds."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from ssehub import Hub, MemoryStore, create_router
from ssehub.app import create_app
from ssehub.auth import KeyAuthenticator
from ssehub.settings import Settings

STREAMS_AND_STATE = {
    ("GET", "/sse/connect/{user_id}"),
    ("GET", "/sse/users"),
    ("GET", "/sse/users/{user_id}"),
}
SENDING = {
    ("POST", "/sse/users/{user_id}/messages"),
    ("POST", "/sse/messages"),
    ("POST", "/sse/broadcast"),
    ("GET", "/sse/disconnect/{user_id}"),
}
DEMO = {("GET", "/sse/task/{user_id}"), ("GET", "/sse/task-with-obj/{user_id}")}


def routes(mounted: APIRouter | FastAPI) -> set[tuple[str, str]]:
    """The ``/sse/`` routes a router or an app serves, as (method, path)."""
    if isinstance(mounted, APIRouter):
        app = FastAPI()
        app.include_router(mounted)
        mounted = app
    paths = mounted.openapi()["paths"]
    return {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/sse/")
        for method in operations
    }


def test_the_default_router_mounts_streams_and_read_only_state_only() -> None:
    assert routes(create_router(Hub(MemoryStore()))) == STREAMS_AND_STATE


def test_an_authenticator_alone_does_not_mount_publishing() -> None:
    router = create_router(Hub(MemoryStore()), auth=KeyAuthenticator(publish_keys=["k"]))
    assert routes(router) == STREAMS_AND_STATE


def test_publish_mounts_sending_and_disconnect() -> None:
    router = create_router(Hub(MemoryStore()), publish=True)
    assert routes(router) == STREAMS_AND_STATE | SENDING


def test_demo_mounts_the_demo_tasks() -> None:
    assert routes(create_router(Hub(MemoryStore()), demo=True)) == STREAMS_AND_STATE | DEMO


def test_the_served_app_keeps_every_route() -> None:
    app = create_app(Settings(store="memory://"))
    assert routes(app) >= STREAMS_AND_STATE | SENDING | DEMO
