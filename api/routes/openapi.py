"""Response descriptions shared by the routes' OpenAPI entries."""

from __future__ import annotations

from typing import Any, Final

from litestar.openapi import ResponseSpec

from api.problems import PROBLEM_JSON
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
