"""`ssehub serve`'s process set-up."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from ssehub.server import LISTEN_BACKLOG
from tests.conftest import ServerFactory


def test_serve_raises_the_open_file_limit_to_the_hard_limit() -> None:
    code = (
        "import resource; from ssehub.server import raise_open_file_limit; "
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))

    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(hard), str(hard)]


def test_serve_listens_with_the_largest_backlog_the_kernel_allows(
    start_server: ServerFactory,
) -> None:
    # A restart storm brings every client back at once: with a short accept queue the
    # kernel drops their SYNs, and they retry only after a second or more.
    server = start_server()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == min(somaxconn, LISTEN_BACKLOG)  # Send-Q: the backlog
    assert LISTEN_BACKLOG > 2048  # uvicorn's default
