"""Unknown query parameters are refused (422 naming them), as unknown body fields are.

Litestar ignores a query parameter no handler declares, so ``GET /products?limt=5`` answered
the first 50 products as if nothing were wrong; schemathesis found it. ``known_query_only`` is
an app-wide guard: a handler's query parameters are what Litestar would read as query
parameters from its signature (every parameter that is not reserved, a path or header or
cookie parameter, or a dependency), under their query names, worked out once per handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.constants import RESERVED_KWARGS
from litestar.enums import ParamType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import ParameterKwarg

from nodeapp.core.errors import FieldError, InvalidQuery

# handler function -> its query names (Litestar hands a guard a fresh copy of the handler).
_known: Final[dict[Callable[..., Any], frozenset[str]]] = {}


async def known_query_only(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """``InvalidQuery`` (422) naming each query parameter ``handler`` does not read."""
    if not connection.scope.get("query_string"):
        return
    names = _known.get(handler.fn)
    if names is None:
        names = _known[handler.fn] = query_names(handler, set(connection.path_params))
    if unknown := sorted(set(connection.query_params) - names):
        raise InvalidQuery(
            [FieldError(name, "is not a query parameter of this route") for name in unknown]
        )


def query_names(handler: BaseRouteHandler, path_params: set[str]) -> frozenset[str]:
    """The query parameters ``handler``'s signature reads, as Litestar resolves them."""
    dependencies = set(handler.resolve_dependencies())
    names = set()
    for name, field in handler.parsed_fn_signature.parameters.items():
        if name in RESERVED_KWARGS or name in path_params or name in dependencies:
            continue
        if field.is_di_field:
            continue
        kwarg = (
            field.kwarg_definition if isinstance(field.kwarg_definition, ParameterKwarg) else None
        )
        if kwarg is None:
            names.add(name)
        elif kwarg.param_type is ParamType.QUERY and not (kwarg.header or kwarg.cookie):
            names.add(kwarg.query or kwarg.name or name)
    return frozenset(names)
