"""The web console (issue 33): one page and its files, served by the ingress at `/` and `/console/<file>`.

Plain HTML, CSS and ES modules from this package (no build step, no CDN, no external font): the page runs
offline and talks only to the public `/api` routes, with the key the person signs in with (kept in the tab's
`sessionStorage`). The files hold no user data, so they need no key (deployments.http.gate.needs_key). Every
answer carries a Content-Security-Policy that allows this origin's scripts and styles only (no inline script or
style), no framing, and no referrer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from storage.errors import NotFound

STATIC = Path(__file__).parent / "static"
# The files the console is made of, and their media types: nothing else under /console/ is served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "i18n.js": "text/javascript; charset=utf-8",
    "gallery.js": "text/javascript; charset=utf-8",
    "bulk.js": "text/javascript; charset=utf-8",
    "create.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Images: this origin's signed URLs, a generation not kept in the gallery (a data: URI), and a picked file's
# preview (blob:). Nothing inline, no eval.
CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=len(FILES))
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _file(name: str) -> Response:
    if name not in FILES:
        raise NotFound("no such console file", code="not_found")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def console_page() -> Response:
    """The console's page."""
    return _file("index.html")


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    """One of the console's files (FILES)."""
    return _file(name)
