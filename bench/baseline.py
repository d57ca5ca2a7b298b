"""The baseline: a hub written the way Python users write one today.

FastAPI + sse-starlette + a dict of asyncio queues per user, on uvicorn with uvloop and
httptools; the same routes as the benchmark uses, with pydantic models for the bodies.

    python bench/baseline.py PORT [KEEPALIVE_SECONDS]
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

KEEPALIVE = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0

app = FastAPI()
queues: dict[str, list[asyncio.Queue[dict[str, str]]]] = defaultdict(list)
counters: dict[str, int] = defaultdict(int)


class Message(BaseModel):
    user_id: str
    data: Any
    event: str | None = None


class Batch(BaseModel):
    messages: list[Message]


class Broadcast(BaseModel):
    data: Any
    event: str | None = None


def publish(user_id: str, data: Any, event: str | None) -> str:
    counters[user_id] += 1
    event_id = str(counters[user_id])
    item = {"id": event_id, "data": data if isinstance(data, str) else json.dumps(data)}
    if event:
        item["event"] = event
    for queue in queues.get(user_id, ()):
        queue.put_nowait(item)
    return event_id


@app.get("/sse/connect/{user_id}")
async def connect(user_id: str) -> EventSourceResponse:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    queues[user_id].append(queue)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"data": f"User '{user_id}' connected"}
            while True:
                yield await queue.get()
        finally:
            queues[user_id].remove(queue)
            if not queues[user_id]:
                del queues[user_id]

    return EventSourceResponse(events(), ping=int(KEEPALIVE))


@app.post("/sse/messages", status_code=202)
async def send_batch(batch: Batch) -> dict[str, Any]:
    ids = [publish(m.user_id, m.data, m.event) for m in batch.messages]
    return {"ids": ids, "count": len(ids)}


@app.post("/sse/broadcast", status_code=202)
async def broadcast(message: Broadcast) -> dict[str, str]:
    for user_id in list(queues):
        publish(user_id, message.data, message.event)
    return {"status": "accepted"}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "streams": sum(len(q) for q in queues.values())}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
