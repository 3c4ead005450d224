"""The CLI's HTTP client for the api: responses decoded into the api's own Structs, failures
turned into two errors the CLI can explain (and map to exit codes).

::

    OrderflowError
    ├── ApiUnreachable   no HTTP answer at all (refused, DNS, timeout): names the URL
    └── ApiProblem       an RFC 9457 problem (or any 4xx/5xx): status, detail, field errors
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx
import msgspec

from nodeapp.core.errors import FieldError, OrderflowError
from nodeapp.core.settings import Settings

T = TypeVar("T")
HTTP_TIMEOUT: Final = 10.0  # seconds: the api answers 503 within ~1.5 s when the broker is away


class ApiUnreachable(OrderflowError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the api at {url}: {reason}")
        self.url = url


class ApiProblem(OrderflowError):
    def __init__(self, status: int, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiProblem:
        try:
            body = response.json()
        except ValueError:  # not JSON: a proxy's error page, say
            body = None
        if not isinstance(body, dict):
            return cls(response.status_code, f"HTTP {response.status_code}", [])
        errors = [
            FieldError(str(e.get("field")), str(e.get("message")))
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
        return cls(response.status_code, detail, errors)


def token_to_send(settings: Settings) -> str:
    """The token CLI commands send: ``ORDERFLOW_TOKEN``, else ``ORDERFLOW_ADMIN_TOKEN`` (a
    machine that runs the cluster and the CLI), else none (the api will answer 401)."""
    return settings.token or settings.admin_token


class ApiClient:
    """``with ApiClient(url, token) as api: api.get("/orders/...", Order)``; every request
    carries ``Authorization: Bearer <token>`` when a token is given."""

    def __init__(self, base_url: str, token: str = "", timeout: float = HTTP_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def get(self, path: str, kind: type[T]) -> T:
        return self.decode(self.send("GET", path), kind)

    def post(self, path: str, kind: type[T], **options: Any) -> T:
        return self.decode(self.send("POST", path, **options), kind)

    def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request; ``ApiUnreachable`` without an answer, ``ApiProblem`` for a 4xx/5xx."""
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            raise ApiProblem.from_response(response)
        return response

    @contextlib.contextmanager
    def stream(
        self, path: str, headers: Mapping[str, str], read_timeout: float
    ) -> Iterator[httpx.Response]:
        """``GET path`` with its body left to read as it comes (``iter_lines``); each read
        waits ``read_timeout`` at most. ``ApiUnreachable`` when there is no answer, or when the
        connection breaks or stalls while the body is read; ``ApiProblem`` for a 4xx/5xx."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiProblem.from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, str(exc) or type(exc).__name__) from None

    @staticmethod
    def decode(response: httpx.Response, kind: type[T]) -> T:
        try:
            return msgspec.json.decode(response.content, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ApiProblem(
                response.status_code, f"unexpected answer from {response.url}: {exc}", []
            ) from None
