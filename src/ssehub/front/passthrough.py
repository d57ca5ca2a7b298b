"""Seeing through the ``send`` wrappers of the app's middleware to ssehub's `BodySender`.

A stream's ``send`` reaches the server through every middleware the app has: each
wraps it. Most of Starlette's and FastAPI's own look at the ``http.response.start``
message only (to note that the response started, or to add CORS headers) and pass
every body message on untouched. When every wrapper between a stream and the server
is one of those, and the server's ``send`` is a `BodySender` (ssehub's HTTP/1
protocol), the stream's body may go to the `BodySender` directly: the same bytes in
the same order, without an ASGI message and a coroutine per wrapper per frame.

A wrapper is recognised by its code object, taken from the very classes the app runs
(not by name): any other wrapper, the host application's own included, or a version
of Starlette whose wrapper is not found where it was, leaves the stream on the
generic ASGI path.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

from starlette import _exception_handler
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware

from ssehub.front.http1 import BodySender

_MAX_LAYERS = 32  # (a loop guard: an app has a handful)


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    """The code objects of the functions defined inside ``code``, at any depth."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _nested(const)


def _wrappers_in(function: Callable[..., Any], name: str) -> set[types.CodeType]:
    """The code of the ``send`` wrapper called ``name`` that ``function`` defines.

    It is a wrapper this module may see through only if the next ``send`` is its
    closure's ``send``; anything else about it was read in its source.
    """
    code = getattr(function, "__code__", None)
    if code is None:
        return set()
    return {
        inner for inner in _nested(code) if inner.co_name == name and "send" in inner.co_freevars
    }


def _known_wrappers() -> frozenset[types.CodeType]:
    # Each notes http.response.start (or reads nothing) and awaits send(message) as is.
    found = _wrappers_in(ServerErrorMiddleware.__call__, "_send")
    found |= _wrappers_in(_exception_handler.wrap_app_handling_exceptions, "sender")
    try:
        from fastapi._body_limit import AppBodyLimitMiddleware
    except ImportError:  # a FastAPI without its body limit
        pass
    else:
        found |= _wrappers_in(AppBodyLimitMiddleware.__call__, "send_response")
    return frozenset(found)


_WRAPPERS = _known_wrappers()
_CORS_SEND = CORSMiddleware.send  # changes only http.response.start's headers


def body_sender(send: Callable[..., Any]) -> BodySender | None:
    """The `BodySender` under ``send`` if every wrapper on the way passes bodies on as is.

    None when ``send`` is another server's, or a wrapper on the way is not one this
    module knows.
    """
    for _ in range(_MAX_LAYERS):
        owner = getattr(send, "__self__", None)
        if type(owner) is BodySender:
            return owner if getattr(send, "__func__", None) is BodySender.send else None
        if type(send) is functools.partial:
            if getattr(send.func, "__func__", None) is not _CORS_SEND or send.args:
                return None
            send = send.keywords["send"]
            continue
        code = getattr(send, "__code__", None)
        closure = getattr(send, "__closure__", None)
        if code not in _WRAPPERS or closure is None:
            return None
        send = closure[code.co_freevars.index("send")].cell_contents
    return None
