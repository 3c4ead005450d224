"""Human-readable text for the CLI's client commands: aligned tables and ``key  value`` blocks.

Scripts should use ``--json`` instead; this text may change between versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from nodeapp.cli.inspection import BucketReport, ConsumerReport, Inspection, StreamReport
from nodeapp.cluster.dead_letter_admin import DeadLetterPage
from nodeapp.cluster.view import ClusterView
from nodeapp.orders.model import DeadLetterMark, Item, Order
from nodeapp.orders.timeline import Revision
from nodeapp.shop.catalog import CatalogPage, LoadReport


def stamp(when: datetime | None) -> str:
    """UTC, to the millisecond, with the ``Z`` the documents use."""
    if when is None:
        return "-"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def seconds(value: float | None) -> str:
    return "unlimited" if not value else f"{value:g}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(headers), *([("-" if v is None else str(v)) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``key  value`` lines, keys aligned; a None value leaves the line out."""
    kept = [(k, str(v)) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in kept), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in kept)


def order_text(order: Order) -> str:
    owner = order.owner
    failure = order.failure
    head = fields(
        [
            ("order", order.order_id),
            ("status", f"{order.status} ({order.current_step})"),
            ("customer", order.customer_id),
            ("items", ", ".join(_item(i) for i in order.items)),
            ("amount", order.amount),
            ("payment", _payment(order)),
            ("contact", _contact(order)),
            ("started", stamp(order.start_time)),
            ("finished", stamp(order.complete_time) if order.complete_time else None),
            (
                "cancel requested",
                stamp(order.cancel_requested_at) if order.cancel_requested_at else None,
            ),
            (
                "owner",
                f"{owner.node_id} (epoch {owner.epoch}, lease until "
                f"{stamp(owner.lease_expires_at)})"
                if owner
                else None,
            ),
            ("attempts", f"{order.attempts}  (revision {order.revision})"),
            (
                "failure",
                f"{failure.step}: {failure.reason} at {stamp(failure.time)}" if failure else None,
            ),
            ("dead letter", _dead_letter(order)),
        ]
    )
    steps = table(
        ["STEP", "STATUS", "NODE", "ATTEMPT", "STARTED", "COMPLETED", "ROLLED BACK"],
        (
            [
                s.name,
                s.status,
                s.node_id,
                s.attempt or None,
                stamp(s.start_time),
                stamp(s.complete_time),
                stamp(s.rollback_time),
            ]
            for s in order.steps
        ),
    )
    return f"{head}\n\n{steps}"


def _item(item: Item) -> str:
    price = "" if item.unit_price is None else f" at {item.unit_price}"
    return f"{item.product_id} x{item.quantity}{price}"


def _payment(order: Order) -> str | None:
    payment = order.payment
    if payment is None:
        return None if order.payment_token is None else f"not started (token {order.payment_token})"
    return f"{payment.status} {payment.amount} (payment {payment.payment_id})"


def _contact(order: Order) -> str | None:
    contact = order.contact
    if contact is None:
        return None
    return ", ".join(c for c in (contact.email, contact.phone) if c) or None


def _dead_letter(order: Order) -> str | None:
    mark = order.dead_letter
    if not isinstance(mark, DeadLetterMark):
        return mark
    return f"{mark.reason} at {stamp(mark.time)} (replay: orderflow dlq replay {order.order_id})"


def dlq_text(page: DeadLetterPage) -> str:
    rows = table(
        ["SEQ", "TIME", "ORDER", "DELIVERIES", "ORDERS SEQ", "REASON"],
        (
            [d.seq, stamp(d.time), d.order_id, d.deliveries, d.stream_seq, d.reason]
            for d in page.dead_letters
        ),
    )
    shown = len(page.dead_letters)
    if page.next_before is not None:
        return f"{rows}\n\n{shown} of {page.total} shown; older ones: --before {page.next_before}"
    return rows if shown else f"{rows}\n(no dead letters)"


def catalog_text(page: CatalogPage) -> str:
    rows = table(
        ["PRODUCT", "PRICE", "ACTIVE", "NAME"],
        ([p.product_id, p.price, "yes" if p.active else "no", p.name] for p in page.products),
    )
    if page.next_cursor is not None:
        return f"{rows}\n\nmore: orderflow catalog ls --cursor {page.next_cursor}"
    return rows if page.products else f"{rows}\n(no products: orderflow catalog load FILE.json)"


def load_report_text(source: str, report: LoadReport) -> str:
    products = report.created + report.updated + report.unchanged
    return (
        f"{source}: {products} products: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged; stock set for {report.stocked}, kept for "
        f"{report.stock_kept} (stock that exists is changed with POST /products/ID/stock)"
    )


def history_text(revisions: list[Revision]) -> str:
    return table(
        ["REV", "TIME", "STATUS", "STEP", "NODE", "TRANSITION"],
        (
            [r.revision, stamp(r.time), r.status, r.current_step, r.node_id, r.transition]
            for r in revisions
        ),
    )


def watch_line(order: Order, when: datetime, transition: str) -> str:
    return f"{stamp(when)}  {order.status:<12}  {order.current_step:<15}  {transition}"


def cluster_text(view: ClusterView, now: datetime) -> str:
    nodes = table(
        ["NODE", "STATE", "IN FLIGHT", "COMPLETED", "FAILED", "TAKEOVERS", "REDELIVERED", "SEEN"],
        (
            [
                n.node_id,
                n.state,
                f"{n.in_flight}/{n.concurrency}",
                n.counters.completed,
                n.counters.failed,
                n.counters.takeovers,
                n.counters.redeliveries,
                f"{(now - n.updated_at).total_seconds():.1f}s ago",
            ]
            for n in view.nodes
        ),
    )
    if not view.nodes:
        nodes += "\n(no live nodes: nothing is being processed)"
    s, c, b = view.stream, view.consumer, view.buckets
    state = fields(
        [
            ("nodes", f"{len(view.nodes)}, capacity {view.capacity}, in flight {view.in_flight}"),
            (
                f"stream {s.name}",
                f"{s.messages} messages ({size(s.bytes)}), seq {s.first_seq}..{s.last_seq}, "
                f"{s.consumer_count} consumer(s)",
            ),
            (
                f"consumer {c.name}",
                f"pending {c.num_pending}, ack pending {c.num_ack_pending}, redelivered "
                f"{c.num_redelivered}, waiting pulls {c.num_waiting} (ack wait "
                f"{seconds(c.ack_wait)}, max deliver {c.max_deliver})",
            ),
            ("dead letters", f"{view.dead_letters.messages} (stream ORDERS_DLQ)"),
            ("bucket orders", f"{b.orders.values} values (history {b.orders.history})"),
            ("bucket nodes", f"{b.nodes.values} values"),
        ]
    )
    return f"{nodes}\n\n{state}"


def _stream_block(s: StreamReport) -> str:
    return (
        f"Stream {s.name}"
        + (f" ({s.description})" if s.description else "")
        + "\n"
        + fields(
            [
                ("  Subjects:", ", ".join(s.subjects)),
                ("  Retention:", s.retention),
                ("  Storage:", s.storage),
                ("  Replicas:", s.replicas),
                ("  Leader:", s.leader),
                ("  Messages:", s.messages),
                ("  Bytes:", size(s.bytes)),
                ("  First Sequence:", s.first_seq),
                ("  Last Sequence:", s.last_seq),
                ("  Active Consumers:", s.consumer_count),
            ]
        )
    )


def _consumer_block(c: ConsumerReport) -> str:
    return f"Consumer {c.stream} > {c.name}\n" + fields(
        [
            ("  Ack Policy:", c.ack_policy),
            ("  Ack Wait:", seconds(c.ack_wait)),
            ("  Maximum Deliveries:", c.max_deliver),
            ("  Max Ack Pending:", c.max_ack_pending),
            ("  Max Waiting Pulls:", c.max_waiting),
            ("  Last Delivered Seq:", c.delivered_stream_seq),
            ("  Acknowledgment Floor:", c.ack_floor_stream_seq),
            ("  Outstanding Acks:", c.num_ack_pending),
            ("  Redelivered Messages:", c.num_redelivered),
            ("  Unprocessed Messages:", c.num_pending),
            ("  Waiting Pulls:", c.num_waiting),
        ]
    )


def _bucket_block(b: BucketReport) -> str:
    return f"Key-Value Store {b.bucket}\n" + fields(
        [
            ("  Values Stored:", b.values),
            ("  History Kept:", b.history),
            ("  TTL:", seconds(b.ttl)),
            ("  Bucket Size:", size(b.bytes)),
            ("  Keys:", None if b.keys is None else (", ".join(b.keys) or "(none)")),
        ]
    )


def inspection_text(report: Inspection) -> str:
    blocks = [f"Server {report.server.url} (nats-server {report.server.version})"]
    blocks += [_stream_block(s) for s in report.streams]
    blocks += [_consumer_block(c) for c in report.consumers]
    blocks += [_bucket_block(b) for b in report.buckets]
    if report.missing:
        blocks.append("Missing (`orderflow init` creates them): " + ", ".join(report.missing))
    return "\n\n".join(blocks)
