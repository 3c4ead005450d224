"""Stock in the KV bucket ``stock``: the operations of ADR 0010 on a product's document.

Each operation is one pure change from ``nodeapp.shop.holds`` (what the table in the ADR says),
stored by compare-and-set through ``StockWriter`` (``nodeapp.shop.stock_writes``), which
combines the concurrent changes of this process to one product into one write and re-applies
them after a write lost to another process. No interleaving of writers can oversell.

Order-level calls take the order's items and group them per product. Reservations go product
by product in id order, so two orders racing on the same products take them in the same order;
the calls on holds the order already has (commit, release, restock, forget) touch all its
products at once, as their order does not matter: one round trip, not one per product.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from nats.js.kv import KeyValue

from nodeapp.broker.requests import Replies
from nodeapp.core.together import together
from nodeapp.shop import holds
from nodeapp.shop.keys import product_key
from nodeapp.shop.products import Line, StockLevel, StockView
from nodeapp.shop.stock_writes import ATTEMPTS, StockWriter


def per_product(items: Iterable[Line]) -> list[tuple[str, int]]:
    """(product id, total quantity) in product id order: a product listed twice is one hold."""
    totals: Counter[str] = Counter()
    for item in items:
        totals[item.product_id] += item.quantity
    return sorted(totals.items())


class Stock:
    """The stock operations of ADR 0010, each idempotent per (order, product) and fenced by the
    owner's epoch. One per process and bucket handle: its writes are combined per product.
    ``retries`` counts changes re-applied after a lost compare-and-set, by operation name."""

    def __init__(
        self,
        kv: KeyValue,
        attempts: int = ATTEMPTS,
        *,
        combine: bool = True,
        replies: Replies | None = None,
    ) -> None:
        self.kv = kv
        self.writer = StockWriter(kv, attempts, combine=combine, replies=replies)

    @property
    def retries(self) -> Counter[str]:
        return self.writer.retries

    async def level(self, product_id: str) -> StockLevel:
        """The product's stock document as stored (zeros, no holds, if it has none yet)."""
        product_key(product_id)
        level, _ = await self.writer.read(product_id)
        return level

    async def view(self, product_id: str) -> StockView:
        return StockView.of(await self.level(product_id))

    async def reserve(self, product_id: str, order_id: str, epoch: int, quantity: int) -> StockView:
        return await self._change(
            product_id, "reserve", lambda lv: holds.reserve(lv, order_id, epoch, quantity)
        )

    async def release(self, product_id: str, order_id: str, epoch: int) -> StockView:
        return await self._change(
            product_id, "release", lambda lv: holds.release(lv, order_id, epoch)
        )

    async def commit(self, product_id: str, order_id: str, epoch: int) -> StockView:
        return await self._change(
            product_id, "commit", lambda lv: holds.commit(lv, order_id, epoch)
        )

    async def restock(self, product_id: str, order_id: str, epoch: int) -> StockView:
        return await self._change(
            product_id, "restock", lambda lv: holds.restock(lv, order_id, epoch)
        )

    async def forget(self, product_id: str, order_id: str, epoch: int) -> StockView:
        return await self._change(
            product_id, "forget", lambda lv: holds.forget(lv, order_id, epoch)
        )

    async def adjust(self, product_id: str, delta: int) -> StockView:
        """Add ``delta`` to ``on_hand``; ``StockConflict`` if below 0 or below ``reserved``."""
        return await self._change(product_id, "adjust", lambda lv: holds.adjust(lv, delta))

    async def initialize(self, product_id: str, on_hand: int) -> bool:
        """Create the product's stock document with ``on_hand``; False (and nothing changed)
        if it already has one, whatever its counts."""
        product_key(product_id)
        return await self.writer.write(StockLevel(product_id=product_id, on_hand=on_hand), None)

    async def reserve_items(self, order_id: str, epoch: int, items: Iterable[Line]) -> None:
        """Scheduling: reserve every product of the order, in id order. ``OutOfStock`` for the
        first product short of stock, leaving the earlier holds in place: the step's
        compensation (``release_items``) gives back whatever the order holds."""
        for product_id, quantity in per_product(items):
            await self.reserve(product_id, order_id, epoch, quantity)

    async def release_items(self, order_id: str, epoch: int, items: Iterable[Line]) -> None:
        """Scheduling's compensation: release the order's reservations, leaving a tombstone on
        every product of the order (``nodeapp.shop.holds``), held or not."""
        await _each(items, lambda product_id: self.release(product_id, order_id, epoch))

    async def commit_items(self, order_id: str, epoch: int, items: Iterable[Line]) -> None:
        """Post-Processing: turn every reservation of the order into a sale."""
        await _each(items, lambda product_id: self.commit(product_id, order_id, epoch))

    async def restock_items(self, order_id: str, epoch: int, items: Iterable[Line]) -> None:
        """Post-Processing's compensation: put sold stock back, release what was not sold;
        tombstones stay as with ``release_items``."""
        await _each(items, lambda product_id: self.restock(product_id, order_id, epoch))

    async def forget_items(self, order_id: str, epoch: int, items: Iterable[Line]) -> None:
        """After the order is stored terminal (completed or failed): drop its sold holds and
        tombstones (best-effort: a hold left behind changes no counter). ``HoldConflict`` for
        a hold still reserved, which nobody would ever give back; the other products' holds
        are dropped all the same."""
        await _each(items, lambda product_id: self.forget(product_id, order_id, epoch))

    async def _change(
        self, product_id: str, operation: str, change: Callable[[StockLevel], bool]
    ) -> StockView:
        product_key(product_id)  # a bad id is refused here, before it is queued
        return await self.writer.change(product_id, operation, change)


async def _each(items: Iterable[Line], call: Callable[[str], Awaitable[StockView]]) -> None:
    """``call`` for every product of ``items`` at once; when all are done, the error of the
    first product (in id order) that failed, if any."""
    await together(*(call(product_id) for product_id, _ in per_product(items)))
