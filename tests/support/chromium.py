"""Headless Chromium for the console's browser tests: Debian's ``chromium`` driven by
Playwright (``executable_path``: Playwright's own browser download is not needed), a page that
records every Content-Security-Policy complaint, and logging in through the form.

``.ci/run`` installs ``chromium`` when it is missing; locally, without it, the browser tests
skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Final

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM: Final = os.environ.get("ORDERFLOW_CHROMIUM", "/usr/bin/chromium")
MISSING: Final = (
    f"no Chromium at {CHROMIUM}: apt-get install -y chromium (CI's .ci/run does), "
    "or point ORDERFLOW_CHROMIUM at one"
)
# A violation the page reports itself, besides the message Chromium logs for it: the event
# fires for what the console message may word differently (or not log at all, as for a
# report-only policy). Injected by Playwright, so the policy does not apply to it.
_REPORT_VIOLATIONS: Final = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def chromium_missing() -> bool:
    return shutil.which(CHROMIUM) is None


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """One headless Chromium for as long as the context lasts."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class CspWatch:
    """Every console message of a page that speaks of the Content-Security-Policy, and every
    uncaught error of its scripts."""

    def __init__(self, page: Page) -> None:
        self.complaints: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.complaints.append(f"page error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "CSP violation" in text:
            self.complaints.append(text)

    def assert_clean(self) -> None:
        assert not self.complaints, "\n".join(self.complaints)


@contextlib.asynccontextmanager
async def console_page(browser: Browser, base_url: str) -> AsyncIterator[tuple[Page, CspWatch]]:
    """A fresh browser profile (no cookies) on the console at ``base_url``, watched."""
    context = await browser.new_context(base_url=base_url)
    await context.add_init_script(_REPORT_VIOLATIONS)
    try:
        page = await context.new_page()
        yield page, CspWatch(page)
    finally:
        await context.close()


async def log_in(page: Page, token: str) -> None:
    """Fill in the login form and send it; back on the console's home page."""
    await page.goto("/console/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/console/")
