"""``ssehub serve``'s app answers publish requests before routing; alike the routes.

`Publishing.door` takes ``POST``s to the publish paths in the app's front middleware;
FastAPI's routes (what a host app mounts with ``create_router(publish=True)``) answer
the same requests through the same code. In-process here, request by request; every
server test publishes through the door over real HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.routing import Route

from ssehub import Hub, MemoryStore
from ssehub.api import create_router
from ssehub.app import create_app
from ssehub.limits import Limits
from ssehub.settings import Settings

pytestmark = pytest.mark.anyio

PUBLISH_PATHS = {"/sse/messages", "/sse/broadcast", "/sse/users/{user_id}/messages"}
MAX_BODY, MAX_BATCH = 4096, 3
LONG_ID = "u" * 300

REQUESTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/sse/messages", b'{"messages": [{"user_id": "a", "data": "hi"}]}', {}),
    ("/sse/messages", b'{"messages": [{"user_id": "a", "data": {"n": 1}, "event": "e"}]}', {}),
    ("/sse/messages", b'{"messages": [{"user_id": "a", "data": 1}, {"data": 2}]}', {}),
    ("/sse/messages", b'{"messages": [{"user_id": "a", "data": 1, "event": 5}]}', {}),
    ("/sse/messages", orjson.dumps({"messages": [{"user_id": "a", "data": 1}] * 4}), {}),
    ("/sse/messages", orjson.dumps({"messages": [{"user_id": LONG_ID, "data": 1}]}), {}),
    ("/sse/messages", b'{"messages": {}}', {}),
    ("/sse/messages", b"[1, 2]", {}),
    ("/sse/messages", b"", {}),
    ("/sse/messages", b"{not json", {}),
    ("/sse/messages", b'{"messages": [{"user_id": "a", "data": "' + b"x" * 5000 + b'"}]}', {}),
    ("/sse/users/alice/messages", b'{"data": "hello"}', {}),
    ("/sse/users/alice/messages", b'{"data": "hello", "event": "bad name\\n"}', {}),
    ("/sse/users/alice/messages", b'{"event": "x"}', {}),
    (f"/sse/users/{LONG_ID}/messages", b'{"data": 1}', {}),
    ("/sse/users/al%20ice/messages", b'{"data": 1}', {}),
    ("/sse/broadcast", b'{"data": "to all"}', {}),
    ("/sse/broadcast", b'"just a string"', {}),
    ("/sse/messages", b'{"messages": [{"user_id": "b", "data": 1}]}', {"idempotency-key": "k1"}),
    ("/sse/messages", b'{"messages": [{"user_id": "b", "data": 1}]}', {"idempotency-key": "k1"}),
    ("/sse/messages", b'{"messages": [{"user_id": "c", "data": 1}]}', {"idempotency-key": "k1"}),
    ("/sse/users/a/b/messages", b'{"data": 1}', {}),
    ("/sse/messages/", b'{"messages": []}', {}),
]


def shape(value: Any) -> Any:
    """An answer with its ids and timestamps blanked (two hubs number apart)."""
    if isinstance(value, dict):
        return {
            key: "<ids>" if key in ("id", "ids") else shape(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [shape(item) for item in value]
    return value


@contextlib.asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://hub") as client,
    ):
        yield client


def host_app() -> FastAPI:
    hub = Hub(MemoryStore(), limits=Limits(max_body_bytes=MAX_BODY, max_batch=MAX_BATCH))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.running():
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(hub, publish=True))
    return app


async def answers(app: FastAPI) -> list[tuple[int, Any]]:
    found = []
    async with client_of(app) as client:
        for path, body, headers in REQUESTS:
            answer = await client.post(path, content=body, headers=headers)
            body_json = answer.json() if answer.content else None
            found.append((answer.status_code, shape(body_json)))
    return found


async def test_the_door_answers_every_publish_request_as_the_routes_do() -> None:
    served = create_app(Settings(store="memory://", max_body_bytes=MAX_BODY, max_batch=MAX_BATCH))
    door = await answers(served)
    routes = await answers(host_app())
    assert door == routes
    statuses = {status for status, _ in door}
    assert statuses >= {202, 400, 404, 409, 413}  # the list reaches every kind of answer


async def test_the_door_answers_publish_requests_without_the_routes() -> None:
    app = create_app(Settings(store="memory://"))
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (isinstance(route, Route) and route.path in PUBLISH_PATHS)
    ]
    async with client_of(app) as client:
        batch = await client.post("/sse/messages", json={"messages": [{"user_id": "a", "data": 1}]})
        one = await client.post("/sse/users/a/messages", json={"data": 2})
        everyone = await client.post("/sse/broadcast", json={"data": 3})
        bad = await client.post("/sse/users/a/messages", content=b"nope")
        elsewhere = await client.post("/sse/users/a/b/messages", json={"data": 4})
    assert (batch.status_code, batch.json()["count"]) == (202, 1)
    assert (one.status_code, one.json()["user_id"]) == (202, "a")
    assert everyone.status_code == 202
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["detail"]
    assert elsewhere.status_code in (404, 405)  # not a publish path: routed as before
