"""Server-sent events on the wire: the only module that writes SSE bytes.

See the WHATWG HTML standard, section "Server-sent events". Encoding is pure: no I/O,
and the input is never mutated. A message is encoded once into its *payload* (its
``event:`` and ``data:`` lines); a *frame* is a payload with its ``id:`` line and the
blank line that dispatches it, built once per user and shared by all of that user's
connections.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import orjson

from ssehub.exceptions import InvalidInput

KEEPALIVE_TEXT: Final = "<3: Keep alive"
KEEPALIVE_EVENT: Final = "keepalive"
RESET_EVENT: Final = "reset"
DISCONNECTED_EVENT: Final = "disconnected"

# Lines end with CRLF, LF or CR (WHATWG: "end of line").
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_EVENT_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")  # ASCII digits only, unlike \d
_MAX_EVENT_NAME = 64


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Surrogates cannot travel as UTF-8: a valid pair becomes its character and a
        # lone one U+FFFD, as a browser's TextEncoder does, rather than refuse it all.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def data_text(data: object) -> bytes:
    """Return the UTF-8 text a message's data stands for.

    A ``str`` is taken as it is; ``bytes`` must be UTF-8 text; anything else
    (dicts, lists, numbers, booleans, None, dataclasses, pydantic models) becomes
    compact JSON that keeps its own keys.

    Raises:
        InvalidInput: the value cannot be represented.
    """
    if isinstance(data, str):
        return _utf8(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput("bytes data must be UTF-8 text") from exc
        return raw
    try:
        return orjson.dumps(data, default=_json_default)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidInput(f"data is not JSON-serialisable: {exc}") from exc


def check_event_name(event: str | None) -> None:
    """Refuse an event name that could break the framing.

    Raises:
        InvalidInput: the name is empty, too long or holds a line break, NUL or a
            lone surrogate (which UTF-8 cannot carry).
    """
    if event is None:
        return
    if not event or len(event) > _MAX_EVENT_NAME:
        raise InvalidInput(f"event name must be 1 to {_MAX_EVENT_NAME} characters")
    if any(ch in event for ch in "\r\n\x00"):
        raise InvalidInput("event name must not contain CR, LF or NUL")
    if not event.isascii() and any("\ud800" <= ch <= "\udfff" for ch in event):
        raise InvalidInput("event name must not contain surrogates")


def encode_payload(data: object, *, event: str | None = None, is_json: bool = False) -> bytes:
    """Encode a message's ``event:`` and ``data:`` lines, without ``id:`` or terminator.

    Args:
        data: the message; see `data_text`.
        event: the event name; None leaves it out (``message`` for EventSource).
        is_json: ``data`` is already compact JSON bytes with no line break.
    """
    if event is None:
        head = b""
    else:
        check_event_name(event)
        head = b"event: " + event.encode() + b"\n"
    if is_json and isinstance(data, bytes):
        return head + b"data: " + data + b"\n"
    if isinstance(data, str):
        if "\n" not in data and "\r" not in data:  # one line: the common case, no regex
            return head + b"data: " + _utf8(data) + b"\n"
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = data_text(data)
        if raw.find(b"\n") < 0 and raw.find(b"\r") < 0:  # find: faster than `in` on bytes
            return head + b"data: " + raw + b"\n"
        text = raw.decode()
    else:
        # Compact JSON escapes every control character: it is always one line.
        try:
            return head + b"data: " + orjson.dumps(data, default=_json_default) + b"\n"
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise InvalidInput(f"data is not JSON-serialisable: {exc}") from exc
    lines = _LINE_BREAK.split(text)
    return head + b"".join(b"data: " + _utf8(line) + b"\n" for line in lines)


def frame(event_id: str | None, payload: bytes) -> bytes:
    """Return a dispatchable frame: optional ``id:`` line, the payload, a blank line."""
    if event_id is None:
        return payload + b"\n"
    return b"id: %b\n%b\n" % (event_id.encode(), payload)


def text_frame(text: str, *, event: str | None = None) -> bytes:
    """A frame without an id, for greetings, keep-alives and notices."""
    return frame(None, encode_payload(text, event=event))


def retry_frame(milliseconds: int) -> bytes:
    """A frame that only sets the client's reconnection time."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"


RETRY_SPREAD: Final = 16  # distinct reconnection times handed out on a shutdown


@functools.lru_cache(maxsize=4)
def spread_retry_frames(milliseconds: int) -> tuple[bytes, ...]:
    """Retry frames from half to one and a half times ``milliseconds``, evenly spaced.

    A hub that stops gives each stream one of them, so its clients come back spread
    over a window as wide as the hint instead of all at once (the new process is not
    flooded); on average they still wait ``milliseconds``.
    """
    steps = RETRY_SPREAD - 1
    return tuple(retry_frame(round(milliseconds * (0.5 + i / steps))) for i in range(RETRY_SPREAD))


KEEPALIVE_FRAME: Final = text_frame(KEEPALIVE_TEXT, event=KEEPALIVE_EVENT)


def greeting_frame(user_id: str) -> bytes:
    """The sample's first event: ``User '{user_id}' connected``."""
    return text_frame(f"User '{user_id}' connected")


def is_event_id(value: str) -> bool:
    """Tell whether ``value`` has the shape of an id ssehub gives out."""
    return _EVENT_ID.fullmatch(value) is not None


def event_key(event_id: str) -> tuple[int, int]:
    """Order key of an event id: ``"N"`` and ``"N-M"`` compare as ``(N, 0)`` and ``(N, M)``.

    Raises:
        InvalidInput: ``event_id`` is not an id ssehub gives out.
    """
    if not is_event_id(event_id):
        raise InvalidInput(f"not a valid event id: {event_id[:40]!r}")
    major, _, minor = event_id.partition("-")
    return int(major), int(minor or 0)


class StoredEvent:
    """One message in a user's log: its id and its encoded payload.

    Created once per append and read on every delivery, so it is a plain slotted class:
    its order key is given by the store that made the id (or parsed once from it), and
    its frame is built on first use and then shared, by every stream of the user and,
    for a broadcast, by every user.

    Attributes:
        id: the event id, ``"N"`` or ``"N-M"``.
        payload: the encoded ``event:`` and ``data:`` lines (see `encode_payload`).
        key: the order key of `id` (see `event_key`).
    """

    __slots__ = ("_frame", "id", "key", "payload")

    def __init__(self, id: str, payload: bytes, key: tuple[int, int] | None = None) -> None:
        self.id = id
        self.payload = payload
        if key is None:
            # A store's own id is not checked against the pattern again.
            major, _, minor = id.partition("-")
            key = int(major), int(minor or 0)
        self.key = key
        self._frame: bytes | None = None

    def frame(self) -> bytes:
        """The full frame of this event, with its ``id:`` line (built once)."""
        data = self._frame
        if data is None:
            data = self._frame = frame(self.id, self.payload)
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return self.id == other.id and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.id, self.payload))

    def __repr__(self) -> str:
        return f"StoredEvent(id={self.id!r}, payload={self.payload!r})"
