"""A browser's own EventSource across a restart of the hub: its automatic reconnect
with ``Last-Event-ID`` gets what was sent while it was away, once and in order."""

from __future__ import annotations

import time

import httpx

from tests.conftest import ServerFactory, free_port
from tests.web.test_page import browser, open_page, pytestmark, sync_api  # noqa: F401

COLLECT = """
url => new Promise(resolve => {
  window.got = [];
  window.opens = 0;
  const source = new EventSource(url);
  source.onopen = () => { window.opens += 1; resolve(true); };
  source.onmessage = event => window.got.push([event.lastEventId, event.data]);
})
"""


def wait_for(page: sync_api.Page, expression: str, timeout: float = 10.0) -> None:
    # Polled from here: the page's Content-Security-Policy forbids wait_for_function's eval.
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => {expression}"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def publish(url: str, user: str, data: str) -> str:
    answer = httpx.post(f"{url}/sse/users/{user}/messages", json={"data": data}, timeout=5)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_eventsource_resumes_after_a_restart_with_nothing_lost_or_repeated(
    browser: sync_api.Browser,  # noqa: F811
    start_server: ServerFactory,
) -> None:
    port = free_port()
    store = "sqlite:///data/hub.db"
    server = start_server(store=store, port=port, env={"SSEHUB_RETRY_MS": "500"})
    page = open_page(browser, server.url)
    page.evaluate(COLLECT, f"{server.url}/sse/connect/rita")
    first = publish(server.url, "rita", "before")
    wait_for(page, "window.got.length >= 2")

    server.stop()  # SIGTERM: the stream ends with a retry: hint
    restarted = start_server(store=store, port=port, env={"SSEHUB_RETRY_MS": "500"})
    while_away = publish(restarted.url, "rita", "while away")
    wait_for(page, "window.opens >= 2 && window.got.length >= 4")
    live = publish(restarted.url, "rita", "live")
    wait_for(page, "window.got.length >= 5")
    time.sleep(0.3)  # room for a duplicate to show up, if there were one

    got = page.evaluate("window.got")
    # An event without an id reports the last id seen (the spec's "last event ID").
    greeting = "User 'rita' connected"
    messages = [(event_id, data) for event_id, data in got if data != greeting]
    assert messages == [(first, "before"), (while_away, "while away"), (live, "live")]
    assert [data for _, data in got].count(greeting) == 2
