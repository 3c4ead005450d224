"""``OPTIONS`` answers that list every method of a path served by more than one handler.

Litestar 2 builds a path's automatic ``OPTIONS`` handler with its first handler and never
updates it, so ``OPTIONS /products/{id}`` said ``Allow: GET, OPTIONS`` although ``PUT`` is
served too (litestar-org/litestar#4169, fixed only in v3; schemathesis found it). For such a
path ``options_handlers`` makes one explicit handler; registered before the others, it takes
the place of the automatic one. Like that one, it needs no token (the bearer middleware skips
``OPTIONS``) and stays out of the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Response, route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler


def options_handlers(handlers: Iterable[Any]) -> list[HTTPRouteHandler]:
    """One ``OPTIONS`` handler for each path that more than one of ``handlers`` serves."""
    methods: dict[str, set[str]] = {}
    for handler in handlers:
        if isinstance(handler, HTTPRouteHandler):
            for path in handler.paths:
                methods.setdefault(path, set()).update(handler.http_methods)
    return [
        _allow(path, allowed | {HttpMethod.OPTIONS.value})
        for path, allowed in methods.items()
        if len(allowed) > 1
    ]


def _allow(path: str, methods: set[str]) -> HTTPRouteHandler:
    allow = ", ".join(sorted(methods))

    @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, sync_to_thread=False)
    def allowed_methods() -> Response[None]:
        return Response(content=None, status_code=204, headers={"Allow": allow})

    return allowed_methods
