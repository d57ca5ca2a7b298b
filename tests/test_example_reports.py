"""The runnable example ``examples/reports_app.py``: its service alone, and the app for real."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from ssehub.client import Event, HubClient
from ssehub.messenger import UserStatus
from tests.conftest import REPO, free_port


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reports_app", REPO / "examples/reports_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reports_app = _load_example()

pytestmark = pytest.mark.anyio


class RecordingMessenger:
    """A fake `Messenger` that keeps what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object, str | None]] = []

    async def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        self.sent.append((user_id, data, event))
        return str(len(self.sent))

    async def send_many(self, messages: object) -> list[str]:
        raise AssertionError("not used")

    async def broadcast(self, data: object, *, event: str | None = None) -> None:
        raise AssertionError("not used")

    async def status(self, user_id: str) -> UserStatus:
        raise AssertionError("not used")

    async def disconnect(self, user_id: str) -> None:
        raise AssertionError("not used")


async def test_the_service_reports_progress_and_the_result_through_its_messenger() -> None:
    messenger = RecordingMessenger()
    report = await reports_app.ReportService(messenger, step_seconds=0).build("ann", "Sales")
    assert [event for _, _, event in messenger.sent] == ["progress"] * 3 + ["report"]
    assert {user for user, _, _ in messenger.sent} == {"ann"}
    assert messenger.sent[0][1] == {"report": report.id, "step": 1, "of": 3,
                                    "doing": "collecting figures"}  # fmt: skip
    assert messenger.sent[-1][1] == report


@pytest.fixture
def reports_server(tmp_path: Path) -> Iterator[str]:
    """The example under a real uvicorn process."""
    port = free_port()
    env = {**os.environ, "REPORTS_STEP_SECONDS": "0.02", "REPORTS_KEEPALIVE": "0.5"}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "examples"),
               "--port", str(port), "reports_app:app"]  # fmt: skip
    with (tmp_path / "uvicorn.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            try:
                if httpx.get(url + "/openapi.json", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the example did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_user_watches_their_report_being_built(reports_server: str) -> None:
    async with HubClient(reports_server) as client:
        events: list[Event] = []
        connected = asyncio.Event()

        async def watch() -> None:
            stream = client.events("bea", on_state=lambda state, detail: connected.set())
            async with stream:
                async for event in stream:
                    events.append(event)
                    if event.event == "report":
                        return

        watcher = asyncio.create_task(watch())
        async with asyncio.timeout(15):
            await connected.wait()
            answer = await client.http.post("/reports/bea", json={"title": "Sales"})
            await watcher
    assert answer.status_code == 201
    report = answer.json()
    assert [event.event for event in events] == ["progress"] * 3 + ["report"]
    assert [event.json()["step"] for event in events[:3]] == [1, 2, 3]
    assert events[-1].json() == report == {"id": report["id"], "title": "Sales",
                                           "url": f"/reports/{report['id']}.pdf"}  # fmt: skip
