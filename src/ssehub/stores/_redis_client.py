"""Redis clients for the store URLs: one server, a Cluster, or a master Sentinel names.

Every client has short socket timeouts (a Redis that does not answer never hangs a
request) and connections that report a write on a closed socket as a connection error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ssehub.exceptions import ConfigurationError

_TIMEOUT: Final = 2.0
_NUMBERS: Final = ("presence_ttl", "reconnect_max", "ping_interval")


def import_redis() -> Any:
    """``redis.asyncio``, or a ConfigurationError that says how to install it."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - the dev install has it
        raise ConfigurationError(
            "the redis:// store needs the redis client: pip install 'ssehub[redis]'"
        ) from exc
    return aioredis


def closed_safe(base: type[Any]) -> type[Any]:
    """A subclass of a redis-py connection class for which a lost socket is an error,
    and a write never loses a cancellation.

    Two ways a write on a lost connection escaped redis-py as something else, and so
    answered a publish with a 500:

    - uvloop raises ``RuntimeError`` (not ``OSError``) for a write on a transport the
      peer closed already: a connection that a proxy in front of a dead master accepts
      and drops;
    - on a cluster, when a master dies, redis-py may close a node's connections while
      a command is connecting on one of them: its writer is then gone
      (``AttributeError`` on None).

    Here both become the ``ConnectionError`` they are (retried, then a 503).

    redis-py writes under ``asyncio.wait_for``, which before Python 3.12 returns
    normally when the write ends in the same loop turn as the task is cancelled: the
    cancellation is lost, and a task that loops over Redis calls (a subscriber, the
    webhook sender) then outlives the ``cancel`` meant to stop it, and whoever
    awaits it waits for ever (a busy loop makes the coincidence likely). A
    cancellation requested during the write is raised here after all, once the
    connection is dropped (the command's answer is never read).
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            await base.send_packed_command(self, command, check_health)
        except RuntimeError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error writing to socket: {exc}") from exc
        except AttributeError as exc:
            if getattr(self, "_writer", None) is not None:
                raise  # not a closed connection: a real bug
            raise RedisConnectionError("Connection closed while writing to it") from exc
        if task is not None and task.cancelling() > cancelling:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError

    return type(base.__name__, (base,), {"send_packed_command": send_packed_command})


def fast_packing(base: type[Any]) -> type[Any]:
    """A subclass of a redis-py connection class that packs commands with hiredis.

    redis-py's asyncio connections pack every argument in Python (an ``isinstance``
    chain, an encode and a join per argument: about 1.7 µs each); hiredis packs a whole
    command in C, the same bytes (UTF-8 strings, ``repr`` of numbers). A stream opening
    on the Redis store passes a few dozen arguments, a publish a few per message. What
    hiredis refuses (``bool``, ``None``, ``bytearray``...) goes to redis-py's packer,
    which packs it or raises its usual ``DataError``. Without hiredis, or with an
    encoding other than strict UTF-8, redis-py's packer does it all.
    """
    try:
        from hiredis import pack_command as pack
    except ImportError:  # pragma: no cover - the redis extra installs it
        return base

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
            return base.pack_command(self, *args)  # type: ignore[no-any-return]
        name = args[0]
        if (b" " if isinstance(name, bytes) else " ") in name:
            args = (*name.split(), *args[1:])  # "SCRIPT LOAD": two words, as redis-py
        try:
            return [pack(args)]
        except TypeError:
            return base.pack_command(self, *args)  # type: ignore[no-any-return]

    def pack_commands(self: Any, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        pieces: list[bytes] = []
        for command in commands:
            pieces += self.pack_command(*command)
        return [b"".join(pieces)]

    methods = {"pack_command": pack_command, "pack_commands": pack_commands}
    return type(base.__name__, (base,), methods)


def store_connection(base: type[Any]) -> type[Any]:
    """The store's connection class on ``base``: `closed_safe`, with `fast_packing`."""
    return closed_safe(fast_packing(base))


@dataclasses.dataclass
class StoreURL:
    """A store URL taken apart: ssehub's options, and the rest for redis-py.

    Attributes:
        options: ssehub's options (``prefix`` and the numbers in ``_NUMBERS``).
        plain: the URL without ssehub's options.
        hosts: the ``host:port`` list of a cluster or Sentinel URL.
    """

    options: dict[str, Any]
    plain: str
    hosts: list[tuple[str, int]]
    path: str
    query: dict[str, str]


def parse(url: str) -> StoreURL:
    """Split a store URL.

    Raises:
        ConfigurationError: a malformed option.
    """
    parts = urlsplit(url)
    ours: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix":
            if not value or any(ch in value for ch in " \r\n{}"):
                raise ConfigurationError(f"bad redis prefix {value!r}")
            ours[name] = value
        elif name in _NUMBERS:
            try:
                ours[name] = float(value)
            except ValueError:
                raise ConfigurationError(f"redis option {name} must be a number") from None
            if ours[name] <= 0:
                raise ConfigurationError(f"redis option {name} must be greater than 0")
        else:
            rest.append((name, value))
    hosts: list[tuple[str, int]] = []
    netloc = parts.netloc.rpartition("@")[2]
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if host and port.isdigit():
            hosts.append((host.strip("[]"), int(port)))
        elif item:
            hosts.append((item, 0))
    plain = urlunsplit(parts._replace(query=urlencode(rest)))
    return StoreURL(ours, plain, hosts, parts.path, dict(rest))


def _retry() -> Any:
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    # One immediate retry replaces a pooled connection that a Redis restart closed; a
    # Redis that is down still fails at once. A script an attempt ran already is not
    # run twice: every append carries an idempotency record (see `RedisStore`).
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def single_client(url: StoreURL) -> Any:
    """A client of one Redis server (``redis://``, ``rediss://``, ``unix://``).

    Raises:
        ConfigurationError: a malformed URL or an unknown option.
    """
    aioredis = import_redis()
    try:
        # A bounded pool: a burst of publishes waits for a connection (up to
        # `timeout`, then 503) instead of opening one connection per request.
        pool = aioredis.BlockingConnectionPool.from_url(
            url.plain,
            max_connections=32,
            timeout=_TIMEOUT,
            socket_timeout=_TIMEOUT,
            socket_connect_timeout=_TIMEOUT,
            protocol=2,  # pub/sub messages as plain replies, on every Redis version
            retry=_retry(),
        )
        pool.connection_class = store_connection(pool.connection_class)
        pool.connection_class(**pool.connection_kwargs)  # refuses unknown options
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad redis URL: {exc}") from exc


def _client_options(url: StoreURL, scheme: str) -> dict[str, Any]:
    """The client options of a cluster or Sentinel URL, with their defaults.

    Raises:
        ConfigurationError: an unknown option, or one that is not a number.
    """
    options: dict[str, Any] = {
        "socket_timeout": _TIMEOUT,
        "socket_connect_timeout": _TIMEOUT,
        "max_connections": 32,
    }
    for name, value in url.query.items():
        if name not in options:
            raise ConfigurationError(f"unknown {scheme} option {name!r}")
        try:
            options[name] = int(value) if name == "max_connections" else float(value)
        except ValueError:
            raise ConfigurationError(f"redis option {name} must be a number") from None
    return options


def cluster_client(url: StoreURL) -> Any:
    """A client of a Redis Cluster, found from the seed nodes of a ``redis+cluster://`` URL.

    Raises:
        ConfigurationError: no seed node, or an unknown option.
    """
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import Connection

    if not url.hosts or any(port <= 0 for _, port in url.hosts):
        raise ConfigurationError(
            "a redis+cluster:// URL names its seed nodes: redis+cluster://HOST:PORT[,HOST:PORT]"
        )
    options = _client_options(url, "redis+cluster")
    try:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["socket_connect_timeout"],
            max_connections=options["max_connections"],  # per master
            protocol=2,
            # redis-py's default retry: a command to a master that died is tried a
            # few times (with back-off), the slot map read again, then a 503.
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad redis+cluster URL: {exc}") from exc
    safe = store_connection(Connection)
    client.connection_kwargs["connection_class"] = safe
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = safe
    return client


def sentinel_client(url: StoreURL) -> Any:
    """A client of the master Sentinel names (``redis+sentinel://HOSTS/MASTER[/DB]``).

    Every new connection asks the Sentinels for the master's address, and a
    connection to a master that was demoted is dropped (redis-py's
    ``SentinelConnectionPool``), so the store follows the master across failovers.

    Raises:
        ConfigurationError: no Sentinel, no master name, a bad db, or an unknown option.
    """
    from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection

    name, _, db = url.path.strip("/").partition("/")
    if not url.hosts or any(port <= 0 for _, port in url.hosts) or not name:
        raise ConfigurationError(
            "a redis+sentinel:// URL names its Sentinels and the master: "
            "redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[/DB]"
        )
    if db and not db.isdigit():
        raise ConfigurationError(f"bad redis+sentinel db {db!r}")
    options = _client_options(url, "redis+sentinel")
    parts = urlsplit(url.plain)
    timeouts = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
    }
    sentinel = Sentinel(url.hosts, sentinel_kwargs=dict(timeouts), **timeouts)  # type: ignore[no-untyped-call]
    return sentinel.master_for(
        name,
        connection_class=store_connection(SentinelManagedConnection),
        db=int(db or 0),
        username=parts.username,
        password=parts.password,
        max_connections=options["max_connections"],
        protocol=2,
        retry=_retry(),
        **timeouts,
    )
