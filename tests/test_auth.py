"""Who may do what, route by route, against real servers in open and jwt mode."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from ssehub.auth import TOKEN_COOKIE, mint_token
from tests.conftest import STREAM_MODES, ServerFactory, ServerProcess
from tests.sse import Stream

pytestmark = pytest.mark.anyio

SECRET = "test-secret-that-is-long-enough-for-hs256"
API_KEY = "publisher-key-1"
OTHER_KEY = "publisher-key-2"


def alice() -> str:
    return mint_token(SECRET, "alice")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Who asks: a name and the request headers/params that carry their credentials.
CREDENTIALS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "nobody": ({}, {}),
    "garbage token": (bearer("not-a-token"), {}),
    "expired token": (bearer(mint_token(SECRET, "alice", ttl=-10)), {}),
    "forged token": (bearer(mint_token("another-secret-of-sufficient-length", "alice")), {}),
    "wrong API key": ({"X-API-Key": "guess"}, {}),
    "alice": (bearer(alice()), {}),
    "alice by query": ({}, {"access_token": alice()}),
    "alice by cookie": ({"Cookie": f"{TOKEN_COOKIE}={alice()}"}, {}),
    "bob": (bearer(mint_token(SECRET, "bob")), {}),
    "publisher token": (bearer(mint_token(SECRET, None, publish=True)), {}),
    "publish scope by cookie": (
        {"Cookie": f"{TOKEN_COOKIE}={mint_token(SECRET, 'bob', publish=True)}"},
        {},
    ),
    "API key": ({"X-API-Key": API_KEY}, {}),
    "second API key as bearer": (bearer(OTHER_KEY), {}),
}

MESSAGE = {"data": "hi"}
BATCH = {"messages": [{"user_id": "alice", "data": "hi"}]}

# route -> (method, path, body); the expected status per credential below.
ROUTES: dict[str, tuple[str, str, object]] = {
    "connect": ("GET", "/sse/connect/alice", None),
    "disconnect": ("GET", "/sse/disconnect/alice", None),
    "send": ("POST", "/sse/users/alice/messages", MESSAGE),
    "batch": ("POST", "/sse/messages", BATCH),
    "broadcast": ("POST", "/sse/broadcast", MESSAGE),
    "status": ("GET", "/sse/users/alice", None),
    "list": ("GET", "/sse/users", None),
    "task": ("GET", "/sse/task/alice", None),
    "task-with-obj": ("GET", "/sse/task-with-obj/alice", None),
}

_DENIED = dict.fromkeys(ROUTES, 401)
_USER = {"connect": 200, "disconnect": 200, "status": 200}
_ALICE = {**dict.fromkeys(ROUTES, 403), **_USER}
_BOB = dict.fromkeys(ROUTES, 403)
_PUBLISHER = {
    **dict.fromkeys(ROUTES, 200),
    **{"send": 202, "batch": 202, "broadcast": 202},
}

MATRIX: dict[str, dict[str, int]] = {
    "nobody": _DENIED,
    "garbage token": _DENIED,
    "expired token": _DENIED,
    "forged token": _DENIED,
    "wrong API key": _DENIED,
    "alice": _ALICE,
    "alice by query": _ALICE,
    "alice by cookie": _ALICE,
    "bob": _BOB,
    "publisher token": _PUBLISHER,
    "publish scope by cookie": _BOB,
    "API key": _PUBLISHER,
    "second API key as bearer": _PUBLISHER,
}


JWT_ARGS = ("--auth", "jwt", "--jwt-secret", SECRET, "--publish-key", API_KEY,
            "--publish-key", OTHER_KEY)  # fmt: skip


@pytest.fixture(scope="module", params=STREAM_MODES)
def jwt_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One jwt-mode server per front door, shared by the tests of this module."""
    factory = ServerFactory(tmp_path_factory.mktemp("jwt"), request.param)
    env = {"SSEHUB_DEMO_STEP": "0.001", "SSEHUB_LOG_LEVEL": "debug"}
    try:
        yield factory(*JWT_ARGS, env=env)
    finally:
        factory.close()


async def _status(
    client: httpx.AsyncClient, url: str, route: str, headers: dict[str, str],
    params: dict[str, str],
) -> tuple[int, httpx.Headers, bytes]:  # fmt: skip
    method, path, body = ROUTES[route]
    async with client.stream(method, url + path, headers=headers, params=params,
                             json=body) as response:  # fmt: skip
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response.status_code, response.headers, b""
        return response.status_code, response.headers, await response.aread()


@pytest.mark.parametrize("who", list(MATRIX))
async def test_each_route_allows_exactly_the_credentials_of_the_matrix(
    jwt_server: ServerProcess, who: str
) -> None:
    headers, params = CREDENTIALS[who]
    found: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for route in ROUTES:
            status, response_headers, body = await _status(
                client, jwt_server.url, route, headers, params
            )
            found[route] = status
            if status >= 400:
                assert response_headers["content-type"] == "application/json"
                assert httpx.Response(200, content=body).json()["detail"]
            if status == 401:
                assert response_headers["www-authenticate"] == "Bearer"
    assert found == MATRIX[who]


async def test_open_mode_lets_anyone_use_every_route(start_server: ServerFactory) -> None:
    server = start_server(env={"SSEHUB_DEMO_STEP": "0.001"})
    async with httpx.AsyncClient(timeout=10) as client:
        found = {route: (await _status(client, server.url, route, {}, {}))[0] for route in ROUTES}
        cors = await client.get(f"{server.url}/sse/users", headers={"Origin": "https://a.example"})
    assert found == _PUBLISHER
    assert cors.headers["access-control-allow-origin"] == "*"


async def test_jwt_mode_allows_no_cross_origin_request_by_default(
    jwt_server: ServerProcess,
) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    preflight = {**origin, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as client:
        simple = await client.get(f"{jwt_server.url}/sse/users", headers=origin)
        checked = await client.options(f"{jwt_server.url}/sse/users", headers=preflight)
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in checked.headers


async def test_a_valid_token_for_another_user_gets_403_with_a_reason(
    jwt_server: ServerProcess,
) -> None:
    async with Stream(jwt_server.url, "alice", headers=bearer(mint_token(SECRET, "bob"))) as s:
        assert s.status_code == 403
        assert b"another user" in s.error_body or b"not for this user" in s.error_body


async def test_a_stream_ends_with_an_expired_event_when_its_token_expires(
    jwt_server: ServerProcess,
) -> None:
    token = mint_token(SECRET, "carol", ttl=2)
    started = time.monotonic()
    async with Stream(jwt_server.url, "carol", params={"access_token": token}) as carol:
        assert carol.status_code == 200
        event = await carol.next_message()
        assert event is not None
        assert event.data == "User 'carol' connected"
        ending = await carol.next_message(timeout=6)
        assert ending is not None
        assert ending.event == "expired"
        assert await carol.ended()
    assert time.monotonic() - started < 5


async def test_the_owner_of_a_stream_can_read_what_a_publisher_sends(
    jwt_server: ServerProcess,
) -> None:
    async with Stream(jwt_server.url, "dave", headers=bearer(mint_token(SECRET, "dave"))) as dave:
        await dave.next_message()
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{jwt_server.url}/sse/users/dave/messages",
                json={"data": "for dave only"},
                headers={"X-API-Key": API_KEY},
            )
        assert answer.status_code == 202
        message = await dave.next_message()
        assert message is not None
        assert message.data == "for dave only"


async def test_tokens_in_urls_never_reach_the_servers_log(jwt_server: ServerProcess) -> None:
    good = mint_token(SECRET, "erin")
    bad = mint_token("a-secret-the-server-does-not-know-at-all", "erin")
    async with Stream(jwt_server.url, "erin", params={"access_token": good}) as erin:
        assert erin.status_code == 200
        await erin.next_message()
    async with Stream(jwt_server.url, "erin", params={"access_token": bad}) as refused:
        assert refused.status_code == 401
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(f"{jwt_server.url}/nowhere", params={"access_token": good})
    log = jwt_server.log()
    assert "stream opened for user 'erin'" in log
    assert good not in log
    assert bad not in log
    assert good.split(".")[2] not in log  # not even the signature
