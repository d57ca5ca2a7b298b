"""Key and channel names of the Redis stores, and grouping by hash slot.

Every per-user key and channel carries the user's hash tag (``{...}``), so on Redis
Cluster all of a user's keys live in one hash slot and a Lua script that touches them
runs atomically on one master. On one Redis server the tags change nothing. Modules
that keep their own per-user data in Redis (presence, outboxes...) name it through
`Keys.user` so it lands in the same slot as the user's log.

Key layout under a prefix ``P`` (see ARCHITECTURE.md, "Redis store and scale-out"):

| name | type | holds |
|---|---|---|
| ``P:s:{U}`` | stream | the user's events, field ``p`` = payload; expires when idle |
| ``P:d:{U}`` | string | id of the newest event retention dropped (for reset) |
| ``P:c:{U}`` | channel | ``"<id> <payload>"`` of each new event |
| ``P:u:{U}`` | hash | ``seen`` (Unix time), ``cursor`` (last delivered id) |
| ``P:p:{U}`` | hash | node id -> ``"<count> <deadline ms>"``, open streams per node |
| ``P:bd:{U}`` | set | recent broadcasts appended for a user on several nodes (1 min) |
| ``P:i:{U}:<n>:<key>`` | string | an idempotency record (see ``APPEND``) |
| ``P:{b}:s`` / ``P:{b}:c`` | stream / channel | broadcasts (one slot) |
| ``P:{b}:i:<key>`` | string | a broadcast's idempotency record |
| ``P:{b}:x`` | channel | user ids to disconnect, on every node |
| ``P:n:<node>`` | channel | a node's share of a broadcast (one Redis server only) |
| ``P:users`` | sorted set | known users (score 0, ordered by id) |
| ``{P:webhooks}:*`` | zset, hashes | the webhook outbox (one slot; see ``_redis_outbox``) |

``U`` is the user's tag: the user id itself, or, for an id holding a ``}`` (which would
end the tag early), ``\\x01`` and the id's SHA-1 (no user id holds a control character).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from redis.crc import key_slot

__all__ = ["Keys", "by_slot", "slot", "tag"]

#: The hash tag of the broadcast stream and its channel.
BROADCAST_TAG: Final = "b"


def tag(user_id: str) -> str:
    """The hash tag of a user's keys (without braces): the same for every key of the user."""
    if "}" not in user_id and user_id:
        return user_id
    digest = hashlib.sha1(user_id.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return "\x01" + digest.hexdigest()


def slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of a key or shard channel (0 to 16383)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def by_slot(user_ids: Iterable[str]) -> dict[int, list[int]]:
    """Group positions of ``user_ids`` by the slot of their keys, in order in each group.

    Group order follows the first appearance of each slot, so the same input always
    gives the same groups (an idempotency record per group relies on that).
    """
    groups: dict[int, list[int]] = {}
    for index, user_id in enumerate(user_ids):
        groups.setdefault(slot("{" + tag(user_id) + "}"), []).append(index)
    return groups


class Keys:
    """Names of the keys and channels under one prefix.

    Args:
        prefix: the namespace, without its trailing colon; holds no ``{`` or ``}``.
    """

    def __init__(self, prefix: str) -> None:
        self.p = prefix + ":"
        self.users = self.p + "users"
        self.broadcasts = f"{self.p}{{{BROADCAST_TAG}}}:s"
        self.broadcast_channel = f"{self.p}{{{BROADCAST_TAG}}}:c"
        self.control_channel = f"{self.p}{{{BROADCAST_TAG}}}:x"
        self.user_channel_head = self.p + "c:{"

    def user(self, kind: str, user_id: str) -> str:
        """The key ``P:<kind>:{U}`` of a user: in the slot of every other key of the user."""
        return f"{self.p}{kind}:{{{tag(user_id)}}}"

    def stream(self, user_id: str) -> str:
        """The user's log."""
        return self.user("s", user_id)

    def channel(self, user_id: str) -> str:
        """The user's live channel."""
        return self.user("c", user_id)

    def node_channel(self, node: str) -> str:
        """A node's own channel (its share of a broadcast, on one Redis server)."""
        return f"{self.p}n:{node}"

    def broadcast_record(self, key: str) -> str:
        """A broadcast's idempotency record, in the slot of the broadcast stream."""
        return f"{self.p}{{{BROADCAST_TAG}}}:i:{key}"
