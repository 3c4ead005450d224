"""``/products``: the catalog and its stock over HTTP (DESIGN part 2, ADR 0010).

Bodies are read raw and decoded by ``nodeapp.shop.products`` (strict: unknown fields refused,
every rule naming its field). A product id outside ``A-Z a-z 0-9 . _ : -`` (or over 64
characters) in a path is refused (422 naming ``product_id``) before anything is read or written;
so is every bad body: a refused request changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Final

from litestar import Response, get, post, put
from litestar.params import Parameter

from api.auth import requires
from api.broker_link import broker_link
from api.paths import PRODUCT, PRODUCT_STOCK, PRODUCTS, product_location
from api.responses import AnyRequest, json_response
from api.routes.openapi import (
    BEARER,
    BROKER_DOWN,
    MALFORMED,
    ProductId,
    guarded,
    json_spec,
    problem_spec,
    raw_json_body,
)
from api.schemas import StockChange, decode_stock_change, require_json
from nodeapp.security.scopes import CATALOG_WRITE
from nodeapp.shop.catalog import DEFAULT_LIMIT, MAX_LIMIT, CatalogPage
from nodeapp.shop.keys import product_key
from nodeapp.shop.products import Product, ProductBody, ProductView, StockView, decode_product_body

MAX_BODY_BYTES: Final = 8 * 1024
BAD_ID: Final = "a product id outside A-Z a-z 0-9 . _ : - or over 64 characters"
CONTENDED: Final = problem_spec("The product's stock is too contended right now; retry")


@get(
    PRODUCTS,
    guards=[requires()],  # any valid token
    security=BEARER,
    summary="List products",
    description=(
        "Products by id, `limit` per page; pass `next_cursor` back as `cursor` for the next "
        "page (null after the last). Paging never repeats or skips a product."
    ),
    responses=guarded(
        {
            200: json_spec(CatalogPage, "A page of products"),
            400: problem_spec("limit is not a whole number in 1-500"),
            422: problem_spec("cursor is not one this api gave out"),
            503: BROKER_DOWN,
        }
    ),
)
async def list_products(
    request: AnyRequest,
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_LIMIT, description="products per page")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Parameter(description="next_cursor of the page before")] = None,
) -> Response[bytes]:
    return json_response(await broker_link(request).catalog().list_products(limit, cursor))


@get(
    PRODUCT,
    guards=[requires()],  # any valid token
    security=BEARER,
    summary="Read a product",
    description="The product with its stock: on_hand, reserved (held by orders), available.",
    responses=guarded(
        {
            200: json_spec(ProductView, "The product and its stock"),
            400: MALFORMED,
            404: problem_spec("No such product"),
            422: problem_spec(f"The path names {BAD_ID}"),
            503: BROKER_DOWN,
        }
    ),
)
async def get_product(request: AnyRequest, product_id: ProductId) -> Response[bytes]:
    product_key(product_id)  # a bad id is a 422, not a lookup
    return json_response(await broker_link(request).catalog().view(product_id))


@put(
    PRODUCT,
    guards=[requires(CATALOG_WRITE)],
    security=BEARER,
    status_code=200,
    request_max_body_size=MAX_BODY_BYTES,
    operation_class=raw_json_body(ProductBody, "The product; unknown fields are refused"),
    summary="Create or replace a product",
    description=(
        "Stores the product under the path's id: 201 when it is new (its stock starts at 0: "
        "add some with POST /products/{product_id}/stock), 200 when it replaced one. `price` "
        "is a decimal with at most 2 fractional digits; `active` false takes it off sale."
    ),
    responses=guarded(
        {
            200: json_spec(Product, "Replaced"),
            201: json_spec(Product, "Created"),
            400: problem_spec("Malformed JSON"),
            413: problem_spec("Body over 8 KiB"),
            415: problem_spec("Content-Type is not application/json"),
            422: problem_spec(f"Invalid fields, or {BAD_ID}"),
            503: BROKER_DOWN,
        },
        CATALOG_WRITE,
    ),
)
async def put_product(request: AnyRequest, product_id: ProductId) -> Response[bytes]:
    product_key(product_id)
    require_json(request.content_type)
    product = decode_product_body(product_id, await request.body())
    created = await broker_link(request).catalog().put(product)
    headers = {"Location": product_location(product_id)} if created else None
    return json_response(product, status_code=201 if created else 200, headers=headers)


@post(
    PRODUCT_STOCK,
    guards=[requires(CATALOG_WRITE)],
    security=BEARER,
    status_code=200,
    request_max_body_size=MAX_BODY_BYTES,
    operation_class=raw_json_body(StockChange, "How much stock arrived (or left)"),
    summary="Adjust a product's stock",
    description=(
        "Adds `delta` (negative to remove) to `on_hand`, by compare-and-set with the orders "
        "reserving it. Refused (409, nothing changed) if on_hand would drop below what orders "
        "have reserved, or below 0."
    ),
    responses=guarded(
        {
            200: json_spec(StockView, "The stock after the change"),
            400: problem_spec("Malformed JSON"),
            404: problem_spec("No such product"),
            409: problem_spec("on_hand would drop below reserved or below 0; nothing changed"),
            413: problem_spec("Body over 8 KiB"),
            415: problem_spec("Content-Type is not application/json"),
            422: problem_spec(f"delta is not a whole number, or {BAD_ID}"),
            503: CONTENDED,
        },
        CATALOG_WRITE,
    ),
)
async def adjust_stock(request: AnyRequest, product_id: ProductId) -> Response[bytes]:
    product_key(product_id)
    require_json(request.content_type)
    change = decode_stock_change(await request.body())
    return json_response(await broker_link(request).catalog().adjust(product_id, change.delta))
