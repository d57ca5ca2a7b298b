"""The presence event's JSON body is CONTRACT.md's, and listeners are isolated."""

from __future__ import annotations

import datetime

import pytest

from ssehub.presence import (
    MESSAGE_UNDELIVERED,
    USER_ONLINE,
    PresenceEvent,
    PresenceListeners,
    UndeliveredMessage,
    rfc3339,
)


def test_an_online_event_body_has_id_type_user_and_rfc3339_time() -> None:
    event = PresenceEvent("1795900395788-0", USER_ONLINE, "alice", 1_795_900_395.7881)
    assert event.body() == {
        "id": "1795900395788-0",
        "type": "user.online",
        "user_id": "alice",
        "at": "2026-11-28T21:13:15.788Z",
    }


def test_an_undelivered_event_body_carries_the_message_as_published() -> None:
    message = UndeliveredMessage("12-3", None, {"n": 1})
    event = PresenceEvent("13-0", MESSAGE_UNDELIVERED, "bob", 0.0, message)
    assert event.body()["message"] == {"id": "12-3", "event": None, "data": {"n": 1}}
    assert event.body()["at"] == "1970-01-01T00:00:00.000Z"


def test_rfc3339_parses_back_to_the_same_millisecond() -> None:
    text = rfc3339(1_700_000_000.25)
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.timestamp() == pytest.approx(1_700_000_000.25)


def test_a_failing_listener_does_not_cost_the_others_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listeners = PresenceListeners()
    got: list[PresenceEvent] = []

    def broken(event: PresenceEvent) -> None:
        raise RuntimeError("bug")

    listeners.subscribe(broken)
    unsubscribe = listeners.subscribe(got.append)
    event = PresenceEvent("1-0", USER_ONLINE, "alice", 0.0)
    listeners.emit(event)
    assert got == [event]
    assert "presence listener" in caplog.text
    unsubscribe()
    listeners.emit(event)
    assert got == [event]
