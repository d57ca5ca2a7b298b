"""Ending the hub's streams when the server it runs in is asked to stop.

An ASGI server stops gracefully by waiting for open responses to finish, and a stream
never finishes by itself: uvicorn waits for ever, or until a timeout that cancels the
streams with a traceback and no ``retry:``. ASGI has no "the server is stopping" event
before the lifespan's shutdown, which comes only after the responses ended. So the hub,
while it runs, puts itself in front of the process's SIGINT/SIGTERM handlers (the
server's): on a signal it ends every stream with a ``retry:`` hint, then hands the
signal on to the server, whose graceful shutdown then finds no open response.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], object]


def chain_shutdown_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_signal`` on SIGINT/SIGTERM before the handler installed now; return undo.

    Only a signal that has a Python handler already (a server's, or asyncio's) is
    chained: without one, SIGTERM ends the process at once and there is nothing to
    hand on to. Nothing happens outside the main thread, where Python cannot set
    signal handlers (an app run in a test client's thread, say).

    Args:
        on_signal: what to do first; runs in the main thread between two bytecodes, so
            it must only schedule work (``Hub.request_shutdown`` does).

    Returns:
        A function that puts the previous handlers back, where nothing was installed
        over ours since; calling it again does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    installed: dict[int, tuple[_Handler, _Handler]] = {}  # signal: (ours, previous)
    for sig in SHUTDOWN_SIGNALS:
        previous = signal.getsignal(sig)
        if callable(previous):
            handler = _chained(on_signal, previous)
            signal.signal(sig, handler)
            installed[sig] = (handler, previous)

    def restore() -> None:
        while installed:
            sig, (handler, previous) = installed.popitem()
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

    return restore


def _chained(first: Callable[[], None], previous: _Handler) -> _Handler:
    def handler(sig: int, frame: FrameType | None) -> None:
        first()
        previous(sig, frame)

    return handler


def _nothing() -> None:
    return None
