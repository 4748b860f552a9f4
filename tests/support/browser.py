"""A real headless browser for the console's tests: Debian's chromium driven by Playwright.

Playwright (PyPI) drives the system browser at /usr/bin/chromium; it never downloads one of
its own. A missing chromium or Playwright skips the test here and fails it under CI=true
(support.environment). Each Browser runs one chromium with a fresh profile in a temporary
directory, shared by the tests of a module; each test gets its own page.

Screenshots are the tests' artefacts: full-page PNGs in $TRUSTFLEET_ARTIFACTS, else
test-artifacts/console/ at the top of the checkout, named <test>-<NN>-<step>.png, and one
named ...-failed.png for each page a failing test left open.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from support.environment import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 20_000  # Playwright's waits (locators, navigation)


def artifacts_dir() -> Path:
    """Where screenshots go: $TRUSTFLEET_ARTIFACTS, else test-artifacts/console/ (created)."""
    where = os.environ.get("TRUSTFLEET_ARTIFACTS")
    path = Path(where) if where else REPO / "test-artifacts" / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_chromium() -> str:
    """The chromium binary; skip (fail under CI=true) when it or Playwright is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        skip_or_fail(f"{CHROMIUM} is not installed here (apt-get install chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"Playwright is not installed ({exc}; pip install -e '.[dev]')")
    return CHROMIUM


class Browser:
    """One headless chromium with a fresh profile; `page()` opens a tab, `close()` ends it all."""

    def __init__(self) -> None:
        binary = require_chromium()
        from playwright.sync_api import sync_playwright

        # Playwright would look for (and never fetch) its own browsers; say so anyway.
        os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        self.profile = Path(tempfile.mkdtemp(prefix="tf-chromium-"))
        self._pw = sync_playwright().start()
        try:
            # A persistent context is how Playwright takes --user-data-dir: this fresh directory.
            self.context = self._pw.chromium.launch_persistent_context(
                str(self.profile), executable_path=binary, headless=True, args=list(ARGS),
                viewport={"width": 1280, "height": 900})
        except BaseException:
            self._pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.context.set_default_timeout(TIMEOUT_MS)

    def page(self, width: int = 1280, height: int = 900) -> Any:
        """A new tab at this viewport size."""
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        return page

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)


class Shots:
    """Numbered full-page screenshots for one test: shots.take(page, "paused")."""

    def __init__(self, test_name: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name).strip("_")
        self.dir = artifacts_dir()
        self.n = 0
        self.pages: list[Any] = []
        for old in self.dir.glob(f"{self.prefix}-*.png"):
            old.unlink()  # an earlier run's pictures of this test would mislead

    def take(self, page: Any, step: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.prefix}-{self.n:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', step)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def track(self, page: Any) -> Any:
        """Remember `page` so a failure can be pictured; returns it."""
        self.pages.append(page)
        return page

    def close(self) -> None:
        """Close every tracked page. Each console page holds an event stream open, and chromium
        opens at most 6 HTTP/1.1 connections to one host: pages left open would starve the next."""
        for page in self.pages:
            with contextlib.suppress(Exception):
                page.close()
        self.pages.clear()

    def failed(self) -> None:
        """Picture every tracked page still open, as the test left it."""
        for i, page in enumerate(self.pages):
            if not page.is_closed():
                with contextlib.suppress(Exception):  # a broken page's picture is a bonus, not a must
                    page.screenshot(path=str(self.dir / f"{self.prefix}-failed-{i}.png"), full_page=True)
