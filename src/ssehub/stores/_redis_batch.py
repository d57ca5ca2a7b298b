"""Requests made in one event-loop step, sent to Redis together at the end of it.

Streams that open at once each ask Redis the same kind of question (a user's newest
id, the first page of a user's history). Asked one by one, each is a write and a
wake-up of Redis, and each holds a pooled connection until its answer comes: in a
reconnect storm the pool ran dry and opens were refused. A `StepBatch` collects the
requests of one loop step and hands them to one call (a pipeline: one write, one
connection), then gives each caller its own answer or error. While a batch is out,
the next one gathers until it is back (as a client that pipelines on its own does),
so the busier the node, the larger the batches, and an idle node sends at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ssehub._tasks import TaskOwner

T = TypeVar("T")
R = TypeVar("R")


class StepBatch(Generic[T, R]):
    """Collects requests for one loop step, then sends them with one call.

    Args:
        send: answers a list of requests in order, an exception in place of the
            answer of a request that failed (raising fails them all).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R | BaseException]]]) -> None:
        self._send = send
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks = TaskOwner()  # holds each batch's task while it is out
        self._out = False  # a batch is being answered

    def __call__(self, request: T) -> asyncio.Future[R]:
        """Queue a request; the future gets its answer."""
        loop = asyncio.get_running_loop()
        if not self._waiting and not self._out:
            loop.call_soon(self._flush)
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((request, future))
        return future

    def _flush(self) -> None:
        if not self._waiting:
            return
        self._out = True
        waiting, self._waiting = self._waiting, []
        self._tasks.spawn(self._run(waiting), "ssehub-redis-batch")

    async def _run(self, waiting: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._answer(waiting)
        finally:
            self._out = False
            if self._waiting:
                asyncio.get_running_loop().call_soon(self._flush)

    async def _answer(self, waiting: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._send([request for request, _ in waiting])
        except Exception as exc:  # every caller gets it
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in waiting:
                future.cancel()
            raise
        for (_, future), answer in zip(waiting, answers, strict=True):
            if future.done():
                continue  # its caller gave up
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
