"""An application with its own sign-in decides who opens streams (examples/host_app_auth.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.sse import Stream

pytestmark = pytest.mark.anyio

KEY = "example-publish-key"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example application under a real uvicorn process."""
    port = free_port()
    log = tmp_path_factory.mktemp("host-app") / "uvicorn.log"
    env = {**os.environ, "PUBLISH_KEY": KEY, "KEEPALIVE": "0.5"}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "examples"),
               "host_app_auth:app", "--port", str(port), "--no-access-log"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the example did not start:\n{log.read_text()}")
            try:
                if httpx.get(url + "/openapi.json", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def session_of(url: str, user: str) -> dict[str, str]:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/login/{user}")
    assert answer.status_code == 200
    return {"Cookie": f"session={answer.cookies['session']}"}


async def test_a_signed_in_user_opens_their_stream_and_receives_what_the_app_sends(
    app_url: str,
) -> None:
    cookie = await session_of(app_url, "alice")
    async with Stream(app_url, "alice", headers=cookie) as alice:
        assert alice.status_code == 200
        greeting = await alice.next_message()
        assert greeting is not None
        assert greeting.data == "User 'alice' connected"
        async with httpx.AsyncClient() as client:
            made = await client.post(f"{app_url}/reports", headers=cookie)
        assert made.status_code == 200
        report = await alice.next_message()
        assert report is not None
        assert (report.event, report.data, report.id) == (
            "report",
            '{"report":"ready"}',
            made.json()["event_id"],
        )


async def test_nobody_signed_in_gets_401_and_another_user_gets_403(app_url: str) -> None:
    cookie = await session_of(app_url, "bob")
    async with Stream(app_url, "alice") as anonymous:
        assert anonymous.status_code == 401
        assert b"sign in" in anonymous.error_body
    async with Stream(app_url, "alice", headers={"Cookie": "session=forged"}) as forged:
        assert forged.status_code == 401
    async with Stream(app_url, "alice", headers=cookie) as bob:
        assert bob.status_code == 403
        assert b"another user" in bob.error_body


async def test_publishing_routes_need_the_apps_api_key(app_url: str) -> None:
    cookie = await session_of(app_url, "carol")
    url = f"{app_url}/sse/users/carol/messages"
    async with httpx.AsyncClient() as client:
        anonymous = await client.post(url, json={"data": "x"})
        by_session = await client.post(url, json={"data": "x"}, headers=cookie)
        by_key = await client.post(url, json={"data": "x"}, headers={"X-API-Key": KEY})
    assert anonymous.status_code == 401
    assert by_session.status_code == 401
    assert by_key.status_code == 202
