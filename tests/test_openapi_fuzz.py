"""Schemathesis against a real api process: generated requests, the valid and the invalid, for
every operation of ``/schema/openapi.json``, sent with an admin token.

Each answer is checked against the document by schemathesis's own checks: no 5xx, the status,
content type, headers and body as documented, schema-valid input accepted and invalid input
refused, the token actually required. Schema-valid input may get 422 for what no schema can
state, and ``beyond_the_schema_only`` checks that such a 422 names nothing else:

- a rule about content rather than shape: the product must be in the catalog, the amount must
  be the catalog's total, a cursor must be one this api gave out;
- a whole number written as ``540.0``: JSON Schema counts it as an integer, the api's strict
  decoder wants ``540`` (ADR 0016).

One nats-server and one api process serve the whole module; ``schema.parametrize`` makes one
test per operation. The document tested is ``create_app``'s, which the fixture checks is the
one the process serves (schemathesis parametrizes at import, before any process runs; its
lazy ``from_fixture`` loader does not work with pytest 9).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import pytest
import schemathesis
from hypothesis import settings
from schemathesis import Case, CheckContext, GenerationMode, Response

from api import create_app
from nodeapp.core.settings import Settings, load_settings
from nodeapp.local.natsserver import NatsServer
from nodeapp.orders.handles import broker_handles
from tests.support.catalog import load_test_catalog
from tests.support.services import ApiProcess
from tests.support.tokens import TEST_ADMIN_TOKEN

DOCUMENT: Final = create_app(Settings()).openapi_schema.to_schema()
# 422 joins what schema-valid input may get; ``beyond_the_schema_only`` narrows it down.
CONFIG: Final = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"bearer": {"bearer": TEST_ADMIN_TOKEN}}},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
            }
        },
    }
)
CONTENT_RULES: Final = {
    "POST /orders": re.compile(r"items\[\d+\]\.product_id|amount"),
    "GET /products": re.compile(r"cursor"),
    "GET /orders": re.compile(r"cursor"),
}
WRITTEN_AS_FLOAT: Final = "Expected `int`, got `float`"  # in valid input, so a whole number
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def beyond_the_schema_only(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A 422 to schema-valid input names only what no schema can state (the module says what)."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return None
    if response.status_code != 422:
        return None
    rule = CONTENT_RULES.get(f"{case.method.upper()} {case.path}")
    refused = [
        e["field"]
        for e in response.json().get("errors", [])
        if e["message"] != WRITTEN_AS_FLOAT and not (rule and rule.fullmatch(e["field"]))
    ]
    assert not refused, f"schema-valid input refused for {refused}: {response.text}"
    return True


@pytest.fixture(scope="module")
def fuzzed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def api_url(
    fuzzed_broker: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A ready api process on the module's broker with the test catalog, fault injection on
    (``fail_at`` is documented as a step name), no rate limit worth meeting."""
    api_settings = load_settings(
        {},
        nats_url=fuzzed_broker.url,
        admin_token=TEST_ADMIN_TOKEN,
        fault_injection=True,
        rate_limit=100_000.0,
        request_timeout=1.0,
    )
    async with broker_handles(api_settings, "fuzz") as handles:
        await load_test_catalog(handles, api_settings)
    process = ApiProcess(api_settings, tmp_path_factory.mktemp("api") / "api.log")
    try:
        await process.wait_ready()
        async with process.client(None) as client:
            served = (await client.get("/schema/openapi.json")).json()
        assert served == DOCUMENT
        yield process.url
    finally:
        assert process.stop() == 0


@schema.parametrize()
@settings(max_examples=20, deadline=None, database=None)
def test_the_api_does_what_its_document_says(case: Case[Any], api_url: str) -> None:
    case.call_and_validate(base_url=api_url, additional_checks=[beyond_the_schema_only], timeout=10)
