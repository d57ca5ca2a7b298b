"""The SQLite store's schema and its one-process file lock."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, the file is not guarded
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 3  # 2: broadcasts stored once, and ``sessions``; 3: ``user_events``

BROADCAST = ""
"""The ``user_id`` of a broadcast's one ``events`` row (a user id is never empty)."""

MAX_ID = 2**63 - 1  # the largest rowid

_MARK_DROPPED = (
    "INSERT INTO trimmed (user_id, dropped_id) VALUES (?, ?) ON CONFLICT (user_id) "
    "DO UPDATE SET dropped_id = max(dropped_id, excluded.dropped_id)"
)

# ``events``: every kept event; ``id`` is the event id, so AUTOINCREMENT keeps ids from
# being reused after the newest rows are deleted. ``created`` never decreases in id order.
# A broadcast is one row with user_id '' (`BROADCAST`); older files hold a row per user.
# ``user_events``: ``(user_id, id)`` of every event up to ``meta.user_events_upto`` and of
# every broadcast, for reads by user; the newer ones are in memory (`_sqlite_tail`).
# ``trimmed``: per user, the newest id retention dropped (``reset`` needs it); the row
# of '' is the newest broadcast dropped.
# ``users``: presence of every user who ever opened a stream.
# ``sessions``: when a user had streams open, as ids: a user's broadcasts are those
# with ``from_id < id <= to_id`` (``to_id`` NULL: still open). Written only for the
# sessions a broadcast fell in.
# ``webhooks``: webhook deliveries not yet received (the outbox), by when they are due.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS user_events (
    user_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('user_events_upto', 0);
CREATE TABLE IF NOT EXISTS trimmed (
    user_id TEXT PRIMARY KEY,
    dropped_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    connections INTEGER NOT NULL,
    last_seen REAL NOT NULL,
    cursor TEXT,
    cursor_n INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT NOT NULL,
    from_id INTEGER NOT NULL,
    to_id INTEGER,
    PRIMARY KEY (user_id, from_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL,
    due REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhooks_by_due ON webhooks (due);
"""


def mark_dropped(cur: sqlite3.Cursor, marks: list[tuple[str, int]]) -> None:
    """Record ``(user_id, id)``: retention dropped that user's events up to ``id``."""
    cur.executemany(_MARK_DROPPED, marks)


def lock_file(path: Path) -> int | None:
    """Hold an exclusive lock on ``path`` for as long as the returned descriptor is open.

    The kernel drops the lock when the process dies, even by ``kill -9``.

    Raises:
        BlockingIOError: another process holds the lock.
        OSError: the file cannot be opened.
    """
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
