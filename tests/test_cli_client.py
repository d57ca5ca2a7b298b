"""The client commands (listen, send, broadcast, status, token) as real processes."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from ssehub.cli import main
from tests.conftest import ServerFactory, free_port

FAST_RETRY = {"SSEHUB_RETRY_MS": "100"}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}


def ssehub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ssehub ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "ssehub", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**_env(), **(env or {})},
    )


class Listener:
    """``ssehub listen`` running in the background, its output read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(pipe, lines), daemon=True).start()

    @staticmethod
    def _pump(pipe: IO[str] | None, lines: queue.Queue[str | None]) -> None:
        assert pipe is not None
        with pipe:
            for line in pipe:
                lines.put(line.rstrip("\n"))
        lines.put(None)

    def wait_err(self, prefix: str, timeout: float = 15.0) -> str:
        """The next stderr line that starts with ``prefix``."""
        while True:
            line = self.err.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"listen ended before {prefix!r}")
            if line.startswith(prefix):
                return line

    def finish(self, timeout: float = 20.0) -> tuple[int, list[str]]:
        """Wait for the exit; return the exit code and the stdout lines."""
        code = self.proc.wait(timeout)
        lines: list[str] = []
        while (line := self.out.get(timeout=5)) is not None:
            lines.append(line)
        return code, lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.kill()


def test_listen_prints_what_send_and_broadcast_deliver_and_resumes_after_a_restart(
    start_server: ServerFactory, tmp_path: Path, listeners: list[Listener]
) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    server = start_server(store=store, env=FAST_RETRY)
    listener = Listener("alice", "--url", server.url, "--json", "--count", "4")
    listeners.append(listener)
    listener.wait_err("-- connected")

    first_id = httpx.post(f"{server.url}/sse/users/alice/messages", json={"data": "hello"}).json()[
        "id"
    ]
    server.stop()
    server = start_server(store=store, env=FAST_RETRY, port=server.port)
    assert listener.wait_err("-- connected") == f"-- connected (resuming after {first_id})"
    sent = ssehub("send", "alice", "--json", '{"n": 2}', "--event", "report", "--url", server.url)
    assert sent.returncode == 0, sent.stderr
    assert ssehub("broadcast", "to all", "--url", server.url).stdout == "broadcast accepted\n"
    httpx.post(f"{server.url}/sse/users/alice/messages", json={"data": "bye"})

    code, lines = listener.finish()
    events = [json.loads(line) for line in lines]
    assert code == 0
    assert [(e["event"], e["data"]) for e in events] == [
        ("message", "hello"),
        ("report", '{"n":2}'),
        ("message", "to all"),
        ("message", "bye"),
    ]
    assert events[0]["id"] == first_id
    assert events[1]["id"] == sent.stdout.strip()  # send prints the event id


def test_listen_shows_events_readably(
    start_server: ServerFactory, listeners: list[Listener]
) -> None:
    server = start_server()
    listener = Listener("bob", "--url", server.url, "--count", "2")
    listeners.append(listener)
    listener.wait_err("-- connected")
    httpx.post(f"{server.url}/sse/users/bob/messages", json={"data": "plain text"})
    httpx.post(f"{server.url}/sse/users/bob/messages", json={"data": {"Name": "Victor"}})
    code, lines = listener.finish()
    assert code == 0
    assert lines[0].endswith("  plain text")
    assert " message  #" in lines[0]
    assert " message  #" in lines[1]
    assert lines[2:] == ["{", '  "Name": "Victor"', "}"]


def test_status_shows_one_user_or_all_of_them(
    start_server: ServerFactory, listeners: list[Listener]
) -> None:
    server = start_server()
    listener = Listener("carol", "--url", server.url)
    listeners.append(listener)
    listener.wait_err("-- connected")
    httpx.post(f"{server.url}/sse/users/dave/messages", json={"data": "waiting"})
    one = ssehub("status", "carol", "--url", server.url)
    assert one.returncode == 0
    assert one.stdout.startswith("carol  connected  streams=1  pending=0  last_seen=")
    every = ssehub("status", "--json", "--url", server.url)
    assert [user["user_id"] for user in json.loads(every.stdout)] == ["carol"]


def test_token_mints_a_jwt_the_hub_accepts(
    start_server: ServerFactory, listeners: list[Listener], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "a-test-secret-that-is-long-enough-for-hs256"
    server = start_server("--auth", "jwt", "--jwt-secret", secret)
    minted = ssehub("token", "dana", "--ttl", "60", env={"SSEHUB_JWT_SECRET": secret})
    assert minted.returncode == 0
    assert main(["token", "ops", "--publish", "--secret", secret]) == 0
    publisher = capsys.readouterr().out.strip()

    refused = ssehub("send", "dana", "hi", "--url", server.url)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("ssehub send: error: 401")

    listener = Listener("dana", "--url", server.url, "--token", minted.stdout.strip(),
                        "--count", "1", "--json")  # fmt: skip
    listeners.append(listener)
    listener.wait_err("-- connected")
    answer = httpx.post(f"{server.url}/sse/users/dana/messages", json={"data": "hi"},
                        headers={"Authorization": f"Bearer {publisher}"})  # fmt: skip
    assert answer.status_code == 202
    code, lines = listener.finish()
    assert (code, json.loads(lines[0])["data"]) == (0, "hi")


@pytest.mark.parametrize("command", ["send", "listen"])
def test_an_unreachable_hub_is_one_clear_line_and_a_non_zero_exit(command: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = ["send", "erin", "hi"] if command == "send" else ["listen", "erin"]
    result = ssehub(*args, env={"SSEHUB_URL": url})
    assert result.returncode == 1
    assert (
        result.stderr == f"ssehub {command}: error: cannot reach the hub at {url} "
        "(All connection attempts failed)\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "erin"], "give the message as TEXT or as --json JSON"),
        (["send", "erin", "--json", "{nope"], "--json is not valid JSON"),
        (["broadcast", "hi", "--json", "1"], "give the message as TEXT or as --json, not both"),
        (["token", "erin"], "no secret: pass --secret or set SSEHUB_JWT_SECRET"),
        (["listen", "erin", "--count", "0"], "--count must be greater than 0"),
    ],
)
def test_bad_arguments_are_one_clear_line_and_a_non_zero_exit(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"ssehub {args[0]}: error: {message}")
    assert captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.parametrize("command", ["listen", "send", "broadcast", "status", "token"])
def test_every_command_explains_itself_in_its_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: ssehub {command}" in capsys.readouterr().out
