"""The web console (issue 33) in a real browser: Debian's chromium (`make deps`) driven by Playwright for Python
(`executable_path`: Playwright's own browser download is not reachable), against the service of the e2e tier (the
session's Ray cluster running serve_config.local.yaml, as `make serve` runs it).

Every page a test opens records its console errors, uncaught exceptions, failed requests and answers of 500 or
more; a test ends with none of them, but for the refusals it provokes on purpose (`Console.expect`). Screenshots
of each view at both widths go to `screenshots/` at the repository's root (ATELIER_SCREENSHOTS moves it; not
committed)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("ATELIER_SCREENSHOTS", ROOT / "screenshots"))
WIDE, NARROW = {"width": 1440, "height": 900}, {"width": 375, "height": 812}


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is not installed: `make deps` installs it")
    return found


@pytest.fixture(scope="module")
def browser():
    # Module-scoped, never the session's: Playwright's sync API runs an asyncio loop in this thread while it is
    # open, and the tiers after this one call `asyncio.run` and Serve's sync handles, which refuse to run in one.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


class Console:
    """One browser context (its own sessionStorage) on the console, with what went wrong in it recorded."""

    def __init__(self, browser, base_url: str, viewport: dict, locale: str = "en-US"):
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, viewport=viewport, locale=locale)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.allowed: list[re.Pattern] = []
        self.dialogs: list[str] = []
        page = self.page
        page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console: {m.text} at {(m.location or {}).get('url')}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        # A request the page itself stopped (a navigation, or a view left while it loaded) is aborted, not failed.
        page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "") and self.problems.append(
            f"request failed: {r.method} {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 500 and self.problems.append(f"{r.status}: {r.request.method} {r.url}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.inflight = 0
        page.on("request", lambda r: self._count(1))
        page.on("requestfinished", lambda r: self._count(-1))
        page.on("requestfailed", lambda r: self._count(-1))

    def _count(self, step: int) -> None:
        self.inflight += step

    def settle(self, quiet_ms: int = 150) -> None:
        """Until no request of the page has been in flight for `quiet_ms` (Playwright's networkidle waits 500 ms)."""
        quiet = 0
        for _ in range(300):
            quiet = quiet + 50 if self.inflight <= 0 else 0
            if quiet >= quiet_ms:
                return
            self.page.wait_for_timeout(50)

    def expect(self, pattern: str) -> None:
        """A problem this test provokes on purpose: a refusal, which Chromium logs as an error ("... status of
        401 ... at <url>"); the pattern names the status and the route."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]

    def sign_in(self, key: str) -> None:
        page = self.page
        page.goto("/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("navigation").get_by_role("link", name="Gallery").wait_for()

    def view(self, name: str) -> None:
        self.page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()
        self.page.get_by_role("heading", level=1).wait_for()

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}-{self.page.viewport_size['width']}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser, service):
    """Opens consoles on the service (`console()` for 1440 px wide, `console(NARROW)`); each is closed after the
    test, which fails on any console error, page error or failed request it did not expect."""
    opened: list[Console] = []

    def open_console(viewport: dict = WIDE, locale: str = "en-US") -> Console:
        opened.append(Console(browser, service.base_url, viewport, locale))
        return opened[-1]

    yield open_console
    problems = [p for c in opened for p in c.unexpected()]
    dialogs = [d for c in opened for d in c.dialogs]
    for c in opened:
        c.close()
    assert not problems, problems
    assert not dialogs, f"the page opened dialogs (an injected script ran?): {dialogs}"


@pytest.fixture
def new_user():
    """A user of their own with a key: (user id, key)."""
    from deployments.http.auth import key_store

    made = []

    def make(name: str) -> tuple[str, str]:
        user = f"{name}-{os.urandom(3).hex()}"
        made.append(user)
        return user, key_store().add(user)[1]

    return make
