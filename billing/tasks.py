"""Celery entry points for billing: roll-ups, settlement of abandoned streams, idempotency-key cleanup."""

from __future__ import annotations

import datetime as dt

import requests
from celery import shared_task

from billing import services


@shared_task(time_limit=240, soft_time_limit=200)
def rollup_daily_message_counts_task(days: list[str] | None = None) -> int:
    """Replay spooled ledger lines, then recompute today's and yesterday's rows (or the ISO `days` given)."""
    services.drain_ledger_spool()
    chosen = [dt.date.fromisoformat(day) for day in days] if days else None
    return services.rollup_daily_message_counts(days=chosen).rows


@shared_task(time_limit=240, soft_time_limit=200)
def settle_pending_generations_task() -> dict[str, int]:
    return services.settle_pending_generations()


@shared_task(
    bind=True,
    time_limit=60,
    autoretry_for=(services.GenerationNotReady, services.GenerationStatsUnavailable, requests.RequestException),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def settle_generation_task(self, request_id: str) -> str:
    """Settle one estimated request; OpenRouter answers 404 for a few seconds after a generation, so retry."""
    return services.settle_generation(request_id=request_id).outcome


@shared_task(time_limit=120)
def purge_idempotent_requests_task() -> int:
    return services.purge_expired_idempotent_requests()
