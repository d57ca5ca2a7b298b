"""The benchmark: one command, every server, every scenario; a table and a JSON file.

    .venv/bin/python bench/run.py            # the full run (about 15 minutes)
    .venv/bin/python bench/run.py --quick    # smaller numbers, under 2 minutes

Each server under test runs pinned to core 0 (``taskset -c 0``); the load tools (a
small C program, ``ssebench.c``, built here with the system ``cc``) run on core 1; all
on 127.0.0.1. The ceiling (``ceiling.py``, a bare asyncio server writing pre-encoded
frames) shows what the load tools can drive; the baseline (``baseline.py``, FastAPI +
sse-starlette + a dict of queues) is what Python users write today. Every figure is
printed beside the baseline's and the ceiling's.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
TOOL = BUILD / "ssebench"
PYTHON = sys.executable
SERVER_CORE = "0"
LOAD_CORE = "1"
FILE_LIMIT = 20_000


@dataclasses.dataclass(frozen=True)
class Sizes:
    idle_streams: int
    idle_hold: float
    keepalive: float
    unicast_users: int
    unicast_messages: int
    steady_rate: int
    steady_seconds: float
    broadcast_users: int
    broadcasts: int
    broadcast_interval_ms: int
    restart_streams: int = 10_000


FULL = Sizes(10_000, 30.0, 15.0, 1_000, 200_000, 5_000, 10.0, 10_000, 50, 200, 10_000)
QUICK = Sizes(1_000, 2.0, 1.0, 1_000, 10_000, 5_000, 1.5, 1_000, 8, 200, 1_000)


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    label: str
    command: list[str]


def servers(keepalive: float, workdir: Path, redis_url: str | None) -> list[Server]:
    ka = str(keepalive)
    hub = [PYTHON, "-m", "ssehub", "serve", "--keepalive", ka, "--log-level", "warning"]
    found = [
        Server("ceiling", "ceiling (bare asyncio)",
               [PYTHON, str(BENCH / "ceiling.py"), "{port}", ka]),
        Server("baseline", "baseline (FastAPI+sse-starlette)",
               [PYTHON, str(BENCH / "baseline.py"), "{port}", ka]),
        Server("fast", "ssehub fast, memory", [*hub, "--port", "{port}", "--store", "memory://"]),
        Server("portable", "ssehub portable, memory",
               [*hub, "--port", "{port}", "--store", "memory://", "--portable"]),
        Server("fast-sqlite", "ssehub fast, sqlite",
               [*hub, "--port", "{port}", "--store", f"sqlite:///{workdir}/fast.db"]),
        Server("portable-sqlite", "ssehub portable, sqlite",
               [*hub, "--port", "{port}", "--store", f"sqlite:///{workdir}/portable.db",
                "--portable"]),
    ]  # fmt: skip
    if redis_url:
        found += [
            Server("fast-redis", "ssehub fast, redis",
                   [*hub, "--port", "{port}", "--store", redis_url]),
            Server("portable-redis", "ssehub portable, redis",
                   [*hub, "--port", "{port}", "--store", redis_url, "--portable"]),
        ]  # fmt: skip
    return found


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"null")


def launch(
    server: Server, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``server`` on ``port``, pinned to the server core; return once it answers.

    ``env``: its environment (default: this one's, without ``SSEHUB_`` settings).
    """
    command = [part.replace("{port}", str(port)) for part in server.command]
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{log.read_text()[-2000:]}")
        try:
            http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{server.name} did not start") from None
            time.sleep(0.05)


@contextlib.contextmanager
def running(
    server: Server, log: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    proc = launch(server, port, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss in smaps_rollup")


def slab_kib() -> int:
    """Kernel slab memory (sockets, files, epoll entries), machine-wide."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Subscriber:
    """The C subscriber on the load core, driven over its stdin/stdout."""

    def __init__(self, url: str, count: int, first: int, *, reconnect: str = "") -> None:
        host, port = url.removeprefix("http://").split(":")
        mode = ["256", reconnect] if reconnect else []
        self.proc = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, str(TOOL), "sub", host, port, str(count), str(first),
             *mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.dumped = 0  # events handed out by `records` so far

    def ask(self, command: str) -> list[str]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def stats(self) -> dict[str, int]:
        _, events, keepalives, greeted, closed, received = self.ask("stats")
        return {"events": int(events), "keepalives": int(keepalives), "greeted": int(greeted),
                "closed": int(closed), "bytes": int(received)}  # fmt: skip

    def wait_for(self, events: int, stall: float = 3.0, limit: float = 120.0) -> int:
        """Wait for ``events`` more (since `records`), a pause of ``stall`` s, or ``limit`` s.

        What has not arrived by then counts as lost: a server that falls that far behind
        has failed the scenario either way.
        """
        last, since, start = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - start < limit:
            got = self.stats()["events"] - self.dumped
            if got >= events:
                return got
            if got != last:
                last, since = got, time.monotonic()
            elif time.monotonic() - since > stall:
                return got
            time.sleep(0.05)
        return last

    def records(self) -> list[tuple[int, int]]:
        with tempfile.NamedTemporaryFile(suffix=".bin") as file:
            self.dumped += int(self.ask(f"dump {file.name}")[1])
            values = array.array("q")
            values.frombytes(Path(file.name).read_bytes())
        return list(zip(values[0::2], values[1::2], strict=True))

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def publish(url: str, *args: object) -> tuple[int, float, int]:
    host, port = url.removeprefix("http://").split(":")
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, str(TOOL), "pub", host, port, *map(str, args)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    _, accepted, seconds, errors = out.stdout.split()
    return int(accepted), float(seconds), int(errors)


def wait_streams(url: str, count: int, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, TypeError):
            if http("GET", url + "/healthz")["streams"] <= count:
                return
        time.sleep(0.1)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- scenarios --------------------------------------------------------------------------------


def idle(proc: subprocess.Popen[bytes], url: str, sizes: Sizes) -> dict[str, Any]:
    time.sleep(0.5)
    before, slab_before = pss_kib(proc.pid), slab_kib()
    sub = Subscriber(url, sizes.idle_streams, 100_000)
    connect_cpu = cpu_seconds(proc.pid)
    try:
        _, opened, failed, seconds = sub.ask("wait_open")
        connect_cpu = cpu_seconds(proc.pid) - connect_cpu
        time.sleep(1.0)
        after, slab_after = pss_kib(proc.pid), slab_kib()
        cpu = cpu_seconds(proc.pid)
        time.sleep(sizes.idle_hold)
        cpu = cpu_seconds(proc.pid) - cpu
        stats = sub.stats()
    finally:
        sub.close()
    wait_streams(url, 0)
    return {
        "streams": int(opened),
        "failed": int(failed),
        "still_open": int(opened) - stats["closed"],
        "kib_per_stream": (after - before) / max(1, int(opened)),
        # Both ends of every connection are on this machine: half the growth is the
        # server's side (a rough figure: other processes allocate too).
        "kernel_kib_per_stream": (slab_after - slab_before) / 2 / max(1, int(opened)),
        "connects_per_s": int(opened) / float(seconds),
        # Server CPU per stream opened: steadier than connects/s on a busy machine.
        "connect_cpu_us": 1e6 * connect_cpu / max(1, int(opened)),
        "keepalive_cpu_pct": 100 * cpu / sizes.idle_hold,
        "keepalives_seen": stats["keepalives"],
    }


def unicast(proc: subprocess.Popen[bytes], url: str, sizes: Sizes) -> dict[str, Any]:
    sub = Subscriber(url, sizes.unicast_users, 0)
    try:
        sub.ask("wait_open")
        sub.records()  # forget whatever the greeting replay held
        cpu = cpu_seconds(proc.pid)
        accepted, _, errors = publish(
            url, "unicast", sizes.unicast_messages, sizes.unicast_users, 100, 4, 0
        )
        got = sub.wait_for(accepted)
        cpu = cpu_seconds(proc.pid) - cpu
        records = sub.records()
        result: dict[str, Any] = {"accepted": accepted, "errors": errors, "delivered": len(records),
                  "lost": accepted - len(records), **latency(records)}  # fmt: skip
        span = (max(r for _, r in records) - min(s for s, _ in records)) / 1e9 if records else 0
        result["msg_per_s"] = len(records) / span if span else 0.0
        result["cpu_us_per_delivery"] = 1e6 * cpu / max(1, got)
        count = int(sizes.steady_rate * sizes.steady_seconds)
        accepted, _, errors = publish(
            url, "unicast", count, sizes.unicast_users, 10, 4, sizes.steady_rate
        )
        sub.wait_for(accepted, limit=30.0)
        records = sub.records()
        result["steady"] = {"rate": sizes.steady_rate, "accepted": accepted, "errors": errors,
                            "lost": accepted - len(records), **latency(records)}  # fmt: skip
    finally:
        sub.close()
    wait_streams(url, 0)
    return result


def latency(records: list[tuple[int, int]]) -> dict[str, float]:
    waits = [(received - sent) / 1e6 for sent, received in records]
    return {"p50_ms": quantile(waits, 0.5), "p99_ms": quantile(waits, 0.99),
            "max_ms": max(waits, default=float("nan"))}  # fmt: skip


def broadcast(proc: subprocess.Popen[bytes], url: str, sizes: Sizes) -> dict[str, Any]:
    sub = Subscriber(url, sizes.broadcast_users, 200_000)
    try:
        _, opened, _, _ = sub.ask("wait_open")
        sub.records()
        cpu = cpu_seconds(proc.pid)
        accepted, _, errors = publish(url, "broadcast", sizes.broadcasts,
                                      sizes.broadcast_interval_ms)  # fmt: skip
        expected = int(opened) * accepted
        sub.wait_for(expected, stall=10.0, limit=60.0)
        cpu = cpu_seconds(proc.pid) - cpu
        records = sub.records()
    finally:
        sub.close()
    wait_streams(url, 0)
    last: dict[int, int] = {}
    for sent, received in records:
        last[sent] = max(last.get(sent, 0), received)
    waits = [(received - sent) / 1e6 for sent, received in last.items()]
    return {"users": int(opened), "broadcasts": accepted, "errors": errors,
            "lost": expected - len(records), "last_user_p50_ms": quantile(waits, 0.5),
            "last_user_p99_ms": quantile(waits, 0.99),
            "cpu_us_per_delivery": 1e6 * cpu / max(1, len(records))}  # fmt: skip


def send_to_each(url: str, users: range, deadline: float) -> tuple[int, int]:
    """POST one message ("@<ns>") to every user, 500 a request, retrying refusals.

    A request the server does not answer (down, restarting) is sent again until
    ``deadline``; returns (messages accepted, requests that failed and were retried).
    """
    accepted = retried = 0
    for start in range(users.start, users.stop, 500):
        stamp = time.time_ns()
        batch = range(start, min(start + 500, users.stop))
        messages = [{"user_id": f"u{n}", "data": f"@{stamp}"} for n in batch]
        body = json.dumps({"messages": messages}).encode()
        while True:
            try:
                accepted += len(http("POST", url + "/sse/messages", body)["ids"])
                break
            except (OSError, KeyError, ValueError):
                retried += 1
                if time.monotonic() > deadline:
                    return accepted, retried
                time.sleep(0.05)
    return accepted, retried


def restart_storm(server: Server, workdir: Path, sizes: Sizes, reconnect: str) -> dict[str, Any]:
    """SIGTERM the hub under ``restart_streams`` streams and start it again at once.

    Each stream gets one message before, so it comes back with a Last-Event-ID; while
    the hub is down one message per user is published (retried until accepted).
    Figures: seconds from SIGTERM until the new hub answers, until every stream is
    back, until every user got the message; what was lost or delivered twice.
    ``reconnect`` is the load tool's mode: ``reconnect`` or ``reconnect-spread``.
    """
    count, first = sizes.restart_streams, 300_000
    users = range(first, first + count)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"{server.name}-restart.log"
    proc = launch(server, port, log)
    sub = Subscriber(url, count, first, reconnect=reconnect)
    try:
        sub.ask("wait_open")
        send_to_each(url, users, time.monotonic() + 30)
        sub.wait_for(count, stall=10.0, limit=30.0)
        sub.records()
        sub.ask("mark")
        stopped_ns, stopped = time.time_ns(), time.monotonic()
        proc.terminate()
        proc.wait(30)
        exited = time.monotonic() - stopped
        proc = launch(server, port, log)
        up = time.monotonic() - stopped
        accepted, retried = send_to_each(url, users, stopped + 60)
        got = sub.wait_for(accepted, stall=10.0, limit=60.0)
        deadline = time.monotonic() + 30
        while True:  # every stream back (a stream may be back before its message)
            _, streams, repeated, reconnects, refused, back = sub.ask("storm")
            if int(streams) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        records = sub.records()
    finally:
        sub.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    last = max((received for _, received in records), default=stopped_ns)
    return {"streams": count, "hub_exit_s": exited, "hub_down_s": up, "all_back_s": float(back),
            "back_after_up_s": float(back) - up,
            "all_got_s": (last - stopped_ns) / 1e9, "accepted": accepted, "got": got,
            "lost": accepted - len(records), "repeated": int(repeated),
            "reconnects": int(reconnects), "refused_connects": int(refused),
            "publish_retries": retried, "still_away": count - int(streams)}  # fmt: skip


SCENARIOS = {"idle": idle, "unicast": unicast, "broadcast": broadcast}
RESTARTABLE = ("-sqlite", "-redis")  # a hub whose store outlives it


def run_scenario(
    scenario: str, proc: subprocess.Popen[bytes], url: str, sizes: Sizes
) -> dict[str, Any]:
    started = time.monotonic()
    try:
        found = SCENARIOS[scenario](proc, url, sizes)
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        found = {"error": str(exc)}
    took = time.monotonic() - started
    print(f"   {scenario} ({took:.1f} s): {json.dumps(found)}", file=sys.stderr, flush=True)
    return found


def run_restart(server: Server, workdir: Path, sizes: Sizes, spread: bool) -> dict[str, Any]:
    started = time.monotonic()
    try:
        mode = "reconnect-spread" if spread else "reconnect"
        found = restart_storm(server, workdir, sizes, mode)
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        found = {"error": str(exc)}
    took = time.monotonic() - started
    print(f"   restart ({took:.1f} s): {json.dumps(found)}", file=sys.stderr, flush=True)
    return found


# -- the report -----------------------------------------------------------------------------

ROWS = [
    ("idle: KiB per stream", ("idle", "kib_per_stream"), False),
    ("idle: kernel KiB per stream", ("idle", "kernel_kib_per_stream"), False),
    ("idle: connects/s", ("idle", "connects_per_s"), True),
    ("idle: connect CPU µs", ("idle", "connect_cpu_us"), False),
    ("idle: keep-alive CPU %", ("idle", "keepalive_cpu_pct"), False),
    ("idle: streams open", ("idle", "still_open"), True),
    ("unicast: msg/s", ("unicast", "msg_per_s"), True),
    ("unicast: CPU µs/delivery", ("unicast", "cpu_us_per_delivery"), False),
    ("unicast: p50 ms", ("unicast", "p50_ms"), False),
    ("unicast: p99 ms", ("unicast", "p99_ms"), False),
    ("unicast: max ms", ("unicast", "max_ms"), False),
    ("unicast: lost", ("unicast", "lost"), False),
    ("steady: p50 ms", ("unicast", "steady", "p50_ms"), False),
    ("steady: p99 ms", ("unicast", "steady", "p99_ms"), False),
    ("steady: max ms", ("unicast", "steady", "max_ms"), False),
    ("steady: lost", ("unicast", "steady", "lost"), False),
    ("broadcast: last user p50 ms", ("broadcast", "last_user_p50_ms"), False),
    ("broadcast: last user p99 ms", ("broadcast", "last_user_p99_ms"), False),
    ("broadcast: CPU µs/delivery", ("broadcast", "cpu_us_per_delivery"), False),
    ("broadcast: lost", ("broadcast", "lost"), False),
    ("restart: hub down s", ("restart", "hub_down_s"), False),
    ("restart: hub exit s", ("restart", "hub_exit_s"), False),
    ("restart: all back s", ("restart", "all_back_s"), False),
    ("restart: back after up s", ("restart", "back_after_up_s"), False),
    ("restart: all got it s", ("restart", "all_got_s"), False),
    ("restart: lost", ("restart", "lost"), False),
    ("restart: repeated", ("restart", "repeated"), False),
]


def pick(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) >= 100:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, path, _ in ROWS:
        cells = []
        base = pick(results.get("baseline", {}), path)
        top = pick(results.get("ceiling", {}), path)
        for name in names:
            value = pick(results[name], path)
            cell = fmt(value)
            if value and name not in ("baseline", "ceiling") and "lost" not in label:
                ratios = [
                    f"{tag} {value / ref:.2g}x" for tag, ref in (("b", base), ("c", top)) if ref
                ]
                cell += f" ({', '.join(ratios)})" if ratios else ""
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "\nIn brackets: the ratio to the baseline (b) and to the ceiling (c) of the same run."
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}  # fmt: skip


def build() -> None:
    BUILD.mkdir(exist_ok=True)
    source = BENCH / "ssebench.c"
    if TOOL.exists() and TOOL.stat().st_mtime >= source.stat().st_mtime:
        return
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("bench: a C compiler (cc) is needed to build the load tools")
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(TOOL), str(source)], check=True)


def redis_available(url: str) -> bool:
    host, _, rest = url.removeprefix("redis://").partition(":")
    port = int(rest.split("/")[0] or 6379)
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument("--only", action="append", help="server names to run (repeatable)")
    parser.add_argument(
        "--scenario", action="append", choices=["idle", "unicast", "broadcast", "restart"]
    )
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/15", help="Redis for the redis run"
    )
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved run")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SIZE=N",
        help="override one size, e.g. --set idle_hold=2 (names: the Sizes fields)",
    )  # fmt: skip
    parser.add_argument(
        "--spread-retry", action="store_true",
        help="restart: clients also wait their retry: hint times 0.5-1.5 (on top of the hub)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["results"]))
        return
    sizes = QUICK if args.quick else FULL
    for override in args.set:
        name, _, value = override.partition("=")
        kind = type(getattr(sizes, name, None))
        if kind not in (int, float) or not value:
            raise SystemExit(f"bench: --set {override!r}: not one of {dataclasses.asdict(sizes)}")
        sizes = dataclasses.replace(sizes, **{name: kind(value)})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FILE_LIMIT), hard))
    build()
    RESULTS.mkdir(exist_ok=True)
    scenarios = args.scenario or ["idle", "unicast", "broadcast", "restart"]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        redis_url = args.redis if redis_available(args.redis) else None
        for server in servers(sizes.keepalive, Path(workdir), redis_url):
            if args.only and server.name not in args.only:
                continue
            if server.name.endswith("-redis") and redis_url:
                with contextlib.suppress(OSError):
                    subprocess.run(["redis-cli", "-u", redis_url, "flushdb"], capture_output=True)
            print(f"== {server.label}", file=sys.stderr, flush=True)
            found: dict[str, Any] = {}
            try:
                if set(scenarios) - {"restart"}:
                    with running(server, Path(workdir) / f"{server.name}.log") as (proc, url):
                        for scenario in scenarios:
                            if scenario != "restart":
                                found[scenario] = run_scenario(scenario, proc, url, sizes)
                if "restart" in scenarios and server.name.endswith(RESTARTABLE):
                    found["restart"] = run_restart(server, Path(workdir), sizes, args.spread_retry)
            except RuntimeError as exc:  # the server did not start: say why, run the others
                print(f"   not run: {exc}", file=sys.stderr, flush=True)
                found = {"error": str(exc)}
            results[server.name] = found
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine(),
        "results": results,
    }
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    out = RESULTS / f"bench-{'quick-' if args.quick else ''}{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"\nJSON: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
