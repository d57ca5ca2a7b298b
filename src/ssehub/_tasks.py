"""Background tasks with an owner: spawned, logged when they fail, cancelled and awaited."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Self

logger = logging.getLogger("ssehub.tasks")


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    The task's own cancellation is expected and swallowed; a cancellation of the caller
    while it waits is not: it is raised, as any await would.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise


class TaskOwner:
    """Holds the background tasks of one component until it closes.

    A task that fails is logged with its name (nobody awaits it to see the exception);
    `cancel_all` cancels every task still running and waits for each to end.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task owned here; return the task."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)


class Service(abc.ABC):
    """A component that is started, runs background work, and is closed."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the background work."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the background work and wait for it to end."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Start, and close on the way out (for an ASGI lifespan)."""
        await self.start()
        try:
            yield self
        finally:
            await self.close()
