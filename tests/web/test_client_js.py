"""The browser client ``/ssehub.js``, driven in headless Chromium against real servers.

Tabs of one browser context share storage, Web Locks and BroadcastChannel, as the tabs
of one browser profile do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.web.test_page import browser, pytestmark, sync_api  # noqa: F401

# Sets up window.sub in a tab and records what it gets: messages as [id, data],
# the hub's own events as [type, data], named events as [type, id, data], states.
SUBSCRIBE = """
async ([user, options, names]) => {
  const { connect } = await import("/ssehub.js");
  Object.assign(window, { got: [], hub: [], named: [], states: [], tokens: 0 });
  if (options.tokenFrom) {
    const who = options.tokenFrom;
    options.token = async () => { window.tokens += 1; return await window.mintToken(who); };
  }
  const sub = window.sub = connect(user, options);
  sub.addEventListener("message", (e) => got.push([e.lastEventId, e.data]));
  for (const type of ["reset", "disconnected", "expired"])
    sub.addEventListener(type, (e) => hub.push([type, e.data]));
  for (const type of names)
    sub.addEventListener(type, (e) => named.push([type, e.lastEventId, e.data]));
  sub.addEventListener("state", (e) => states.push(e.detail));
}
"""


def wait_for(page: sync_api.Page, expression: str, timeout: float = 10.0) -> Any:
    """Poll ``expression`` in the page until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(f"() => {expression}")):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)
    return value


def subscribe(
    page: sync_api.Page, user: str, names: tuple[str, ...] = (), **options: object
) -> None:
    page.evaluate(SUBSCRIBE, [user, options, list(names)])


def publish(url: str, user: str, data: object, event: str | None = None) -> str:
    body: dict[str, object] = {"data": data}
    if event is not None:
        body["event"] = event
    answer = httpx.post(f"{url}/sse/users/{user}/messages", json=body, timeout=5)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def connections(url: str, user: str) -> int:
    return int(httpx.get(f"{url}/sse/users/{user}", timeout=5).json()["connections"])


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


def test_the_client_is_served_as_a_cacheable_module(start_server: ServerFactory) -> None:
    server = start_server()
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


def test_one_tab_gets_messages_and_named_events_without_greeting_or_keepalives(
    start_server: ServerFactory, context: sync_api.BrowserContext
) -> None:
    server = start_server(keepalive=0.2)
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
