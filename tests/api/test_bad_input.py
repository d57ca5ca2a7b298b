"""Bad input gets a 4xx with a JSON reason: never a 5xx, a hang, or a half-written stream."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerFactory

pytestmark = pytest.mark.anyio

LONG = "u" * 257


@pytest.fixture(scope="module")
def server_url(start_module_server: ServerFactory) -> str:
    return start_module_server(
        env={"SSEHUB_MAX_PAYLOAD_BYTES": "1024", "SSEHUB_MAX_BATCH": "10"}
    ).url


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", f"/sse/connect/{LONG}", None, 400),
        ("GET", "/sse/connect/bad%01id", None, 400),
        ("GET", "/sse/connect/bad%7Fid", None, 400),
        ("GET", "/sse/connect/", None, 404),
        ("GET", f"/sse/users/{LONG}", None, 400),
        ("GET", f"/sse/disconnect/{LONG}", None, 400),
        ("GET", f"/sse/task/{LONG}", None, 400),
        ("POST", "/sse/users/al/messages", b"not json", 400),
        ("POST", "/sse/users/al/messages", b"", 400),
        ("POST", "/sse/users/al/messages", b"[1, 2]", 400),
        ("POST", "/sse/users/al/messages", b'{"text": "no data"}', 400),
        ("POST", "/sse/users/al/messages", b'{"data": "x", "event": "a\\nb"}', 400),
        ("POST", "/sse/users/al/messages", b'{"data": "x", "event": 5}', 400),
        ("POST", "/sse/users/al/messages", b'{"data": "' + b"x" * 2000 + b'"}', 413),
        ("POST", f"/sse/users/{LONG}/messages", b'{"data": "x"}', 400),
        ("POST", "/sse/messages", b'{"messages": "nope"}', 400),
        ("POST", "/sse/messages", b'{"messages": [{"data": "x"}]}', 400),
        ("POST", "/sse/messages", b'{"messages": [{"user_id": "", "data": "x"}]}', 400),
        ("POST", "/sse/messages", b'{"messages": [{"user_id": 3, "data": "x"}]}', 400),
        ("POST", "/sse/messages", b'{"messages": [' + b",".join(
            [b'{"user_id": "a", "data": 1}'] * 11) + b"]}", 413),
        ("POST", "/sse/broadcast", b"{", 400),
        ("POST", "/sse/broadcast", b'{"data": "\\ud800"}', 400),
        ("GET", "/sse/users?status=sleeping", None, 422),
        ("GET", "/sse/users?limit=0", None, 422),
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/sse/broadcast", None, 405),
    ],
)  # fmt: skip
async def test_bad_requests_get_a_clear_4xx_with_a_json_reason(
    server_url: str, method: str, path: str, body: bytes | None, status: int
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.request(method, server_url + path, content=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["detail"]


@pytest.mark.parametrize("value", ["abc", "1-", "-1", "1 2", "9" * 30, "1-2-3"])
async def test_a_garbage_last_event_id_is_refused_before_the_stream_starts(
    server_url: str, value: str
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for kwargs in ({"headers": {"Last-Event-ID": value}}, {"params": {"last_event_id": value}}):
            answer = await client.get(f"{server_url}/sse/connect/al", **kwargs)  # type: ignore[arg-type]
            assert answer.status_code == 400
            assert "Last-Event-ID" in answer.json()["detail"]


async def test_nothing_bad_is_stored_when_a_batch_is_refused(server_url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.post(
            f"{server_url}/sse/messages",
            json={"messages": [{"user_id": "ok", "data": "1"}, {"user_id": "", "data": "2"}]},
        )
        assert answer.status_code == 400
        status = (await client.get(f"{server_url}/sse/users/ok")).json()
    assert status["pending"] == 0
