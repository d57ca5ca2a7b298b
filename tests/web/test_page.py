"""The demo page at ``/``, driven in headless Chromium against a real server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import ServerFactory

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (scripts/system-deps)"
    ),
]

if TYPE_CHECKING:
    from playwright import sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module; never a downloaded browser."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: sync_api.Browser, url: str, **options: Any) -> sync_api.Page:
    """A new tab showing the page, its script ready."""
    page = browser.new_page(**options)
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    return page


def texts(page: sync_api.Page, selector: str) -> list[str]:
    return [element.inner_text() for element in page.query_selector_all(selector)]


def test_the_page_is_served_at_the_root_with_its_assets(start_server: ServerFactory) -> None:
    server = start_server()
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "EventSource" not in page.text  # the script is a separate file, allowed by the CSP
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        answer = httpx.get(f"{server.url}/web/{asset}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(kind)
    assert httpx.get(server.url + "/web/missing.js").status_code == 404


def test_the_long_task_shows_ten_progress_lines_and_the_completion_in_order(
    start_server: ServerFactory, browser: sync_api.Browser, tmp_path: Path
) -> None:
    server = start_server(env={"SSEHUB_DEMO_STEP": "0.05"})
    page = open_page(browser, server.url + "/", viewport={"width": 1280, "height": 860})
    try:
        page.fill("#user", "ada")
        page.click("#connect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "open")
        sync_api.expect(page.locator(".kind-greeting .text")).to_have_text("User 'ada' connected")

        page.click("#run-task")
        sync_api.expect(page.locator(".kind-message")).to_have_count(10, timeout=10_000)
        sync_api.expect(page.locator(".kind-task")).to_have_count(1, timeout=10_000)

        progress = texts(page, ".kind-message .text")
        assert progress == [f"User 'ada', attempt {i} / 10" for i in range(1, 11)]
        # The task's answer and the stream travel on two connections, so the answer may
        # be shown just before the tenth line; it always comes after the first nine.
        log = texts(page, "#log .entry .text")
        (done,) = [i for i, line in enumerate(log) if line.startswith("Task completed: ")]
        assert done > log.index("User 'ada', attempt 9 / 10")
        assert re.fullmatch(r"Task completed: User 'ada' completed the task at: .+\.", log[done])
        last_id = page.locator(".kind-message .event-id").last.inner_text()
        assert page.locator("#last-id").inner_text() == last_id.removeprefix("#")
        page.screenshot(path=str(tmp_path / "long-task.png"), full_page=True)
    finally:
        page.close()
    assert (tmp_path / "long-task.png").stat().st_size > 10_000


def test_a_manual_reconnect_replays_what_was_missed_and_objects_are_pretty_printed(
    start_server: ServerFactory, browser: sync_api.Browser
) -> None:
    server = start_server()
    page = open_page(browser, server.url + "/?user=grace")
    try:
        page.click("#connect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "open")
        page.fill("#send-data", "before")
        page.click("#send")
        sync_api.expect(page.locator(".kind-message .text")).to_have_text(["before"])

        page.click("#disconnect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "closed")
        httpx.post(f"{server.url}/sse/users/grace/messages", json={"data": "missed"})
        httpx.post(f"{server.url}/sse/users/grace/messages", json={"data": {"n": 1, "ok": True}})

        page.click("#connect")
        sync_api.expect(page.locator(".kind-info.entry", has_text="replaying")).to_have_count(1)
        pretty = '{\n  "n": 1,\n  "ok": true\n}'
        sync_api.expect(page.locator(".kind-object pre")).to_have_text(pretty)
        assert texts(page, ".kind-message .text") == ["before", "missed"]
    finally:
        page.close()


def test_the_page_sends_broadcasts_and_shows_the_hubs_disconnect(
    start_server: ServerFactory, browser: sync_api.Browser
) -> None:
    server = start_server()
    page = open_page(browser, server.url + "/?user=linus")
    try:
        page.click("#connect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "open")
        page.fill("#send-data", "to everyone")
        page.click("#broadcast")
        sync_api.expect(page.locator(".kind-message .text")).to_have_text(["to everyone"])

        page.fill("#send-data", "<b>not bold</b>")
        page.fill("#send-event", "notice")
        page.click("#send")
        sync_api.expect(page.locator(".kind-notice .text")).to_have_text("<b>not bold</b>")

        page.click("#server-disconnect")
        sync_api.expect(page.locator(".kind-disconnected")).to_have_count(1)
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "closed")
    finally:
        page.close()


def test_with_jwt_auth_the_page_is_refused_without_a_token_and_works_with_one(
    start_server: ServerFactory, browser: sync_api.Browser
) -> None:
    from ssehub.auth import mint_token

    secret = "a-test-secret-that-is-long-enough-for-hs256"
    server = start_server("--auth", "jwt", "--jwt-secret", secret)
    page = open_page(browser, server.url + "/?user=ada")
    try:
        page.click("#connect")
        sync_api.expect(page.locator(".kind-error", has_text="401")).to_have_count(1)
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "closed")

        page.fill("#token", mint_token(secret, "ada", ttl=60, publish=True))
        page.click("#connect")
        sync_api.expect(page.locator("#state")).to_have_attribute("data-state", "open")
        page.click("#run-countdown")
        sync_api.expect(page.locator(".kind-task")).to_have_count(1, timeout=10_000)
        sync_api.expect(page.locator(".kind-object pre")).to_contain_text('"Name": "Victor"')
    finally:
        page.close()
