"""The ceiling: a bare asyncio protocol server writing pre-encoded frames.

It serves the routes the benchmark uses (``GET /sse/connect/{user}``,
``POST /sse/messages``, ``POST /sse/broadcast``, ``GET /healthz``) with nothing else:
no store, no replay, no presence, no limits. What Python on uvloop can do at best on
one core, so the load tools are shown not to be what limits the other servers.

    python bench/ceiling.py PORT [KEEPALIVE_SECONDS]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools
import orjson
import uvloop

KEEPALIVE = b"event: keepalive\ndata: <3: Keep alive\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


KEEPALIVE_CHUNK = chunk(KEEPALIVE)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
)

streams: dict[str, list[HttpProtocol]] = {}
counters: dict[str, int] = {}


def deliver(user_id: str, payload: bytes) -> str:
    number = counters.get(user_id, 0) + 1
    counters[user_id] = number
    targets = streams.get(user_id)
    if targets:
        data = chunk(b"id: %d\n%b\n" % (number, payload))
        for target in targets:
            target.transport.write(data)
    return str(number)


def payload_of(message: dict[str, Any]) -> bytes:
    data = message["data"]
    text = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + text + b"\n"


def answer(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        status,
        len(body),
        body,
    )


class HttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.user_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.user_id is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"GET" and path.startswith(b"/sse/connect/"):
            user_id = path[13:].decode()
            self.user_id = user_id
            streams.setdefault(user_id, []).append(self)
            greeting = b"data: User '%b' connected\n\n" % user_id.encode()
            self.transport.write(STREAM_HEAD + chunk(greeting) + KEEPALIVE_CHUNK)
        elif method == b"POST" and path == b"/sse/messages":
            messages = orjson.loads(b"".join(self.body))["messages"]
            ids = [deliver(m["user_id"], payload_of(m)) for m in messages]
            self.transport.write(answer(b"202 Accepted", orjson.dumps({"ids": ids})))
        elif method == b"POST" and path == b"/sse/broadcast":
            payload = payload_of(orjson.loads(b"".join(self.body)))
            for user_id in list(streams):
                deliver(user_id, payload)
            self.transport.write(answer(b"202 Accepted", b'{"status":"accepted"}'))
        elif path == b"/healthz":
            count = sum(len(s) for s in streams.values())
            self.transport.write(answer(b"200 OK", b'{"streams":%d}' % count))
        else:
            self.transport.write(answer(b"404 Not Found", b'{"detail":"Not Found"}'))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.user_id is not None:
            mine = streams.get(self.user_id, [])
            if self in mine:
                mine.remove(self)
            if not mine:
                streams.pop(self.user_id, None)


async def keepalive_forever(seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        for targets in list(streams.values()):
            for target in targets:
                target.transport.write(KEEPALIVE_CHUNK)


async def main(port: int, keepalive: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", port, backlog=4096)
    task = asyncio.create_task(keepalive_forever(keepalive))
    async with server:
        await server.serve_forever()
    task.cancel()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 15.0))
