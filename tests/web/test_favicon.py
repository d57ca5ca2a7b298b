"""``/favicon.ico``: browsers ask every origin for it, so the hub has one."""

from __future__ import annotations

import shutil
import struct
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.web.test_page import CHROMIUM, browser  # noqa: F401  (browser: a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def test_the_icon_is_a_small_ico_holding_a_png(start_server: ServerFactory) -> None:
    server = start_server()
    answer = httpx.get(server.url + "/favicon.ico")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/x-icon"
    assert "max-age" in answer.headers["cache-control"]
    reserved, kind, count = struct.unpack("<HHH", answer.content[:6])
    assert (reserved, kind, count) == (0, 1, 1)
    size, offset = struct.unpack("<II", answer.content[14:22])
    assert answer.content[offset : offset + 8] == b"\x89PNG\r\n\x1a\n"
    assert offset + size == len(answer.content) < 1024


@pytest.mark.browser
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium")
def test_loading_the_page_asks_for_nothing_that_is_missing(
    start_server: ServerFactory,
    browser: Browser,  # noqa: F811
) -> None:
    server = start_server()
    failed: list[str] = []
    page = browser.new_page()
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    icon = page.evaluate("fetch('/favicon.ico').then(r => r.status)")  # as the tab bar does
    page.close()
    assert icon == 200
    assert failed == []
