"""Celery entry points for billing: roll-ups and idempotency-key cleanup.

Settling estimated usage asks the upstream, so its tasks live with the gateway (gateway.tasks).
"""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from billing import idempotency, rollups


@shared_task(time_limit=240, soft_time_limit=200)
def rollup_daily_message_counts_task(days: list[str] | None = None) -> int:
    """Replay spooled ledger lines, then recompute today's and yesterday's rows (or the ISO `days` given)."""
    chosen = [dt.date.fromisoformat(day) for day in days] if days else None
    _replayed, result = rollups.drain_spool_and_roll_up(days=chosen)
    return result.rows


@shared_task(time_limit=120)
def purge_idempotent_requests_task() -> int:
    return idempotency.purge_expired_idempotent_requests()
