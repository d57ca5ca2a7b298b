"""Property tests of the SSE encoding, round-tripped through httpx-sse's parser.

Whatever a message holds (CR, LF, CRLF, NUL, lone surrogates, nothing, a huge line),
a client reading the stream gets it back as the spec says: line breaks as LF, a lone
surrogate as U+FFFD, everything else unchanged; and it can never forge a field.
"""

from __future__ import annotations

import codecs
import itertools
import math
from typing import Any

import orjson
import pytest
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssehub.events import encode_payload, frame, greeting_frame, text_frame
from ssehub.exceptions import InvalidInput

TRICKY = ["\r", "\n", "\r\n", "\n\r", "\x00", "\ud800", "\udfff", "\ud83d\ude00", "\ufeff",
          "\x85", "\u2028", "data: x", "id: 9", "event: e", "retry: 1", ":", " ", "é"]  # fmt: skip

# Any character, surrogates included, mixed with the ones that break naive encoders.
any_char = st.characters(codec=None, exclude_categories=())
texts = st.lists(st.one_of(any_char, st.sampled_from(TRICKY)), max_size=40).map("".join)
event_names = st.one_of(st.none(), texts)
event_ids = st.builds(
    lambda n, m: f"{n}" if m is None else f"{n}-{m}",
    st.integers(0, 2**64 - 1),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)


def expected_text(text: str) -> str:
    """What a browser reads back: LF line breaks, valid pairs joined, lone surrogates U+FFFD."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        nxt = text[index + 1] if index + 1 < len(text) else ""
        if "\ud800" <= char <= "\udbff" and "\udc00" <= nxt <= "\udfff":
            out.append(chr(0x10000 + ((ord(char) - 0xD800) << 10) + (ord(nxt) - 0xDC00)))
            index += 2
            continue
        out.append("\ufffd" if "\ud800" <= char <= "\udfff" else char)
        index += 1
    return "".join(out).replace("\r\n", "\n").replace("\r", "\n")


def parse(raw: bytes, cuts: list[int] | None = None) -> list[ServerSentEvent]:
    """Parse a byte stream as a client would, fed in pieces cut at ``cuts``."""
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    lines = SSELineDecoder()
    events = SSEDecoder()
    found: list[ServerSentEvent] = []
    bounds = [0, *sorted({c % (len(raw) + 1) for c in cuts or []}), len(raw)]
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    decoded = [text_decoder.decode(piece) for piece in pieces]
    decoded.append(text_decoder.decode(b"", final=True))
    for chunk in decoded:
        if not chunk:
            continue
        for line in lines.decode(chunk):
            event = events.decode(line)
            if event is not None:
                found.append(event)
    for line in lines.flush():
        event = events.decode(line)
        if event is not None:
            found.append(event)
    return found


@settings(max_examples=300, deadline=None)
@given(data=texts, event=event_names, event_id=event_ids, cuts=st.lists(st.integers(0, 10**6)))
def test_any_text_reads_back_as_one_event_with_its_name_and_id(
    data: str, event: str | None, event_id: str, cuts: list[int]
) -> None:
    try:
        payload = encode_payload(data, event=event)
    except InvalidInput:
        assert event is not None  # only a bad event name may be refused
        assert (
            not event
            or len(event) > 64
            or any(c in event for c in "\r\n\x00")
            or any("\ud800" <= c <= "\udfff" for c in event)
        )
        return
    (received,) = parse(frame(event_id, payload), cuts)
    assert received.data == expected_text(data)
    assert received.event == (event if event is not None else "message")
    assert received.id == event_id


@settings(max_examples=100, deadline=None)
@given(greeting_user=texts.filter(bool), text=texts, messages=st.lists(texts, max_size=5))
def test_a_stream_of_frames_reads_back_in_order_with_nothing_forged(
    greeting_user: str, text: str, messages: list[str]
) -> None:
    raw = greeting_frame(greeting_user) + text_frame(text, event="notice")
    raw += b"".join(frame(str(n), encode_payload(m)) for n, m in enumerate(messages, 1))
    received = parse(raw, [len(raw) // 3, len(raw) // 2])
    assert [e.data for e in received] == [
        expected_text(f"User '{greeting_user}' connected"),
        expected_text(text),
        *map(expected_text, messages),
    ]
    assert [e.id for e in received[2:]] == [str(n) for n in range(1, len(messages) + 1)]
    assert all(e.retry is None for e in received)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-15) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_value_reads_back_as_the_same_value(value: Any) -> None:
    (received,) = parse(frame("7", encode_payload(value)))
    if isinstance(value, str):  # a string is sent as it is, not as JSON
        assert received.data == expected_text(value)
        return
    assert "\n" not in received.data
    assert _same(orjson.loads(received.data), value)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "\n",
        "\r\n\r\n",
        "x" * (1 << 20),
        "\n" * 20_000,
        ("a" * 5000 + "\r") * 200,
        "\x00" * 1000,
        "\ud800" * 1000,
        "é☃😀" * 50_000,
    ],
    ids=[
        "empty",
        "one LF",
        "two CRLF",
        "1 MiB line",
        "20k LFs",
        "CR lines",
        "NULs",
        "lone surrogates",
        "multibyte",
    ],
)
def test_huge_and_degenerate_messages_read_back_exactly(data: str) -> None:
    raw = frame("1", encode_payload(data))
    (received,) = parse(raw, list(range(0, len(raw), 65_537)))
    assert received.data == expected_text(data)


@given(value=st.one_of(st.binary(), st.sets(st.integers()), st.just(object())))
def test_bytes_sets_and_unknown_objects_are_encoded_or_refused_with_invalid_input(
    value: object,
) -> None:
    try:
        payload = encode_payload(value)
    except InvalidInput:
        return
    (received,) = parse(frame("1", payload))
    if isinstance(value, bytes):
        assert received.data == expected_text(value.decode())
    else:
        assert sorted(orjson.loads(received.data)) == sorted(value)  # type: ignore[call-overload]
