"""Where a connection starts on the fast path: its first request's head decides.

`EntryProtocol` reads the first head with its own parser; `decide.stream_target` says
whether it is a stream the fast path takes (it becomes a `StreamProtocol` at once) or
not (the connection, every byte read so far included, goes to `FastHttpProtocol`,
which serves it and the later requests through the app and still takes over a later
stream request). The table of who answers what is in `ssehub.fast.decide`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn.server import ServerState

from ssehub.exceptions import SsehubError
from ssehub.fast.decide import stream_target
from ssehub.fast.head import FastStreams
from ssehub.fast.stream import CloseDelimitedStream, StreamProtocol
from ssehub.front.answers import error_response
from ssehub.front.checks import check_bare_stream_request, request_mappings
from ssehub.front.http1 import MAX_HEAD, MAX_HEADERS, HttpProtocol, head_size


def take_over(
    transport: asyncio.Transport,
    front: FastStreams,
    state: ServerState,
    target: tuple[str, bytes],
    raw_headers: list[tuple[bytes, bytes]],
    http_version: str,
) -> None:
    """Make the connection a `StreamProtocol` and open its stream (or refuse it)."""
    user_id, query_string = target
    headers, query = request_mappings(raw_headers, query_string)
    kind = StreamProtocol if http_version == "1.1" else CloseDelimitedStream
    stream = kind(transport, front, state, front.cors_headers(headers))
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


class FastHttpProtocol(HttpProtocol):
    """The app's protocol on the fast path, taking over a later stream request."""

    streams: ClassVar[FastStreams]
    _taken = False

    def on_headers_complete(self) -> None:
        if not self._taken:
            super().on_headers_complete()

    def start_request(self, http_version: str) -> None:
        target = stream_target(
            self.url, self.parser.get_method(), http_version, self.headers, self.root_path
        )
        if target is not None and (self.cycle is None or self.cycle.response_complete):
            # (not when pipelined behind a request still being answered)
            self._taken = True
            self.connections.discard(self)
            take_over(
                self.transport, self.streams, self.server_state, target, self.headers, http_version
            )
        else:
            super().start_request(http_version)

    def on_body(self, body: bytes) -> None:
        if not self._taken:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._taken:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._taken:  # the socket is the stream's now
            super().send_400_response(msg)


class EntryProtocol(asyncio.Protocol):
    """What uvicorn creates for each connection: it reads the first request's head.

    A stream request becomes a `StreamProtocol` at once, so a stream costs none of
    uvicorn's per-connection set-up; anything else (and anything this path does not
    take) is handed, with every byte read so far, to `FastHttpProtocol`.
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
        # The parser holds this protocol's bound methods: a reference cycle, dropped
        # (`_drop_parser`) as soon as the head is decided so that reference counting,
        # not the cyclic collector, frees both.
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._received: list[bytes] = []
        self._size = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._target: tuple[str, bytes] | None = None
        self._head_done = False
        self._complete = False
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._state.connections.add(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # the connection is another protocol's now
        self._received.append(data)
        self._size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The first request is complete and asks to switch protocols: a stream
            # request ignores it (unless it asks for a websocket, which uvicorn answers).
            self._head_done = True
        except httptools.HttpParserError:
            self._head_done = True
            if not self._complete:
                self._target = None  # malformed: uvicorn's parser answers it (400)
            # else: garbage behind a complete request, never read (a stream is the
            # connection's last response; the app ends the connection after its answer)
        if self._target is not None:
            self._stream()
        elif self._head_done or self._size > MAX_HEAD:
            self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        self._parser = None

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
            if len(self._headers) > MAX_HEADERS or (
                self._size > MAX_HEAD and head_size(self._url, self._headers) > MAX_HEAD
            ):
                return  # the app's protocol refuses it (414 or 431)
            parser = self._parser
            assert parser is not None
            self._target = stream_target(
                self._url,
                parser.get_method(),
                parser.get_http_version(),
                self._headers,
                self._config.root_path,
            )

    def on_message_complete(self) -> None:
        self._complete = True

    # -- the two ways on -----------------------------------------------------------------

    def _stream(self) -> None:
        assert self.transport is not None
        assert self._target is not None
        assert self._parser is not None
        http_version = self._parser.get_http_version()
        self._parser = None
        self._state.connections.discard(self)
        take_over(
            self.transport, self.streams, self._state, self._target, self._headers, http_version
        )

    def _hand_over(self) -> None:
        assert self.transport is not None
        self._parser = None
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
