"""Fixtures shared by every test: real server processes on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

REPO = Path(__file__).resolve().parent.parent


class ReadyServer(uvicorn.Server):
    """A uvicorn server in the test's own loop that says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[ReadyServer]:
    """A uvicorn server in the test's own loop, listening until the block ends."""
    server = ReadyServer(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            await server.ready.wait()
        yield server
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """An ``ssehub serve`` process on 127.0.0.1, started and stopped by a test."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.args = args
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.verify: ssl.SSLContext | bool = True  # for an https:// url
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the process and wait until it is ready and ``/healthz`` answers.

        Ready means its own log says so: a server of another test that took the port
        first (``free_port`` is not a reservation) answers ``/healthz`` too.
        """
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(self.log_path.parent),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                answer = httpx.get(self.url + "/healthz", timeout=0.5, verify=self.verify)
                if answer.status_code == 200 and "ssehub ready" in self.log():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        """What the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        """Send a signal to the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the server to exit; return its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ServerFactory:
    """Starts servers for one test and stops them all afterwards."""

    def __init__(self, tmp_path: Path, stream_mode: str = "fast") -> None:
        self.tmp_path = tmp_path
        self.stream_mode = stream_mode
        self.servers: list[ServerProcess] = []

    def __call__(
        self,
        *args: str,
        store: str = "memory://",
        keepalive: float = 0.5,
        port: int | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> ServerProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
        environ.update({"SSEHUB_DEMO_STEP": "0.1", "SSEHUB_LOG_LEVEL": "info"})
        environ.update(env or {})
        mode = ["--portable"] if self.stream_mode == "portable" else []
        retries = 2  # for a free port another test's server took first
        while True:
            chosen = port or free_port()
            server = ServerProcess(
                ["--store", store, "--keepalive", str(keepalive), *mode, *args],
                environ,
                chosen,
                self.tmp_path / f"server-{chosen}-{len(self.servers)}.log",
            )
            self.servers.append(server)
            if not start:
                return server
            try:
                return server.start()
            except RuntimeError:
                if port or not retries or "already in use" not in server.log():
                    raise
                retries -= 1

    def close(self) -> None:
        for server in self.servers:
            server.stop()


STREAM_MODES = ("fast", "portable")


def _reads_streams(module: object) -> bool:
    try:
        source = inspect.getsource(module)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False
    return "tests.sse" in source or "/sse/connect" in source


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules that open streams run against both ways of serving them.

    A test module that uses the stream reader (``tests.sse``) or the stream route runs
    each of its tests that start servers twice: ``[fast]`` (``ssehub serve``'s default,
    streams written straight to the socket) and ``[portable]`` (``--portable``, the ASGI
    route). Other modules run once, on the fast path.
    """
    chosen = metafunc.definition.iter_markers("parametrize")
    if any("stream_mode" in marker.args[0] for marker in chosen):
        return  # the test picks its own mode
    if "stream_mode" in metafunc.fixturenames:
        modes = STREAM_MODES if _reads_streams(metafunc.module) else STREAM_MODES[:1]
        metafunc.parametrize("stream_mode", modes, indirect=True)


@pytest.fixture
def stream_mode(request: pytest.FixtureRequest) -> str:
    """How the servers of this test serve streams: ``fast`` or ``portable``."""
    return str(getattr(request, "param", "fast"))


@pytest.fixture
def start_server(tmp_path: Path, stream_mode: str) -> Iterator[ServerFactory]:
    """Start ``ssehub serve`` processes: ``start_server("--portable", store=...)``.

    Servers serve streams the way ``stream_mode`` says (see `pytest_generate_tests`).
    """
    factory = ServerFactory(tmp_path, stream_mode)
    yield factory
    factory.close()


@pytest.fixture(scope="module", params=STREAM_MODES)
def start_module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Like `start_server`, for servers shared by a module's tests, once per stream mode."""
    factory = ServerFactory(tmp_path_factory.mktemp("servers"), str(request.param))
    yield factory
    factory.close()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (uvloop is the server's business)."""
    return "asyncio"
