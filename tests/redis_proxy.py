"""A TCP proxy in front of a Redis, that can turn into one that accepts and drops.

So the tests see what a node sees behind a load balancer or a proxy whose master died:
connections accepted, then closed before any answer.
"""

from __future__ import annotations

import asyncio
import contextlib


class DroppingProxy:
    """Forwards connections to ``host:port`` until `drop` is called; then accepts and closes."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.dropping = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def drop(self) -> None:
        """Close every forwarded connection; accept and close new ones from now on."""
        self.dropping = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def forward(self) -> None:
        """Forward new connections again."""
        self.dropping = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dropping:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += (writer, up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()
