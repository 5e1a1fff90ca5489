"""Celery entry points for the gateway: the model catalogue sync, settlement of estimated usage, the stored responses purge."""

from __future__ import annotations

from celery import shared_task

from billing import settlement
from gateway.providers.openrouter import fetch_generation_stats
from gateway.surfaces.openai.stored_responses import purge_expired_responses
from gateway.sync import ModelSyncUnavailable, sync_models


@shared_task(
    autoretry_for=(ModelSyncUnavailable,),
    retry_backoff=60,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=90,
    time_limit=120,
)
def sync_models_task() -> str:
    """Idempotent; retried only when OpenRouter is unreachable or answers 429/5xx."""
    return sync_models().summary()


@shared_task(time_limit=240, soft_time_limit=200)
def settle_pending_generations_task() -> dict[str, int]:
    return settlement.settle_pending_generations(fetch_stats=fetch_generation_stats)


@shared_task(
    bind=True,
    time_limit=60,
    autoretry_for=(settlement.GenerationNotReady, settlement.GenerationStatsUnavailable),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def settle_generation_task(self, request_id: str) -> str:
    """Settle one estimated request; OpenRouter answers 404 for a few seconds after a generation, so retry."""
    return settlement.settle_generation(request_id=request_id, fetch_stats=fetch_generation_stats).outcome


@shared_task(soft_time_limit=600, time_limit=660)
def purge_stored_responses_task() -> int:
    """Idempotent: deletes stored responses past RESPONSES_RETENTION_DAYS; returns how many."""
    return purge_expired_responses()
