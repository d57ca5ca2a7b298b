"""The sample's two demo tasks, written against `Messenger` only."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime

from ssehub.messenger import Messenger

LONG_TASK_STEPS = 10
COUNTDOWN_FROM = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Person:
    """The sample's demo object; its field names are its JSON keys."""

    Name: str
    Age: int
    Country: str
    IsActive: bool


VICTOR = Person(Name="Victor", Age=30, Country="Spain", IsActive=True)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """What a demo route answers when its task is done."""

    user_id: str
    finished_at: datetime.datetime

    def as_json(self) -> dict[str, str]:
        """``{"message": "Task completed", "data": "User 'x' completed the task at: ..."}``."""
        stamp = self.finished_at.isoformat(timespec="seconds")
        return {
            "message": "Task completed",
            "data": f"User '{self.user_id}' completed the task at: {stamp}.",
        }


def _now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


async def run_long_task(messenger: Messenger, user_id: str, *, step: float = 1.0) -> TaskResult:
    """Work for ten steps, telling the user after each: ``User 'x', attempt i / 10``."""
    for attempt in range(1, LONG_TASK_STEPS + 1):
        await asyncio.sleep(step)
        await messenger.send(user_id, f"User '{user_id}', attempt {attempt} / {LONG_TASK_STEPS}")
    return TaskResult(user_id, _now())


async def run_object_countdown(
    messenger: Messenger, user_id: str, *, step: float = 1.0
) -> TaskResult:
    """Count down from five, one step apart, then send the demo object."""
    for remaining in range(COUNTDOWN_FROM, 0, -1):
        await messenger.send(user_id, f"Object sent to user '{user_id}' in {remaining}...")
        await asyncio.sleep(step)
    await messenger.send(user_id, VICTOR)
    return TaskResult(user_id, _now())
