"""The dashboard in a real headless Chromium: Debian's ``chromium`` driven by Playwright
(its own browser download cannot work here), every console message and page error kept,
screenshots saved with the test artifacts.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.e2e.harness import required

ROOT = Path(__file__).resolve().parent.parent.parent
# Where screenshots go: $HAKURIVER_TEST_ARTIFACTS/dashboard, default test-artifacts/ in the
# checkout (docs/dashboard.md shows copies of them).
ARTIFACTS = Path(os.environ.get("HAKURIVER_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
# No background connections (the machine's network is closed; Chromium would log failures).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1360, "height": 900}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: while Playwright's sync API runs, its event loop is the thread's, and
    later tests that call asyncio.run would fail."""
    path = chromium_path()
    if path is None:
        required(
            "Chromium", "no chromium on this machine (apt install chromium; scripts/test.sh does)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


# An init script for a page as a browser serves it over plain HTTP from another machine,
# with no clipboard API; the page records what the browser copies instead (the selection
# when a copy event fires) in window.copied.
NO_CLIPBOARD = """
Object.defineProperty(Navigator.prototype, "clipboard", { get: () => undefined });
window.copied = [];
document.addEventListener("copy", () => window.copied.push(String(window.getSelection())));
"""

# xterm.js warns when its idle-time work overran its slice: a loaded machine's timing, not a
# problem of the page (it calls console.warn directly; no option silences it).
TIMING_NOTICE = "task queue exceeded allotted deadline"


@dataclass
class Dashboard:
    """One signed-in tab of the dashboard at ``base`` (http://127.0.0.1:PORT)."""

    page: Page
    base: str
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.set_default_timeout(15_000)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") and not message.text.startswith(TIMING_NOTICE):
            self.problems.append(f"console {message.type}: {message.text}")

    def sign_in(self, token: str) -> None:
        self.page.goto(self.base + "/signin")
        self.page.get_by_test_id("token").fill(token)
        self.page.get_by_test_id("signin").click()
        self.page.wait_for_url(re.compile(re.escape(self.base) + r"/$"))

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def show(self, visible: bool) -> None:
        """Hide the tab (False) or show it again, as the page sees it: headless Chromium
        shows every tab, so this sets ``document.hidden`` and ``visibilityState`` and sends
        the ``visibilitychange`` a browser sends."""
        self.page.evaluate(
            """visible => {
                const state = visible ? "visible" : "hidden";
                for (const [name, value] of [["hidden", !visible], ["visibilityState", state]]) {
                    Object.defineProperty(document, name, { value, configurable: true });
                }
                document.dispatchEvent(new Event("visibilitychange"));
            }""",
            visible,
        )

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def no_problems(tab: Dashboard) -> None:
    """The tab logged no error or warning and threw nothing."""
    assert tab.problems == [], "\n".join(tab.problems)


@dataclass
class Tabs:
    """Opens signed-in dashboard tabs, each in its own browser context (own session)."""

    browser: Browser
    base: str
    opened: list[Dashboard] = field(default_factory=list)

    def open(self, token: str | None) -> Dashboard:
        context = self.browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        tab = Dashboard(context.new_page(), self.base)
        if token is not None:
            tab.sign_in(token)
        self.opened.append(tab)
        return tab

    def close(self) -> None:
        for tab in self.opened:
            tab.page.context.close()
