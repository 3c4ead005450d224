"""A browser's view of the console for tests: a client on ``https://`` (httpx, like a browser,
sends ``Secure`` cookies only there) with no ``Authorization`` header, that keeps cookies and
does not follow redirects; the CSRF field of a page; logging in through the form.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Final

import httpx

from api.browser import CSRF_FIELD
from api.paths import CONSOLE_LOGIN

BROWSER_URL: Final = "https://orderflow.test"
_CSRF_INPUT: Final = re.compile(rf'name="{CSRF_FIELD}" value="([^"]+)"')


@contextlib.asynccontextmanager
async def browser(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A browser for the in-process api ``client`` talks to (``api_fixtures.running_api``)."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport), "an in-process api"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=transport.app), base_url=BROWSER_URL
    ) as tab:
        yield tab


def csrf_field(page: httpx.Response) -> str:
    """The CSRF token a page's form carries."""
    found = _CSRF_INPUT.search(page.text)
    assert found, f"no CSRF field in {page.text}"
    return found[1]


async def log_in(tab: httpx.AsyncClient, token: str) -> httpx.Response:
    """Fill in and send the login form; the answer (303 to the console, or a 401 page)."""
    form = await tab.get(CONSOLE_LOGIN)
    return await tab.post(CONSOLE_LOGIN, data={"token": token, CSRF_FIELD: csrf_field(form)})


def set_cookie(response: httpx.Response, name: str) -> str | None:
    """The ``Set-Cookie`` header ``response`` sends for ``name``, if any."""
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(found) <= 1, found
    return found[0] if found else None


def cookie_attributes(header: str | None) -> set[str]:
    """A ``Set-Cookie`` header's attributes, lower case: ``{"secure", "samesite=strict", ...}``
    (there must be a header)."""
    assert header is not None, "no Set-Cookie for that cookie"
    return {part.strip().lower() for part in header.split(";")[1:]}
