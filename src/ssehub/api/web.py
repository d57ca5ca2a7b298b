"""The demo page at ``/``: connect as a user and watch the stream in a browser.

Plain files in ``ssehub/web`` (HTML, JavaScript, CSS), no build step. They are read once,
when the routes are added, and served from memory.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from fastapi import APIRouter, Request, Response

_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere and runs no inline script.
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


# The browser client: any page may import it, from any origin (a module script is
# fetched with CORS). Cached briefly, then revalidated by its ETag, so that a new
# hub's client reaches pages within minutes.
_MODULE_HEADERS = {
    "access-control-allow-origin": "*",
    "x-content-type-options": "nosniff",
    "cache-control": "public, max-age=300",
}


def _read(name: str) -> bytes:
    return resources.files("ssehub").joinpath("web", name).read_bytes()


def add_web_routes(router: APIRouter) -> None:
    """Add ``GET /`` (the page), ``GET /web/{app.js,app.css}`` (its assets),
    ``GET /ssehub.js`` (the browser client) and ``GET /favicon.ico``."""
    page = _read("index.html")

    @router.get("/", include_in_schema=False, response_class=Response)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    for name, media_type in _FILES.items():
        _add_asset(router, name, _read(name), media_type)
    _add_icon(router, _read("favicon.ico"))
    _add_client(router, _read("ssehub.js"))


def _add_client(router: APIRouter, body: bytes) -> None:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**_MODULE_HEADERS, "etag": etag}

    @router.get("/ssehub.js", include_in_schema=False, response_class=Response)
    async def client(request: Request) -> Response:
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


def _add_icon(router: APIRouter, body: bytes) -> None:
    # Browsers ask every origin for /favicon.ico; without one, each page load shows a
    # 404 in the console.
    headers = {"cache-control": "public, max-age=86400", "x-content-type-options": "nosniff"}

    @router.get("/favicon.ico", include_in_schema=False, response_class=Response)
    async def icon() -> Response:
        return Response(body, media_type="image/x-icon", headers=headers)


def _add_asset(router: APIRouter, name: str, body: bytes, media_type: str) -> None:
    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=_PAGE_HEADERS)

    router.add_api_route(
        f"/web/{name}", asset, methods=["GET"], include_in_schema=False, response_class=Response
    )
