"""Time-based event ids shared by stores that make their own: ``"<ms>-<seq>"``.

The millisecond part makes ids of a restarted in-memory store larger than the ones
it gave out before, so a client's old ``Last-Event-ID`` never hides new events.
"""

from __future__ import annotations

import time


def next_key(last: tuple[int, int] | None) -> tuple[int, int]:
    """Return the key after ``last``: now in ms, or ``last`` with its sequence + 1."""
    now_ms = time.time_ns() // 1_000_000
    if last is None or now_ms > last[0]:
        return now_ms, 0
    return last[0], last[1] + 1


def key_to_id(key: tuple[int, int]) -> str:
    """Format a key as an event id."""
    return f"{key[0]}-{key[1]}"
