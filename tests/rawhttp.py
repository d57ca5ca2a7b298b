"""A test-side HTTP/1.x client on a raw socket: send any bytes, read answers exactly.

It reads what a server wrote as RFC 9112 says a client must: a head, then a body framed
by ``Transfer-Encoding: chunked``, ``Content-Length``, or the connection's end; a
response to ``HEAD`` (or a 1xx, 204, 304) has none. An event stream is read up to its
first event only, as it never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

READ_TIMEOUT = 3.0


@dataclass
class Answer:
    """One response as read off the socket."""

    status: int
    headers: dict[str, list[str]]
    framing: str  # "chunked", "length", "close" (close-delimited) or "none"
    body: bytes = b""
    stream: bool = False  # an event stream, read up to its first event

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        """Whether the answer says the connection ends with it."""
        return any("close" in value.lower() for value in self.headers.get("connection", []))


@dataclass
class Exchange:
    """What one connection got: the answers in order, and whether the server closed it."""

    answers: list[Answer] = field(default_factory=list)
    closed: bool = False
    raw: bytes = b""


class Closed(Exception):
    """The server closed the connection before a complete answer."""


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial) from None


def parse_head(head: bytes) -> tuple[int, dict[str, list[str]]]:
    """The status and headers (lower-case names) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status), headers


async def read_answer(reader: asyncio.StreamReader, method: str) -> Answer:
    """Read one response to a request of ``method``.

    Raises:
        Closed: the connection ended first.
    """
    while True:
        status, headers = parse_head(await _read_head(reader))
        if status >= 200 or status == 101:
            break  # (a 100 Continue is followed by the real answer)
    is_stream = any("text/event-stream" in value for value in headers.get("content-type", []))
    te = ",".join(headers.get("transfer-encoding", [])).lower()
    length = headers.get("content-length")
    if method == "HEAD" or status in (101, 204, 304):
        return Answer(status, headers, "none")
    try:
        if "chunked" in te:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return Answer(status, headers, "chunked", body)
                body += (await reader.readexactly(size + 2))[:-2]
                if is_stream and b"\n\n" in body:
                    return Answer(status, headers, "chunked", body, stream=True)
        if length is not None:
            body = await reader.readexactly(int(length[0]))
            return Answer(status, headers, "length", body)
        if is_stream:
            body = await reader.readuntil(b"\n\n")
            return Answer(status, headers, "close", body, stream=True)
        return Answer(status, headers, "close", await reader.read())
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial) from None


async def exchange(
    port: int,
    pieces: list[bytes],
    methods: list[str],
    *,
    pause: float = 0.0,
    half_close: bool = False,
    expect_close: bool = False,
    timeout: float = READ_TIMEOUT,
) -> Exchange:
    """Send ``pieces`` (``pause`` seconds apart) and read up to one answer per method.

    Reading stops at an event stream (it never ends), at the connection's end, or when
    no answer comes within ``timeout``. With ``expect_close``, it then waits (bounded)
    for the server to close the connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    result = Exchange()
    try:
        for index, piece in enumerate(pieces):
            if index and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        if half_close:
            writer.write_eof()
        for method in methods:
            try:
                async with asyncio.timeout(timeout):
                    answer = await read_answer(reader, method)
            except (Closed, ConnectionError):
                result.closed = True
                break
            except TimeoutError:
                break
            result.answers.append(answer)
            if answer.stream:
                break
        if expect_close and not result.closed:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(timeout):
                    result.raw = await reader.read()
                    result.closed = True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return result
