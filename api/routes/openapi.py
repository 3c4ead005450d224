"""What the routes' OpenAPI entries share: response descriptions, and the body of a raw-body route.

``POST /orders`` reads its body raw (one msgspec decoder, no per-request parsing layer), so
Litestar sees no ``data`` parameter to document. ``raw_json_body`` gives such a route an
``operation_class`` that states the body itself, from the same msgspec Struct that decodes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from api.problems import PROBLEM_JSON
from api.responses import JSON
from api.schemas import Problem


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


def lookup_responses(container: type[Any], found: str, missing: str) -> dict[int, ResponseSpec]:
    """Reading one thing by its id: 200 with it, 404 when there is none, 503 while the broker
    is away."""
    return {200: json_spec(container, found), 404: problem_spec(missing), 503: BROKER_DOWN}


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
    """One JSON Schema node with its ``$ref``s inlined (the request models are not recursive)."""
    if "$ref" in node:
        return _schema(defs[node["$ref"].rpartition("/")[2]], defs)
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
            value = OpenAPIType(value)
        fields[aliases.get(key, key)] = value
    return Schema(**fields)
