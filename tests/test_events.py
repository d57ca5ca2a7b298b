from __future__ import annotations

import dataclasses

import pytest
from httpx_sse._decoders import SSEDecoder

from ssehub.events import (
    KEEPALIVE_FRAME,
    RETRY_SPREAD,
    encode_payload,
    event_key,
    frame,
    greeting_frame,
    is_event_id,
    retry_frame,
    spread_retry_frames,
)
from ssehub.exceptions import InvalidInput


@dataclasses.dataclass
class Point:
    X: int
    label: str


def parse(raw: bytes) -> list[tuple[str, str, str | None]]:
    """Parse frames with httpx-sse's decoder: (event, data, id) per dispatched event."""
    decoder = SSEDecoder()
    found = []
    for line in raw.decode().splitlines():
        event = decoder.decode(line)
        # httpx-sse dispatches a retry-only frame; browsers (and the spec) do not.
        if event is not None and not (event.data == "" and event.retry is not None):
            found.append((event.event, event.data, event.id or None))
    return found


@pytest.mark.parametrize(
    ("data", "event", "expected"),
    [
        ("hello", None, b"data: hello\n"),
        ("", None, b"data: \n"),
        ("a\nb", None, b"data: a\ndata: b\n"),
        ("a\r\nb\rc", None, b"data: a\ndata: b\ndata: c\n"),
        ("trailing\n", None, b"data: trailing\ndata: \n"),
        ("héllo ☃", None, "data: héllo ☃\n".encode()),
        ({"Name": "Victor", "Age": 30}, None, b'data: {"Name":"Victor","Age":30}\n'),
        ([1, 2], "list", b"event: list\ndata: [1,2]\n"),
        (42, None, b"data: 42\n"),
        (None, None, b"data: null\n"),
        (True, None, b"data: true\n"),
        (Point(1, "a\nb"), None, b'data: {"X":1,"label":"a\\nb"}\n'),
        ("\ud800x", None, "data: \ufffdx\n".encode()),
        ("\ud83d\ude00", None, "data: \U0001f600\n".encode()),
    ],
)
def test_payloads_encode_to_exact_bytes(data: object, event: str | None, expected: bytes) -> None:
    assert encode_payload(data, event=event) == expected


def test_a_pydantic_model_goes_as_json_with_its_own_keys() -> None:
    from pydantic import BaseModel

    class User(BaseModel):
        Name: str
        IsActive: bool

    assert encode_payload(User(Name="V", IsActive=True)) == b'data: {"Name":"V","IsActive":true}\n'


def test_encoding_does_not_mutate_its_input() -> None:
    value = {"a": [1, 2], "b": "x\ny"}
    copy = {"a": [1, 2], "b": "x\ny"}
    encode_payload(value, event="e")
    assert value == copy


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "a\x00b", "x" * 65])
def test_event_names_that_could_break_framing_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        encode_payload("x", event=name)


def test_objects_that_are_not_json_are_refused() -> None:
    with pytest.raises(InvalidInput):
        encode_payload(object())


def test_frames_round_trip_through_an_independent_parser() -> None:
    raw = (
        greeting_frame("bob")
        + KEEPALIVE_FRAME
        + frame("7-1", encode_payload("line one\nline two", event="note"))
        + frame("7-2", encode_payload({"k": "v"}))
        + retry_frame(1500)
    )
    assert parse(raw) == [
        ("message", "User 'bob' connected", None),
        ("keepalive", "<3: Keep alive", None),
        ("note", "line one\nline two", "7-1"),
        ("message", '{"k":"v"}', "7-2"),
    ]


@pytest.mark.parametrize(
    ("value", "valid"),
    [("1", True), ("1795900395788-0", True), ("", False), ("1-", False), ("abc", False),
     ("1\n2", False), ("-1", False), ("1" * 21, False)],
)  # fmt: skip
def test_event_ids_have_a_strict_shape(value: str, valid: bool) -> None:
    assert is_event_id(value) is valid


def test_event_ids_order_numerically() -> None:
    assert event_key("9-5") < event_key("10-0") < event_key("10-1")
    assert event_key("12") == (12, 0)


def test_shutdown_retry_hints_are_spread_evenly_from_half_to_one_and_a_half_times() -> None:
    frames = spread_retry_frames(2000)
    assert len(frames) == RETRY_SPREAD
    assert frames[0] == b"retry: 1000\n\n"
    assert frames[-1] == b"retry: 3000\n\n"
    hints = [int(frame[7:-2]) for frame in frames]
    assert hints == sorted(hints)
    assert len(set(hints)) == RETRY_SPREAD
