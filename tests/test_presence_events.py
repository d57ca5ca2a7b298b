"""The presence event's JSON body is CONTRACT.md's, and listeners are isolated."""

from __future__ import annotations

import datetime

import hypothesis
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


@pytest.mark.parametrize(
    "at",
    [0.0, 0.9999995, 0.9999994, 1764518399.9999996, 1764518400.0005, 1764518400.9995, -0.5],
)
def test_rfc3339_is_the_text_of_the_datetime_at_every_edge(at: float) -> None:
    assert rfc3339(at) == as_datetime_writes_it(at)


@hypothesis.given(hypothesis.strategies.floats(min_value=0, max_value=4e9))
def test_rfc3339_is_the_text_of_the_datetime_for_any_time(at: float) -> None:
    # Formatted once per second: the same second from another call, or the next one,
    # must not come back from the cache in place of this one.
    assert [rfc3339(at), rfc3339(at + 1), rfc3339(at)] == [
        as_datetime_writes_it(at),
        as_datetime_writes_it(at + 1),
        as_datetime_writes_it(at),
    ]


def as_datetime_writes_it(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
