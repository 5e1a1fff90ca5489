"""Celery entry points for the gateway."""

from __future__ import annotations

from celery import shared_task

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


@shared_task(soft_time_limit=600, time_limit=660)
def purge_stored_responses_task() -> int:
    """Idempotent: deletes stored responses past RESPONSES_RETENTION_DAYS; returns how many."""
    return purge_expired_responses()
