"""The fast path: ``GET /sse/connect/{user_id}`` served straight from the socket.

`ssehub serve` gives uvicorn the protocol class `fast_protocol` makes. It reads a
connection's first request head (`entry`); what that head decides, and which door
answers each kind of request, is in `decide`. A stream request has its user id,
credentials and ``Last-Event-ID`` checked exactly as the portable route does
(`ssehub.front.checks`), and the socket's transport goes to a `StreamProtocol`
(`stream`): a small object that is both the transport's protocol and the hub's
`FrameSink`, writing frames at the end of the event-loop step (`WriteBatch`) behind
the head `head` builds. Anything else goes to uvicorn's protocol, corrected
(`ssehub.front.http1`), and through the FastAPI app.

This relies on uvicorn internals (the protocol class's constructor, and
``HttpToolsProtocol``'s parser callbacks and its ``url``, ``headers``, ``cycle``,
``server_state`` attributes), which is why ``pyproject.toml`` pins uvicorn's version
range and the tests exercise the seam.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ssehub.fast.entry import EntryProtocol, FastHttpProtocol
from ssehub.fast.head import FastStreams
from ssehub.fast.stream import CloseDelimitedStream, StreamProtocol, chunk
from ssehub.front.writes import WriteBatch


def fast_protocol(app: FastAPI) -> type[EntryProtocol]:
    """The uvicorn ``http`` protocol class that serves ``app``'s streams the fast way.

    ``app`` is built by `ssehub.app.create_app`: its state holds ``hub`` and ``auth``;
    stream answers get the same CORS headers as the app's ``CORSMiddleware`` adds.
    """
    state: Any = app.state
    cors: dict[str, Any] | None = None
    for middleware in app.user_middleware:
        if getattr(middleware, "cls", None) is CORSMiddleware:
            cors = dict(middleware.kwargs)
    front = FastStreams(state.hub, state.auth, cors=cors)

    class SsehubHttpProtocol(FastHttpProtocol):
        streams = front

    class SsehubEntryProtocol(EntryProtocol):
        streams = front
        http_protocol = SsehubHttpProtocol

    return SsehubEntryProtocol


__all__ = [
    "CloseDelimitedStream",
    "EntryProtocol",
    "FastHttpProtocol",
    "FastStreams",
    "StreamProtocol",
    "WriteBatch",
    "chunk",
    "fast_protocol",
]
