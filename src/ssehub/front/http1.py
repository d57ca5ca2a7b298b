"""HTTP/1.x for both front doors: uvicorn's httptools protocol, corrected where it errs.

``ssehub serve`` runs `HttpProtocol` for every request the app answers (with
``--portable``, streams included; on the fast path, everything but the streams it takes,
through its subclass `ssehub.fast.entry.FastHttpProtocol`). What it changes in uvicorn,
each a case of the conformance suite (``tests/test_conformance.py``):

- **Invalid framing is a 400 before the app runs.** httptools rejects a
  ``Transfer-Encoding`` that does not end in ``chunked`` only after the head is
  complete, when uvicorn has already started the request (a stream registered, then
  dropped); `checks.bad_framing` refuses it, and ``Transfer-Encoding`` on HTTP/1.0,
  before that.
- **HTTP/1.0 gets no chunked coding.** uvicorn chunks any body of unknown length,
  whatever the request's version; an HTTP/1.0 request's cycle is a
  `CloseDelimitedCycle`, whose body of unknown length is sent bare, and ended by closing
  the connection (RFC 9112, 6.1 and 6.3).
- **A request pipelined behind an unfinished response does not stop the reading.**
  uvicorn stops reading the socket until the response is complete, so behind a stream,
  which never completes, a client's leaving went unseen until a write failed. Here the
  socket is still read: the bytes are kept (up to `MAX_HEAD`) to be parsed once the
  response is complete, and the client leaving ends the running response at once.
- **A bad request behind a complete one waits its turn.** uvicorn answered it with a
  400 at once, in the middle of the response still being written; here its 400 follows
  the answers before it (never comes, behind a stream), and more than `MAX_PIPELINED`
  requests waiting is such a bad request.
- **A head may not grow without bound.** uvicorn with httptools sets no limit; a head
  over `MAX_HEAD` bytes gets a 414 (still in the request line) or 431, and so does one
  of more than `MAX_HEADERS` fields; an HTTP/0.9 or HTTP/2.0 request line (which
  httptools parses) a 505.

It relies on uvicorn's ``HttpToolsProtocol`` internals (its parser callbacks,
``send_400_response``, ``on_response_complete``, and its ``cycle``, ``pipeline``,
``flow`` and ``headers`` attributes) and on ``RequestResponseCycle``'s ``send`` and
its ``chunked_encoding`` and ``expected_content_length``: ``pyproject.toml`` bounds
uvicorn's version, and the conformance suite and ``tests/test_doors.py`` exercise each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from ssehub.front.checks import bad_framing
from ssehub.front.writes import loop_batch

MAX_HEAD = 64 * 1024
"""Bytes of a request head at most; and of what is read while requests wait in turn."""

MAX_HEADERS = 1000
"""Header fields of a request at most (uvicorn and httptools set no limit)."""

MAX_PIPELINED = 32
"""Requests queued behind an unfinished response at most; the next one is refused."""


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """About the bytes of a request head: its target and its header names and values."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


class Refused(ValueError):
    """Raised in a parser callback to stop parsing: the request gets `HttpProtocol.refuse`."""


class BodySender:
    """A request's ``send``: chunks of a streaming body go out at the end of the loop step.

    Each ``http.response.body`` with ``more_body`` of a started chunked response is
    queued here, and every sender written to in a loop step is flushed at its end
    (`loop_batch`), as the fast path does: the stream tasks a publish request woke
    each send their frames in the next step, and their system calls then come one
    after another instead of each between Python work. Any other message sends what
    is queued first, then goes to uvicorn's ``send``, so the order on the wire is the
    app's. A client that does not read still blocks its app in ``send`` (uvicorn's
    flow control), a step later.

    The response head is queued too (`write`), so that it goes out with the first
    chunk in one ``transport.write``, or just before the next message that is not
    queued. A portable stream whose middleware passes bodies on as they are queues
    its chunks with `chunk`, without an ASGI message (`ssehub.front.passthrough`).

    It wraps the cycle's ``send`` rather than subclassing the cycle: uvicorn creates
    the cycle, and changing an object's class after the fact makes every attribute
    access on it slower (its dict no longer matches its class's keys).
    """

    __slots__ = ("_batch", "_cycle", "_queued")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._batch = loop_batch()
        self._queued: list[bytes] | None = None  # bytes waiting for the step's end

    async def send(self, message: ASGISendEvent) -> None:
        """The request's ASGI ``send``."""
        cycle = self._cycle
        if message["type"] == "http.response.body":
            if message.get("more_body", False) and self.chunk(message.get("body", b"")):
                return
        elif (
            message["type"] == "http.response.start"
            and not cycle.response_started
            and not cycle.flow.write_paused
            and not cycle.disconnected
        ):
            # uvicorn builds the head and writes it at once, in one transport.write,
            # without waiting (the flow is not paused): that write is queued here.
            transport = cycle.transport
            cycle.transport = self  # type: ignore[assignment]
            try:
                await cycle.send(message)
            finally:
                cycle.transport = transport
            return
        if self._queued is not None:
            self.flush()
        await cycle.send(message)

    def chunk(self, body: bytes) -> bool:
        """Queue ``body`` as a chunk of the started response; False if it cannot be.

        It cannot be once the response is complete or the client gone, while the
        client does not read (the flow is paused), and for a response that is not
        chunked (nor started, nor a HEAD's): the message then takes uvicorn's ``send``.
        """
        cycle = self._cycle
        if (
            not cycle.chunked_encoding  # (set only by a started response: not a HEAD)
            or cycle.response_complete
            or cycle.disconnected
            or cycle.flow.write_paused
        ):
            return False
        if body:
            queued = self._queued
            if queued is None:
                self._queued = [b"%x\r\n" % len(body), body, b"\r\n"]
                self._batch.add(self)
            else:
                queued += (b"%x\r\n" % len(body), body, b"\r\n")
        return True

    def write(self, data: bytes) -> None:
        """Queue ``data`` as it is: uvicorn's head, written here while the head is sent."""
        queued = self._queued
        if queued is None:
            self._queued = [data]
            self._batch.add(self)
        else:
            queued.append(data)

    def flush(self) -> None:
        """Send what was queued in this loop step, in one ``transport.write``."""
        queued, self._queued = self._queued, None
        cycle = self._cycle
        if queued and not cycle.disconnected and not cycle.transport.is_closing():
            cycle.transport.write(b"".join(queued))


class BatchingApp:
    """The app as `HttpProtocol` runs it: each request's ``send`` is a `BodySender`'s.

    ``receive`` is passed on as it is (`ssehub.front.watch` steps uvicorn's own).
    """

    __slots__ = ("app",)

    def __init__(self, app: ASGI3Application) -> None:
        self.app = app

    def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> Awaitable[None]:
        cycle: RequestResponseCycle = send.__self__  # type: ignore[attr-defined]
        return self.app(scope, receive, BodySender(cycle).send)


_last_batching: list[BatchingApp] = []


def batching_app(app: ASGI3Application) -> BatchingApp:
    """``app`` as `BatchingApp` (the same object for every connection to one app)."""
    if _last_batching and _last_batching[0].app is app:
        return _last_batching[0]
    _last_batching[:] = [BatchingApp(app)]
    return _last_batching[0]


class CloseDelimitedCycle(RequestResponseCycle):
    """uvicorn's request cycle for HTTP/1.0: a body of unknown length is sent bare."""

    _bare = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            status = message["status"]
            if (
                b"content-length" not in names
                and b"transfer-encoding" not in names
                and self.scope["method"] != "HEAD"
                and status not in (204, 304)
            ):
                self._bare = True
                self.chunked_encoding = False  # so uvicorn adds no transfer-encoding
                if b"connection" not in names:
                    # The body ends when the connection does: say so, whatever uvicorn's
                    # version would add on its own (those before 0.31 add nothing).
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
        elif self._bare and message["type"] == "http.response.body":
            # uvicorn checks a body against its length; this body's length is what it is
            self.expected_content_length = len(message.get("body", b""))
        await super().send(message)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the corrections in the module's docstring.

    Its own state is class defaults, set on an instance only on the rare paths (a head
    split over pieces or over `MAX_HEAD`, pipelining, a refusal): uvicorn's protocol
    has 28 instance attributes, and a few more set on every request would stop its
    instances sharing their dict's keys, 1.3 KiB more per connection.
    """

    _running: RequestResponseCycle | None = None  # the running cycle, while pipelining
    _unparsed: list[bytes] | None = None  # read while requests wait in the pipeline
    _unparsed_size = 0
    _split_head: tuple[object, int] | None = None  # (scope, bytes) of a head in pieces
    _big_piece = False  # the piece being parsed is over MAX_HEAD
    _refusal: tuple[int, str] | None = None  # the answer to the request just refused
    _deferred: tuple[int, str] | None = None  # a refusal waiting for the answers before it

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        HttpToolsProtocol.__init__(self, config, server_state, app_state, _loop)
        self.app = batching_app(self.app)

    # -- reading ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.pipeline:
            self._hold_pipelined(data)
            return
        big = len(data) > MAX_HEAD
        if big or self._big_piece:
            self._big_piece = big
        scope = self.scope
        unfinished = scope is not None and "method" not in scope  # a head read in part
        super().data_received(data)
        now = self.scope
        if now is not None and "method" not in now and not self.transport.is_closing():
            # A head is unfinished after this read: count its bytes so far (measured
            # once when it began in this read, then adding each later read whole).
            split = self._split_head
            if unfinished and now is scope and split is not None and split[0] is now:
                size = split[1] + len(data)
            else:
                size = head_size(self.url, self.headers)
            self._split_head = (now, size)
            if size > MAX_HEAD:
                # Still in the request line if no header was read yet.
                self.refuse(431 if self.headers else 414, "Request head too large.")

    def _hold_pipelined(self, data: bytes) -> None:
        """Keep bytes behind a pipelined request, to parse when its turn comes."""
        if self._unparsed is None:
            self._unparsed = []
        self._unparsed_size += len(data)
        if self._unparsed_size <= MAX_HEAD:
            self._unparsed.append(data)
        elif self._running is not None:
            # Too much waiting: the connection ends with the running response, and
            # what waits behind it is never answered.
            self._running.keep_alive = False
            self._unparsed.clear()

    def on_headers_complete(self) -> None:
        http_version = self.parser.get_http_version()
        self.check_head(http_version)
        self.start_request(http_version)

    def check_head(self, http_version: str) -> None:
        """Refuse a head the app must not see (raises `Refused`)."""
        if not http_version.startswith("1."):
            self._refuse_head(505, "HTTP version not supported.")
        if self._big_piece or self._split_head is not None:  # (rare: only then measured)
            self._split_head = None
            if len(self.url) > MAX_HEAD:
                self._refuse_head(414, "Request head too large.")
            if head_size(self.url, self.headers) > MAX_HEAD:
                self._refuse_head(431, "Request head too large.")
        if len(self.headers) > MAX_HEADERS:
            self._refuse_head(431, "Too many header fields.")
        if bad_framing(self.headers, http_version):
            self._refuse_head(400, "Invalid HTTP request received.")

    def start_request(self, http_version: str) -> None:
        """Start (or queue) the app's answer to the request whose head was just read."""
        previous = self.cycle
        starts = previous is None or previous.response_complete
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous:  # a websocket upgrade: uvicorn's websocket protocol answers
            return
        if http_version == "1.0":
            cycle.__class__ = CloseDelimitedCycle
        if starts:
            return
        if len(self.pipeline) > MAX_PIPELINED:
            self.pipeline.popleft()  # (the newest: uvicorn queues on the left)
            self.cycle = previous
            self._refuse_head(400, "Too many pipelined requests.")
        if self._running is None:
            self._running = previous  # (the queue was empty: the one before runs)
        # uvicorn stopped reading until the running response is complete; read on
        # (data_received keeps the bytes) so that the client leaving is seen.
        self.flow.resume_reading()

    def _refuse_head(self, status: int, msg: str) -> None:
        """Refuse the request whose head was just read, before the app sees it."""
        self._refusal = (status, msg)
        raise Refused(msg)  # stops the parser; uvicorn then calls send_400_response

    def on_response_complete(self) -> None:
        waiting = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        if self._running is not None:
            self._running = waiting
        if self.pipeline or waiting is not None or self.transport.is_closing():
            return
        if self._deferred is not None:
            self.refuse(*self._deferred)
        elif self._unparsed:
            unparsed, self._unparsed, self._unparsed_size = self._unparsed, None, 0
            self.data_received(b"".join(unparsed))

    # -- answering -------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        status, msg = self._refusal or (400, msg)
        self._refusal = None
        if self.transport.is_closing() or self._deferred is not None:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                # A bad request behind a complete one whose answer is not out yet: it
                # is answered in its turn (never, behind a stream), not in the middle.
                self._deferred = (status, msg)
                return
            if cycle.response_started:
                # Inside a body whose answer has begun: no 400 in the middle of it.
                self.transport.close()
                return
        self.refuse(status, msg)

    def refuse(self, status: int, msg: str) -> None:
        """Answer ``status`` with ``msg`` as plain text, and close the connection."""
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        body = msg.encode("ascii")
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()

    # -- the client leaving ----------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            # uvicorn tells only the last request parsed; the running one must know too.
            running.disconnected = True
            running.message_event.set()
