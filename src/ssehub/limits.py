"""Limits on input, and the checks that enforce them at the edge."""

from __future__ import annotations

import dataclasses
import re

from ssehub.exceptions import InvalidInput, PayloadTooLarge


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one client or publisher from hurting the others.

    Attributes:
        max_user_id_length: characters in a user id.
        max_payload_bytes: bytes of one message's data, once encoded.
        max_body_bytes: bytes of one publish request body.
        max_batch: messages in one batch.
        max_connections: open streams in this process.
        max_connections_per_user: open streams of one user in this process.
        buffer_bytes: bytes waiting to be written to one stream before it is
            closed as a slow consumer.
    """

    max_user_id_length: int = 256
    max_payload_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 1000
    max_connections: int = 100_000
    max_connections_per_user: int = 100
    buffer_bytes: int = 1024 * 1024


# C0 and C1 controls, DEL and surrogates; one regex search on every message published.
_FORBIDDEN_IN_USER_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_user_id(user_id: str, *, max_length: int = 256) -> str:
    """Return ``user_id`` if ssehub accepts it.

    Raises:
        InvalidInput: empty, longer than ``max_length``, or holding a control
            character or a lone surrogate.
    """
    if not user_id:
        raise InvalidInput("user id must not be empty")
    if len(user_id) > max_length:
        raise InvalidInput(f"user id is longer than {max_length} characters")
    if user_id.isascii() and user_id.isprintable():
        return user_id  # the common case, without the regex
    if _FORBIDDEN_IN_USER_ID.search(user_id) is not None:
        raise InvalidInput("user id must not contain control characters")
    return user_id


def check_payload(payload: bytes, *, max_bytes: int) -> bytes:
    """Return an encoded payload (see `events.encode_payload`) if its data fits.

    The size counted is the message's data as UTF-8 text, one line break between
    lines: the ``event:`` line and each line's ``data: `` prefix are not counted.

    Raises:
        PayloadTooLarge: the data is larger than ``max_bytes``.
    """
    if len(payload) <= max_bytes:
        return payload  # the framing only adds bytes: nothing to count
    head = payload.index(b"\n") + 1 if payload.startswith(b"event:") else 0
    lines = payload.count(b"\n") - (1 if head else 0)
    size = len(payload) - head - 6 * lines - 1
    if size > max_bytes:
        raise PayloadTooLarge(f"message is larger than {max_bytes} bytes")
    return payload
