"""The Redis store's connections pack commands with hiredis: the bytes redis-py would send."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from ssehub.stores._redis_client import fast_packing
from ssehub.stores.redis import RedisStore
from tests.redis_server import redis_url

pytestmark = pytest.mark.anyio

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("EVALSHA", "a" * 40, 1, "p:s:{u}", "p:", "ü ser\r\n", b"\x00\xff raw", 0, -7, 2**70),
    ("ZADD", "p:users", 0.1 + 0.2, "a", 1e20, "b", 2.0, "c", float("inf"), "d"),
    ("SCRIPT LOAD", "return 1"),  # two words: sent as two arguments
    (b"CLIENT SETNAME", b"x"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
    ("SET", "\U0001f600", ""),
]


def packed(connection: Connection, command: tuple[Any, ...]) -> bytes | type[Exception]:
    """The bytes ``connection`` packs for ``command``, or the type of what it raised.

    What redis-py accepts moved between its versions (a ``bytearray`` is refused by 5.0);
    hiredis must accept and refuse the same.
    """
    try:
        return b"".join(bytes(chunk) for chunk in connection.pack_command(*command))
    except DataError as exc:
        return type(exc)


@pytest.mark.parametrize("command", COMMANDS)
def test_packs_the_bytes_redis_py_packs(command: tuple[Any, ...]) -> None:
    assert packed(fast_packing(Connection)(), command) == packed(Connection(), command)


def test_a_pipeline_is_one_buffer_with_every_command_in_order() -> None:
    fast = fast_packing(Connection)()
    plain = Connection()
    accepted = [command for command in COMMANDS if isinstance(packed(plain, command), bytes)]
    assert len(accepted) >= len(COMMANDS) - 1
    packed_all = fast.pack_commands(iter(accepted))
    assert len(packed_all) == 1
    assert packed_all[0] == b"".join(bytes(chunk) for chunk in plain.pack_commands(accepted))


@pytest.mark.parametrize("value", [True, None, object(), "\udc80"])
def test_what_redis_py_refuses_is_refused_the_same_way(value: object) -> None:
    fast = fast_packing(Connection)()
    plain = Connection()
    with pytest.raises((DataError, UnicodeEncodeError)) as wanted:
        plain.pack_command("SET", "k", value)  # type: ignore[arg-type]
    with pytest.raises(wanted.type):
        fast.pack_command("SET", "k", value)


def test_another_encoding_is_left_to_redis_py() -> None:
    fast = fast_packing(Connection)(encoding="latin-1")
    assert fast.pack_command("SET", "é") == [b"*2\r\n$3\r\nSET\r\n$1\r\n\xe9\r\n"]


async def test_the_store_packs_its_commands_with_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def counting(args: tuple[Any, ...]) -> bytes:
        calls.append(args)
        packed: bytes = hiredis_pack(args)
        return packed

    hiredis_pack = hiredis.pack_command
    monkeypatch.setattr(hiredis, "pack_command", counting)
    store = RedisStore.from_url(redis_url())
    try:
        assert await store._client.set("ssehub-test:packing", "ü") is True
        assert await store._client.get("ssehub-test:packing") == "ü".encode()
        await store._client.delete("ssehub-test:packing")
    finally:
        await store._client.aclose()
    assert ("SET", "ssehub-test:packing", "ü") in calls
