"""The stock operations as pure changes of a product's stock document (ADR 0010's table).

Each takes the document as read, changes it in place and says whether there is anything to
write; ``nodeapp.shop.stock`` does the reading and the compare-and-set around them. No I/O here,
so every rule is tested without a broker.

  operation  hold before -> after                               counters
  reserve    absent -> reserved (refused if short)              reserved += q
  release    reserved -> released; absent -> released (q 0)     reserved -= q
  commit     reserved -> sold                                   on_hand -= q, reserved -= q
  restock    sold -> released; reserved -> released;            on_hand += q / reserved -= q
             absent -> released (q 0)
  forget     sold -> absent; released -> absent                 none

An operation finding the hold already in its "after" state changes no counter: a re-run is
free. A caller whose epoch is lower than the hold's is ``Fenced``; one whose epoch is higher
takes the hold over (its epoch is recorded, even by a re-run that changes nothing else), so the
owner it replaced is fenced from then on.

A hold given back is kept as a tombstone (state ``released``, with the epoch of the owner that
gave it back) until ``forget``, which the node calls once the order is stored terminal. Without
it a stale owner (a lower epoch) reserving after the new owner released and failed the order
would find no hold, make one, and leave it reserved forever; with it, that reservation is
``Fenced``. A release of a product the order never held leaves a tombstone too: the new owner
may have failed the order at that very product (out of stock) before a stale owner gets to it.
A reservation meeting a tombstone of its own epoch or a later one is a ``HoldConflict``: an
order is never reserved again once given back.

Every refusal is raised before the document is altered: ``nodeapp.shop.stock_writes`` applies
several orders' changes to one read of the document, and one refused change must leave it as the
next change expects to find it.
"""

from __future__ import annotations

from nodeapp.core.errors import Fenced
from nodeapp.core.shop_errors import HoldConflict, OutOfStock, StockConflict
from nodeapp.shop.products import Hold, StockLevel


def reserve(level: StockLevel, order_id: str, epoch: int, quantity: int) -> bool:
    """Hold ``quantity`` for the order; ``OutOfStock`` if fewer are available."""
    hold = level.holds.get(order_id)
    if hold is not None:  # reserved, or even sold already: a re-run; released: refused
        _check_epoch(level, order_id, hold, epoch)
        if hold.state == "released":
            why = f"was given back at epoch {hold.epoch}: it is not reserved again"
            raise HoldConflict(level.product_id, order_id, why)
        if hold.quantity != quantity:
            why = f"holds {hold.quantity} ({hold.state}), asked to reserve {quantity}"
            raise HoldConflict(level.product_id, order_id, why)
        return _take_over(hold, epoch)
    if quantity < 1:
        raise HoldConflict(level.product_id, order_id, f"cannot reserve {quantity}")
    if level.available < quantity:
        raise OutOfStock(level.product_id, quantity, level.available)
    level.holds[order_id] = Hold(quantity=quantity, state="reserved", epoch=epoch)
    level.reserved += quantity
    return True


def release(level: StockLevel, order_id: str, epoch: int) -> bool:
    """Give a reservation back (Scheduling's compensation), leaving a tombstone."""
    hold = level.holds.get(order_id)
    if hold is None:
        return _tombstone(level, order_id, epoch)
    _check_epoch(level, order_id, hold, epoch)
    if hold.state == "sold":
        raise HoldConflict(level.product_id, order_id, "is sold: restock it, not release it")
    if hold.state == "released":
        return _take_over(hold, epoch)
    hold.state, hold.epoch = "released", epoch
    level.reserved -= hold.quantity
    return True


def commit(level: StockLevel, order_id: str, epoch: int) -> bool:
    """Turn the reservation into a sale (Post-Processing)."""
    hold = level.holds.get(order_id)
    if hold is None:
        raise HoldConflict(level.product_id, order_id, "nothing reserved to commit")
    _check_epoch(level, order_id, hold, epoch)
    if hold.state == "released":
        raise HoldConflict(level.product_id, order_id, "was given back: nothing to commit")
    if hold.state == "sold":
        return _take_over(hold, epoch)
    hold.state = "sold"
    hold.epoch = epoch
    level.on_hand -= hold.quantity
    level.reserved -= hold.quantity
    return True


def restock(level: StockLevel, order_id: str, epoch: int) -> bool:
    """Undo the sale, or the reservation if the sale never happened (Post-Processing's
    compensation), leaving a tombstone."""
    hold = level.holds.get(order_id)
    if hold is None:
        return _tombstone(level, order_id, epoch)
    _check_epoch(level, order_id, hold, epoch)
    if hold.state == "released":
        return _take_over(hold, epoch)
    if hold.state == "sold":
        level.on_hand += hold.quantity
    else:
        level.reserved -= hold.quantity
    hold.state, hold.epoch = "released", epoch
    return True


def forget(level: StockLevel, order_id: str, epoch: int) -> bool:
    """Drop a sold hold or a tombstone once the order is stored terminal, keeping the document
    small; a hold still reserved then is a ``HoldConflict`` (stock nobody would give back)."""
    hold = level.holds.get(order_id)
    if hold is None:
        return False
    _check_epoch(level, order_id, hold, epoch)
    if hold.state == "reserved":
        raise HoldConflict(level.product_id, order_id, "is still reserved: nothing to forget")
    del level.holds[order_id]
    return True


def adjust(level: StockLevel, delta: int) -> bool:
    """Add ``delta`` to ``on_hand`` (negative takes stock away); ``StockConflict`` if that would
    leave it below 0 or below what is reserved."""
    if delta == 0:
        return False
    on_hand = level.on_hand + delta
    if on_hand < 0:
        why = f"on_hand would be {on_hand}, below 0"
        raise StockConflict(level.product_id, why, level.on_hand, level.reserved)
    if on_hand < level.reserved:
        why = f"on_hand would be {on_hand}, below the {level.reserved} reserved"
        raise StockConflict(level.product_id, why, level.on_hand, level.reserved)
    level.on_hand = on_hand
    return True


def _check_epoch(level: StockLevel, order_id: str, hold: Hold, epoch: int) -> None:
    if epoch < hold.epoch:
        raise Fenced(order_id, epoch, hold.epoch, f"stock of {level.product_id}")


def _tombstone(level: StockLevel, order_id: str, epoch: int) -> bool:
    """Mark an order that holds nothing here as given back, so no stale owner reserves later."""
    level.holds[order_id] = Hold(quantity=0, state="released", epoch=epoch)
    return True


def _take_over(hold: Hold, epoch: int) -> bool:
    """Record a newer owner's epoch on a hold that needs nothing else; a write only if new."""
    if epoch <= hold.epoch:
        return False
    hold.epoch = epoch
    return True
