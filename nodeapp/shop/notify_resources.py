"""The notification resources: stream ``NOTIFICATIONS``, consumer ``notifier``, bucket
``notifications``, and how hard the notifier tries (``DeliveryPolicy``).

Names are public (DESIGN part 2): operators inspect them with the ``nats`` CLI. The stream
retains by limits, not as a work queue: it holds the ``order.delayed`` schedules too, which no
consumer covers, and a delivered notification stays readable for a week.
"""

from __future__ import annotations

from typing import Final

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from nodeapp.broker.connection import broker_errors
from nodeapp.broker.resources import ensure_bucket
from nodeapp.core.errors import OrderflowError, ResourceMissing
from nodeapp.core.settings import Settings

STREAM: Final = "NOTIFICATIONS"
SUBJECT_PREFIX: Final = "notifications."  # + the kind
SCHEDULE_PREFIX: Final = "schedules.order_delayed."  # + the order id: one schedule per subject
CONSUMER: Final = "notifier"
BUCKET: Final = "notifications"
RETENTION: Final = 7 * 24 * 3600.0  # seconds messages and delivery states are kept, at least
DUPLICATE_WINDOW: Final = 120.0
STREAM_NAME_IN_USE: Final = 10058


class DeliveryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How hard the notifier tries: ``max_deliver`` POSTs, a nak delay doubling from
    ``first_delay`` up to ``max_delay``, each POST bounded by ``post_timeout``."""

    max_deliver: int = 20
    first_delay: float = 1.0
    max_delay: float = 60.0
    post_timeout: float = 5.0
    ack_wait: float = 30.0  # kept alive with in_progress() while a POST runs
    concurrency: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(max_deliver=settings.max_deliver)

    def delay(self, attempt: int) -> float:
        """The pause before the attempt after ``attempt`` (1-based) failed."""
        return float(min(self.first_delay * 2 ** max(attempt - 1, 0), self.max_delay))


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        description="orderflow customer notifications and their schedules",
        subjects=[f"{SUBJECT_PREFIX}>", f"{SCHEDULE_PREFIX}*"],
        retention=RetentionPolicy.LIMITS,
        max_age=max(RETENTION, 2 * settings.order_sla),  # a schedule must outlive its SLA
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        duplicate_window=DUPLICATE_WINDOW,
        allow_msg_schedules=True,
    )


def consumer_config(settings: Settings, policy: DeliveryPolicy) -> ConsumerConfig:
    """Filtered on ``notifications.>``: the schedules themselves are never delivered. One spare
    delivery past ``max_deliver``: a node that crashed during the last POST leaves the message
    to be dead-lettered by the next one instead of dropped by the server."""
    return ConsumerConfig(
        durable_name=CONSUMER,
        name=CONSUMER,
        description="orderflow notification webhooks",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=policy.ack_wait,
        max_deliver=policy.max_deliver + 1,
        max_ack_pending=10_000,
        filter_subject=f"{SUBJECT_PREFIX}>",
        num_replicas=settings.replicas,
    )


async def ensure_notifications(
    js: JetStreamContext, settings: Settings, policy: DeliveryPolicy | None = None
) -> KeyValue:
    """Create the stream, the consumer and the state bucket if missing; return the bucket."""
    policy = policy or DeliveryPolicy.from_settings(settings)
    with broker_errors("creating the notification resources"):
        await _ensure_stream(js, stream_config(settings))
        try:
            await js.add_consumer(STREAM, consumer_config(settings, policy))
        except nats.js.errors.APIError as exc:
            raise OrderflowError(
                f"JetStream refused consumer {CONSUMER}: {exc.description}"
            ) from None
        return await ensure_bucket(js, bucket_config(settings))


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise OrderflowError(f"JetStream refused stream {STREAM}: {exc.description}") from None
    # It exists with another config: keep it if it can still do what we publish.
    have = (await js.stream_info(STREAM)).config
    missing = [s for s in config.subjects or [] if s not in (have.subjects or [])]
    if missing or not have.allow_msg_schedules:
        raise OrderflowError(
            f"stream {STREAM} exists without subjects {missing} or allow_msg_schedules; "
            "delete it (nats stream rm) and start again"
        )


def bucket_config(settings: Settings) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=BUCKET,
        description="orderflow notification delivery state per (order, kind)",
        history=1,
        ttl=RETENTION,
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )


async def notification_bucket(js: JetStreamContext) -> KeyValue:
    """The state bucket for readers (the api); ``ResourceMissing`` until someone created it."""
    with broker_errors(f"opening bucket {BUCKET}"):
        try:
            return await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise ResourceMissing(f"bucket {BUCKET}") from None
