"""The fast path: ``GET /sse/connect/{user_id}`` served straight from the socket.

`ssehub serve` gives uvicorn `EntryProtocol` as its ``http`` protocol class. It reads a
connection's first request head; a stream request has its user id, credentials and
``Last-Event-ID`` checked exactly as the portable route does, and the socket's transport
goes to a `StreamProtocol`: a small object that is both the transport's protocol and
the hub's `FrameSink`. From then on frames are queued on the stream and written at the
end of the event-loop step, one ``transport.write`` per stream, with no ASGI task,
``send`` or queue per message. Any other first request is handed, bytes and all, to
`FastHttpProtocol`, a subclass of uvicorn's httptools protocol that serves it and the
connection's later requests through the FastAPI app (publish, state, docs, the demo
page, and any stream request this path does not take, such as HTTP/1.0 or a pipelined
one), and still takes over a later stream request.

This relies on uvicorn internals (the protocol class's constructor, and
``HttpToolsProtocol``'s parser callbacks and its ``url``, ``headers``, ``cycle``,
``server_state`` attributes), which is why ``pyproject.toml`` pins uvicorn's version
range and the tests exercise the seam.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httptools
from fastapi import FastAPI, Response
from starlette.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ssehub import events
from ssehub.api._errors import error_response, json_response
from ssehub.api.streams import (
    STREAM_HEADERS,
    check_bare_stream_request,
    request_mappings,
    unavailable_answer,
)
from ssehub.auth import Authenticator
from ssehub.connection import Connection
from ssehub.exceptions import SsehubError, StoreUnavailable
from ssehub.hub import Hub

logger = logging.getLogger("ssehub.fastpath")

CONNECT_PREFIX = "/sse/connect/"
_CONNECT_PREFIX_BYTES = CONNECT_PREFIX.encode()
_LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112, section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_KEEPALIVE_CHUNK = chunk(events.KEEPALIVE_FRAME)
# The last frame chunked and its chunk: a broadcast writes one frame to every stream.
_last_chunked: list[bytes] = [b"", b""]


class FastStreams:
    """What the fast path needs to open streams: the hub, the authenticator, CORS.

    Args:
        hub: the hub streams are registered with.
        auth: who may subscribe.
        cors_origins: origins allowed by CORS (``*`` for any), as for the app.
        cors_credentials: whether CORS requests may carry credentials.
    """

    def __init__(
        self,
        hub: Hub,
        auth: Authenticator,
        *,
        cors_origins: Sequence[str] = (),
        cors_credentials: bool = False,
    ) -> None:
        self.hub = hub
        self.auth = auth
        self.batch = WriteBatch()
        self._origins = frozenset(cors_origins)
        self._credentials = cors_credentials
        self._stream_head = b"".join(
            k.encode() + b": " + v.encode() + b"\r\n" for k, v in STREAM_HEADERS.items()
        )

    def cors_headers(self, headers: Mapping[str, str]) -> bytes:
        """The CORS headers of an answer, as Starlette's CORSMiddleware would add them."""
        origin = headers.get("origin")
        if origin is None or not self._origins:
            return b""
        wildcard = "*" in self._origins
        if not wildcard and origin not in self._origins:
            return b""
        out = b""
        if wildcard and not self._credentials and "cookie" not in headers:
            out += b"access-control-allow-origin: *\r\n"
        else:
            out += b"access-control-allow-origin: " + origin.encode("latin-1") + b"\r\n"
            out += b"vary: Origin\r\n"
        if self._credentials:
            out += b"access-control-allow-credentials: true\r\n"
        return out

    def stream_head(self, default_headers: list[tuple[bytes, bytes]], cors: bytes) -> bytes:
        """The status line and headers of a stream (chunked, like uvicorn's)."""
        parts = [STATUS_LINE[200]]
        parts.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
        parts += [self._stream_head, cors, b"transfer-encoding: chunked\r\n\r\n"]
        return b"".join(parts)


class WriteBatch:
    """Streams written to during one event-loop step, flushed together at its end.

    A publish request delivers to many streams in one step. Sending each socket's
    bytes as they come spreads the system calls between Python work, and every one
    then wakes a reader that had gone back to sleep; sent together at the end of the
    step, they cost one ``transport.write`` per stream however many frames it got.
    """

    __slots__ = ("_scheduled", "_streams")

    def __init__(self) -> None:
        self._streams: list[StreamProtocol] = []
        self._scheduled = False

    def add(self, stream: StreamProtocol) -> None:
        self._streams.append(stream)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.flush()
            except Exception:  # one broken socket must not hold back the others
                logger.exception("writing to a stream failed")


class StreamProtocol(asyncio.Protocol):
    """One stream's socket once taken over: the transport's protocol and the `FrameSink`.

    Until the hub has registered the stream (greeting and replay included), frames are
    held and then written together with the response head; if registering fails, the
    client gets the same JSON error as from the portable route instead.
    """

    __slots__ = (
        "_cors",
        "_front",
        "_pending",
        "_queued",
        "_slow",
        "_state",
        "_transport",
        "closed",
        "connection",
        "lost",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        front: FastStreams,
        state: ServerState,
        cors: bytes,
    ) -> None:
        self._transport = transport
        self._front = front
        # The transport tells when its buffer passes the bound (pause_writing), so a
        # write needs no check of its own.
        transport.set_write_buffer_limits(high=front.hub.limits.buffer_bytes)
        self._state = state
        self._cors = cors
        self._pending: list[bytes] | None = []
        self._queued: list[bytes] | None = None  # chunks waiting for the batch's flush
        self._slow = False
        self.connection: Connection | None = None
        self.closed = False
        self.lost = False

    # -- FrameSink ----------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write a frame as one chunk; False once the socket's buffer is over its bound."""
        if self.closed:
            return True
        if self._pending is not None:
            self._pending.append(data)
            return True
        if data is _last_chunked[0]:  # a broadcast: the same frame for every stream
            out = _last_chunked[1]
        elif data is events.KEEPALIVE_FRAME:
            out = _KEEPALIVE_CHUNK
        else:
            out = chunk(data)
            _last_chunked[0], _last_chunked[1] = data, out
        queued = self._queued
        if queued is None:
            self._queued = [out]
            self._front.batch.add(self)
        else:
            queued.append(out)
        # Over the bound, the transport calls pause_writing as a flush writes.
        return not self._slow

    def flush(self) -> None:
        """Send what this loop step wrote to the stream, in one ``transport.write``."""
        queued, self._queued = self._queued, None
        if queued and not self.lost:
            self._transport.write(queued[0] if len(queued) == 1 else b"".join(queued))
            if self._slow and self.connection is not None:
                self._front.hub.drop_slow(self.connection)  # at once, not at the next write

    def close(self, final: bytes | None = None) -> None:
        """End the response after ``final``; a slow consumer's socket is dropped at once."""
        if self.closed:
            return
        self.closed = True
        if self._pending is not None:
            if final:
                self._pending.append(final)
            return  # the opener writes what is held, then ends the response
        if self.lost:
            return
        if self._slow:
            # Its buffer is full and may never drain: do not wait for it.
            self._transport.abort()
            return
        self.flush()
        self._transport.write(chunk(final) + _LAST_CHUNK if final else _LAST_CHUNK)
        self._transport.close()

    # -- opening ------------------------------------------------------------------------

    def opened(self, connection: Connection) -> None:
        """The hub registered the stream: send the head and everything held so far."""
        self.connection = connection
        if self.lost:
            self._front.hub.release(connection)
            return
        held, self._pending = self._pending or [], None
        parts = [self._front.stream_head(self._state.default_headers, self._cors)]
        parts.extend(chunk(data) for data in held)
        if self.closed:
            parts.append(_LAST_CHUNK)
        self._transport.write(b"".join(parts))
        if self.closed:
            self._transport.close()
            self._front.hub.release(connection)

    def refuse(self, response: Response) -> None:
        """Answer with ``response`` (an error) and close the connection."""
        self.closed = True
        self._pending = None
        if self.lost:
            return
        parts = [STATUS_LINE[response.status_code]]
        parts.extend(name + b": " + value + b"\r\n" for name, value in self._state.default_headers)
        parts.extend(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
        parts += [self._cors, b"connection: close\r\n\r\n", bytes(response.body)]
        self._transport.write(b"".join(parts))
        self._transport.close()

    async def open(
        self,
        user_id: str,
        last_event_id: str | None,
        expires_at: float | None,
        accept: str | None = None,
    ) -> None:
        """Register the stream with the hub, then answer (the only task of a stream)."""
        hub = self._front.hub
        try:
            connection = await hub.open(
                user_id, self, last_event_id=last_event_id, expires_at=expires_at
            )
        except StoreUnavailable as exc:
            self.refuse(unavailable_answer(exc, accept, hub.retry_ms))
        except SsehubError as exc:
            self.refuse(error_response(exc))
        except Exception:
            logger.exception("could not open a stream for user %r", user_id)
            self.refuse(json_response(500, {"detail": "Internal Server Error"}))
        else:
            self.opened(connection)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def pause_writing(self) -> None:
        # The client does not read what it is sent: the hub closes it as a slow consumer.
        self._slow = True

    def resume_writing(self) -> None:
        self._slow = False

    def data_received(self, data: bytes) -> None:
        # A client has nothing to say on an event stream; anything it sends is ignored.
        pass

    def eof_received(self) -> bool | None:
        # The client closed its side: the transport closes, connection_lost follows.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closed = True
        self._state.connections.discard(self)
        if self.connection is not None:
            self._front.hub.release(self.connection)

    def shutdown(self) -> None:
        """Called by uvicorn on a graceful shutdown: end the stream with a retry hint."""
        final = events.retry_frame(self._front.hub.retry_ms)
        if self.connection is not None:
            self.connection.close(final)
        else:
            self.close(final)


def stream_target(
    url: bytes, parser: httptools.HttpRequestParser, root_path: str
) -> tuple[str, bytes] | None:
    """``(user_id, query)`` if a request whose head is parsed opens a fast stream."""
    if not url.startswith(_CONNECT_PREFIX_BYTES) or root_path:
        return None
    if parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
        return None  # HTTP/1.0 has no chunked encoding: the app answers it
    if parser.should_upgrade():
        return None
    try:
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    user_id = path[len(CONNECT_PREFIX) :]
    if not user_id or "/" in user_id:
        return None  # the app answers with its 404 or redirect
    return user_id, parsed.query or b""


def take_over(
    transport: asyncio.Transport,
    front: FastStreams,
    state: ServerState,
    target: tuple[str, bytes],
    raw_headers: list[tuple[bytes, bytes]],
) -> None:
    """Make the connection a `StreamProtocol` and open its stream (or refuse it)."""
    user_id, query_string = target
    headers, query = request_mappings(raw_headers, query_string)
    stream = StreamProtocol(transport, front, state, front.cors_headers(headers))
    state.connections.add(stream)  # type: ignore[arg-type]
    transport.set_protocol(stream)
    if not transport.is_reading():
        transport.resume_reading()  # a paused socket would hide the client leaving
    try:
        opening = check_bare_stream_request(front.hub, front.auth, user_id, headers, query)
    except SsehubError as exc:
        stream.refuse(error_response(exc))
        return
    task = asyncio.get_running_loop().create_task(stream.open(user_id, *opening))
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


class FastHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, taking over stream requests (see the module doc)."""

    streams: ClassVar[FastStreams]
    _taken = False

    def on_headers_complete(self) -> None:
        if self._taken:
            return
        target = stream_target(self.url, self.parser, self.root_path)
        if target is not None and (self.cycle is None or self.cycle.response_complete):
            # (not when pipelined behind a request still being answered)
            self._taken = True
            self.connections.discard(self)
            take_over(self.transport, self.streams, self.server_state, target, self.headers)
        else:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._taken:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._taken:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._taken:  # the socket is the stream's now
            super().send_400_response(msg)


_MAX_FIRST_HEAD = 64 * 1024  # bytes of a first request held before uvicorn is handed it


class EntryProtocol(asyncio.Protocol):
    """What uvicorn creates for each connection: it reads the first request's head.

    A stream request becomes a `StreamProtocol` at once, so a stream costs none of
    uvicorn's per-connection set-up; anything else (and anything this path does not
    take) is handed, with every byte read so far, to `FastHttpProtocol`, uvicorn's
    own protocol, which serves it and every later request of the connection (and
    still takes over a later stream request).
    """

    streams: ClassVar[FastStreams]
    http_protocol: ClassVar[type[FastHttpProtocol]]

    def __init__(
        self,
        config: Any,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._state = server_state
        self._app_state = app_state
        self._loop = _loop
        self._parser = httptools.HttpRequestParser(self)
        self._received: list[bytes] = []
        self._size = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._target: tuple[str, bytes] | None = None
        self._head_done = False
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._state.connections.add(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._received.append(data)
        self._size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._head_done = True  # uvicorn answers it as it would (a 400, an upgrade)
        if self._target is not None:
            self._stream()
        elif self._head_done or self._size > _MAX_FIRST_HEAD:
            self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)

    def shutdown(self) -> None:
        """Called by uvicorn on a graceful shutdown: nothing was asked yet, so close."""
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks, for the first request only ---------------------------------

    def on_url(self, url: bytes) -> None:
        if not self._head_done:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self._head_done:
            self._head_done = True
            self._target = stream_target(self._url, self._parser, self._config.root_path)

    # -- the two ways on -----------------------------------------------------------------

    def _stream(self) -> None:
        assert self.transport is not None
        assert self._target is not None
        self._state.connections.discard(self)
        take_over(self.transport, self.streams, self._state, self._target, self._headers)

    def _hand_over(self) -> None:
        assert self.transport is not None
        self._state.connections.discard(self)
        http = self.http_protocol(
            config=self._config,
            server_state=self._state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        self.transport.set_protocol(http)
        http.connection_made(self.transport)
        http.data_received(b"".join(self._received))


def fast_protocol(app: FastAPI) -> type[EntryProtocol]:
    """The uvicorn ``http`` protocol class that serves ``app``'s streams the fast way.

    ``app`` is built by `ssehub.app.create_app`: its state holds ``hub`` and ``auth``;
    stream answers get the same CORS headers as the app's ``CORSMiddleware`` adds.
    """
    state: Any = app.state
    cors: dict[str, Any] = {}
    for middleware in app.user_middleware:
        if getattr(middleware, "cls", None) is CORSMiddleware:
            cors = dict(middleware.kwargs)
    front = FastStreams(
        state.hub,
        state.auth,
        cors_origins=cors.get("allow_origins", ()),
        cors_credentials=bool(cors.get("allow_credentials", False)),
    )

    class SsehubHttpProtocol(FastHttpProtocol):
        streams = front

    class SsehubEntryProtocol(EntryProtocol):
        streams = front
        http_protocol = SsehubHttpProtocol

    return SsehubEntryProtocol


__all__ = [
    "EntryProtocol",
    "FastHttpProtocol",
    "FastStreams",
    "StreamProtocol",
    "chunk",
    "fast_protocol",
]
