"""The README's walkthrough examples work as pasted on the default (SQLite) store."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, ServerFactory
from tests.sse import Stream

pytestmark = pytest.mark.anyio


def readme_resume_id() -> str:
    found = re.findall(r"Last-Event-ID: (\S+)'", (REPO / "README.md").read_text())
    assert found, "the README lost its Last-Event-ID example"
    assert len(set(found)) == 1
    return str(found[0])


async def test_the_readmes_last_event_id_resumes_right_after_it_on_sqlite(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_server(store=f"sqlite:///{tmp_path}/hub.db")
    resume = readme_resume_id()
    sent: list[str] = []
    async with httpx.AsyncClient(base_url=server.url) as client:
        while resume not in sent:
            answer = await client.post("/sse/users/alice/messages", json={"data": len(sent)})
            sent.append(answer.json()["id"])
            assert len(sent) < 100, f"the store never gave out the README's id {resume}"
        after = await client.post("/sse/users/alice/messages", json={"data": "after"})
    for header, query in [({"Last-Event-ID": resume}, {}), ({}, {"last_event_id": resume})]:
        async with Stream(server.url, "alice", headers=header, params=query) as alice:
            greeting, message = await alice.messages(2)
        assert greeting.data == "User 'alice' connected"
        assert (message.event, message.data, message.id) == ("message", "after", after.json()["id"])
