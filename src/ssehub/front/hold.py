"""Frames held until a stream's response head is out: one rule for both front doors."""

from __future__ import annotations

from ssehub.events import KEEPALIVE_FRAME


class HoldUntilHead:
    """The part of a `FrameSink` that holds frames until the response head is sent.

    `Hub.open` writes the greeting and the replay to a sink before the door knows the
    stream is allowed to open (it may still be refused with a JSON error), so a sink
    holds every frame whole and unbounded (the bound is the replay's) until `release`,
    and a ``close(final)`` meanwhile only adds ``final`` to what is held. The door then
    writes the head and the held frames together, and ends the response at once if the
    stream was closed meanwhile. A subclass's ``write`` tests ``_held`` inline (it is
    the per-delivery path) and calls `hold` only while it holds.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[bytes] | None = []

    @property
    def holding(self) -> bool:
        """Whether the head is not out yet, so frames are held."""
        return self._held is not None

    def hold(self, data: bytes) -> bool:
        """Hold ``data`` if the head is not out yet; return whether it was held."""
        held = self._held
        if held is None:
            return False
        if data:
            held.append(data)
        return True

    def release(self) -> list[bytes]:
        """The head goes out now: return what was held; nothing is held from now on.

        Keep-alives held before the first other frame are left out: the hub's timer
        reaches a stream as soon as it is registered, which may be before its greeting,
        and a client takes a stream's first event without an id for the greeting.
        """
        held, self._held = self._held or [], None
        first = 0
        while first < len(held) - 1 and held[first] is KEEPALIVE_FRAME:
            first += 1
        if first and held[first] is not KEEPALIVE_FRAME:
            return held[first:]
        return held
