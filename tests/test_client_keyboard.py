"""Ctrl-C and ``break`` in the clients' loops: the stream closes, nothing else is printed.

Each script runs in a real subprocess against a real hub; Ctrl-C is a real SIGINT.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, ServerFactory, ServerProcess


def readme_sync_example(url: str) -> str:
    section = (REPO / "README.md").read_text().split("## Python client", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    source = next(block for block in blocks if "SyncHubClient(" in block)
    return str(source).replace("http://127.0.0.1:8000", url)


SYNC_LOOP = """
import sys
from ssehub.client import SyncHubClient

with SyncHubClient(sys.argv[1]) as hub, hub.events("alice") as events:
    for event in events:
        print(event.data)
"""

ASYNC_LOOP = """
import asyncio, sys
from ssehub.client import HubClient

async def main() -> None:
    async with HubClient(sys.argv[1]) as hub:
        async for event in hub.events("alice"):
            print(event.data)

asyncio.run(main())
"""

BREAKS = """
import asyncio, sys
from ssehub.client import HubClient, SyncHubClient

url = sys.argv[1]

async def main() -> None:
    for _ in range(5):
        async with HubClient(url) as hub:
            async for event in hub.events("alice", greetings=True):
                break
    async with HubClient(url) as hub:
        for _ in range(5):
            async with hub.events("alice", greetings=True) as events:
                async for event in events:
                    break

asyncio.run(main())
for _ in range(5):
    with SyncHubClient(url) as hub:
        for event in hub.events("alice", greetings=True):
            break
        assert hub.status("alice")["connections"] == 0, "break left the stream open"
hub = SyncHubClient(url)
for event in hub.events("alice", greetings=True):
    break
hub.close()
print("done")
"""


def run_script(tmp_path: Path, source: str, url: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(source)
    return subprocess.Popen(
        [sys.executable, str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell may have started the tests with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def connections(server: ServerProcess, user_id: str) -> int:
    return int(httpx.get(f"{server.url}/sse/users/{user_id}").json()["connections"])


def wait_for_connections(server: ServerProcess, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while connections(server, "alice") != count:
        assert time.monotonic() < deadline, f"alice never had {count} streams open"
        time.sleep(0.05)


def interrupt(tmp_path: Path, server: ServerProcess, source: str) -> tuple[int, str]:
    """Run the script until its stream is open, Ctrl-C it; its exit code and stderr."""
    process = run_script(tmp_path, source, server.url)
    try:
        wait_for_connections(server, 1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=5)
    finally:
        process.kill()
    wait_for_connections(server, 0, timeout=5)  # the stream was closed, not abandoned
    return process.returncode, stderr


@pytest.fixture
def server(start_server: ServerFactory) -> ServerProcess:
    return start_server()


def test_ctrl_c_in_the_readmes_sync_loop_exits_quietly(
    tmp_path: Path, server: ServerProcess
) -> None:
    code, stderr = interrupt(tmp_path, server, readme_sync_example(server.url))
    assert (code, stderr) == (0, "")


@pytest.mark.parametrize("source", [SYNC_LOOP, ASYNC_LOOP], ids=["sync", "async"])
def test_ctrl_c_in_a_bare_loop_is_a_plain_keyboard_interrupt(
    tmp_path: Path, server: ServerProcess, source: str
) -> None:
    code, stderr = interrupt(tmp_path, server, source)
    assert code == -signal.SIGINT
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    if source is SYNC_LOOP:  # (asyncio.run chains its main task's CancelledError)
        assert stderr.count("Traceback") == 1, stderr
    assert "RuntimeError" not in stderr
    assert "never retrieved" not in stderr


def test_break_in_any_loop_closes_the_stream_and_prints_nothing(
    tmp_path: Path, server: ServerProcess
) -> None:
    process = run_script(tmp_path, BREAKS, server.url)
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout, stderr) == (0, "done\n", "")
    assert connections(server, "alice") == 0
