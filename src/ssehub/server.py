"""Running the hub under uvicorn: one process, or several sharing one socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib.util
import inspect
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Final, Literal

import uvicorn
from fastapi import FastAPI

from ssehub.app import create_app
from ssehub.exceptions import ConfigurationError, SsehubError
from ssehub.fast import fast_protocol
from ssehub.front.http1 import HttpProtocol
from ssehub.logs import configure_logging
from ssehub.settings import Settings
from ssehub.stores import open_store

logger = logging.getLogger("ssehub.server")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STARTUP_FAILED = 2  # a worker's exit code when it could not start: not worth replacing
_GC_THRESHOLDS = (20_000, 50, 100)  # the cyclic collector's, once serving (default 700, 10, 10)


class HubServer(uvicorn.Server):
    """uvicorn, tuned for a process that serves the hub, exiting 0 on SIGTERM/SIGINT.

    It runs the app's lifespan itself (uvicorn's is off, see `uvicorn_config`), before
    uvicorn's start-up, so that a store that cannot start is the `SsehubError` it is
    (in ``startup_error``; `serve` raises it: one line and exit 2), not uvicorn's
    lifespan traceback. The streams end at once on a signal because the hub puts
    itself in front of the server's signal handlers while it runs (`ssehub._signals`),
    as in any host app.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self.startup_error: SsehubError | None = None
        self._lifespan: contextlib.AbstractAsyncContextManager[object] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        lifespan = self.app.router.lifespan_context(self.app)
        try:
            await lifespan.__aenter__()
        except SsehubError as exc:
            self.startup_error = exc
            self.should_exit = True
            return
        self._lifespan = lifespan
        await super().startup(sockets=sockets)
        if self.should_exit:  # uvicorn could not start after all
            await self._end_lifespan()
            return
        # What exists once the server is up (modules, the app, its routes and models)
        # lives as long as the process: keep it out of the cyclic collector's full
        # passes, which would otherwise walk it all and stall every stream for tens of
        # milliseconds at a time.
        gc.collect()
        gc.freeze()
        # A publish request's objects live a few milliseconds; with the default first
        # threshold (700) collections in the middle of a request promote them, and the
        # promoted soon add up to a full pass over every stream and kept event. Young
        # collections cost what is alive, not what was allocated, so a larger first
        # threshold lets request objects die young (steady p99 9.7 -> 3.1 ms).
        gc.set_threshold(*_GC_THRESHOLDS)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            await self._end_lifespan()

    async def _end_lifespan(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Unlike uvicorn's, this does not re-raise the signal after a graceful stop,
        # so `ssehub serve` exits 0 with no traceback.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


# Connections the kernel queues before ssehub accepts them; Linux caps it at
# net.core.somaxconn (4096 by default since 5.4). uvicorn's 2048 made a restart storm
# (every client of a hub coming back at once) drop SYNs, which clients resend only
# after a second or more.
LISTEN_BACKLOG: Final = 65535


def uvicorn_config(
    settings: Settings, app: object, *, lifespan: Literal["on", "off"] = "on"
) -> uvicorn.Config:
    """The uvicorn settings ssehub runs with.

    Streams take the fast path (`ssehub.fast`) unless ``settings.portable``.
    ``lifespan="off"`` when the server runs the app's lifespan itself (`HubServer`).
    """
    http: type[asyncio.Protocol] | str = HttpProtocol
    extra: dict[str, object] = {}
    if settings.http2:
        http = _http2_protocol()
        extra["http2"] = True  # uvicorn >= 0.54 (the http2 extra requires it)
    elif isinstance(app, FastAPI) and not settings.portable:
        http = fast_protocol(app)
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http,
        ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        backlog=LISTEN_BACKLOG,
        **extra,  # type: ignore[arg-type]
    )


def _http2_protocol() -> str:
    """uvicorn's HTTP/2 protocol (zttp); streams take the ASGI route there.

    Raises:
        ConfigurationError: zttp is not installed.
    """
    if importlib.util.find_spec("zttp") is None:
        raise ConfigurationError("--http2 needs zttp: pip install 'ssehub[http2]'")
    if "http2" not in inspect.signature(uvicorn.Config).parameters:
        raise ConfigurationError(
            f"--http2 needs uvicorn 0.54 or later (this is {uvicorn.__version__}): "
            "pip install 'ssehub[http2]'"
        )
    return "zttp"


def listen_socket(settings: Settings) -> socket.socket:
    """The server's socket, bound to ``settings.host`` and ``settings.port`` now.

    Raises:
        ConfigurationError: the address is in use, or cannot be listened on.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    where = f"{settings.host}:{settings.port}"
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"{where} is already in use: another server listens there; "
                "stop it or choose another --port"
            ) from exc
        raise ConfigurationError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


def _serve_worker(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Serve in this process until a signal.

    Raises:
        SsehubError: the app or its store could not start (nothing was served).
    """
    configure_logging(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    # One process: listen before anything starts, so that a port in use is reported
    # as such before the store opens or anything says it is ready.
    server = HubServer(uvicorn_config(settings, app, lifespan="off"), app)
    server.run(sockets=sockets or [listen_socket(settings)])
    if server.startup_error is not None:
        raise server.startup_error


def _worker_main(settings: Settings, sockets: list[socket.socket]) -> None:
    """A worker process: `_serve_worker`, a start-up error one line and exit code 2."""
    try:
        _serve_worker(settings, sockets)
    except SsehubError as exc:
        print(f"ssehub: error: {exc}", file=sys.stderr)
        sys.exit(_STARTUP_FAILED)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return it.

    Every stream is an open socket, and the soft limit is often 1,024 while the hard
    limit is far higher (Go's runtime does the same at start-up).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT.

    Raises:
        ConfigurationError: the settings are invalid, or several workers were asked
            for with a store that only one process can use.
    """
    settings.validate()
    configure_logging(settings.log_level, json=settings.log_json)
    logger.info("open files allowed: %d (each stream holds one)", raise_open_file_limit())
    if settings.auth == "open" and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "auth is open and ssehub listens on %s: anyone who can reach it may read any "
            "user's stream; use --auth jwt",
            settings.host,
        )
    if settings.workers == 1:
        _serve_worker(settings)
        return
    if not open_store(settings.store, retention=settings.retention).shared:
        raise ConfigurationError(
            f"--workers {settings.workers} needs a store the workers can share: use redis://"
        )
    _supervise(settings, listen_socket(settings))


def _supervise(settings: Settings, sock: socket.socket) -> None:
    """Run ``settings.workers`` processes on one listening socket until a signal.

    A worker that dies is replaced; SIGTERM/SIGINT are passed on to every worker,
    which closes its streams and exits.

    Raises:
        ConfigurationError: a worker could not start (it said why); the others stop.
    """
    context = multiprocessing.get_context("spawn")
    stopping: list[int] = []

    def start_worker() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(settings, [sock]), daemon=False)
        process.start()
        return process

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)

    original = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    workers = [start_worker() for _ in range(settings.workers)]
    logger.info("started %d workers on %s:%d", len(workers), settings.host, settings.port)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(workers):
                if process.exitcode == _STARTUP_FAILED:
                    raise ConfigurationError("a worker could not start (see above)")
                if not process.is_alive() and not stopping:
                    logger.warning("worker %s exited (%s); starting another", process.pid,
                                   process.exitcode)  # fmt: skip
                    workers[index] = start_worker()
    finally:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
        for sig, handler in original.items():
            signal.signal(sig, handler)
        sock.close()
