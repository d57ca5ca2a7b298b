"""What the publish routes do, apart from how a request reaches them.

FastAPI's routes (`ssehub.api.publish`) document and serve them in any app. In ``ssehub
serve``'s own app, `StreamFront` also hands a ``POST`` to one of their paths straight to
`Publishing.door`, before the app routes: a publish request is the hot path of
publishing, and FastAPI's routing and per-route work (matching every route, solving
dependencies, its exit stack) cost more than the publish itself (about 60 of 118 µs
in-process for a batch of one message). Both ways answer through the same methods,
so they answer alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ssehub.api._body import message_fields, read_json
from ssehub.auth import Authenticator
from ssehub.exceptions import InvalidInput, PayloadTooLarge, SsehubError
from ssehub.front.answers import error_response, json_response
from ssehub.hub import Hub
from ssehub.idempotency import HEADER, Idempotency
from ssehub.limits import check_user_id

BATCH_PATH: Final = "/sse/messages"
BROADCAST_PATH: Final = "/sse/broadcast"
_USERS: Final = "/sse/users/"
_MESSAGES: Final = "/messages"


class Publishing:
    """Sending one message, a batch, a broadcast: checks, idempotency and the answer.

    Args:
        hub: the hub that sends.
        auth: who may publish.
    """

    def __init__(self, hub: Hub, auth: Authenticator) -> None:
        self.hub = hub
        self.auth = auth
        self.limits = hub.limits
        self._once = Idempotency(hub.store, ttl=hub.store.retention.max_age + 60.0)

    # -- the door before routing ----------------------------------------------------------

    def door(self, path: str, scope: Scope, receive: Receive, send: Send) -> Awaitable[None] | None:
        """Answer a ``POST`` to ``path`` (the app-relative path) if it is a publish
        route's; None if it is not (the app routes it)."""
        if path == BATCH_PATH:
            return self._answer(self.send_batch, scope, receive, send)
        if path == BROADCAST_PATH:
            return self._answer(self.broadcast, scope, receive, send)
        if path.startswith(_USERS) and path.endswith(_MESSAGES):
            user_id = path[len(_USERS) : -len(_MESSAGES)]
            if user_id and "/" not in user_id:

                def send_one(request: Request) -> Awaitable[Response]:
                    return self.send_one(request, user_id)

                return self._answer(send_one, scope, receive, send)
        return None

    @staticmethod
    async def _answer(
        handle: Callable[[Request], Awaitable[Response]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            response = await handle(Request(scope, receive))
        except SsehubError as exc:  # as `SsehubRoute` answers on the routes
            response = error_response(exc)
        await response(scope, receive, send)

    # -- the routes' work ---------------------------------------------------------------

    async def send_one(self, request: Request, user_id: str) -> Response:
        """``POST /sse/users/{user_id}/messages``."""
        hub = self.hub
        check_user_id(user_id, max_length=self.limits.max_user_id_length)
        self.auth.publisher(request.headers, request.query_params)
        body = await read_json(request, max_bytes=self.limits.max_body_bytes)
        data, event = message_fields(body)
        payload = hub.encode(data, event)

        async def publish() -> dict[str, Any]:
            (event_id,) = await hub.send_encoded([(user_id, payload)])
            status = await hub.status(user_id)
            return {"id": event_id, "user_id": user_id, "status": status.status.value}

        return await self._idempotent(request, f"user {user_id}", body, publish)

    async def send_batch(self, request: Request) -> Response:
        """``POST /sse/messages``."""
        limits = self.limits
        self.auth.publisher(request.headers, request.query_params)
        body = await read_json(request, max_bytes=limits.max_body_bytes)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            raise InvalidInput('body must be {"messages": [...]}')
        if len(messages) > limits.max_batch:
            raise PayloadTooLarge(f"a batch holds at most {limits.max_batch} messages")
        items = self._batch_items(messages)
        hub = self.hub

        async def publish() -> dict[str, Any]:
            ids = await hub.send_encoded(items)
            return {"ids": ids, "count": len(ids)}

        return await self._idempotent(request, "batch", body, publish)

    async def broadcast(self, request: Request) -> Response:
        """``POST /sse/broadcast``."""
        hub = self.hub
        self.auth.publisher(request.headers, request.query_params)
        body = await read_json(request, max_bytes=self.limits.max_body_bytes)
        data, event = message_fields(body)
        payload = hub.encode(data, event)

        async def publish() -> dict[str, Any]:
            await hub.broadcast_encoded(payload)
            return {"status": "accepted"}

        return await self._idempotent(request, "broadcast", body, publish)

    async def _idempotent(
        self, request: Request, scope: str, body: Any, publish: Callable[[], Awaitable[Any]]
    ) -> Response:
        # Every publish answers through here: 202 with the (first) answer, or an error
        # (IdempotencyKeyReused: 409).
        answer = await self._once.run(request.headers.get(HEADER), scope, body, publish)
        return json_response(202, answer)

    def _batch_items(self, messages: list[Any]) -> list[tuple[str, bytes]]:
        # Per message: the hot path of publishing, so the checks are inline and an
        # error's wording is worked out only when there is one.
        items: list[tuple[str, bytes]] = []
        encode = self.hub.encode
        max_length = self.limits.max_user_id_length
        for index, message in enumerate(messages):
            if type(message) is not dict or "data" not in message:
                message_fields(message, where=f"messages[{index}]")  # raises the reason
            user_id = message.get("user_id")
            if type(user_id) is not str:
                raise InvalidInput(f"messages[{index}]: 'user_id' must be a string")
            event = message.get("event")
            if event is not None and type(event) is not str:
                raise InvalidInput(f"messages[{index}]: 'event' must be a string")
            check_user_id(user_id, max_length=max_length)
            items.append((user_id, encode(message["data"], event)))
        return items
