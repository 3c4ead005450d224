"""A token bucket per API token: ``rate`` requests a second sustained, bursts of twice that.

Per token, not per address: tokens are what the api hands out, and one noisy client must not
slow the others. Memory stays bounded: a bucket left alone long enough to refill completely is
the same as no bucket at all, so it is dropped; past ``max_buckets`` the least recently used
goes too (that token merely gets a fresh burst).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

from nodeapp.core.errors import RateLimited

BURST_FACTOR: Final = 2.0
MAX_BUCKETS: Final = 10_000


class _Bucket(NamedTuple):
    level: float  # requests that may pass now
    at: float  # when ``level`` was computed (monotonic seconds)


class RateLimiter:
    """``take(token_id)`` before serving a request; ``RateLimited`` says when to retry.

    Not thread-safe, and need not be: every request of a process runs on one event loop and
    ``take`` does not await.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst_factor: float = BURST_FACTOR,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst_factor < 1 or max_buckets < 1:
            raise ValueError("rate must be > 0, burst_factor >= 1, max_buckets >= 1")
        self.rate = rate
        self.burst = rate * burst_factor
        self._refill = self.burst / rate  # seconds from empty to full
        self._max = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> None:
        """Let one request of ``key`` pass, or raise ``RateLimited`` (nothing is taken then)."""
        now = self._clock()
        self._evict(now)
        bucket = self._buckets.pop(key, None)
        level = self.burst
        if bucket is not None:
            level = min(self.burst, bucket.level + (now - bucket.at) * self.rate)
        if level < 1.0:
            self._buckets[key] = _Bucket(level, now)
            raise RateLimited((1.0 - level) / self.rate)
        self._buckets[key] = _Bucket(level - 1.0, now)

    def _evict(self, now: float) -> None:
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            if now - oldest.at < self._refill and len(self._buckets) < self._max:
                return
            del self._buckets[key]
