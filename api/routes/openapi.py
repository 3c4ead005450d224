"""What the routes' OpenAPI entries share: the bearer scheme and what a guarded route answers
before its handler runs, response descriptions, path parameters, the body of a raw-body
route, and the query parameters a route takes empty (``BlankIsAbsent``).

Every route with a ``requires(...)`` guard says ``security=BEARER`` and
``responses=guarded({...})`` (401, 403, 429 as problem+json); ``tests/test_openapi.py`` fails
on a guarded route that does not, and schemathesis (``tests/test_openapi_fuzz.py``) on any
answer the document does not list.

``POST /orders`` reads its body raw (one msgspec decoder, no per-request parsing layer), so
Litestar sees no ``data`` parameter to document. ``raw_json_body`` gives such a route an
``operation_class`` that states the body itself, from the same msgspec Struct that decodes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Final

import msgspec
from litestar.enums import ParamType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.params import HeaderParameter, PathParameter

from api.problems import PROBLEM_JSON
from api.responses import JSON
from api.schemas import Problem
from nodeapp.cluster.control import NODE_ID_PATTERN
from nodeapp.orders.model import ORDER_ID_PATTERN
from nodeapp.orders.requests import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_PATTERN
from nodeapp.shop.keys import MAX_PRODUCT_ID, PRODUCT_ID_PATTERN

BEARER_SCHEME: Final = "bearer"
COMPONENTS: Final = Components(
    security_schemes={
        BEARER_SCHEME: SecurityScheme(
            type="http",
            scheme="bearer",
            description=(
                "An API token (`orderflow token create`, or the admin token `orderflow up` "
                "prints): `Authorization: Bearer <token>`. Each route names the scope it needs."
            ),
        )
    }
)
BEARER: Final[list[SecurityRequirement]] = [{BEARER_SCHEME: []}]


def json_spec(container: type[Any], description: str) -> ResponseSpec:
    # No generated examples: Litestar would invent random values (dates from 1998).
    return ResponseSpec(data_container=container, description=description, generate_examples=False)


def problem_spec(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )


BROKER_DOWN: Final = problem_spec("The broker is unavailable; retry after Retry-After seconds")
# Litestar documents a 400 on every route with parameters, in its own JSON shape; ours is a
# problem (``api.problems`` answers Litestar's validation errors too).
MALFORMED: Final = problem_spec("A malformed request: a parameter of the wrong type or range")
UNAUTHENTICATED: Final = problem_spec(
    "No token, or an unknown, expired or revoked one (with `WWW-Authenticate: Bearer`)"
)
RATE_LIMITED: Final = problem_spec(
    "Over this token's request rate; retry after Retry-After seconds"
)
UNKNOWN_QUERY: Final = "a query parameter this route does not read"


def checked_query(responses: Mapping[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    """``responses`` with the 422 every route answers for an unknown query parameter
    (``api.query``); a route's own 422 description is kept, extended."""
    own = responses.get(422)
    why = f"{own.description}; or {UNKNOWN_QUERY}" if own else UNKNOWN_QUERY.capitalize()
    return {**responses, 422: problem_spec(why)}


def guarded(responses: Mapping[int, ResponseSpec], *scopes: str) -> dict[int, ResponseSpec]:
    """``responses`` plus what a guarded route answers before its handler runs: 401 from the
    bearer middleware, 403 from the scope guard when it names ``scopes`` (with none, any
    valid token will do), 422 for an unknown query parameter, 429 from the rate limit. A
    route's own 403 description (a customer check) wins."""
    lacking = {403: problem_spec(f"The token lacks {' or '.join(scopes)}")} if scopes else {}
    return checked_query({401: UNAUTHENTICATED, **lacking, 429: RATE_LIMITED, **responses})


# Path parameters, documented with the shape the route accepts. ``schema_extra`` documents
# only: a route checks the shape itself and answers as it says (404 for an id that cannot
# name an order or a node, 422 naming ``product_id``), not Litestar's generic 400.
OrderId = Annotated[
    str,
    PathParameter(
        description="An order id (26 characters of Crockford base32)",
        schema_extra={"pattern": ORDER_ID_PATTERN},
    ),
]
ProductId = Annotated[
    str,
    PathParameter(
        description=f"A product id: 1-{MAX_PRODUCT_ID} of A-Z a-z 0-9 . _ : -",
        schema_extra={"pattern": PRODUCT_ID_PATTERN, "maxLength": MAX_PRODUCT_ID},
    ),
]
NodeId = Annotated[
    str, PathParameter(description="A node id", schema_extra={"pattern": NODE_ID_PATTERN})
]
# An optional header or query parameter is a string or absent, never JSON null as Litestar's
# ``str | None`` says.
OPTIONAL_STRING: Final[dict[str, Any]] = {"type": OpenAPIType.STRING, "oneOf": None}
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_KEY,
        description="1-255 visible ASCII characters; a retry with it returns the first answer",
        schema_extra={**OPTIONAL_STRING, "pattern": IDEMPOTENCY_KEY_PATTERN},
    ),
]


def lookup_responses(container: type[Any], found: str, missing: str) -> dict[int, ResponseSpec]:
    """Reading one thing by its id: 200 with it, 404 when there is none, 503 while the broker
    is away."""
    return {
        200: json_spec(container, found),
        400: MALFORMED,
        404: problem_spec(missing),
        503: BROKER_DOWN,
    }


@dataclass
class BlankIsAbsent(Operation):
    """The ``operation_class`` of a route that reads an empty query parameter as an absent one
    (``?status=``, as a plain HTML form sends a field left blank): ``allowEmptyValue`` says so
    for each, and each one's schema describes only its values that are not empty."""

    def __post_init__(self) -> None:
        self.parameters = [
            replace(p, allow_empty_value=True)
            if isinstance(p, Parameter) and p.param_in == ParamType.QUERY
            else p
            for p in self.parameters or ()
        ] or None


def raw_json_body(model: type[msgspec.Struct], description: str) -> type[Operation]:
    """An ``operation_class`` documenting ``model`` as the JSON body of a route that reads its
    body itself (Litestar documents a body only from a ``data`` parameter it would parse)."""
    body = RequestBody(
        content={JSON: OpenAPIMediaType(schema=json_schema(model))},
        description=description,
        required=True,
    )

    @dataclass
    class RawBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return RawBodyOperation


def json_schema(model: type[msgspec.Struct]) -> Schema:
    """msgspec's JSON Schema of ``model`` (what its decoder accepts), as Litestar's ``Schema``."""
    document = msgspec.json.schema(model)
    return _schema(document, document.get("$defs", {}))


_SUBSCHEMA: Final = frozenset({"items", "additionalProperties", "not"})
_SUBSCHEMA_LISTS: Final = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})


def _schema(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Schema:
    """One JSON Schema node with its ``$ref``s inlined (the request models are not recursive).

    msgspec documents a ``Decimal`` as a string (``format: decimal``), but its decoder takes a
    JSON number too: the node says both, and leaves the rest to the field's own keywords
    (``orders.requests.Money``: a pattern for the string, a range for the number)."""
    if "$ref" in node:
        return _schema(defs[node["$ref"].rpartition("/")[2]], defs)
    if node.get("format") == "decimal":
        node = {k: v for k, v in node.items() if k != "format"}
        node["type"] = [OpenAPIType.NUMBER.value, OpenAPIType.STRING.value]
    aliases = Schema.field_aliases()
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            continue
        if key == "properties":
            value = {name: _schema(sub, defs) for name, sub in value.items()}
        elif key in _SUBSCHEMA and isinstance(value, Mapping):
            value = _schema(value, defs)
        elif key in _SUBSCHEMA_LISTS:
            value = [_schema(sub, defs) for sub in value]
        elif key == "type":
            value = (
                [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
            )
        fields[aliases.get(key, key)] = value
    return Schema(**fields)
