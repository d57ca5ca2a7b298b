"""Background task helpers: cancelling a task and waiting for it."""

from __future__ import annotations

import asyncio

import pytest

from ssehub._tasks import cancel_and_wait

pytestmark = pytest.mark.anyio


async def test_cancel_and_wait_swallows_the_cancellation_of_the_task_it_cancels() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_caller_cancelled_while_it_waits_is_cancelled_too() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # cleans up for a while before it ends
            raise

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
    assert inner.done()
