"""Settlement of estimated usage against the upstream's own figures: a second ledger line, never an edit.

Asking the upstream is the provider's business (gateway.providers.openrouter.fetch_generation_stats);
the caller passes that function in, so billing never imports the gateway.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.encryption import decrypt_secret
from accounts.models import OpenRouterKey
from apikeys.models import DeveloperKey
from apikeys.services import limits_version
from billing.counting import count_messages
from billing.models import UsageEvent
from billing.quotas import Counter, CounterSettle, counters_for, key_counter_for, settle_counters_sync
from billing.rollups import rollup_daily_message_counts

logger = logging.getLogger(__name__)

_SETTLE_MIN_AGE_SECONDS = 5
_SETTLE_MAX_AGE_DAYS = 7


class GenerationNotReady(Exception):
    """OpenRouter does not have stats for the generation yet (it answers 404 for a while)."""


class GenerationStatsUnavailable(Exception):
    """OpenRouter answered with an error; retry later."""


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Settlement:
    request_id: str
    outcome: str  # "settled", "already_settled", "not_estimated", "not_found", "no_key"
    delta_messages: int = 0


FetchGenerationStats = Callable[..., GenerationStats]
"""`fetch(generation_id=..., api_key=...)`: raises GenerationNotReady or GenerationStatsUnavailable."""


def _upstream_key_for(event: UsageEvent) -> str | None:
    """The key the generation was made with: the user's own for BYOK, the server's otherwise."""
    if not event.byok:
        return settings.OPENROUTER_API_KEY or None
    ciphertext = OpenRouterKey.objects.filter(user_id=event.user_id).values_list("encrypted_key", flat=True).first()
    return decrypt_secret(ciphertext) if ciphertext else None


def settle_generation(*, request_id: str, fetch_stats: FetchGenerationStats) -> Settlement:
    """Correct an estimated request to OpenRouter's own figures with one settlement ledger line.

    Idempotent: the ledger holds at most one settlement per request (a unique constraint), and the
    counters and the day's roll-up are corrected only by the run that wrote it. Raises
    GenerationNotReady / GenerationStatsUnavailable (from `fetch_stats`) for the caller to retry.
    """
    event = UsageEvent.objects.filter(request_id=request_id, kind=UsageEvent.Kind.REQUEST).first()
    if event is None:
        return Settlement(request_id, "not_found")
    if not event.tokens_estimated or not event.generation_id:
        return Settlement(request_id, "not_estimated")
    if UsageEvent.objects.filter(request_id=request_id, kind=UsageEvent.Kind.SETTLEMENT).exists():
        return Settlement(request_id, "already_settled")
    api_key = _upstream_key_for(event)
    if api_key is None:
        logger.warning(
            "settlement: no OpenRouter key to ask about %s (%s); left estimated", request_id, event.generation_id
        )
        return Settlement(request_id, "no_key")
    stats = fetch_stats(generation_id=event.generation_id, api_key=api_key)
    messages = count_messages(
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        cached_tokens=stats.cached_tokens,
        status=event.status,
    )
    delta = messages - event.counted_messages
    try:
        with transaction.atomic():
            UsageEvent.objects.create(
                request_id=request_id,
                kind=UsageEvent.Kind.SETTLEMENT,
                workspace_id=event.workspace_id,
                user_id=event.user_id,
                key_id=event.key_id,
                model=event.model,
                endpoint=event.endpoint,
                prompt_tokens=stats.prompt_tokens - event.prompt_tokens,
                completion_tokens=stats.completion_tokens - event.completion_tokens,
                cached_tokens=stats.cached_tokens - event.cached_tokens,
                counted_messages=delta,
                byok=event.byok,
                status=event.status,
                tokens_estimated=False,
                generation_id=event.generation_id,
                latency_ms=0,
                day=event.day,
            )
    except IntegrityError:
        return Settlement(request_id, "already_settled")
    if not event.byok and delta:
        settle_counters_sync(
            [
                CounterSettle(
                    request_id=request_id,
                    ledger_field=f"{UsageEvent.Kind.SETTLEMENT}:{request_id}",
                    messages=delta,
                    counters=counters_for(workspace_id=event.workspace_id, user_id=event.user_id, day=event.day)
                    + _key_counters(key_id=event.key_id, day=event.day),
                )
            ]
        )
    rollup_daily_message_counts(days=[event.day], workspace_ids=[event.workspace_id])
    return Settlement(request_id, "settled", delta)


def _key_counters(*, key_id: int | None, day: dt.date) -> tuple[Counter, ...]:
    """The counter of the key's own budget, when it has one: its requests' corrections count there too."""
    key = DeveloperKey.objects.filter(pk=key_id, daily_message_limit__isnull=False).first() if key_id else None
    if key is None:
        return ()
    return (key_counter_for(key_id=key.pk, version=limits_version(key), day=day),)


def pending_settlement_request_ids(*, limit: int = 200) -> list[str]:
    """Estimated requests with a generation id and no settlement yet, old enough for OpenRouter to know them."""
    now = timezone.now()
    settled = UsageEvent.objects.filter(kind=UsageEvent.Kind.SETTLEMENT).values("request_id")
    return list(
        UsageEvent.objects.filter(
            kind=UsageEvent.Kind.REQUEST,
            tokens_estimated=True,
            created_at__lte=now - dt.timedelta(seconds=_SETTLE_MIN_AGE_SECONDS),
            created_at__gte=now - dt.timedelta(days=_SETTLE_MAX_AGE_DAYS),
        )
        .exclude(generation_id="")
        .exclude(request_id__in=settled)
        .order_by("created_at")
        .values_list("request_id", flat=True)[:limit]
    )


def settle_pending_generations(*, fetch_stats: FetchGenerationStats, limit: int = 200) -> dict[str, int]:
    """Try to settle every pending estimated request once; failures wait for the next run."""
    outcomes: dict[str, int] = {}
    for request_id in pending_settlement_request_ids(limit=limit):
        try:
            outcome = settle_generation(request_id=request_id, fetch_stats=fetch_stats).outcome
        except GenerationNotReady:
            outcome = "not_ready"
        except GenerationStatsUnavailable as exc:
            logger.warning("settlement of %s failed: %s", request_id, exc)
            outcome = "error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes
