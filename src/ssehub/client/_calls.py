"""`HubClient`: the HTTP calls to a hub (publish, read state) and where streams start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ssehub.client._closing import AsyncClosedOnExit
from ssehub.client._errors import raise_for, unreachable
from ssehub.client._stream import EventStream

Token = str | Callable[[], str] | None


class HubClient(AsyncClosedOnExit):
    """An async client of one ssehub server.

    Args:
        url: the hub's base URL, e.g. ``http://127.0.0.1:8000``.
        token: a JWT (or a function returning a fresh one) sent as ``Authorization:
            Bearer``; needed with ``--auth jwt``.
        publish_key: an API key allowed to publish (``--publish-key``), sent as
            ``X-API-Key``.
        http: a ready `httpx.AsyncClient` whose base URL is the hub (the caller closes it).
        timeout: seconds for requests other than streams.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        publish_key: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._publish_key = publish_key
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client, if this object made it."""
        if self._owns_http:
            await self.http.aclose()

    def auth_headers(self) -> dict[str, str]:
        """The credential headers of every request."""
        headers: dict[str, str] = {}
        token = self._token() if callable(self._token) else self._token
        if token:
            headers["authorization"] = f"Bearer {token}"
        if self._publish_key:
            headers["x-api-key"] = self._publish_key
        return headers

    def events(self, user_id: str, **options: Any) -> EventStream:
        """The user's events, across reconnects; see `EventStream` for ``options``."""
        return EventStream(self, user_id, **options)

    async def _request(
        self, method: str, path: str, body: object = None, params: dict[str, str] | None = None
    ) -> Any:
        content = None if body is None else orjson.dumps(body)
        headers = self.auth_headers()
        if content is not None:
            headers["content-type"] = "application/json"
        try:
            response = await self.http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from exc
        raise_for(response)
        return orjson.loads(response.content) if response.content else None

    async def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        """Send a message to a user; return its event id."""
        answer = await self._request(
            "POST", f"/sse/users/{quote(user_id, safe='')}/messages", _message(data, event)
        )
        return str(answer["id"])

    async def broadcast(self, data: object, *, event: str | None = None) -> None:
        """Send a message to every connected user."""
        await self._request("POST", "/sse/broadcast", _message(data, event))

    async def status(self, user_id: str) -> dict[str, Any]:
        """A user's status: ``status``, ``connections``, ``last_seen``, ``pending``."""
        answer: dict[str, Any] = await self._request("GET", f"/sse/users/{quote(user_id, safe='')}")
        return answer

    async def users(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Every known user's status (all pages), optionally only those in ``status``."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query = {"limit": "1000"}
            if status:
                query["status"] = status
            if after:
                query["after"] = after
            page = await self._request("GET", "/sse/users", params=query)
            found.extend(page["users"])
            after = page.get("next")
            if not after:
                return found

    async def alive(self) -> dict[str, Any]:
        """The hub's ``/healthz`` answer: it raises `HubUnreachable` if the hub is down."""
        answer: dict[str, Any] = await self._request("GET", "/healthz")
        return answer

    async def health(self) -> dict[str, Any]:
        """The hub's ``/readyz`` answer (raises `StoreUnavailable` when degraded)."""
        answer: dict[str, Any] = await self._request("GET", "/readyz")
        return answer


def _message(data: object, event: str | None) -> dict[str, object]:
    body: dict[str, object] = {"data": data}
    if event is not None:
        body["event"] = event
    return body
