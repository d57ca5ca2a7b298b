"""Presence events from real servers: online, offline after the grace, undelivered
messages, and ``/sse/events/presence`` with its credentials and ``Last-Event-ID``."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from ssehub.auth_jwt import mint_token
from tests.conftest import ServerFactory, ServerProcess
from tests.sse import Stream

pytestmark = pytest.mark.anyio

SECRET = "presence-test-secret-that-is-long-enough"
API_KEY = "presence-key"


class PresenceStream(Stream):
    """An open ``/sse/events/presence``."""

    def __init__(self, base_url: str, **kwargs: dict[str, str]) -> None:
        super().__init__(base_url, "-", **kwargs)
        self.url = f"{base_url}/sse/events/presence"

    async def presence(self, timeout: float = 8.0) -> tuple[str, dict[str, object]]:
        """The next presence event: its id and its body (checked against each other)."""
        event = await self.next_message(timeout)
        assert event is not None, "the presence stream ended"
        body: dict[str, object] = json.loads(event.data)
        assert body["id"] == event.id
        assert body["type"] == event.event
        return event.id, body


def when(body: dict[str, object]) -> float:
    return datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00")).timestamp()


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/hub.db"


async def test_a_user_is_online_once_and_offline_after_the_grace_a_reload_is_silent(
    start_server: ServerFactory, store_url: str
) -> None:
    server = start_server("--offline-grace", "1.5", store=store_url)
    async with PresenceStream(server.url) as feed:
        async with Stream(server.url, "alice") as tab:
            assert (await tab.next_message()) is not None
            _, online = await feed.presence()
            assert (online["type"], online["user_id"]) == ("user.online", "alice")
        async with Stream(server.url, "alice") as reload:  # inside the grace
            assert (await reload.next_message()) is not None
            reopened = time.time()
        closed = time.time()
        _, offline = await feed.presence()
        assert (offline["type"], offline["user_id"]) == ("user.offline", "alice")
        assert when(offline) >= reopened - 0.002  # the reload's close, not the first one's
        assert time.time() - closed >= 1.4  # the grace, from the reload's close
        async with Stream(server.url, "alice") as again:
            assert (await again.next_message()) is not None
            _, back = await feed.presence()
            assert back["type"] == "user.online"


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_the_presence_stream_needs_publisher_credentials_and_resumes_after_an_id(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        "--auth", "jwt", "--jwt-secret", SECRET, "--publish-key", API_KEY,
        "--offline-grace", "0.2",
    )  # fmt: skip
    async with httpx.AsyncClient() as client:
        anonymous = await client.get(f"{server.url}/sse/events/presence")
        assert anonymous.status_code in (401, 403)
        assert "detail" in anonymous.json()
        head = await client.head(
            f"{server.url}/sse/events/presence", headers={"X-API-Key": API_KEY}
        )
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert (await client.get(f"{server.url}/healthz")).json()["streams"] == 0  # none held
        assert (await client.head(f"{server.url}/sse/events/presence")).status_code in (401, 403)
        bad = await client.get(
            f"{server.url}/sse/events/presence",
            headers={"X-API-Key": API_KEY, "Last-Event-ID": "not an id"},
        )
        assert bad.status_code == 400
    key = {"X-API-Key": API_KEY}
    async with PresenceStream(server.url, headers=key) as feed:
        token = await user_token(server, "bob")
        for _ in range(2):
            async with Stream(server.url, "bob", params={"access_token": token}) as tab:
                assert (await tab.next_message()) is not None
                await feed.presence()  # online
            await feed.presence()  # offline
    # Without Last-Event-ID: nothing from before the connect.
    async with (
        PresenceStream(server.url, headers=key) as live,
        Stream(server.url, "bob", params={"access_token": token}) as tab,
    ):
        assert (await tab.next_message()) is not None
        first_id, first = await live.presence()
        assert first["type"] == "user.online"
    async with PresenceStream(server.url, headers={**key, "Last-Event-ID": first_id}) as resumed:
        _, after = await resumed.presence()
        assert (after["type"], after["user_id"]) == ("user.offline", "bob")


async def user_token(server: ServerProcess, user: str) -> str:
    return mint_token(SECRET, user)


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_message_that_reached_no_stream_in_time_is_undelivered_a_replay_counts(
    start_server: ServerFactory, store_url: str
) -> None:
    server = start_server("--undelivered-after", "0.5", store=store_url)

    async def publish(client: httpx.AsyncClient, user: str, data: object) -> str:
        answer = await client.post(f"{server.url}/sse/users/{user}/messages", json=data)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    async with (
        PresenceStream(server.url) as feed,
        httpx.AsyncClient() as client,
        Stream(server.url, "alice") as tab,
    ):
        assert (await tab.next_message()) is not None
        await publish(client, "alice", {"data": "seen live"})
        assert (await tab.next_message()) is not None
        lost = await publish(client, "carol", {"data": {"n": [1, 2]}, "event": "report"})
        await publish(client, "dave", {"data": "replayed"})
        async with Stream(server.url, "dave") as late:  # in time: delivered by replay
            assert (await late.messages(2))[1].data == "replayed"
            last = await publish(client, "erin", {"data": "42"})
            undelivered: list[dict[str, object]] = []
            while len(undelivered) < 2:
                _, body = await feed.presence()
                if body["type"] == "message.undelivered":
                    undelivered.append(body)
    assert [(b["user_id"], b["message"]) for b in undelivered] == [
        ("carol", {"id": lost, "event": "report", "data": {"n": [1, 2]}}),
        ("erin", {"id": last, "event": None, "data": "42"}),  # a string stays a string
    ]


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_stopping_hub_ends_presence_and_the_events_survive_a_sqlite_restart(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/restart.db"
    server = start_server("--offline-grace", "60", store=store)
    async with PresenceStream(server.url) as feed, Stream(server.url, "sam") as tab:
        assert (await tab.next_message()) is not None
        online_id, online = await feed.presence()
        assert online["type"] == "user.online"
        server.stop()  # the grace is long; the stop ends the presence all the same
    again = start_server("--offline-grace", "60", store=store, port=server.port)
    headers = {"Last-Event-ID": online_id}
    async with PresenceStream(again.url, headers=headers) as resumed:
        _, offline = await resumed.presence()
        assert (offline["type"], offline["user_id"]) == ("user.offline", "sam")
        async with Stream(again.url, "sam") as back:
            assert (await back.next_message()) is not None
            _, online_again = await resumed.presence()
            assert online_again["type"] == "user.online"
