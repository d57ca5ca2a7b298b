"""Redis Cluster and Sentinel set-ups of real ``redis-server`` processes, for the tests.

Each runs on free loopback ports in a directory of its own, and is stopped at the end.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port
from tests.redis_server import answers


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the cluster tests need redis-server (scripts/system-deps installs it)")
    return binary


def _cli(*args: str, timeout: float = 30.0) -> str:
    done = subprocess.run(
        ["redis-cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def port_apart(given: set[int]) -> int:
    """A port free now and not in ``given`` (ports handed to processes that have not
    started yet, which the kernel may hand out again); added to ``given``."""
    while (port := free_port()) in given:
        pass
    given.add(port)
    return port


class Node:
    """One ``redis-server`` process, on a free port, with its own directory."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory / str(self.port)
        self.directory.mkdir(parents=True)
        self.extra = extra
        self.command: list[str] | None = None  # instead of the default command line
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        self.proc = subprocess.Popen(
            self.command
            or [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
                # A replica's first sync at once, not after 5 s: the tests kill masters.
                "--repl-diskless-sync-delay", "0", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> str:
        """Run a command on this node with redis-cli; return its output."""
        return _cli("-p", str(self.port), *args)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Wait until this node, a replica, has synced with its master."""
        deadline = time.monotonic() + timeout
        while "master_link_status:up" not in self.cli("info", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on port {self.port} did not sync")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Cluster:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas.

    Args:
        directory: where the nodes keep their files.
        node_timeout: ms after which a silent master is failed over.
    """

    def __init__(
        self, directory: Path, *, masters: int = 3, replicas: int = 0, node_timeout: int = 1000
    ) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout),
                   "--cluster-config-file", "nodes.conf")  # fmt: skip
        self.directory = directory
        self.options = options
        self._ports: set[int] = set()  # handed out: nodes start only after all are made
        self.nodes = [self._new_node() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    def _new_node(self) -> Node:
        # The bus port is given, not the default port + 10000 (maybe taken).
        bus = str(port_apart(self._ports))
        return Node(
            self.directory, *self.options, "--cluster-port", bus, port=port_apart(self._ports)
        )

    def start(self) -> Cluster:
        for index in range(len(self.nodes)):
            for attempt in range(3):  # a port taken meanwhile by another process: others
                try:
                    self.nodes[index].start()
                    break
                except RuntimeError:
                    self.nodes[index].stop()
                    if attempt == 2:
                        raise
                    self.nodes[index] = self._new_node()
        if len(self.nodes) < 3:  # below what redis-cli --cluster create accepts
            share = 16384 // len(self.nodes)
            for index, node in enumerate(self.nodes):
                last = 16383 if node is self.nodes[-1] else (index + 1) * share - 1
                node.cli("cluster", "addslotsrange", str(index * share), str(last))
                node.cli("cluster", "meet", "127.0.0.1", str(self.nodes[0].port),
                         self.nodes[0].extra[-1])  # fmt: skip
        else:
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            _cli("--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                 "--cluster-yes")  # fmt: skip
        self.wait_ok()
        for node in self.nodes:
            if "role:slave" in node.cli("info", "replication"):
                node.wait_replicated()
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every live node says the cluster is ok and agrees on the slots."""
        deadline = time.monotonic() + timeout
        while True:
            live = [node for node in self.nodes if node.proc and node.proc.poll() is None]
            try:
                states = [node.cli("cluster", "info") for node in live]
                ok = all("cluster_state:ok" in state for state in states)
                if ok and _cli("--cluster", "check", f"127.0.0.1:{live[0].port}").count(
                    "[OK] All 16384 slots covered"
                ):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not become ok")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL with every node as a seed."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{seeds}"

    def masters(self) -> list[Node]:
        """The live nodes that are masters now."""
        found = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                if "role:master" in node.cli("info", "replication"):
                    found.append(node)
            except RuntimeError:
                continue
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


_shared: Cluster | None = None


def cluster_url() -> str:
    """The URL of a three-master cluster shared by this test process (started once)."""
    global _shared
    if _shared is None:
        directory = Path(tempfile.mkdtemp(prefix="ssehub-cluster-"))
        _shared = Cluster(directory).start()
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        atexit.register(_shared.stop)
    return _shared.url


def forget_cluster_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on every master of a cluster."""
    import redis

    for seed in url.removeprefix("redis+cluster://").split(","):
        host, _, port = seed.rpartition(":")
        try:
            with redis.Redis(host=host, port=int(port), socket_timeout=2) as client:
                if b"role:master" not in client.execute_command("INFO", "replication"):
                    continue
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                for key in keys:
                    client.delete(key)
        except redis.RedisError:
            continue


class SentinelSetup:
    """A master, a replica and Sentinels watching them as ``master_name``.

    Args:
        directory: where the processes keep their files.
        sentinels: how many Sentinels (the quorum is a majority of them).
        down_after: ms of silence after which a master is failed over.
    """

    master_name = "hub"

    def __init__(self, directory: Path, *, sentinels: int = 1, down_after: int = 500) -> None:
        self.directory = directory
        ports: set[int] = set()
        self.master = Node(directory, port=port_apart(ports))
        self.replica = Node(directory, port=port_apart(ports))
        self.down_after = down_after
        self.sentinels: list[Node] = []
        self._count = sentinels

    def start(self) -> SentinelSetup:
        self.master.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start().wait_replicated()
        quorum = self._count // 2 + 1
        for _ in range(self._count):
            node = Node(self.directory)
            config = node.directory / "sentinel.conf"
            config.write_text(
                f"port {node.port}\nbind 127.0.0.1\ndir {node.directory}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after}\n"
                f"sentinel failover-timeout {self.master_name} 3000\n"
            )
            node.command = [_binary(), str(config), "--sentinel"]
            self.sentinels.append(node.start())
        return self

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every Sentinel and the master."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def master_port(self) -> int:
        """The port of the master the first Sentinel names now."""
        reply = self.sentinels[0].cli("sentinel", "get-master-addr-by-name", self.master_name)
        return int(reply.split()[1])

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop()
