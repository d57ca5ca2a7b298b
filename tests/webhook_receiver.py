"""A webhook receiver for the tests: a real HTTP server process on a loopback port.

It checks each request's signature and writes one JSON line per request it received
(when it arrived, its headers and body, whether the signature was good). It can
answer 500 to the first requests, or answer them only after a delay.

Run: ``python -m tests.webhook_receiver --port P --secret S --log FILE
[--fail-first N] [--slow-first N --delay SECONDS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def signature_is_valid(secret: str, header: str, body: bytes) -> bool:
    """Whether ``header`` is ``t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    signed = fields.get("t", "").encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def serve(
    port: int, secret: str, log: Path, fail_first: int, slow_first: int, delay: float
) -> None:
    lock = threading.Lock()
    state = {"seen": 0, "inflight": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state["seen"] += 1
                state["inflight"] += 1
                number, inflight = state["seen"], state["inflight"]
            status = 500 if number <= fail_first else 200
            record = {
                "at": time.time(),
                "number": number,
                "inflight": inflight,
                "id": self.headers.get("Ssehub-Webhook-Id"),
                "signature": self.headers.get("Ssehub-Signature", ""),
                "content_type": self.headers.get("Content-Type"),
                "body": body.decode(),
                "valid": signature_is_valid(secret, self.headers.get("Ssehub-Signature", ""), body),
                "status": status,
            }
            with lock, log.open("a") as out:
                out.write(json.dumps(record) + "\n")
            if number <= slow_first:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            with lock:
                state["inflight"] -= 1

        def do_GET(self) -> None:
            # Who answers on this port: the test's own receiver, not another process.
            answer = str(log).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class PortTaken(RuntimeError):
    """The receiver's port was taken by another process before it could listen."""


class Receiver:
    """A receiver process for one test; `start` it, read what it `received`."""

    def __init__(self, directory: Path, port: int, secret: str, *options: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.secret = secret
        self.log = directory / f"received-{port}.jsonl"
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Receiver:
        """Start the process and wait until it accepts connections."""
        with self.log.with_suffix(".err").open("ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.webhook_receiver", "--port", str(self.port),
                 "--secret", self.secret, "--log", str(self.log), *self.options],
                cwd=REPO,
                stdin=subprocess.DEVNULL,  # never the test worker's own pipes
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return self
            if self.proc.poll() is not None:  # the port was taken meanwhile
                raise PortTaken(f"the webhook receiver could not listen on {self.port}")
            time.sleep(0.05)
        raise RuntimeError("the webhook receiver did not start")

    def answers(self) -> bool:
        """Whether this receiver (no other process) answers on its port."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1.0) as got:
                return bool(got.read() == str(self.log).encode())
        except OSError:
            return False

    def accepts(self) -> bool:
        """Whether something accepts connections on the port."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    async def wait_for_port(self, timeout: float = 10.0) -> None:
        """Wait until something (maybe not this receiver) accepts connections on the port."""
        deadline = time.monotonic() + timeout
        while not self.accepts():
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing accepts connections on port {self.port}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Stop the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def received(self) -> list[dict[str, Any]]:
        """Every request received so far, in arrival order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests were received; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.received()
            if len(received) >= count:
                return received
            await asyncio.sleep(0.02)
        raise AssertionError(f"received {len(self.received())} requests, wanted {count}")


ReceiverFactory = Callable[..., Receiver]


@contextlib.contextmanager
def receivers(directory: Path, secret: str) -> Iterator[ReceiverFactory]:
    """Make receivers (started unless ``start=False``); stop them all on the way out."""
    from tests.conftest import free_port  # not at the top: the receiver process skips it

    made: list[Receiver] = []

    def make(*options: str, start: bool = True, port: int | None = None) -> Receiver:
        for attempt in range(3):
            made.append(Receiver(directory, port or free_port(), secret, *options))
            if not start:
                return made[-1]
            try:
                return made[-1].start()
            except PortTaken:  # another process took the free port first: another one
                if port is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    try:
        yield make
    finally:
        for receiver in made:
            receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--slow-first", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    serve(args.port, args.secret, args.log, args.fail_first, args.slow_first, args.delay)


if __name__ == "__main__":
    main()
