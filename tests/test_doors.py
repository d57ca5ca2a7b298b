"""The door objects on a fake transport, as uvicorn tests its protocols: no sockets.

`StreamProtocol` and `CloseDelimitedStream` (the fast path's sinks), `WriteBatch`,
`AsgiSink` and the disconnect watchers (the portable path's), and `HttpProtocol`
(uvicorn's protocol with ssehub's corrections) are driven by hand here; the
real-socket tests (``test_fastpath.py``, ``test_conformance.py``) keep the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ssehub import MemoryStore, events
from ssehub.auth import Authenticator
from ssehub.fast import CloseDelimitedStream, FastStreams, StreamProtocol, chunk
from ssehub.fast.head import CorsHeaders
from ssehub.front.http1 import HttpProtocol
from ssehub.front.portable import AsgiSink, serve_stream
from ssehub.front.watch import ClientWatch, TaskWatch, steppable, watch_client
from ssehub.hub import Hub
from ssehub.limits import Limits

pytestmark = pytest.mark.anyio

GREETING = events.greeting_frame("ann")


class FakeTransport(asyncio.Transport):
    """What a protocol writes and does to its connection, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.protocol: Any = None

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


@contextlib.asynccontextmanager
async def running_hub(limits: Limits | None = None) -> AsyncIterator[Hub]:
    hub = Hub(MemoryStore(), keepalive=60, limits=limits)
    async with hub.running():
        yield hub


def fast_stream(
    hub: Hub, kind: type[StreamProtocol] = StreamProtocol
) -> tuple[StreamProtocol, FakeTransport, FastStreams]:
    front = FastStreams(hub, Authenticator())
    transport = FakeTransport()
    state = ServerState()
    stream = kind(transport, front, state, b"")
    state.connections.add(stream)  # type: ignore[arg-type]
    return stream, transport, front


async def next_step() -> None:
    """Let the loop run the callbacks scheduled so far (the batch's flush)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


# -- the fast path ---------------------------------------------------------------------


async def test_a_fast_stream_writes_its_head_and_held_frames_in_one_write() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        assert len(transport.writes) == 1
        head, _, body = transport.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nconnection: close\r\n" in head + b"\r\n"
        assert head.endswith(b"transfer-encoding: chunked")
        assert body == chunk(GREETING) + chunk(events.KEEPALIVE_FRAME)
        assert hub.open_streams == 1


def test_stream_heads_follow_uvicorns_default_headers_and_the_cors_answer() -> None:
    front = FastStreams(Hub(MemoryStore()), Authenticator())
    monday = [(b"date", b"Mon, 30 Nov 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
    head = front.stream_head(monday, b"", True)
    assert head.startswith(b"HTTP/1.1 200 OK\r\ndate: Mon, 30 Nov 2026 10:00:00 GMT\r\n")
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert front.stream_head(monday, b"", True) is head  # the same second: kept
    cors = b"access-control-allow-origin: *\r\n"
    assert cors in front.stream_head(monday, cors, True)
    assert cors not in front.stream_head(monday, b"", True)
    assert front.stream_head(monday, b"", False).endswith(b"connection: close\r\n\r\n")
    # uvicorn puts a new list, with the new date, in its state each second.
    tuesday = [(b"date", b"Tue, 01 Dec 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
    assert b"date: Tue, 01 Dec 2026 10:00:00 GMT\r\n" in front.stream_head(tuesday, b"", True)


async def test_frames_of_one_loop_step_go_out_in_one_write_at_its_end() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        transport.writes.clear()
        assert stream.write(b"data: 1\n\n") is True
        assert stream.write(b"data: 2\n\n") is True
        assert transport.writes == []  # not before the end of the step
        await next_step()
        assert transport.writes == [chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n")]


async def test_one_broken_socket_does_not_hold_back_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_hub() as hub:
        broken, broken_transport, front = fast_stream(hub)
        healthy, transport, _ = fast_stream(hub)
        healthy._front = broken._front = front  # one batch for both
        for stream in (broken, healthy):
            await stream.open("ann", None, None)

        def fail(data: object) -> None:
            raise OSError("broken pipe")

        broken_transport.write = fail  # type: ignore[method-assign]
        broken.write(b"data: 1\n\n")
        healthy.write(b"data: 1\n\n")
        await next_step()
        assert transport.writes[-1] == chunk(b"data: 1\n\n")
        assert "writing to a stream failed" in caplog.text
        broken.connection_lost(OSError("broken pipe"))  # what the loop then reports


async def test_a_frame_written_to_many_streams_is_chunked_once() -> None:
    async with running_hub() as hub:
        first, one, _ = fast_stream(hub)
        second, other, _ = fast_stream(hub)
        for stream in (first, second):
            await stream.open("ann", None, None)
        frame = b"data: everyone\n\n"
        first.write(frame)
        second.write(frame)
        await next_step()
        assert one.writes[-1] is other.writes[-1]  # the same chunk object


async def test_closing_a_fast_stream_ends_the_chunked_body_and_the_connection() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        stream.close(b"retry: 5\n\n")
        assert transport.data.endswith(chunk(b"retry: 5\n\n") + b"0\r\n\r\n")
        assert transport.closed


async def test_a_stream_closed_while_opening_answers_what_it_held_then_ends() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        stream.write(b"data: held\n\n")
        stream.close(b"retry: 1\n\n")
        assert transport.writes == []  # nothing before the head
        connection = await hub.open("ann", stream)
        stream.opened(connection)
        body = transport.data.partition(b"\r\n\r\n")[2]
        assert body == chunk(b"data: held\n\n") + chunk(b"retry: 1\n\n") + b"0\r\n\r\n"
        assert transport.closed
        assert hub.open_streams == 0


async def test_an_http_1_0_stream_writes_bare_frames_and_ends_by_closing() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub, CloseDelimitedStream)
        await stream.open("ann", None, None)
        head, _, body = transport.data.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head
        assert body == GREETING + events.KEEPALIVE_FRAME
        stream.write(b"data: 1\n\n")
        await next_step()
        stream.close()
        assert transport.data.endswith(b"data: 1\n\n")
        assert transport.closed


async def test_a_refused_fast_stream_gets_the_json_error_and_the_connection_closes() -> None:
    async with running_hub(Limits(max_connections_per_user=1)) as hub:
        first, _, _ = fast_stream(hub)
        await first.open("ann", None, None)
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        head, _, body = transport.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429 ")
        assert b"connection: close" in head
        assert body == b'{"detail":"too many open streams for this user"}'
        assert transport.closed


async def test_a_slow_consumer_is_dropped_when_its_buffer_fills() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        stream.pause_writing()  # what the transport says past the high-water mark
        assert stream.write(b"data: more\n\n") is False
        await next_step()  # the flush sees the stream is slow: the hub closes it
        assert transport.aborted
        assert hub.stats.dropped_slow == 1


async def test_what_a_client_sends_on_its_stream_is_never_answered() -> None:
    async with running_hub() as hub:
        stream, transport, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        before = list(transport.writes)
        stream.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await next_step()
        assert transport.writes == before


@pytest.mark.parametrize("how", ["lost", "eof"])
async def test_a_client_leaving_releases_its_fast_stream_at_once(how: str) -> None:
    async with running_hub() as hub:
        stream, _, _ = fast_stream(hub)
        await stream.open("ann", None, None)
        assert hub.open_streams == 1
        if how == "eof":
            assert not stream.eof_received()  # asyncio then closes the transport...
        stream.connection_lost(None)  # ...and tells the protocol
        assert hub.open_streams == 0
        assert stream.write(b"data: late\n\n") is True  # ignored, no error


# -- the portable path -------------------------------------------------------------------


def test_an_asgi_sink_holds_everything_until_live_then_bounds_the_queue() -> None:
    sink = AsgiSink(limit=10)
    assert sink.write(b"x" * 100) is True  # the replay is held whole
    assert not sink.ready
    sink.live()
    assert sink.ready
    assert sink.take_nowait() == b"x" * 100
    assert sink.write(b"y" * 8) is True
    assert sink.write(b"z" * 8) is False  # over the bound
    assert sink.overflowed


@pytest.mark.parametrize("kind", ["fast", "portable"])
async def test_a_keepalive_before_the_greeting_is_dropped(kind: str) -> None:
    # The hub's keep-alive timer may reach a stream registered but not yet greeted.
    async with running_hub() as hub:
        if kind == "fast":
            sink: StreamProtocol | AsgiSink = fast_stream(hub)[0]
        else:
            sink = AsgiSink(limit=1000)
        sink.write(events.KEEPALIVE_FRAME)
        sink.write(GREETING)
        sink.write(events.KEEPALIVE_FRAME)
        assert sink.release() == [GREETING, events.KEEPALIVE_FRAME]


def test_a_stream_that_starts_with_keepalives_alone_keeps_them() -> None:
    # (the presence feed's first frame is a keep-alive: the stream shows it is open)
    sink = AsgiSink(limit=1000)
    sink.write(events.KEEPALIVE_FRAME)
    assert sink.release() == [events.KEEPALIVE_FRAME]
    assert AsgiSink(limit=10).release() == []


def test_an_asgi_sink_closed_while_holding_ends_after_what_it_held() -> None:
    sink = AsgiSink(limit=10)
    sink.write(b"a")
    sink.close(b"retry: 1\n\n")
    assert sink.closed
    sink.live()
    assert sink.take_nowait() == b"aretry: 1\n\n"


async def uvicorn_receive(event: asyncio.Event, messages: list[dict[str, Any]]) -> Any:
    """A receive() shaped as uvicorn's: awaits an asyncio.Event, then returns."""
    await event.wait()
    event.clear()
    return messages.pop(0)


async def test_client_watch_steps_receive_and_wakes_the_sink_when_the_client_leaves() -> None:
    event = asyncio.Event()
    messages: list[dict[str, Any]] = [{"type": "http.request"}, {"type": "http.disconnect"}]
    sink = AsgiSink(limit=10)
    watch = ClientWatch(lambda: uvicorn_receive(event, messages), sink.wake)
    assert watch.left() is False  # blocked in event.wait(), no task of its own
    waiter = sink.waiter()
    event.set()  # the request's body: receive() returns, the watch receives again
    async with asyncio.timeout(1):
        await waiter
    assert watch.left() is False
    waiter = sink.waiter()
    event.set()  # the disconnect
    async with asyncio.timeout(1):
        await waiter
    assert watch.left() is True
    watch.close()


async def test_client_watch_runs_a_receive_that_yields_bare() -> None:
    async def receive() -> Any:
        await asyncio.sleep(0)  # a bare yield: go on at the next turn
        return {"type": "http.disconnect"}

    sink = AsgiSink(limit=10)
    watch = ClientWatch(receive, sink.wake)
    waiter = sink.waiter()
    assert watch.left() is False
    async with asyncio.timeout(1):
        await waiter
    assert watch.left() is True


def test_a_future_yielded_by_a_coroutine_carries_the_flag_client_watch_clears() -> None:
    # What ClientWatch relies on from asyncio: a future awaited by a coroutine is
    # yielded with _asyncio_future_blocking set, which a task (and ClientWatch) clears.
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()

        async def waits() -> None:
            await future

        steps = waits()
        yielded = steps.send(None)
        assert yielded is future
        assert future._asyncio_future_blocking is True
        steps.close()
    finally:
        loop.close()


async def test_only_uvicorns_own_receive_is_stepped() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive)

    seen: list[Receive] = []
    protocol, _ = http_protocol(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await next_step()
    (receive,) = seen
    assert steppable(receive)
    assert not steppable(lambda: uvicorn_receive(asyncio.Event(), []))
    watch = watch_client(lambda: uvicorn_receive(asyncio.Event(), []), lambda _: None)
    assert isinstance(watch, TaskWatch)
    watch.close()
    protocol.connection_lost(None)


# -- uvicorn's protocol, corrected -------------------------------------------------------


def http_protocol(
    app: Any, kind: type[HttpToolsProtocol] = HttpProtocol
) -> tuple[HttpProtocol, FakeTransport]:
    config = uvicorn.Config(app, http=kind, log_config=None, lifespan="off")
    config.load()
    protocol = kind(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport  # type: ignore[return-value]


async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An answer of unknown length, in two parts."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await send({"type": "http.response.body", "body": b"two", "more_body": False})


async def test_an_http_1_0_answer_of_unknown_length_is_close_delimited() -> None:
    protocol, transport = http_protocol(streaming_app)
    protocol.data_received(b"GET / HTTP/1.0\r\n\r\n")
    await next_step()
    head, _, body = transport.data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body == b"onetwo"
    assert transport.closed


async def test_an_http_1_1_answer_of_unknown_length_stays_chunked() -> None:
    protocol, transport = http_protocol(streaming_app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await next_step()
    assert transport.data.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")


async def test_the_head_and_the_chunks_of_one_loop_step_go_out_in_one_write_at_its_end() -> None:
    written: list[int] = []  # writes when the app had sent its chunks
    finish = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two", "more_body": True})
        written.append(len(transport.writes))
        await finish.wait()
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    protocol, transport = http_protocol(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await next_step()
    assert written == [0]  # the head and the chunks waited for the step's end
    (first,) = transport.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n")
    finish.set()
    await next_step()
    assert transport.writes[1:] == [b"3\r\nend\r\n0\r\n\r\n"]


async def test_a_streaming_answer_ends_after_the_chunks_still_waiting() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    protocol, transport = http_protocol(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await next_step()
    assert transport.data.endswith(b"\r\n\r\n3\r\none\r\n0\r\n\r\n")


async def test_chunks_waiting_for_a_client_that_left_are_dropped() -> None:
    sent = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        sent.set()
        await receive()  # the disconnect

    protocol, transport = http_protocol(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(1):
        await sent.wait()
    protocol.connection_lost(None)
    transport.closed = True
    await next_step()
    assert transport.writes == []  # the head waited with the chunk


async def test_invalid_framing_is_refused_before_the_app_runs() -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    protocol, transport = http_protocol(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n")
    await next_step()
    assert transport.data.startswith(b"HTTP/1.1 400 ")
    assert transport.closed
    assert called == []


async def test_a_request_pipelined_behind_an_unfinished_answer_keeps_the_reading_on() -> None:
    started = asyncio.Event()
    disconnected: list[Message] = []

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        while (message := await receive())["type"] != "http.disconnect":
            pass  # the request's (empty) body
        disconnected.append(message)

    protocol, transport = http_protocol(endless)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(1):
        await started.wait()
    assert transport.reading  # (uvicorn stopped reading here)
    protocol.data_received(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")  # kept, not parsed
    protocol.connection_lost(None)  # the client left
    async with asyncio.timeout(1):
        while not disconnected:
            await asyncio.sleep(0)
    assert disconnected == [{"type": "http.disconnect"}]


async def test_garbage_behind_a_request_is_answered_after_it() -> None:
    protocol, transport = http_protocol(streaming_app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    assert transport.writes == []  # no 400 before the answer it follows
    await next_step()
    first, _, rest = transport.data.partition(b"0\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b"HTTP/1.1 400 ")
    assert transport.closed


async def test_a_head_past_the_limit_is_refused() -> None:
    protocol, transport = http_protocol(streaming_app)
    protocol.data_received(b"GET /")
    protocol.data_received(b"a" * 70_000)
    assert transport.data.startswith(b"HTTP/1.1 414 ")
    assert transport.closed


async def test_a_portable_stream_whose_server_cannot_write_any_more_ends_quietly() -> None:
    # uvicorn (uvloop) raises RuntimeError when asked to write to a transport it has
    # closed without telling the app the client left: the stream just ends.
    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        sent.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client's leaving is never reported
        return {"type": "http.disconnect"}

    async with running_hub() as hub:
        scope: Scope = {"type": "http", "http_version": "1.1", "method": "GET"}
        async with asyncio.timeout(2):
            await serve_stream(hub, "ann", (None, None, None), scope, receive, send)
        assert [message["type"] for message in sent] == ["http.response.start"]
        assert hub.open_streams == 0


async def test_the_corrected_protocol_costs_a_connection_no_more_than_uvicorns() -> None:
    # uvicorn's protocol has 28 instance attributes; a few more on every connection stop
    # its instances sharing their dict's keys (1.3 KiB more per portable stream).
    # (fresh subclasses: each class's instances share one table of keys, which the
    # rare paths of other tests here may have filled)
    plain, _ = http_protocol(streaming_app, type("Plain", (HttpToolsProtocol,), {}))
    protocol, _ = http_protocol(streaming_app, type("Corrected", (HttpProtocol,), {}))
    whole = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for one in (plain, protocol):
        for piece in (whole, whole[:16], whole[16:]):  # one head whole, one in two reads
            one.data_received(piece)
            await next_step()
    assert set(vars(protocol)) - set(vars(plain)) <= {"_split_head"}
    assert sys.getsizeof(vars(protocol)) == sys.getsizeof(vars(plain))


def test_cors_headers_are_added_only_to_a_request_that_names_its_origin() -> None:
    cors = CorsHeaders({"allow_origins": ["https://app.example"]})
    assert b"access-control-allow-origin" not in cors({})
    assert b"access-control-allow-origin" not in cors({"cookie": "session=1"})
    assert b"access-control-allow-origin: https://app.example" in cors(
        {"origin": "https://app.example"}
    )
    assert b"access-control-allow-origin" not in cors({"origin": "https://evil.example"})
