"""HTTP conformance at both front doors: a corpus of raw requests, odd and hostile.

Every case goes over a socket to a fast server (``ssehub serve``) and a portable one
(``--portable``), real processes side by side. Their answers (status, framing, whether
the connection ends) must equal each other and what RFC 9110/9112 ask (the expected
values below); then both servers must be alive, hold no stream of the case's user, and
have logged no traceback. Deliberate deviations from the RFC (uvicorn's, kept alike at
both doors) are marked in the corpus and listed in ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.rawhttp import Exchange, exchange

pytestmark = pytest.mark.anyio

KEEPALIVE = 0.5
H = b"Host: x\r\n"
STREAM = b"GET /sse/connect/{u} HTTP/1.1\r\n" + H + b"\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n"
WS = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)
U = b"/sse/connect/{u}"
TE = b"Transfer-Encoding: "
CL = b"Content-Length: "

OK_STREAM = (200, "chunked")  # an HTTP/1.1 event stream
OK_10_STREAM = (200, "close")  # an HTTP/1.0 one: close-delimited
OK_JSON = (200, "length")
HEAD_OK = (200, "none")
BAD = (400, "length")
OK_TEXT = (200, "length")


@dataclass(frozen=True)
class Case:
    """A request (or several, pipelined) and the answers RFC 9110/9112 ask for.

    ``{u}`` in the bytes is the case's own user id. ``expect`` is one ``(status,
    framing)`` per answer; ``closes`` whether the server must then end the connection
    (None: either). ``methods`` name the requests answered (for HEAD's empty body).
    """

    id: str
    pieces: tuple[bytes, ...]
    expect: tuple[tuple[int, str], ...]
    closes: bool | None = None
    methods: tuple[str, ...] = ()
    pause: float = 0.0
    half_close: bool = False
    racy: bool = False  # the answer depends on timing: only what the server keeps counts


def case(
    id: str,
    request: bytes | list[bytes],
    *expect: tuple[int, str],
    closes: bool | None = None,
    methods: tuple[str, ...] = (),
    pause: float = 0.0,
    half_close: bool = False,
    racy: bool = False,
) -> Case:
    pieces = tuple(request) if isinstance(request, list) else (request,)
    methods = methods or ("GET",) * len(expect)
    return Case(id, pieces, expect, closes, methods, pause, half_close, racy)


def get(
    target: bytes, extra: bytes = b"", version: bytes = b"1.1", method: bytes = b"GET"
) -> bytes:
    return method + b" " + target + b" HTTP/" + version + b"\r\n" + H + extra + b"\r\n"


CORPUS = [
    # -- versions and methods ---------------------------------------------------------
    case("stream-1.1", STREAM, OK_STREAM),
    case("stream-1.0", b"GET /sse/connect/{u} HTTP/1.0\r\n\r\n", OK_10_STREAM),
    case("stream-1.0-keep-alive", get(U, b"Connection: keep-alive\r\n", b"1.0"),
         OK_10_STREAM),
    case("stream-connection-close", get(U, b"Connection: close\r\n"), OK_STREAM),
    case("head-stream", get(U, method=b"HEAD") + HEALTH, HEAD_OK, OK_JSON,
         methods=("HEAD", "GET"), closes=False),
    case("head-stream-1.0", get(U, method=b"HEAD", version=b"1.0"), HEAD_OK,
         methods=("HEAD",), closes=True),
    case("head-stream-refused", get(b"/sse/connect/{u}?last_event_id=x", method=b"HEAD"),
         (400, "none"), methods=("HEAD",)),
    case("head-then-stream", get(U, method=b"HEAD") + STREAM, HEAD_OK,
         OK_STREAM, methods=("HEAD", "GET")),
    case("post-stream", get(U, CL + b"0\r\n", method=b"POST"),
         (405, "length")),
    case("put-stream", get(U, CL + b"2\r\n", method=b"PUT") + b"{}",
         (405, "length")),
    case("delete-stream", get(U, method=b"DELETE"), (405, "length")),
    case("patch-stream", get(U, method=b"PATCH"), (405, "length")),
    case("options-stream", get(U, method=b"OPTIONS"), (405, "length")),
    case("trace-stream", get(U, method=b"TRACE"), (405, "length")),
    case("unknown-method", get(U, method=b"FETCH"), BAD, closes=True),
    case("lower-case-method", get(U, method=b"get"), BAD, closes=True),
    case("connect-authority", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
         BAD, closes=True),
    case("connect-path", get(U, method=b"CONNECT"), (405, "length")),
    case("http-2.0-line", get(U, version=b"2.0"), (505, "length"), closes=True),
    case("http-1.2", get(U, version=b"1.2"), BAD, closes=True),  # RFC: as 1.1; httptools: 400
    case("http-0.9", b"GET /sse/connect/{u}\r\n\r\n", (505, "length"), closes=True),
    case("http-lower-case", b"GET /sse/connect/{u} http/1.1\r\n" + H + b"\r\n", BAD, closes=True),
    # -- upgrades ------------------------------------------------------------------------
    case("h2c-stream", get(U, H2C), OK_STREAM),
    case("h2c-health", get(b"/healthz", H2C), OK_JSON),
    case("upgrade-without-connection", get(U, b"Upgrade: h2c\r\n"), OK_STREAM),
    case("websocket-stream", get(U, WS), (403, "length"), closes=True),
    case("websocket-health", get(b"/healthz", WS), (403, "length"), closes=True),
    case("websocket-no-key", get(U, b"Connection: Upgrade\r\nUpgrade: websocket\r\n"),
         (400, "length"), closes=True),
    # -- framing --------------------------------------------------------------------------
    case("te-xchunked", get(U, TE + b"xchunked\r\n"), BAD, closes=True),
    case("te-chunked-gzip", get(U, TE + b"chunked, gzip\r\n"), BAD,
         closes=True),
    case("te-doubled", get(U,
                           TE + b"chunked\r\n" + TE + b"chunked\r\n") + b"0\r\n\r\n",
         BAD, closes=True),
    case("te-chunked-chunked", get(U, TE + b"chunked, chunked\r\n"),
         BAD, closes=True),
    case("te-and-cl", get(U, TE + b"chunked\r\n" + CL + b"5\r\n"),
         BAD, closes=True),
    case("cl-conflicting", get(U, CL + b"1\r\n" + CL + b"2\r\n") + b"ab",
         BAD, closes=True),
    case("cl-negative", get(U, CL + b"-1\r\n"), BAD, closes=True),
    case("cl-not-a-number", get(U, CL + b"abc\r\n"), BAD, closes=True),
    case("te-on-http-1.0", get(U, TE + b"chunked\r\n", b"1.0") + b"0\r\n\r\n",
         BAD, closes=True),
    case("te-xchunked-health", get(b"/healthz", TE + b"xchunked\r\n"), BAD, closes=True),
    case("stream-with-chunked-body", get(U, TE + b"chunked\r\n")
         + b"0\r\n\r\n", OK_STREAM),
    case("stream-with-length-body", get(U, CL + b"3\r\n") + b"abc", OK_STREAM),
    # -- targets ----------------------------------------------------------------------------
    case("empty-user", get(b"/sse/connect/"), (404, "length")),
    case("two-segments", get(b"/sse/connect/{u}/x"), (404, "length")),
    case("encoded-slash", get(b"/sse/connect/a%2F{u}"), (404, "length")),
    case("encoded-user", get(b"/sse/connect/{%u}"), OK_STREAM),
    case("query", get(b"/sse/connect/{u}?x=1&y"), OK_STREAM),
    case("fragment", get(b"/sse/connect/{u}#top"), OK_STREAM),
    case("absolute-form", get(b"http://x/sse/connect/{u}"), OK_STREAM),
    case("asterisk-form", get(b"*"), (404, "length")),
    case("double-slash", get(b"//sse/connect/{u}"), (404, "length")),
    case("bad-percent", get(b"/sse/connect/{u}%zz"), OK_STREAM),  # "%zz" is no escape: kept
    case("nul-in-user", get(b"/sse/connect/{u}%00"), BAD),
    case("utf8-user", get(b"/sse/connect/{u}%C3%A9"), OK_STREAM),
    case("raw-utf8-target", get(b"/sse/connect/{u}\xc3\xa9"), BAD, closes=True),
    case("space-in-target", get(b"/sse/connect/{u} x"), BAD, closes=True),
    case("long-user", get(U + b"x" * 600), BAD),
    case("bad-last-event-id-query", get(b"/sse/connect/{u}?last_event_id=nope"), BAD),
    case("bad-last-event-id-header", get(U, b"Last-Event-ID: nope\r\n"), BAD),
    # -- header syntax --------------------------------------------------------------------
    case("nul-in-header", get(U, b"X-A: a\x00b\r\n"), BAD, closes=True),
    case("obs-fold", get(U, b"X-A: a\r\n b\r\n"), BAD, closes=True),
    case("header-without-colon", get(U, b"X-A\r\n"), BAD, closes=True),
    case("space-before-colon", get(U, b"X-A : a\r\n"), BAD, closes=True),
    case("many-headers", get(U, b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(300))),
         OK_STREAM),
    case("huge-header", get(U, b"X-A: " + b"a" * 70_000 + b"\r\n"), (431, "length"),
         closes=True),
    case("huge-request-line", get(U + b"?" + b"a" * 70_000), (414, "length"), closes=True),
    case("huge-header-in-pieces", [get(U)[:-2], *[b"X-A: " + b"a" * 9_000 + b"\r\n"] * 8, b"\r\n"],
         (431, "length"), closes=True, pause=0.02),
    case("ten-thousand-headers", get(U, b"X: y\r\n" * 10_000), (431, "length"), closes=True),
    case("cors-stream", get(U, b"Origin: https://app.example\r\n"), OK_STREAM),
    case("cors-preflight", get(U, b"Origin: https://app.example\r\n"
                                  b"Access-Control-Request-Method: GET\r\n", method=b"OPTIONS"),
         OK_TEXT),
    case("cors-refused-stream", get(U + b"?last_event_id=x", b"Origin: https://app.example\r\n"),
         BAD),
    case("expect-continue", get(U, b"Expect: 100-continue\r\n"), OK_STREAM),
    case("bare-lf", b"GET /sse/connect/{u} HTTP/1.1\nHost: x\n\n", BAD, closes=True),
    case("leading-crlf", b"\r\n" + STREAM, OK_STREAM),
    case("no-host", b"GET /sse/connect/{u} HTTP/1.1\r\n\r\n", OK_STREAM),  # RFC: 400 (uvicorn's)
    # -- pipelining -----------------------------------------------------------------------
    case("stream-then-request", STREAM + HEALTH, OK_STREAM),
    case("stream-then-garbage", STREAM + b"GARBAGE\x00\r\n\r\n", OK_STREAM),
    case("stream-then-many", STREAM + HEALTH * 2000, OK_STREAM),
    case("request-then-stream", HEALTH + STREAM, OK_JSON, OK_STREAM),
    case("three-requests", HEALTH * 3, OK_JSON, OK_JSON, OK_JSON, closes=False),
    case("request-then-garbage", HEALTH + b"GARBAGE\x00\r\n\r\n", OK_JSON, BAD, closes=True),
    case("request-then-bad-framing", HEALTH + get(b"/healthz", TE + b"xchunked\r\n"),
         OK_JSON, BAD, closes=True),
    # -- slow, split and leaving clients --------------------------------------------------
    case("byte-at-a-time", [bytes([b]) for b in get(U)], OK_STREAM, pause=0.001),
    case("split-at-blank-line", [STREAM[:-2], STREAM[-2:]], OK_STREAM, pause=0.1),
    case("split-in-method", [b"GE", STREAM[2:]], OK_STREAM, pause=0.1),
    case("half-a-head", STREAM[:20], closes=False),
    case("half-a-head-then-leave", STREAM[:20], half_close=True),
    case("pipeline-too-deep", HEALTH * 40, *[OK_JSON] * 33, BAD, closes=True),
    # (a client that half-closes at once left: answered or not, it holds no stream)
    case("stream-then-half-close", STREAM, OK_STREAM, half_close=True, racy=True),
    case("empty", b""),
    case("only-crlf", b"\r\n\r\n", closes=False),
]  # fmt: skip


@pytest.fixture(scope="module")
def doors(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A fast and a portable server, for the whole module."""
    path = tmp_path_factory.mktemp("conformance")
    fast, portable = ServerFactory(path, "fast"), ServerFactory(path, "portable")
    try:
        yield fast(keepalive=KEEPALIVE), portable(keepalive=KEEPALIVE)
    finally:
        fast.close()
        portable.close()


def summary(result: Exchange) -> tuple[list[tuple[int, str]], bool]:
    return [(answer.status, answer.framing) for answer in result.answers], result.closed


async def run(server: ServerProcess, item: Case, user: str) -> Exchange:
    encoded = "".join(f"%{byte:02X}" for byte in user.encode()).encode()
    pieces = [p.replace(b"{%u}", encoded).replace(b"{u}", user.encode()) for p in item.pieces]
    return await exchange(
        server.port,
        pieces,
        list(item.methods) or ["GET"],  # (none expected: wait a little for one anyway)
        pause=item.pause,
        half_close=item.half_close,
        expect_close=bool(item.closes),
        timeout=3.0 if item.expect else 0.5,
    )


async def holds_no_stream(client: httpx.AsyncClient, server: ServerProcess, user: str) -> None:
    """Wait (bounded) until the server says ``user`` has no stream open."""
    deadline = asyncio.get_running_loop().time() + KEEPALIVE + 0.25
    while True:
        answer = await client.get(f"{server.url}/sse/users/{user}")
        assert answer.status_code == 200
        if answer.json()["connections"] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{user} still connected"
        await asyncio.sleep(0.05)  # the count lives in another process: poll it


def no_traceback(server: ServerProcess, since: int = 0) -> None:
    """The server logged no traceback or error (after the first ``since`` characters)."""
    log = server.log()[since:]
    for bad in ("Traceback", "Fatal error", " ERROR "):
        assert bad not in log, log[log.index(bad) - 2000 : log.index(bad) + 2000]


@pytest.mark.parametrize("item", CORPUS, ids=[item.id for item in CORPUS])
async def test_both_doors_answer_the_request_alike_and_as_the_rfc_says(
    doors: tuple[ServerProcess, ServerProcess], item: Case
) -> None:
    user = "conf-" + item.id
    marks = [len(server.log()) for server in doors]
    fast, portable = await asyncio.gather(*(run(server, item, user) for server in doors))
    if not item.racy:
        compare(item, fast, portable)
    async with httpx.AsyncClient(timeout=5) as client:
        for server in doors:
            await holds_no_stream(client, server, user)
            assert (await client.get(f"{server.url}/healthz")).status_code == 200
    for server, mark in zip(doors, marks, strict=True):
        no_traceback(server, mark)


def compare(item: Case, fast: Exchange, portable: Exchange) -> None:
    """The answers of both doors equal each other and the case's."""
    assert summary(fast)[0] == summary(portable)[0], (summary(fast), summary(portable))
    assert summary(fast)[0] == list(item.expect), (summary(fast), summary(portable))
    if item.closes is not None:
        assert fast.closed == portable.closed == item.closes, (fast.closed, portable.closed)
    for one, other in zip(fast.answers, portable.answers, strict=True):
        for name in (
            "content-type",
            "cache-control",
            "www-authenticate",
            "retry-after",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "vary",
        ):
            assert one.header(name) == other.header(name), name
        assert one.closes == other.closes, (
            one.headers.get("connection"),
            other.headers.get("connection"),
        )
        if one.stream:
            assert one.closes, "a stream is its connection's last response"
            assert one.body.startswith(b"data: User '")
        if one.framing != "none":
            assert one.body == other.body or one.stream


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert len({item.id for item in CORPUS}) == len(CORPUS)


LEAVING = {
    "close": b"",
    "half-close": b"",
    "pipelined-then-close": HEALTH,
    "pipelined-then-half-close": HEALTH,
    "garbage-then-close": b"GARBAGE\x00\r\n\r\n",
    "stream-pipelined-then-close": STREAM.replace(b"{u}", b"someone-else"),
}


@pytest.mark.parametrize("how", list(LEAVING))
async def test_a_stream_is_released_within_a_keepalive_once_its_client_leaves(
    doors: tuple[ServerProcess, ServerProcess], how: str
) -> None:
    user = "leave-" + how
    marks = [len(server.log()) for server in doors]

    async def leave(server: ServerProcess) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(STREAM.replace(b"{u}", user.encode()) + LEAVING[how])
            async with asyncio.timeout(5):
                await reader.readuntil(b"connected\n\n")
                # The stream goes on, and what was pipelined behind it is never answered.
                rest = await reader.readuntil(b"keepalive")
            assert b"HTTP/1.1" not in rest
            async with httpx.AsyncClient(timeout=5) as client:
                status = (await client.get(f"{server.url}/sse/users/{user}")).json()
                assert status["connections"] == 1
                if how.endswith("half-close"):
                    writer.write_eof()
                else:
                    writer.close()
                await holds_no_stream(client, server, user)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(leave(server) for server in doors))
    for server, mark in zip(doors, marks, strict=True):
        no_traceback(server, mark)
