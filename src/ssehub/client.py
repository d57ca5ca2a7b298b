"""A Python client for an ssehub server: follow a user's stream, publish, read state.

``async for event in HubClient(url).events("alice")`` yields the user's events and keeps
going across drops and server restarts: it reconnects with back-off, sends
``Last-Event-ID`` so nothing is missed or repeated, and honours the server's ``retry:``
hint. `SyncHubClient` offers the same to scripts without asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import EventSource

from ssehub.exceptions import (
    AuthenticationFailed,
    InvalidInput,
    LimitExceeded,
    PayloadTooLarge,
    PermissionDenied,
    SsehubError,
    StoreUnavailable,
)

logger = logging.getLogger("ssehub.client")

KEEPALIVE = "keepalive"
RESET = "reset"
DISCONNECTED = "disconnected"
EXPIRED = "expired"
CONNECTED = "connected"

Token = str | Callable[[], str] | None


class HubUnreachable(SsehubError, ConnectionError):
    """The hub did not answer (refused, timed out, or the connection broke)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event of a user's stream.

    Attributes:
        event: the event name: ``message`` for plain messages, ``keepalive``, ``reset``
            (history after the resume point was trimmed), ``disconnected``, ``expired``,
            ``connected`` (the greeting; only with ``greetings=True``) or an application's.
        data: the data, as text (a JSON value is its compact JSON text).
        id: the event id; None for events that carry none (greetings, keep-alives, notices).
    """

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON.

        Raises:
            ValueError: the data is not JSON.
        """
        return orjson.loads(self.data)


def _unreachable(url: str, exc: httpx.HTTPError) -> HubUnreachable:
    return HubUnreachable(f"cannot reach the hub at {url} ({exc or type(exc).__name__})")


def _error_for(response: httpx.Response) -> SsehubError:
    try:
        detail = str(orjson.loads(response.content)["detail"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = response.reason_phrase or "error"
    message = f"{response.status_code} {detail}"
    kinds: dict[int, type[SsehubError]] = {
        400: InvalidInput,
        401: AuthenticationFailed,
        403: PermissionDenied,
        404: InvalidInput,
        413: PayloadTooLarge,
        422: InvalidInput,
        429: LimitExceeded,
        503: StoreUnavailable,
    }
    return kinds.get(response.status_code, SsehubError)(message)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise _error_for(response)


def _retryable(error: SsehubError) -> bool:
    return isinstance(error, (LimitExceeded, StoreUnavailable, HubUnreachable)) or (
        type(error) is SsehubError  # a 5xx
    )


class EventStream:
    """The events of one user, across reconnects; an async iterator and context manager.

    Create it with `HubClient.events`. ``last_event_id`` is where the next connection
    resumes; ``connected`` tells whether a stream is open right now; ``retry`` is the
    server's last ``retry:`` hint in seconds; ``reconnects`` counts reconnections.

    Options (keyword arguments of `HubClient.events`): ``last_event_id`` to resume
    after; ``keepalives`` and ``greetings`` to yield those too; ``stop_on_disconnect``
    (end when the hub disconnects the user); ``backoff`` (first delay, seconds, when the
    server sent no ``retry:``) and ``max_backoff``; ``max_attempts`` (failures in a row
    before giving up; None retries for ever); ``on_state(state, detail)``, called with
    ``"connected"`` and ``"reconnecting"``; ``read_timeout`` (seconds of silence after
    which the connection counts as dead and is replaced; set it above the hub's
    keep-alive interval; None waits for ever).

    Raises (from iteration):
        AuthenticationFailed, PermissionDenied, InvalidInput: the hub refuses the stream
            for good (a bad token, user id or resume id); never retried.
        HubUnreachable: ``max_attempts`` connections in a row failed.
    """

    def __init__(
        self,
        client: HubClient,
        user_id: str,
        *,
        last_event_id: str | None = None,
        keepalives: bool = False,
        greetings: bool = False,
        stop_on_disconnect: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_attempts: int | None = None,
        on_state: Callable[[str, str], None] | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self.user_id = user_id
        self.last_event_id = last_event_id
        self.connected = False
        self.reconnects = 0
        self._client = client
        self._keepalives = keepalives
        self._greetings = greetings
        self._stop_on_disconnect = stop_on_disconnect
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self._on_state = on_state or (lambda state, detail: None)
        self._read_timeout = read_timeout
        self.retry: float | None = None
        self._iterator: AsyncGenerator[Event, None] | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __anext__(self) -> Event:
        return await self.__aiter__().__anext__()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the open connection, if any; iteration ends."""
        if self._iterator is not None:
            await self._iterator.aclose()

    def _delay(self, failures: int) -> float:
        # The server's retry: hint is the base; failures in a row double it, with
        # jitter so that clients cut off together do not come back together.
        base = self.retry if self.retry is not None else self._backoff
        delay: float = min(self._max_backoff, base * 2.0 ** max(0, failures - 1))
        return delay * random.uniform(0.8, 1.0)

    async def _run(self) -> AsyncGenerator[Event, None]:
        failures = 0
        while True:
            try:
                # aclosing: leaving early closes the connection now, not at collection.
                async with contextlib.aclosing(self._connect_once()) as events:
                    async for event in events:
                        failures = 0
                        yield event
                        if event.event == DISCONNECTED and self._stop_on_disconnect:
                            return
            except SsehubError as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if self._max_attempts is not None and failures >= self._max_attempts:
                    raise
                logger.info("stream of %r: %s; retrying", self.user_id, exc)
                reason = str(exc)
            else:
                reason = "the hub ended the stream"
            self.connected = False
            self.reconnects += 1
            delay = self._delay(max(failures, 1))
            self._on_state("reconnecting", f"{reason}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _connect_once(self) -> AsyncGenerator[Event, None]:
        headers = {"accept": "text/event-stream", **self._client.auth_headers()}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        url = f"/sse/connect/{quote(self.user_id, safe='')}"
        try:
            async with self._client.http.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=self._read_timeout)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error_for(response)
                self.connected = True
                resume = self.last_event_id
                self._on_state("connected", f"resuming after {resume}" if resume else "")
                previous_id = ""
                greeted = False
                async for sse in EventSource(response).aiter_sse():
                    if sse.retry is not None:
                        self.retry = sse.retry / 1000
                    # httpx-sse repeats the last id on events without one (as the spec's
                    # "last event ID" does); ids only increase, so a repeat means none.
                    own_id = sse.id if sse.id and sse.id != previous_id else None
                    previous_id = sse.id
                    name = sse.event or "message"
                    if not greeted and own_id is None and name == "message":
                        greeted = True
                        if self._greetings:
                            yield Event(CONNECTED, sse.data)
                        continue
                    greeted = True
                    if own_id is not None:
                        self.last_event_id = own_id
                    if name == KEEPALIVE and not self._keepalives:
                        continue
                    if name == "message" and not sse.data and own_id is None:
                        continue  # a frame holding only retry:
                    yield Event(name, sse.data, own_id)
        except httpx.HTTPError as exc:
            raise _unreachable(self._client.url, exc) from exc
        finally:
            self.connected = False


class HubClient:
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

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

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
            raise _unreachable(self.url, exc) from exc
        _raise_for(response)
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


class SyncHubClient:
    """`HubClient` for scripts without asyncio: the same methods, blocking.

    Runs an event loop in a helper thread; use it as a context manager (or call
    `close`).
    """

    def __init__(self, url: str, **options: Any) -> None:
        import anyio.from_thread

        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client: HubClient = self._portal.call(_make_client, url, options)
        self._streams: weakref.WeakSet[SyncEventStream] = weakref.WeakSet()

    def __enter__(self) -> SyncHubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop its thread."""
        for stream in list(self._streams):
            stream.close()
        self._portal.call(self._client.aclose)
        self._portal_cm.__exit__(None, None, None)

    def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        """See `HubClient.send`."""
        return self._portal.call(lambda: self._client.send(user_id, data, event=event))

    def broadcast(self, data: object, *, event: str | None = None) -> None:
        """See `HubClient.broadcast`."""
        self._portal.call(lambda: self._client.broadcast(data, event=event))

    def status(self, user_id: str) -> dict[str, Any]:
        """See `HubClient.status`."""
        return self._portal.call(self._client.status, user_id)

    def events(self, user_id: str, **options: Any) -> SyncEventStream:
        """See `HubClient.events`; a blocking iterator. Close it to close the stream."""
        stream = SyncEventStream(self._portal, self._client.events(user_id, **options))
        self._streams.add(stream)
        return stream


class SyncEventStream:
    """A blocking `EventStream`: iterate it, and close it (or use ``with``) when done."""

    def __init__(self, portal: Any, stream: EventStream) -> None:
        self.stream = stream
        self._portal = portal
        self._iterator = aiter(stream)
        self._closed = False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        try:
            event: Event = self._portal.call(self._iterator.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None
        return event

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the stream's connection. Idempotent."""
        if not self._closed:
            self._closed = True
            self._portal.call(self.stream.aclose)


async def _make_client(url: str, options: dict[str, Any]) -> HubClient:
    # httpx binds its pool to the loop that first uses it: make it in the portal's.
    return HubClient(url, **options)


__all__ = [
    "Event",
    "EventStream",
    "HubClient",
    "HubUnreachable",
    "SyncEventStream",
    "SyncHubClient",
]
