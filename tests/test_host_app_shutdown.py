"""A host app that mounts ssehub stops at once on SIGINT/SIGTERM, with streams open.

Real server processes (plain ``uvicorn app:app``, no extra flags) running the README's
FastAPI app and a plain Starlette app; the streams are read from raw sockets.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.test_library import readme_library_example

STARLETTE_APP = """
import contextlib

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from ssehub import Hub, MemoryStore, create_router

hub = Hub(MemoryStore(), keepalive=30)
sse = FastAPI()
sse.include_router(create_router(hub))


@contextlib.asynccontextmanager
async def lifespan(app):
    async with hub.running():
        yield


app = Starlette(routes=[Mount("/", app=sse)], lifespan=lifespan)
"""

StartHostApp = Callable[[str, list[str], int], "HostApp"]
APPS: dict[str, Callable[[], str]] = {
    "fastapi": readme_library_example,
    "starlette": lambda: STARLETTE_APP,
}


def uvicorn_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "hostapp:app", "--port", str(port)]


def hypercorn_command(port: int) -> list[str]:
    # One process: with worker processes, Hypercorn tells its workers to stop by an
    # event, not a signal, and they cut open streams after --graceful-timeout.
    return [sys.executable, "-m", "hypercorn", "-w", "0", "-b", f"127.0.0.1:{port}", "hostapp:app"]


def granian_command(port: int) -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--port", str(port),
            "hostapp:app"]  # fmt: skip


class HostApp:
    """A server process running ``hostapp:app`` written from source."""

    def __init__(self, tmp_path: Path, source: str, command: list[str], port: int) -> None:
        (tmp_path / "hostapp.py").write_text(source)
        self.port = port
        self.stderr_path = tmp_path / "server.err"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.stderr()
            try:
                if httpx.get(f"{self.url}/sse/users/probe", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.stderr()
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def open_stream(self, user_id: str) -> socket.socket:
        """A raw stream connection, once its greeting arrived."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(
            f"GET /sse/connect/{user_id} HTTP/1.1\r\nHost: x\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        received = b""
        while b"connected" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    with sock:
        while chunk := sock.recv(4096):
            received += chunk
    return received


@pytest.fixture
def start_host_app(tmp_path: Path) -> Iterator[StartHostApp]:
    started: list[HostApp] = []

    def start(source: str, command: list[str], port: int) -> HostApp:
        app = HostApp(tmp_path, source, command, port)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def assert_stops_with_retry(app: HostApp, sig: signal.Signals) -> None:
    streams = [app.open_stream("ada"), app.open_stream("ada"), app.open_stream("bo")]
    sent = time.monotonic()
    app.proc.send_signal(sig)
    app.proc.wait(10)
    took = time.monotonic() - sent
    assert took < 2.0, f"took {took:.1f} s to stop\n{app.stderr()}"
    for sock in streams:
        assert b"retry: " in read_to_end(sock)
    assert "Traceback" not in app.stderr(), app.stderr()
    assert "Error" not in app.stderr(), app.stderr()


@pytest.mark.parametrize("host", sorted(APPS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_host_app_under_plain_uvicorn_stops_at_once_with_streams_open(
    start_host_app: StartHostApp, host: str, sig: signal.Signals
) -> None:
    port = free_port()
    app = start_host_app(APPS[host](), uvicorn_command(port), port)
    assert_stops_with_retry(app, sig)


@pytest.mark.parametrize(
    ("server", "command"),
    [("hypercorn", hypercorn_command), ("granian", granian_command)],
)
def test_other_asgi_servers_stop_at_once_too(
    start_host_app: StartHostApp, server: str, command: Callable[[int], list[str]]
) -> None:
    if importlib.util.find_spec(server) is None:
        pytest.skip(f"{server} is not installed (optional)")
    port = free_port()
    app = start_host_app(readme_library_example(), command(port), port)
    assert_stops_with_retry(app, signal.SIGTERM)
