"""The reconciler's leader lease: one node at a time leads, by compare-and-set in KV
``reconciler`` (key ``leader``), renewed every sweep, given up at once on a drain.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Final

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from nodeapp.broker.connection import ANY_NATS_ERROR, broker_errors
from nodeapp.orders.model import encode, utcnow

log = logging.getLogger("orderflow.reconciler")

LEADER_KEY: Final = "leader"


class Leader(msgspec.Struct):
    node_id: str
    expires_at: datetime


_leader = msgspec.json.Decoder(Leader)


class LeaderLease:
    """This node's claim on the lead; ``held`` while the last campaign won."""

    def __init__(self, kv: KeyValue, node_id: str, lease: float) -> None:
        self.kv = kv
        self.node_id = node_id
        self.lease = lease
        self.held = False
        self._revision: int | None = None

    async def campaign(self) -> bool:
        """Take or renew the lease by compare-and-set; True while we hold it."""
        now = utcnow()
        mine = encode(Leader(self.node_id, now + timedelta(seconds=self.lease)))
        with broker_errors("reconciler leader lease"):
            try:
                entry = await self.kv.get(LEADER_KEY)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            try:
                if entry is None or entry.value is None:
                    self._revision = await self.kv.create(LEADER_KEY, mine)
                else:
                    current = _leader.decode(entry.value)
                    if current.node_id != self.node_id and current.expires_at > now:
                        self.held = False
                        return False
                    self._revision = await self.kv.update(LEADER_KEY, mine, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self.held = False
                return False
        if not self.held:
            log.info(
                "reconciler leader", extra={"event": "reconciler.leader", "node_id": self.node_id}
            )
        self.held = True
        return True

    async def resign(self) -> None:
        """Give the lead up now rather than when its lease runs out."""
        if not self.held or self._revision is None:
            return
        self.held = False
        try:
            await self.kv.delete(LEADER_KEY, last=self._revision)
        except ANY_NATS_ERROR as exc:  # nothing more to do: the lead ends with its lease
            log.warning(
                "reconciler lead not resigned: %r",
                exc,
                extra={"event": "reconciler.resign_failed", "node_id": self.node_id},
            )
