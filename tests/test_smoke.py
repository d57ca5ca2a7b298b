from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.sse import Stream

pytestmark = pytest.mark.anyio


async def test_a_message_sent_over_http_reaches_the_users_open_stream(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with Stream(server.url, "alice") as alice:
        greeting = await alice.next()
        assert greeting is not None
        assert greeting.data == "User 'alice' connected"
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{server.url}/sse/users/alice/messages", json={"data": "hello"}
            )
        assert answer.status_code == 202
        message = await alice.next_message()
        assert message is not None
        assert message.data == "hello"
        assert message.id == answer.json()["id"]
