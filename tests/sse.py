"""A test-side stream reader: a real HTTP client parsing with httpx-sse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

KEEPALIVE = "keepalive"


class Stream:
    """An open ``/sse/connect/{user}`` stream whose events are collected in a queue."""

    def __init__(
        self,
        base_url: str,
        user_id: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        self.url = f"{base_url}/sse/connect/{user_id}"
        self.headers = headers or {}
        self.params = params or {}
        self.events: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
        self.status_code: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.error_body: bytes = b""
        self.error: BaseException | None = None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._opened.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        try:
            async with aconnect_sse(
                self._client, "GET", self.url, headers=self.headers, params=self.params
            ) as source:
                self.status_code = source.response.status_code
                self.response_headers = source.response.headers
                if self.status_code != 200:
                    self.error_body = await source.response.aread()
                    return
                self._opened.set()
                async for event in source.aiter_sse():
                    await self.events.put(event)
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self._opened.set()
            await self.events.put(None)

    async def next(self, timeout: float = 5.0) -> ServerSentEvent | None:
        """The next event (keep-alives included); None when the stream ended."""
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def next_message(self, timeout: float = 5.0) -> ServerSentEvent | None:
        """The next event that is not a keep-alive; None when the stream ended."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event is None or event.event != KEEPALIVE:
                    return event

    async def messages(self, count: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        """The next ``count`` non-keep-alive events."""
        found: list[ServerSentEvent] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                event = await self.next_message(timeout)
                if event is None:
                    raise AssertionError(f"stream ended after {found!r}")
                found.append(event)
        return found

    async def ended(self, timeout: float = 5.0) -> bool:
        """Wait for the end of the stream, skipping what comes before it."""
        async with asyncio.timeout(timeout):
            while (await self.events.get()) is not None:
                pass
        return True


@contextlib.asynccontextmanager
async def stream(base_url: str, user_id: str, **kwargs: dict[str, str]) -> AsyncIterator[Stream]:
    """Open a stream, and greet: skip the connected greeting and the first keep-alive."""
    async with Stream(base_url, user_id, **kwargs) as opened:
        yield opened
