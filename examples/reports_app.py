"""An application that tells its users how their reports are coming along.

The service layer (`ReportService`) knows nothing about HTTP or streams: it gets a
`Messenger` in its constructor and sends progress and the finished report to the user.
The web layer builds the service with FastAPI's dependencies, so a test can hand the
service a fake messenger instead.

Run it with ``uvicorn --app-dir examples reports_app:app``, open a stream with
``curl -N http://127.0.0.1:8000/sse/connect/alice`` and, in another terminal, order a
report: ``curl -X POST http://127.0.0.1:8000/reports/alice -H 'Content-Type:
application/json' -d '{"title": "Sales"}'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from ssehub import Hub, Messenger, create_router, messenger_dependency, open_store

STEPS = ("collecting figures", "drawing charts", "writing summary")


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """A finished report; sent to the user as JSON with these keys."""

    id: str
    title: str
    url: str


class ReportService:
    """Builds reports and keeps their owners informed.

    Args:
        messenger: how to reach a user (the hub, or a fake in tests).
        step_seconds: how long each step takes.
    """

    def __init__(self, messenger: Messenger, *, step_seconds: float = 1.0) -> None:
        self.messenger = messenger
        self.step_seconds = step_seconds

    async def build(self, user_id: str, title: str) -> Report:
        """Build a report, sending a ``progress`` event after each step, then the report."""
        report_id = uuid.uuid4().hex[:8]
        for number, step in enumerate(STEPS, start=1):
            await asyncio.sleep(self.step_seconds)
            await self.messenger.send(
                user_id,
                {"report": report_id, "step": number, "of": len(STEPS), "doing": step},
                event="progress",
            )
        report = Report(report_id, title, f"/reports/{report_id}.pdf")
        await self.messenger.send(user_id, report, event="report")
        return report


# -- web layer ---------------------------------------------------------------------

hub = Hub(
    open_store(os.environ.get("REPORTS_STORE", "memory://")),
    keepalive=float(os.environ.get("REPORTS_KEEPALIVE", "15")),
)
step_seconds = float(os.environ.get("REPORTS_STEP_SECONDS", "1.0"))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with hub.running():
        yield


app = FastAPI(title="Reports", lifespan=lifespan)
app.include_router(create_router(hub))  # /sse/connect/{user_id}, read-only state

MessengerDep = Annotated[Messenger, Depends(messenger_dependency(hub))]


def report_service(messenger: MessengerDep) -> ReportService:
    """The service, with the hub injected as its `Messenger`."""
    return ReportService(messenger, step_seconds=step_seconds)


class ReportOrder(BaseModel):
    title: str


@app.post("/reports/{user_id}", status_code=201)
async def order_report(
    user_id: str, order: ReportOrder, service: Annotated[ReportService, Depends(report_service)]
) -> Report:
    """Build a report for the user; they watch its progress on their stream."""
    return await service.build(user_id, order.title)
