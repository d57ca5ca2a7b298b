"""Noticing that a portable stream's client left, with or without a task of its own.

An ASGI server reports a client that left only through ``receive()``. `ClientWatch`
steps uvicorn's own ``receive()`` inside the stream's one task; `TaskWatch` awaits any
other in a task of its own (`watch_client` picks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any

from starlette.types import Message, Receive
from uvicorn.protocols.http import h11_impl, httptools_impl


class ClientWatch:
    """Notices ``http.disconnect`` without a task of its own.

    An ASGI server reports a client that left only through ``receive()``, which a
    stream would otherwise await in a second task. Here the stream's one task runs the
    ``receive()`` awaitable itself, a step at a time: `left` advances it as far as it
    goes without waiting, and whatever it then waits on wakes the sink's `waiter` when
    done. Between steps the task pumps frames, so one task both writes and listens.

    It does for the awaitable what ``asyncio.Task`` does, and relies on exactly that:
    an awaitable yields None (wait a loop turn) or an asyncio future whose
    ``_asyncio_future_blocking`` flag it set (the flag a task clears before waiting on
    it). That is safe for a server's own ``receive()`` (`steppable`), which awaits only
    futures; ``tests/test_portable_units.py`` pins both behaviours.
    """

    __slots__ = ("_blocked", "_receive", "_steps", "_wake", "gone")

    def __init__(self, receive: Receive, wake: Callable[[object], None]) -> None:
        self._receive = receive
        self._wake = wake
        self._steps: Coroutine[Any, Any, Message] | Generator[Any, None, Message] | None = None
        self._blocked: asyncio.Future[Any] | None = None
        self.gone = False

    def left(self) -> bool:
        """Run ``receive()`` until it waits; True once it said ``http.disconnect``."""
        while not self.gone and (self._blocked is None or self._blocked.done()):
            if self._steps is None:
                awaitable = self._receive()
                if type(awaitable) is CoroutineType:  # (not the ABC: 5 us a stream opened)
                    self._steps = awaitable  # stepped as is: no wrapper to keep
                else:
                    self._steps = awaitable.__await__()
            self._blocked = None
            try:
                yielded = self._steps.send(None)
            except StopIteration as stop:
                self._steps = None
                self.gone = stop.value["type"] == "http.disconnect"
                continue  # "http.request" (the request's body): receive again
            if yielded is None:  # a bare yield: go on at the loop's next turn
                loop = asyncio.get_running_loop()
                yielded = loop.create_future()
                loop.call_soon(yielded.set_result, None)
            else:  # what a Task does with a future its coroutine waits on
                yielded._asyncio_future_blocking = False
            yielded.add_done_callback(self._wake)
            self._blocked = yielded
        return self.gone

    def close(self) -> None:
        """Stop listening: close the pending ``receive()`` (its ``finally`` blocks run)."""
        if self._blocked is not None:
            self._blocked.remove_done_callback(self._wake)
            self._blocked = None
        if self._steps is not None:
            steps, self._steps = self._steps, None
            with contextlib.suppress(RuntimeError):
                steps.close()


class TaskWatch:
    """Notices ``http.disconnect`` in a task of its own: for any ``receive()``.

    What `ClientWatch` does without a task is only safe for a server's own
    ``receive()``; one wrapped by the host application's middleware may hold anyio task
    groups or cancel scopes that must stay in the task that awaits them.
    """

    __slots__ = ("_task", "gone")

    def __init__(self, receive: Receive, wake: Callable[[object], None]) -> None:
        self.gone = False
        self._task = asyncio.get_running_loop().create_task(self._watch(receive, wake))

    async def _watch(self, receive: Receive, wake: Callable[[object], None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # "http.request": the request's (empty) body
        self.gone = True
        wake(None)

    def left(self) -> bool:
        """True once the client has left."""
        return self.gone

    def close(self) -> None:
        """Stop listening."""
        self._task.cancel()


# The servers whose own receive() awaits nothing but asyncio futures and Events: uvicorn's
# HTTP/1 request cycles (the receive of a request the app's middleware did not wrap).
_STEPPABLE = (httptools_impl.RequestResponseCycle, h11_impl.RequestResponseCycle)


def steppable(receive: Receive) -> bool:
    """Whether ``receive`` is a server's own that `ClientWatch` may step."""
    return isinstance(getattr(receive, "__self__", None), _STEPPABLE)


def watch_client(receive: Receive, wake: Callable[[object], None]) -> ClientWatch | TaskWatch:
    """`ClientWatch` for uvicorn's own ``receive()``, else a `TaskWatch`."""
    if steppable(receive):
        return ClientWatch(receive, wake)
    return TaskWatch(receive, wake)
