"""CPU per stream opened, thread by thread, beside the ceiling; optionally against other code.

    .venv/bin/python bench/connect_threads.py --store sqlite:// --streams 10000
    .venv/bin/python bench/connect_threads.py --store memory:// --rounds 6 --against OLD/src

Each round starts the ceiling (``ceiling.py``) and then ``ssehub serve`` with the given
store, each pinned to core 0, and opens ``--streams`` streams of new users on it with
``ssebench sub`` on core 1 (256 connecting at once), waiting until every stream got its
first event. It reads each thread's CPU time and context switches from
``/proc/<pid>/task/*`` before and after, and prints them per stream: the event loop is
the process's first thread; the others are the store's (SQLite: the writer, its
checkpointer and the readers; the order they started in). The ceiling's CPU per stream
in the same round is the baseline the total is compared with.

``--against SRC`` runs each round a second time on the ``src`` directory of another
checkout (through ``PYTHONPATH``), alternating which goes first, and prints the medians
of both: on a shared machine whose speed moves from minute to minute, only alternated
rounds compare two versions. A SQLite file is started afresh for every server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BENCH, LOAD_CORE, PYTHON, TOOL, Server, build, running

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Thread:
    cpu: float  # seconds, user and system
    switches: int  # voluntary and involuntary


def threads(pid: int) -> dict[int, Thread]:
    """Each thread of ``pid``: its CPU time and context switches so far."""
    found: dict[int, Thread] = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{name}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{name}/status").read_text()
        except OSError:
            continue  # ended meanwhile
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt" in line)
        found[int(name)] = Thread((int(stat[11]) + int(stat[12])) / _TICKS, switches)
    return found


@dataclass
class Result:
    seconds: float  # until every stream got its first event
    total_us: float  # the process's CPU per stream
    per_thread: list[tuple[int, float, float]]  # (tid, µs per stream, switches per stream)


def measure(server: Server, streams: int, env: dict[str, str], log: Path) -> Result:
    """Start ``server`` on the server core and open the streams on it."""
    with running(server, log, env) as (proc, url):
        port = url.rsplit(":", 1)[1]
        time.sleep(0.5)  # let start-up work settle
        before = threads(proc.pid)
        load = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, str(TOOL), "sub", "127.0.0.1", port, str(streams),
             "100000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert load.stdin is not None
        assert load.stdout is not None
        load.stdin.write("wait_open\n")
        load.stdin.flush()
        answer = load.stdout.readline().split()  # open <greeted> <failed> <seconds>
        after = threads(proc.pid)
        load.stdin.write("quit\n")
        load.stdin.flush()
        load.wait(30)
    if len(answer) != 4 or int(answer[1]) != streams:
        raise SystemExit(f"not every stream opened: {' '.join(answer)}")
    rows = []
    total = 0.0
    for tid, now in sorted(after.items()):
        then = before.get(tid, Thread(0.0, 0))
        cpu, switches = now.cpu - then.cpu, now.switches - then.switches
        total += cpu
        if cpu > 0 or switches > streams // 100:
            rows.append((tid, cpu / streams * 1e6, switches / streams))
    return Result(float(answer[3]), total / streams * 1e6, rows)


def hub(store: str, portable: bool) -> Server:
    command = [PYTHON, "-m", "ssehub", "serve", "--port", "{port}", "--keepalive", "15"]
    command += ["--log-level", "warning", "--store", store]
    return Server("ssehub", "ssehub serve", command + (["--portable"] if portable else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", default="memory://", help="memory://, sqlite:// or a URL")
    parser.add_argument("--portable", action="store_true", help="serve streams through ASGI")
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--against", type=Path, help="the src directory of other code")
    args = parser.parse_args()
    build()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    ceiling = Server("ceiling", "ceiling", [PYTHON, str(BENCH / "ceiling.py"), "{port}", "15"])
    versions = {"this": dict(env)}
    if args.against is not None:
        versions["against"] = {**env, "PYTHONPATH": str(args.against.resolve())}
    totals: dict[str, list[float]] = {name: [] for name in ["ceiling", *versions]}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
            log = Path(workdir) / "servers.log"
            base = measure(ceiling, args.streams, env, log)
            totals["ceiling"].append(base.total_us)
            print(f"round {round_ + 1}: ceiling {base.total_us:.1f} µs per stream")
            for name in order:
                store = args.store
                if store.startswith("sqlite:"):
                    store = f"sqlite:///{workdir}/{name}-{round_}.db"
                server = hub(store, args.portable)
                found = measure(server, args.streams, versions[name], log)
                totals[name].append(found.total_us)
                ratio = found.total_us / base.total_us
                print(
                    f"  {name}: {found.total_us:.1f} µs per stream ({ratio:.2f}x the ceiling),"
                    f" all open in {found.seconds:.2f} s"
                )
                for tid, cpu_us, switches in found.per_thread:
                    print(
                        f"    thread {tid}: {cpu_us:6.1f} µs, {switches:5.2f} switches per stream"
                    )
    print("medians:", ", ".join(f"{n} {statistics.median(v):.1f} µs" for n, v in totals.items()))


if __name__ == "__main__":
    main()
