"""Redis availability: a circuit breaker, and the holds this process made in Redis while it was up.

While the breaker is open, limits are enforced in the database (billing.quotas.database), which also
counts the Redis holds this process still has in flight, so an outage never admits twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from django.conf import settings

from billing.quotas.scopes import Counter

logger = logging.getLogger("billing.quotas")


class RedisHealth:
    """A small circuit breaker: after a failure, skip Redis for a few seconds instead of timing out per request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.down_until = 0.0
        self.had_outage = False
        self.reconciled_since_outage: set[str] = set()

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.usable():
                logger.error(
                    "quota: Redis unavailable (%s); enforcing limits in the database until it is back",
                    exc.__class__.__name__,
                )
            self.down_until = time.monotonic() + settings.BILLING_REDIS_RETRY_SECONDS
            self.had_outage = True
            self.reconciled_since_outage = set()

    def needs_reconcile(self, key: str) -> bool:
        return self.had_outage and key not in self.reconciled_since_outage

    def reconciled(self, key: str) -> None:
        if self.had_outage:
            self.reconciled_since_outage.add(key)


redis_health = RedisHealth()


class LocalHolds:
    """This process's unsettled Redis holds. Were Redis to die, the database path still counts them."""

    def __init__(self) -> None:
        self.holds: dict[str, tuple[float, tuple[str, ...]]] = {}

    def add(self, request_id: str, counters: Sequence[Counter]) -> None:
        expires = time.monotonic() + settings.BILLING_RESERVATION_TTL_SECONDS
        self.holds[request_id] = (expires, tuple(c.key for c in counters))

    def discard(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self.holds.pop(request_id, None)

    def counts(self) -> dict[str, int]:
        now = time.monotonic()
        counts: dict[str, int] = {}
        for request_id, (expires, keys) in list(self.holds.items()):
            if expires < now:
                del self.holds[request_id]
                continue
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
        return counts


local_holds = LocalHolds()


def reset_quota_state() -> None:
    """Forget the circuit breaker and local holds (tests)."""
    redis_health.reset()
    local_holds.holds.clear()
