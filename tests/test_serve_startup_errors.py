"""`ssehub serve` that cannot start says why in one line and exits 2, like any bad setting.

Real ``ssehub serve`` processes: a SQLite file another server holds, a path that cannot
be created, a port another process listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from ssehub import server
from ssehub.exceptions import ConfigurationError
from ssehub.settings import Settings
from tests.conftest import ServerFactory, free_port


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    return subprocess.run(
        [sys.executable, "-m", "ssehub", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2; the last line is the error and nothing else says error, or ready."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert "ssehub ready" not in output
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("ssehub: error: "), output
    errors = [
        line
        for line in output.splitlines()
        if line.startswith("ssehub: error") or " ERROR " in line or "Error:" in line
    ]
    assert errors == [last], output
    for word in words:
        assert word in last
    return last


def test_a_sqlite_file_held_by_another_server(tmp_path: Path, start_server: ServerFactory) -> None:
    database = tmp_path / "hub.db"
    start_server(store=f"sqlite:///{database}")
    done = serve("--store", f"sqlite:///{database}", "--port", str(free_port()), cwd=tmp_path)
    assert_one_error_line(done, "in use by another process")


def test_a_sqlite_path_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    store = f"sqlite:///{blocker}/hub.db"
    done = serve("--store", store, "--port", str(free_port()), cwd=tmp_path)
    assert_one_error_line(done, "cannot open SQLite file")


def test_a_port_in_use_is_reported_before_the_store_opens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--store", f"sqlite:///{tmp_path}/hub.db", "--port", str(port), cwd=tmp_path)
    assert_one_error_line(done, f"127.0.0.1:{port} is already in use")
    assert "SQLite store" not in done.stderr
    assert not (tmp_path / "hub.db").exists()


def test_http2_with_a_uvicorn_that_has_none_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("zttp")

    class UvicornConfigBefore054:  # no ``http2`` parameter
        def __init__(self, app: object, host: str = "127.0.0.1", port: int = 8000) -> None:
            pass

    monkeypatch.setattr(uvicorn, "Config", UvicornConfigBefore054)
    with pytest.raises(ConfigurationError, match=r"--http2 needs uvicorn 0\.54 or later"):
        server.uvicorn_config(Settings(http2=True), object())
