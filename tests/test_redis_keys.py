"""Key names of the Redis stores: every key of a user in one hash slot."""

from __future__ import annotations

import pytest

from ssehub.stores._redis_keys import Keys, by_slot, slot, tag

USERS = ["alice", "a}b", "}", "{x}", "a{b}c", "\u00e9t\u00e9", "x" * 256, "a b:c"]


@pytest.mark.parametrize("user", USERS)
def test_every_key_and_channel_of_a_user_is_in_one_slot(user: str) -> None:
    keys = Keys("app")
    names = [keys.user(kind, user) for kind in ("s", "d", "c", "u", "p", "bd", "i")]
    assert len({slot(name) for name in names}) == 1
    assert slot(keys.stream(user)) == slot(keys.channel(user))


def test_different_users_have_different_keys_even_when_their_tags_would_clash() -> None:
    keys = Keys("app")
    assert len({keys.stream(user) for user in USERS}) == len(USERS)
    assert tag("a}b") != tag("a}c")  # a '}' would end the tag early: hashed instead
    assert tag("alice") == "alice"


def test_broadcasts_and_disconnects_share_one_slot() -> None:
    keys = Keys("app")
    assert slot(keys.broadcasts) == slot(keys.broadcast_channel) == slot(keys.control_channel)
    assert slot(keys.broadcast_record("k")) == slot(keys.broadcasts)


def test_by_slot_groups_positions_in_order_and_the_same_way_every_time() -> None:
    users = [f"user{i}" for i in range(50)] * 2
    groups = by_slot(users)
    assert sorted(i for group in groups.values() for i in group) == list(range(100))
    for slot_number, group in groups.items():
        assert group == sorted(group)
        assert {slot(Keys("p").stream(users[i])) for i in group} == {slot_number}
    assert by_slot(users) == groups
