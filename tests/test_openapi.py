"""The OpenAPI document's promises that hold for every route, read from ``create_app``'s
document (no broker needed): the bearer scheme on every guarded route and on no open one,
what a guarded route answers before its handler (401, 403, 422, 429), every error a problem
document, the console and the simulated gateway left out. ``test_openapi_fuzz.py`` checks the
document against a running api.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import pytest

from api import create_app
from api.auth import requires
from nodeapp.core.settings import Settings

APP: Final = create_app(Settings())
DOCUMENT: Final = APP.openapi_schema.to_schema()
PROBLEM: Final = {"$ref": "#/components/schemas/Problem"}
OPEN: Final = {"GET /healthz", "GET /readyz", "POST /payments/callback"}


def operations() -> Iterator[tuple[str, bool, dict[str, Any]]]:
    """``("METHOD /path", guarded, operation)`` for every documented route."""
    for route in APP.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in getattr(route, "route_handlers", ()):
            if not handler.resolve_include_in_schema():
                continue
            guarded = any(isinstance(g, requires) for g in handler.resolve_guards())
            for method in sorted(set(handler.http_methods) - {"OPTIONS"}):
                yield f"{method} {path}", guarded, DOCUMENT["paths"][path][method.lower()]


def test_the_bearer_scheme_is_declared() -> None:
    scheme = DOCUMENT["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in DOCUMENT  # per operation: some routes are open


def test_guarded_routes_say_so_and_open_ones_do_not() -> None:
    seen = {name: (guarded, operation) for name, guarded, operation in operations()}
    assert set(seen) >= OPEN
    for name, (guarded, operation) in seen.items():
        assert guarded is (name not in OPEN), name
        if guarded:
            assert operation["security"] == [{"bearer": []}], name
            assert {"401", "422", "429"} <= set(operation["responses"]), name
            if not name.startswith("GET /products"):  # any valid token reads the catalog
                assert "403" in operation["responses"], name
        else:
            assert "security" not in operation, name


@pytest.mark.parametrize("name", sorted(n for n, _, _ in operations()))
def test_every_error_is_a_problem_document(name: str) -> None:
    operation = next(op for n, _, op in operations() if n == name)
    assert "422" in operation["responses"], name  # an unknown query parameter, at least
    for status, response in operation["responses"].items():
        if int(status) >= 400:
            assert response["content"] == {"application/problem+json": {"schema": PROBLEM}}, (
                f"{name} {status}"
            )


def test_money_is_a_number_or_a_decimal_string() -> None:
    submit = DOCUMENT["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]
    amount = submit["schema"]["properties"]["amount"]["anyOf"][0]
    product = DOCUMENT["paths"]["/products/{product_id}"]["put"]["requestBody"]["content"]
    price = product["application/json"]["schema"]["properties"]["price"]
    for money in (amount, price):
        assert money["type"] == ["number", "string"]
        assert (money["minimum"], money["maximum"], money["multipleOf"]) == (0, 1e9, 0.01)
        assert re.fullmatch(money["pattern"], "12.50")
        assert not re.fullmatch(money["pattern"], "12.505")
        assert "format" not in money


def test_the_console_and_the_simulated_gateway_are_not_in_the_document() -> None:
    assert not [p for p in DOCUMENT["paths"] if p.startswith(("/console", "/sim/"))]
