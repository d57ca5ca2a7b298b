"""ssehub mounted in another FastAPI app, exactly as the README shows, under real uvicorn."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.sse import Stream

pytestmark = pytest.mark.anyio


def readme_library_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use it as a library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README lost its library example"
    return match.group(1)


MIDDLEWARE_APP = """
import contextlib

from fastapi import FastAPI, Request
from ssehub import Hub, MemoryStore, create_router

hub = Hub(MemoryStore(), keepalive=30)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    async with hub.running():
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(create_router(hub, publish=True))


@app.middleware("http")  # Starlette's BaseHTTPMiddleware: receive goes through anyio streams
async def tag(request: Request, call_next):
    response = await call_next(request)
    response.headers["x-host-app"] = "yes"
    return response
"""


@pytest.fixture
def host_app_url(tmp_path: Path) -> Iterator[str]:
    yield from serve_host_app(tmp_path, readme_library_example())


@pytest.fixture
def middleware_app_url(tmp_path: Path) -> Iterator[str]:
    yield from serve_host_app(tmp_path, MIDDLEWARE_APP)


def serve_host_app(tmp_path: Path, source: str) -> Iterator[str]:
    (tmp_path / "hostapp.py").write_text(source)
    port = free_port()
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "hostapp:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            try:
                httpx.get(url + "/openapi.json", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(5)
        log.close()


async def test_a_host_app_route_sends_through_the_injected_messenger(host_app_url: str) -> None:
    async with Stream(host_app_url, "olga") as olga, httpx.AsyncClient() as client:
        assert (await olga.next_message()) is not None
        answer = await client.post(f"{host_app_url}/reports/olga")
        assert answer.status_code == 200
        message = await olga.next_message()
    assert message is not None
    assert message.event == "report"
    assert message.data == '{"report":"ready"}'
    assert message.id == answer.json()["event_id"]


async def test_the_readme_router_serves_streams_and_state_and_nothing_that_sends(
    host_app_url: str,
) -> None:
    async with httpx.AsyncClient() as client:
        for method, path in [
            ("POST", "/sse/users/pia/messages"),
            ("POST", "/sse/messages"),
            ("POST", "/sse/broadcast"),
            ("GET", "/sse/disconnect/pia"),
            ("GET", "/sse/task/pia"),
        ]:
            refused = await client.request(method, host_app_url + path, json={"data": "x"})
            assert refused.status_code in (404, 405), path
        sent = await client.post(f"{host_app_url}/reports/pia")  # the app's own route
        assert sent.status_code == 200
        status = await client.get(f"{host_app_url}/sse/users/pia")
        assert status.json()["pending"] == 1
        bad = await client.get(f"{host_app_url}/sse/connect/{'p' * 300}")
        assert bad.status_code == 400
        assert "detail" in bad.json()
        async with Stream(host_app_url, "pia") as pia:
            got = await pia.messages(2)
        assert got[1].event == "report"


async def test_streams_pass_through_a_host_apps_http_middleware(middleware_app_url: str) -> None:
    # A host app's @app.middleware("http") wraps receive and send; the stream must still
    # flow, and a client that leaves must still be noticed with no frames flowing.
    url = middleware_app_url
    async with httpx.AsyncClient() as client:
        async with Stream(url, "quinn") as quinn:
            assert (await quinn.next_message()) is not None
            sent = await client.post(f"{url}/sse/users/quinn/messages", json={"data": "through"})
            assert sent.status_code == 202
            assert sent.headers["x-host-app"] == "yes"
            message = await quinn.next_message()
            assert message is not None
            assert message.data == "through"
            assert (await client.get(f"{url}/sse/users/quinn")).json()["status"] == "connected"
        async with asyncio.timeout(3):
            while (await client.get(f"{url}/sse/users/quinn")).json()["status"] != "disconnected":
                await asyncio.sleep(0.05)
