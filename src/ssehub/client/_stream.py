"""Reading a user's stream: `EventStream` follows it across drops and restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent

from ssehub.client._closing import AsyncClosedOnExit
from ssehub.client._errors import error_for, transient, unreachable
from ssehub.exceptions import SsehubError

if TYPE_CHECKING:
    from ssehub.client._calls import HubClient

logger = logging.getLogger("ssehub.client")

KEEPALIVE = "keepalive"
RESET = "reset"
DISCONNECTED = "disconnected"
EXPIRED = "expired"
CONNECTED = "connected"


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


class EventStream(AsyncClosedOnExit):
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

    Only what may pass is retried: no answer, a 502/503/504, a 429 with
    ``Retry-After`` (waiting at least that long). It is a plain object, not a
    generator, so leaving a loop early, or a cancellation, leaves nothing behind for
    the garbage collector to close; `aclose` (or ``async with``) closes the connection.

    Raises (from iteration):
        AuthenticationFailed, PermissionDenied, InvalidInput: the hub refuses the stream
            for good (a bad token, user id or resume id); never retried.
        SsehubError: any other refusal that would be the same next time.
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
        self.retry: float | None = None
        self._client = client
        self._keepalives = keepalives
        self._greetings = greetings
        self._stop_on_disconnect = stop_on_disconnect
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self._on_state = on_state or (lambda state, detail: None)
        self._read_timeout = read_timeout
        self._failures = 0  # failed connections in a row
        self._closed = False
        self._response: httpx.Response | None = None
        self._sse: AsyncGenerator[ServerSentEvent, None] | None = None
        self._greeted = False
        self._previous_id = ""
        self._reading = False  # inside the reader: only the response can be closed

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._closed:
            try:
                if self._sse is None:
                    self._sse = await self._open()
                self._reading = True
                try:
                    sse = await anext(self._sse)
                finally:
                    self._reading = False
            except StopAsyncIteration:
                await self._disconnect()
                if not self._closed:
                    await self._wait("the hub ended the stream")
                continue
            except httpx.HTTPError as exc:
                await self._failed(unreachable(self._client.url, exc))
                continue
            except SsehubError as exc:
                await self._failed(exc)
                continue
            event = self._event(sse)
            if event is None:
                continue
            self._failures = 0
            if event.event == DISCONNECTED and self._stop_on_disconnect:
                await self.aclose()
            return event
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Close the open connection, if any; iteration ends. Idempotent."""
        self._closed = True
        await self._disconnect()

    async def _open(self) -> AsyncGenerator[ServerSentEvent, None]:
        headers = {"accept": "text/event-stream", **self._client.auth_headers()}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        http = self._client.http
        request = http.build_request(
            "GET",
            f"/sse/connect/{quote(self.user_id, safe='')}",
            headers=headers,
            timeout=httpx.Timeout(10.0, read=self._read_timeout),
        )
        response = await http.send(request, stream=True)
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise error_for(response)
        self._response = response
        self.connected = True
        self._greeted = False
        self._previous_id = ""
        resume = self.last_event_id
        self._on_state("connected", f"resuming after {resume}" if resume else "")
        return EventSource(response).aiter_sse()

    async def _disconnect(self) -> None:
        sse, response = self._sse, self._response
        self._sse = self._response = None
        self.connected = False
        # The response first: a read in progress in another task ends at once.
        if response is not None:
            await response.aclose()
        if sse is not None and not self._reading:
            await sse.aclose()

    async def _failed(self, error: SsehubError) -> None:
        """Give up on a failed connection (raise), or wait before the next."""
        await self._disconnect()
        if self._closed:
            return  # closed while connecting or reading: the loop ends
        self._failures += 1
        if not transient(error) or (
            self._max_attempts is not None and self._failures >= self._max_attempts
        ):
            self._closed = True
            raise error
        logger.info("stream of %r: %s; retrying", self.user_id, error)
        await self._wait(str(error), at_least=error.retry_after or 0.0)

    async def _wait(self, reason: str, *, at_least: float = 0.0) -> None:
        # The server's retry: hint is the base; failures in a row double it, with
        # jitter so that clients cut off together do not come back together.
        self.reconnects += 1
        base = self.retry if self.retry is not None else self._backoff
        delay = min(self._max_backoff, base * 2.0 ** max(0, self._failures - 1))
        delay = max(at_least, delay * random.uniform(0.8, 1.0))
        self._on_state("reconnecting", f"{reason}; reconnecting in {delay:.1f} s")
        await asyncio.sleep(delay)

    def _event(self, sse: ServerSentEvent) -> Event | None:
        """The event to hand out for what the server sent, if any."""
        if sse.retry is not None:
            self.retry = sse.retry / 1000
        # httpx-sse repeats the last id on events without one (as the spec's "last
        # event ID" does); ids only increase, so a repeat means none.
        own_id = sse.id if sse.id and sse.id != self._previous_id else None
        self._previous_id = sse.id
        name = sse.event or "message"
        if not self._greeted and own_id is None and name == "message":
            self._greeted = True
            return Event(CONNECTED, sse.data) if self._greetings else None
        self._greeted = True
        if own_id is not None:
            self.last_event_id = own_id
        if name == KEEPALIVE and not self._keepalives:
            return None
        if name == "message" and not sse.data and own_id is None:
            return None  # a frame holding only retry:
        return Event(name, sse.data, own_id)
