"""A real Redis for the tests: the one named by SSEHUB_TEST_REDIS_URL, the one at
127.0.0.1:6379 when it answers, or a ``redis-server`` started for the session.

Tests that stop Redis start their own `RedisServer`, never touching the shared one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

_session_url: str | None = None


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis at host:port answers PING (without a password)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` process on a free loopback port, stopped and started at will.

    Args:
        directory: where it keeps its files.
        persistent: keep an append-only file synced on every write, so a restart
            loses nothing; otherwise nothing is written to disk.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "the tests need redis-server (scripts/system-deps installs it) "
                "or SSEHUB_TEST_REDIS_URL"
            )
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.directory), *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def redis_url() -> str:
    """The URL of the Redis the tests share (see the module docstring)."""
    global _session_url
    if _session_url is None:
        from_env = os.environ.get("SSEHUB_TEST_REDIS_URL")
        if from_env:
            _session_url = from_env
        elif answers("127.0.0.1", 6379):
            _session_url = "redis://127.0.0.1:6379/0"
        else:
            directory = Path(tempfile.mkdtemp(prefix="ssehub-redis-"))
            server = RedisServer(directory).start()
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            atexit.register(server.stop)
            _session_url = server.url
    return _session_url


def store_url(prefix: str, base: str | None = None, **options: object) -> str:
    """A ``--store`` URL on ``base`` (the shared Redis by default), under its own prefix."""
    url = base or redis_url()
    query = "&".join(f"{name}={value}" for name, value in {"prefix": prefix, **options}.items())
    return url + ("&" if "?" in url else "?") + query


def forget_prefix(prefix: str, base: str | None = None) -> None:
    """Delete every key under ``prefix`` that a test left in a Redis (the shared one)."""
    import redis

    with redis.Redis.from_url(base or redis_url()) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        keys += client.scan_iter(match=f"{{{prefix}:*", count=1000)  # hash-tagged families
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
