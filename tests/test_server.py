"""`ssehub serve`'s process set-up."""

from __future__ import annotations

import resource
import subprocess
import sys


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
