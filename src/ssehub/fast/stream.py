"""Writing a fast stream's frames to its socket: `StreamProtocol`."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, ClassVar

from starlette.responses import Response
from uvicorn.server import ServerState

from ssehub import events
from ssehub.connection import Connection
from ssehub.exceptions import SsehubError, StoreUnavailable
from ssehub.front.answers import error_response, json_response, unavailable_answer
from ssehub.front.hold import HoldUntilHead

if TYPE_CHECKING:
    from ssehub.fast.head import FastStreams

logger = logging.getLogger("ssehub.fastpath")

LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112, section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_KEEPALIVE_CHUNK = chunk(events.KEEPALIVE_FRAME)
# The last frame chunked and its chunk: a broadcast writes one frame to every stream.
_last_chunked: list[bytes] = [b"", b""]


class StreamProtocol(HoldUntilHead, asyncio.Protocol):
    """One stream's socket once taken over: the transport's protocol and the `FrameSink`.

    Until the hub has registered the stream (greeting and replay included), frames are
    held (`HoldUntilHead`) and then written together with the response head; if
    registering fails, the client gets the same JSON error as from the portable route
    instead. Frames are HTTP/1.1 chunks; `CloseDelimitedStream` writes them bare, for
    HTTP/1.0. The stream is the connection's last response: its end closes the socket.
    """

    __slots__ = (
        "_cors",
        "_front",
        "_queued",
        "_slow",
        "_state",
        "_transport",
        "closed",
        "connection",
        "lost",
    )

    chunked: ClassVar[bool] = True
    # What ends the response body: the last chunk (RFC 9112, 7.1).
    _end: ClassVar[bytes] = LAST_CHUNK

    def __init__(
        self,
        transport: asyncio.Transport,
        front: FastStreams,
        state: ServerState,
        cors: bytes,
    ) -> None:
        HoldUntilHead.__init__(self)
        self._transport = transport
        self._front = front
        # The transport tells when its buffer passes the bound (pause_writing), so a
        # write needs no check of its own.
        transport.set_write_buffer_limits(high=front.hub.limits.buffer_bytes)
        self._state = state
        self._cors = cors
        self._queued: list[bytes] | None = None  # frames waiting for the batch's flush
        self._slow = False
        self.connection: Connection | None = None
        self.closed = False
        self.lost = False

    @staticmethod
    def frame(data: bytes) -> bytes:
        """``data`` as this stream puts it on the wire."""
        return chunk(data)

    # -- FrameSink ----------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write a frame as one chunk; False once the socket's buffer is over its bound."""
        if self.closed:
            return True
        if self._held is not None:
            return self.hold(data)
        if data is _last_chunked[0]:  # a broadcast: the same frame for every stream
            out = _last_chunked[1]
        elif data is events.KEEPALIVE_FRAME:
            out = _KEEPALIVE_CHUNK
        else:
            out = chunk(data)
            _last_chunked[0], _last_chunked[1] = data, out
        queued = self._queued  # (inline: this is the per-delivery path)
        if queued is None:
            self._queued = [out]
            self._front.batch.add(self)
        else:
            queued.append(out)
        # Over the bound, the transport calls pause_writing as a flush writes.
        return not self._slow

    def _queue(self, out: bytes) -> None:
        queued = self._queued
        if queued is None:
            self._queued = [out]
            self._front.batch.add(self)
        else:
            queued.append(out)

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
        if final is not None and self.hold(final):
            return  # the opener writes what is held, then ends the response
        if self._held is not None or self.lost:
            return
        if self._slow:
            # Its buffer is full and may never drain: do not wait for it.
            self._transport.abort()
            return
        self.flush()
        self._transport.write(self.frame(final) + self._end if final else self._end)
        self._transport.close()

    # -- opening ------------------------------------------------------------------------

    def opened(self, connection: Connection) -> None:
        """The hub registered the stream: send the head and everything held so far."""
        self.connection = connection
        if self.lost:
            self._front.hub.release(connection)
            return
        parts = [self._front.stream_head(self._state.default_headers, self._cors, self.chunked)]
        parts.extend(self.frame(data) for data in self.release())
        if self.closed:
            parts.append(self._end)
        self._transport.write(b"".join(parts))
        if self.closed:
            self._transport.close()
            self._front.hub.release(connection)

    def refuse(self, response: Response) -> None:
        """Answer with ``response`` (an error) and close the connection."""
        self.closed = True
        self.release()
        if self.lost:
            return
        self._transport.write(self._front.answer(self._state.default_headers, response, self._cors))
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
        # A client has nothing to say on an event stream, and a request pipelined
        # behind it is never answered (the stream is the connection's last response).
        pass

    def eof_received(self) -> bool | None:
        # The client closed its side (a half-close too): the transport closes,
        # connection_lost follows and releases the stream.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closed = True
        self._state.connections.discard(self)
        connection, self.connection = self.connection, None
        if connection is not None:
            # (dropping it breaks the stream <-> connection cycle: reference counting
            # frees both, not the cyclic collector)
            self._front.hub.release(connection)

    def shutdown(self) -> None:
        """Called by uvicorn on a graceful shutdown: end the stream with a retry hint.

        The hint is spread as `Hub.shutdown_streams` spreads it.
        """
        final = random.choice(events.spread_retry_frames(self._front.hub.retry_ms))
        if self.connection is not None:
            self.connection.close(final)
        else:
            self.close(final)


class CloseDelimitedStream(StreamProtocol):
    """A stream for an HTTP/1.0 client: bare frames, ended by closing the connection.

    HTTP/1.0 has no chunked coding (RFC 9112, 6.1): the body is everything until the
    server closes (6.3, rule 8).
    """

    __slots__ = ()

    chunked = False
    _end = b""

    @staticmethod
    def frame(data: bytes) -> bytes:
        return data

    def write(self, data: bytes) -> bool:
        """Write a frame as is; False once the socket's buffer is over its bound."""
        if self.closed:
            return True
        if self._held is not None:
            return self.hold(data)
        self._queue(data)
        return not self._slow
