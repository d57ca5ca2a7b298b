"""A portable stream's frames go to ssehub's `BodySender` past pass-through middleware.

Driven by hand on a fake transport, as ``test_doors.py`` drives the doors.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssehub import events
from ssehub.front.http1 import BodySender, HttpProtocol
from ssehub.front.passthrough import body_sender
from ssehub.front.portable import AsgiSink, serve_stream
from ssehub.hub import Hub
from tests.test_doors import FakeTransport, http_protocol, next_step, running_hub

pytestmark = pytest.mark.anyio

REQUEST = b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n"


def with_middleware(app: ASGIApp) -> ASGIApp:
    """``app`` inside Starlette's error and CORS middleware, as ssehub's app has them."""
    return ServerErrorMiddleware(CORSMiddleware(app, allow_origins=["*"]))


class SendSeen:
    """An app that keeps the ``send`` it is given, and answers nothing."""

    def __init__(self) -> None:
        self.sends: list[Send] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.sends.append(send)


def sealing(app: ASGIApp) -> ASGIApp:
    """Middleware of the host application's own: it wraps ``send``."""

    async def sealed(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_on(message: Message) -> None:
            await send(message)

        await app(scope, receive, send_on)

    return sealed


async def seen_send(app: ASGIApp, inner: SendSeen) -> Send:
    protocol, _ = http_protocol(app)
    protocol.data_received(REQUEST)
    await next_step()
    (send,) = inner.sends
    protocol.connection_lost(None)
    return send


async def test_the_body_sender_is_found_past_starlettes_error_and_cors_middleware() -> None:
    inner = SendSeen()
    assert isinstance(body_sender(await seen_send(with_middleware(inner), inner)), BodySender)


async def test_a_wrapper_of_the_host_applications_hides_the_body_sender() -> None:
    inner = SendSeen()
    assert body_sender(await seen_send(with_middleware(sealing(inner)), inner)) is None


async def test_another_servers_send_is_not_a_body_sender() -> None:
    async def send(message: Message) -> None:
        pass

    assert body_sender(send) is None
    assert body_sender(ServerErrorMiddleware) is None


def stream_app(hub: Hub) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_stream(hub, "ann", (None, None, None), scope, receive, send)

    return endpoint


async def open_stream(app: ASGIApp) -> tuple[HttpProtocol, FakeTransport]:
    """A stream request to ``app`` under ssehub's protocol, once its answer is out."""
    protocol, transport = http_protocol(app)
    protocol.data_received(REQUEST)
    await next_step()
    await next_step()
    return protocol, transport


def sink_of(hub: Hub) -> AsgiSink:
    (connection,) = hub._registry.connections()
    sink = connection.sink
    assert isinstance(sink, AsgiSink)
    return sink


async def test_a_stream_writes_its_head_with_cors_and_its_greeting_in_one_write() -> None:
    async with running_hub() as hub:
        protocol, transport = await open_stream(with_middleware(stream_app(hub)))
        (first,) = transport.writes
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"access-control-allow-origin: *" in head
        assert events.greeting_frame("ann") in body
        protocol.connection_lost(None)


async def test_frames_past_pass_through_middleware_keep_their_order_when_the_client_lags() -> None:
    async with running_hub() as hub:
        protocol, transport = await open_stream(with_middleware(stream_app(hub)))
        sink = sink_of(hub)
        assert sink.direct is not None  # frames go to the body sender, not through send
        await hub.send("ann", "one")
        protocol.pause_writing()  # the client does not read: frames wait in the sink
        await hub.send("ann", "two")
        await hub.send("ann", "three")
        assert sink.ready
        await next_step()
        protocol.resume_writing()
        await hub.send("ann", "four")
        for _ in range(4):
            await next_step()
        data = transport.data
        positions = [data.index(b"data: %s\n" % word) for word in (b"one", b"two", b"three")]
        positions.append(data.index(b"data: four\n"))
        assert positions == sorted(positions)
        protocol.connection_lost(None)
        await asyncio.sleep(0)


async def test_a_stream_behind_an_unknown_wrapper_still_sends_every_frame() -> None:
    async with running_hub() as hub:
        protocol, transport = await open_stream(with_middleware(sealing(stream_app(hub))))
        assert sink_of(hub).direct is None
        await hub.send("ann", "one")
        await next_step()
        await next_step()
        assert b"data: one\n" in transport.data
        protocol.connection_lost(None)
        await asyncio.sleep(0)
