"""The browser client ``/ssehub.js``, driven in headless Chromium against real servers.

Tabs of one browser context share storage, Web Locks and BroadcastChannel, as the tabs
of one browser profile do.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ssehub
from ssehub.auth import mint_token
from tests.conftest import ServerFactory, ServerProcess, free_port
from tests.web.test_page import browser, pytestmark, sync_api  # noqa: F401

SECRET = "a-test-secret-that-is-long-enough-for-hs256"

# Sets up window.sub in a tab and records what it gets: messages as [id, data],
# the hub's own events as [type, data], named events as [type, id, data], states.
SUBSCRIBE = """
async ([user, options, names, module]) => {
  const { connect } = await import(module);
  Object.assign(window, { got: [], hub: [], named: [], states: [], tokens: 0, tokenTimes: [] });
  if (options.tokenFrom) {
    const who = options.tokenFrom;
    options.token = async () => {
      window.tokens += 1;
      tokenTimes.push(Date.now());
      return await window.mintToken(who);
    };
  }
  const sub = window.sub = connect(user, options);
  sub.addEventListener("message", (e) => got.push([e.lastEventId, e.data]));
  for (const type of ["reset", "disconnected", "expired"])
    sub.addEventListener(type, (e) => hub.push([type, e.data]));
  for (const type of names)
    sub.addEventListener(type, (e) => named.push([type, e.lastEventId, e.data]));
  sub.addEventListener("state", (e) => {
    states.push(e.detail);
    if (e.detail === "open") window.openedAt = Date.now();
  });
}
"""


def wait_for(page: sync_api.Page | sync_api.Frame, expression: str, timeout: float = 10.0) -> Any:
    """Poll ``expression`` in the page until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(f"() => {expression}")):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)
    return value


def subscribe(
    page: sync_api.Page | sync_api.Frame,
    user: str,
    names: tuple[str, ...] = (),
    module: str = "/ssehub.js",
    **options: Any,
) -> None:
    page.evaluate(SUBSCRIBE, [user, options, list(names), module])


def publish(url: str, user: str, data: object, event: str | None = None) -> str:
    body: dict[str, object] = {"data": data}
    if event is not None:
        body["event"] = event
    answer = httpx.post(f"{url}/sse/users/{user}/messages", json=body, timeout=5)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def connections(url: str, user: str) -> int:
    return int(httpx.get(f"{url}/sse/users/{user}", timeout=5).json()["connections"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One hub for the tests that need no other settings; each test has its own user."""
    factory = ServerFactory(tmp_path_factory.mktemp("hub"))
    try:
        yield factory(keepalive=0.2)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A hub with ``--auth jwt``: tokens from `mint_token` with `SECRET`, publishing with
    the key ``k1``."""
    factory = ServerFactory(tmp_path_factory.mktemp("jwt-hub"))
    try:
        yield factory("--auth", "jwt", "--jwt-secret", SECRET, "--publish-key", "k1", keepalive=0.2)
    finally:
        factory.close()


@pytest.fixture
def context(browser: sync_api.Browser) -> Iterator[sync_api.BrowserContext]:  # noqa: F811
    """One browser profile: its tabs share locks and channels."""
    context = browser.new_context()
    try:
        yield context
    finally:
        context.close()


def tab(context: sync_api.BrowserContext, url: str) -> sync_api.Page:
    """A new tab on the hub's origin."""
    page = context.new_page()
    page.goto(url + "/healthz")
    return page


def tabs(
    context: sync_api.BrowserContext, url: str, user: str, count: int, **options: Any
) -> list[sync_api.Page]:
    """``count`` tabs subscribed to ``user``, each open, exactly one of them leading."""
    pages = [tab(context, url) for _ in range(count)]
    for page in pages:
        subscribe(page, user, **options)
    for page in pages:
        wait_for(page, "sub.state === 'open'")
    assert [page.evaluate("sub.leader") for page in pages].count(True) == 1
    return pages


def leader_of(pages: list[sync_api.Page]) -> sync_api.Page:
    (leader,) = [page for page in pages if page.evaluate("sub.leader")]
    return leader


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_the_client_is_served_as_a_cacheable_module(server: ServerProcess) -> None:
    answer = httpx.get(server.url + "/ssehub.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export function connect(" in answer.text
    assert answer.headers["cache-control"] == "public, max-age=300"
    etag = answer.headers["etag"]
    again = httpx.get(server.url + "/ssehub.js", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert httpx.get(server.url + "/ssehub.js", headers={"if-none-match": '"x"'}).status_code == 200


def test_the_client_stays_small() -> None:
    source = (Path(ssehub.__file__).parent / "web" / "ssehub.js").read_text()
    # Minified-equivalent: without comments and runs of white space (a minifier that
    # also shortens names would make it smaller still).
    code = re.sub(r"^\s*//.*$|\s//.*$", "", source, flags=re.MULTILINE)
    code = re.sub(r"/\*\*.*?\*/", "", code, flags=re.DOTALL)
    code = re.sub(r"\s+", " ", code)
    assert len(code.encode()) < 5 * 1024


def test_one_tab_gets_messages_and_named_events_without_greeting_or_keepalives(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    page = tab(context, server.url)
    subscribe(page, "ada", names=("notice", "keepalive"))
    wait_for(page, "sub.state === 'open'")
    assert page.evaluate("sub.leader") is True
    first = publish(server.url, "ada", "hello")
    second = publish(server.url, "ada", {"n": 1, "ok": True})
    notice = publish(server.url, "ada", "look", event="notice")
    third = publish(server.url, "ada", "two\nlines")
    wait_for(page, "got.length >= 3 && named.some(([type]) => type === 'notice')")
    # Two keep-alives later, none of them has shown up as a message.
    beats = "named.filter(([type]) => type === 'keepalive').length"
    wait_for(page, f"{beats} >= {page.evaluate(beats) + 2}")
    assert page.evaluate("got") == [
        [first, "hello"],
        [second, '{"n":1,"ok":true}'],
        [third, "two\nlines"],
    ]
    assert page.evaluate("named.filter(([type]) => type === 'notice')") == [
        ["notice", notice, "look"]
    ]
    assert page.evaluate("states") == ["connecting", "open"]
    assert connections(server.url, "ada") == 1

    page.evaluate("sub.close()")
    wait_for(page, "sub.state === 'closed'")
    deadline = time.monotonic() + 5
    while connections(server.url, "ada"):
        assert time.monotonic() < deadline, "the stream stayed open after close()"
        time.sleep(0.05)


def test_last_event_id_resumes_after_it(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    first, *rest = [publish(server.url, "gus", f"m{i}") for i in range(3)]
    page = tab(context, server.url)
    subscribe(page, "gus", lastEventId=first)
    wait_for(page, "got.length >= 2")
    assert page.evaluate("got") == [[rest[0], "m1"], [rest[1], "m2"]]


def test_eight_tabs_share_one_stream_and_each_gets_every_message_once_in_order(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    pages = tabs(context, server.url, "bob", 8)
    assert connections(server.url, "bob") == 1
    ids = [publish(server.url, "bob", f"m{i}") for i in range(20)]
    expected = [[event_id, f"m{i}"] for i, event_id in enumerate(ids)]
    for page in pages:
        wait_for(page, "got.length >= 20")
    for page in pages:
        assert page.evaluate("got") == expected
    # Over HTTP/1.1 a browser opens at most six connections to an origin: with a
    # stream per tab the seventh tab's stream and every fetch() would wait for ever.
    fetch = """() => Promise.race([
        fetch("/sse/users/bob").then((r) => r.status),
        new Promise((done) => setTimeout(() => done("stuck"), 5000)),
    ])"""
    assert [page.evaluate(fetch) for page in pages] == [200] * 8
    assert connections(server.url, "bob") == 1


def test_when_the_leader_tab_closes_another_takes_over_losing_and_repeating_nothing(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    pages = tabs(context, server.url, "cy", 4)
    leader = leader_of(pages)
    ids: list[str] = []
    halfway = threading.Event()

    def publisher() -> None:
        for i in range(40):
            ids.append(publish(server.url, "cy", f"m{i}"))
            if i == 10:
                halfway.set()
            time.sleep(0.02)  # a steady flow, not a synchronisation

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        assert halfway.wait(10)
        closed_at = time.time() * 1000
        leader.close()
        pages.remove(leader)
    finally:
        thread.join(20)
    new_leader = None
    deadline = time.monotonic() + 10
    while new_leader is None:
        assert time.monotonic() < deadline, "no tab took the stream over"
        leading = [p for p in pages if p.evaluate("sub.leader && sub.state === 'open'")]
        new_leader = leading[0] if leading else None
        time.sleep(0.05)
    took = new_leader.evaluate("openedAt") - closed_at
    assert took < 2000, f"the takeover took {took:.0f} ms"
    expected = [[event_id, f"m{i}"] for i, event_id in enumerate(ids)]
    for page in pages:
        wait_for(page, "got.length >= 40")
    for page in pages:
        assert page.evaluate("got") == expected
        assert page.evaluate("sub.leader") == (page is new_leader)
    wait_until(lambda: connections(server.url, "cy") == 1, "one stream is left")


def test_an_event_registered_in_a_follower_reaches_every_tab_also_after_a_takeover(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    pages = tabs(context, server.url, "dee", 3)
    leader = leader_of(pages)
    followers = [page for page in pages if page is not leader]
    for page in followers:
        page.evaluate("() => sub.addEventListener('report', (e) => named.push(['report', e.data]))")
    # The leader listens to the name once the follower's request has reached it.
    wait_for(leader, "sub._names.has('report')")
    publish(server.url, "dee", "one", event="report")
    for page in followers:
        wait_for(page, "named.length >= 1")

    leader.close()
    wait_until(lambda: any(page.evaluate("sub.leader") for page in followers), "a takeover")
    for page in followers:
        wait_for(page, "sub.state === 'open'")
    publish(server.url, "dee", "two", event="report")
    publish(server.url, "dee", "plain")
    for page in followers:
        wait_for(page, "got.length >= 1")
        assert page.evaluate("named") == [["report", "one"], ["report", "two"]]


def test_the_hubs_disconnect_ends_the_subscription_in_every_tab_for_good(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    pages = tabs(context, server.url, "eve", 3)
    assert httpx.get(f"{server.url}/sse/disconnect/eve", timeout=5).status_code == 200
    for page in pages:
        wait_for(page, "sub.state === 'closed'")
        assert page.evaluate("hub") == [["disconnected", "User 'eve' disconnected"]]
    # Nothing reconnects: a while later the user still has no stream and no tab leads.
    time.sleep(1.0)
    assert connections(server.url, "eve") == 0
    for page in pages:
        assert page.evaluate("[sub.leader, states.at(-1)]") == [False, "closed"]


def test_a_token_function_is_called_again_when_the_token_expires(
    jwt_server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    server = jwt_server
    minted: list[str] = []

    def token(user: str) -> str:
        # The first token runs out within two seconds; later ones last.
        minted.append(user)
        return mint_token(SECRET, user, ttl=2 if len(minted) == 1 else 60)

    context.expose_function("mintToken", token)
    pages = tabs(context, server.url, "fay", 2, tokenFrom="fay")
    leader = leader_of(pages)
    key = {"x-api-key": "k1"}
    first = httpx.post(f"{server.url}/sse/users/fay/messages", json={"data": "a"}, headers=key)
    for page in pages:
        wait_for(page, "hub.length >= 1", timeout=15)
        assert page.evaluate("hub") == [["expired", "token expired"]]
    wait_for(leader, "tokens >= 2 && sub.state === 'open'")
    second = httpx.post(f"{server.url}/sse/users/fay/messages", json={"data": "b"}, headers=key)
    expected = [[first.json()["id"], "a"], [second.json()["id"], "b"]]
    for page in pages:
        wait_for(page, "got.length >= 2")
        assert page.evaluate("got") == expected
    for page in pages:
        if page is not leader:
            assert page.evaluate("tokens") == 0  # a follower holds no stream, needs no token


def test_the_demo_page_in_two_tabs_shares_one_stream(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    pages = []
    for _ in range(2):
        page = context.new_page()
        page.goto(server.url + "/?user=hal")
        page.wait_for_selector("body[data-ready=true]")
        page.click("#connect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "open")
        pages.append(page)
    sync_api.expect(pages[1].locator("#state")).to_have_text("open (shared with another tab)")
    assert connections(server.url, "hal") == 1
    pages[1].fill("#send-data", "to both")
    pages[1].click("#send")
    for page in pages:
        sync_api.expect(page.locator(".kind-message .text")).to_have_text(["to both"])


def test_without_web_locks_or_with_share_tabs_off_each_tab_holds_its_own_stream(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    unshared = tab(context, server.url)
    subscribe(unshared, "ivy", shareTabs=False)
    no_locks = context.new_page()
    no_locks.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined })"
    )
    no_locks.goto(server.url + "/healthz")
    assert no_locks.evaluate("navigator.locks") is None
    subscribe(no_locks, "ivy")
    pages = [unshared, no_locks]
    for page in pages:
        wait_for(page, "sub.state === 'open'")
        assert page.evaluate("sub.leader") is True
    assert connections(server.url, "ivy") == 2
    sent = publish(server.url, "ivy", "to each")
    for page in pages:
        wait_for(page, "got.length >= 1")
        assert page.evaluate("got") == [[sent, "to each"]]


def test_a_refused_stream_is_retried_with_a_doubling_back_off_and_a_new_token(
    jwt_server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    server = jwt_server
    calls: list[str] = []

    def token(user: str) -> str:
        calls.append(user)  # the first two are refused (401): EventSource gives up
        return "not-a-token" if len(calls) <= 2 else mint_token(SECRET, user, ttl=60)

    context.expose_function("mintToken", token)
    page = tab(context, server.url)
    subscribe(page, "jon", tokenFrom="jon")
    wait_for(page, "sub.state === 'open'")
    assert page.evaluate("states") == ["connecting", "reconnecting", "open"]
    first, second, third = page.evaluate("tokenTimes")
    # Back-off with jitter: half to all of 1 s, then of 2 s.
    assert 500 <= second - first < 2000
    assert 1000 <= third - second < 3000


def test_across_a_restart_of_the_hub_every_tab_gets_what_was_sent_meanwhile(
    start_server: ServerFactory, context: sync_api.BrowserContext
) -> None:
    port = free_port()
    store = "sqlite:///data/hub.db"
    env = {"SSEHUB_RETRY_MS": "300"}
    server = start_server(store=store, port=port, env=env)
    pages = tabs(context, server.url, "kim", 2)
    before = publish(server.url, "kim", "before")
    for page in pages:
        wait_for(page, "got.length >= 1")
    server.stop()  # the stream ends with a retry: hint; the browser comes back by itself
    for page in pages:
        wait_for(page, "sub.state === 'reconnecting'")
    restarted = start_server(store=store, port=port, env=env)
    meanwhile = publish(restarted.url, "kim", "meanwhile")
    for page in pages:
        wait_for(page, "got.length >= 2 && sub.state === 'open'")
    after = publish(restarted.url, "kim", "after")
    expected = [[before, "before"], [meanwhile, "meanwhile"], [after, "after"]]
    for page in pages:
        wait_for(page, "got.length >= 3")
        assert page.evaluate("got") == expected
    assert connections(restarted.url, "kim") == 1


def test_a_reset_is_passed_on_and_what_follows_it_counts_as_new(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    ids = [publish(server.url, "lou", f"m{i}") for i in range(2)]
    # An id the hub never gave (a wiped store, say): it says so with a reset and
    # replays its whole history, whose ids are all older than the tab's.
    unknown = "99999999999999-0"
    page = tab(context, server.url)
    subscribe(page, "lou", lastEventId=unknown)
    wait_for(page, "got.length >= 2")
    assert page.evaluate("got") == [[ids[0], "m0"], [ids[1], "m1"]]
    notice = {"reason": "history_trimmed", "last_event_id": unknown}
    assert page.evaluate("hub.map(([type, data]) => [type, JSON.parse(data)])") == [
        ["reset", notice]
    ]


def test_a_page_of_another_origin_imports_the_client_and_streams_from_its_hub(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    # A blank tab's origin is not the hub's: the module and the stream are cross-origin
    # (CORS), and the client finds its hub where it was imported from.
    page = context.new_page()
    assert page.url == "about:blank"
    subscribe(page, "max", module=server.url + "/ssehub.js")
    wait_for(page, "sub.state === 'open' && sub.leader")
    sent = publish(server.url, "max", "across origins")
    wait_for(page, "got.length >= 1")
    assert page.evaluate("got") == [[sent, "across origins"]]


def test_in_a_sandboxed_frame_web_locks_refuse_and_the_frame_holds_its_own_stream(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    page = tab(context, server.url)
    page.evaluate(
        """() => new Promise((loaded) => {
            const frame = document.createElement("iframe");
            frame.sandbox = "allow-scripts";  // an opaque origin
            frame.srcdoc = "<p>sandboxed</p>";
            frame.onload = loaded;
            document.body.append(frame);
        })"""
    )
    (frame,) = [frame for frame in page.frames if frame != page.main_frame]
    subscribe(frame, "nia", module=server.url + "/ssehub.js")
    wait_for(frame, "sub.state === 'open' && sub.leader")
    sent = publish(server.url, "nia", "sandboxed")
    wait_for(frame, "got.length >= 1")
    assert frame.evaluate("got") == [[sent, "sandboxed"]]


def test_ids_are_ordered_as_the_hub_orders_them_not_as_text(
    server: ServerProcess, context: sync_api.BrowserContext
) -> None:
    # A batch gets ids of one millisecond, "T-0" to "T-11": as text "T-10" < "T-9".
    pages = tabs(context, server.url, "ola", 2)
    batch = [{"user_id": "ola", "data": f"m{i}"} for i in range(12)]
    answer = httpx.post(f"{server.url}/sse/messages", json={"messages": batch}, timeout=5)
    assert answer.status_code == 202, answer.text
    ids = answer.json()["ids"]
    expected = [[event_id, f"m{i}"] for i, event_id in enumerate(ids)]
    for page in pages:
        wait_for(page, "got.length >= 12")
        assert page.evaluate("got") == expected
