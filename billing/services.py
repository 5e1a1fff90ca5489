"""Ledger writes, daily roll-ups, their audit, and settlement of estimated usage against OpenRouter.

The ledger (UsageEvent) is append-only and the truth: daily_message_count rows and quota counters
are recomputed from it, so every function here is safe to re-run.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import requests
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.encryption import decrypt_secret
from accounts.models import OpenRouterKey
from billing.counting import count_messages
from billing.models import DailyMessageCount, IdempotentRequest, UsageEvent
from billing.quotas import (
    CounterSettle,
    billing_day,
    counters_for,
    lock_in_transaction,
    release_database_reservations,
    settle_counters_sync,
)
from writingmate.redis_connection import sync_redis

logger = logging.getLogger(__name__)

LEDGER_SPOOL_KEY = "wm:ledger:spool"
_ROLLUP_LOCK = (0x574E, 1)
_GENERATION_TIMEOUT_SECONDS = (3.05, 10.0)
_SETTLE_MIN_AGE_SECONDS = 5
_SETTLE_MAX_AGE_DAYS = 7


@dataclass(frozen=True)
class UsageRecord:
    """What the gateway hands billing about one finished request."""

    request_id: str
    workspace_id: int
    user_id: int
    key_id: int | None
    model: str
    endpoint: str  # "chat.completions" | "completions" | "responses" | "audio.transcriptions"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    byok: bool
    status: str  # a UsageEvent.Status value
    latency_ms: int
    generation_id: str = ""
    tokens_estimated: bool = False


@dataclass(frozen=True)
class LedgerEntry:
    usage: UsageRecord
    day: dt.date
    counted_messages: int
    created_at: dt.datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "usage": asdict(self.usage),
                "day": self.day.isoformat(),
                "counted_messages": self.counted_messages,
                "created_at": self.created_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> LedgerEntry:
        data = json.loads(raw)
        return cls(
            usage=UsageRecord(**data["usage"]),
            day=dt.date.fromisoformat(data["day"]),
            counted_messages=data["counted_messages"],
            created_at=dt.datetime.fromisoformat(data["created_at"]),
        )


def count_for(usage: UsageRecord) -> int:
    """The messages `usage` counts (pure; BYOK requests count too, they are just not limited)."""
    return count_messages(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        status=usage.status,
    )


def _clamp(tokens: int) -> int:
    # An upstream reporting absurd usage must not overflow a bigint column and lose the event.
    return min(max(0, int(tokens)), 2**62)


def _text(value: str, length: int) -> str:
    # PostgreSQL refuses NUL in text; a client-chosen model name must not make a line unwritable.
    return str(value).replace("\x00", "")[:length]


_LEDGER_COLUMNS = (
    "request_id",
    "kind",
    "workspace_id",
    "user_id",
    "key_id",
    "model",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "counted_messages",
    "byok",
    "status",
    "tokens_estimated",
    "generation_id",
    "latency_ms",
    "day",
    "created_at",
)
_LEDGER_ROW = "(" + ", ".join(["%s"] * len(_LEDGER_COLUMNS)) + ")"


def _ledger_row(entry: LedgerEntry) -> tuple:
    usage, ops = entry.usage, connection.ops
    return (
        _text(usage.request_id, 64),
        UsageEvent.Kind.REQUEST.value,
        usage.workspace_id,
        usage.user_id,
        usage.key_id,
        _text(usage.model, 200),
        _text(usage.endpoint, 40),
        _clamp(usage.prompt_tokens),
        _clamp(usage.completion_tokens),
        _clamp(usage.cached_tokens),
        min(entry.counted_messages, 2**31 - 1),
        usage.byok,
        usage.status,
        usage.tokens_estimated,
        _text(usage.generation_id, 200),
        min(max(0, usage.latency_ms), 2**31 - 1),
        ops.adapt_datefield_value(entry.day),
        ops.adapt_datetimefield_value(entry.created_at),
    )


@functools.cache
def _json_insert_sql() -> str:
    """PostgreSQL: one fixed statement for any batch size; the rows travel as one JSON array."""
    table, columns = UsageEvent._meta.db_table, ", ".join(_LEDGER_COLUMNS)
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608
        f"FROM json_populate_recordset(NULL::{table}, %s::json) ON CONFLICT (request_id, kind) DO NOTHING"
    )


def _insert_ledger_rows(entries: Sequence[LedgerEntry]) -> None:
    """One INSERT of the whole batch that skips lines already there (idempotent per request id and kind).

    Written as SQL rather than bulk_create: building model instances and compiling the query cost
    ~0.5 ms of CPU per batch here. On PostgreSQL the rows go as one JSON parameter: the statement
    never changes, so psycopg converts it once, where a VALUES list growing with the batch was parsed
    again every time (13 us of CPU per line, more than the JSON encoding and the database's decoding).
    """
    rows = [_ledger_row(entry) for entry in entries]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The row ends with the day and created_at, which JSON carries as ISO 8601 text.
            batch = [
                dict(zip(_LEDGER_COLUMNS, (*row[:-2], row[-2].isoformat(), row[-1].isoformat()), strict=True))
                for row in rows
            ]
            cursor.execute(_json_insert_sql(), [json.dumps(batch)])
            return
        # Only constants and placeholders go into the text; the values travel as parameters.
        sql = (
            f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(_LEDGER_COLUMNS)}) "  # noqa: S608
            f"VALUES {', '.join([_LEDGER_ROW] * len(rows))} ON CONFLICT (request_id, kind) DO NOTHING"
        )
        cursor.execute(sql, [value for row in rows for value in row])


def write_ledger_entries(*, entries: Sequence[LedgerEntry], release_request_ids: Sequence[str] = ()) -> None:
    """Append many ledger lines in one transaction (one INSERT); idempotent per request id.

    Database-path reservations of the same requests are released in the same transaction, so a
    request is never counted both as used and as in flight once this commits.
    """
    if not entries:
        return
    if not release_request_ids:
        # One INSERT is atomic by itself: no BEGIN/COMMIT round trips on the hot path.
        _insert_ledger_rows(entries)
        return
    with transaction.atomic():
        _insert_ledger_rows(entries)
        release_database_reservations(request_ids=release_request_ids)


def write_ledger_entries_isolating(
    *, entries: Sequence[LedgerEntry], release_request_ids: Sequence[str] = ()
) -> list[LedgerEntry]:
    """`write_ledger_entries`, but a line the database rejects (not a connection problem) cannot take
    the rest of its batch down with it: the batch is retried line by line. Returns the rejected lines.

    Connection problems (OperationalError, InterfaceError) propagate, for the caller to retry.
    """
    try:
        write_ledger_entries(entries=entries, release_request_ids=release_request_ids)
        return []
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        if len(entries) == 1:
            return list(entries)
    rejected = []
    for entry in entries:
        try:
            write_ledger_entries(entries=[entry], release_request_ids=[entry.usage.request_id])
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            rejected.append(entry)
    return rejected


def record_usage(*, usage: UsageRecord, day: dt.date | None = None) -> int:
    """Append one request's ledger line and count it in the quota counters (sync). Returns its messages."""
    now = timezone.now()
    entry = LedgerEntry(usage=usage, day=day or billing_day(now), counted_messages=count_for(usage), created_at=now)
    write_ledger_entries(entries=[entry], release_request_ids=[usage.request_id])
    if not usage.byok:
        settle_counters_sync(
            [
                CounterSettle(
                    request_id=usage.request_id,
                    ledger_field=f"{UsageEvent.Kind.REQUEST}:{usage.request_id}",
                    messages=entry.counted_messages,
                    counters=counters_for(workspace_id=usage.workspace_id, user_id=usage.user_id, day=entry.day),
                )
            ]
        )
    return entry.counted_messages


def spool_ledger_entries(*, entries: Sequence[LedgerEntry]) -> bool:
    """Park entries the database would not take in a Redis list; the roll-up task replays them."""
    client = sync_redis()
    if client is None:
        return False
    try:
        client.rpush(LEDGER_SPOOL_KEY, *[entry.to_json() for entry in entries])
    except Exception:
        logger.exception("ledger: could not spool %d usage events to Redis either", len(entries))
        return False
    return True


def drain_ledger_spool(*, batch_size: int = 500) -> int:
    """Write spooled entries to the ledger (idempotent: the ledger ignores request ids it has)."""
    client = sync_redis()
    if client is None:
        return 0
    drained = 0
    while True:
        raw = client.lrange(LEDGER_SPOOL_KEY, 0, batch_size - 1)
        if not raw:
            return drained
        entries = [LedgerEntry.from_json(item) for item in raw]
        rejected = write_ledger_entries_isolating(
            entries=entries, release_request_ids=[e.usage.request_id for e in entries]
        )
        for entry in rejected:
            logger.critical("ledger: the database rejects spooled usage event %s", entry.to_json())
        # Removed only after the write committed: a crash in between replays, which the ledger ignores.
        client.ltrim(LEDGER_SPOOL_KEY, len(raw), -1)
        drained += len(entries)
        for day in {e.day for e in entries}:
            rollup_daily_message_counts(days=[day], workspace_ids=[e.usage.workspace_id for e in entries])


# ---- roll-ups and their audit ------------------------------------------------------------------


@dataclass(frozen=True)
class RollupResult:
    days: tuple[dt.date, ...]
    rows: int


def default_rollup_days() -> list[dt.date]:
    """Today and yesterday: late finishers and settlements land on the day their request started."""
    today = billing_day()
    return [today - dt.timedelta(days=1), today]


def _daily_figures(events) -> Iterable[dict]:
    zero = Value(0)
    return (
        events.values("workspace_id", "user_id", "day")
        .annotate(
            count=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok_count=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
            input_tokens=Coalesce(Sum("prompt_tokens"), zero),
            output_tokens=Coalesce(Sum("completion_tokens"), zero),
            cached_tokens=Coalesce(Sum("cached_tokens"), zero),
            requests=Count("id", filter=Q(kind=UsageEvent.Kind.REQUEST)),
        )
        .order_by()
    )


_FIGURES = ("count", "byok_count", "input_tokens", "output_tokens", "cached_tokens", "requests")


def rollup_daily_message_counts(
    *, days: Iterable[dt.date] | None = None, workspace_ids: Iterable[int] | None = None
) -> RollupResult:
    """Recompute daily_message_count rows of `days` from the ledger and upsert them.

    Idempotent, and safe to run concurrently: runs take a lock and read the ledger after acquiring
    it, so a slower run can never overwrite a newer result with older figures.
    """
    chosen_days = tuple(sorted(set(days if days is not None else default_rollup_days())))
    events = UsageEvent.objects.filter(day__in=chosen_days)
    if workspace_ids is not None:
        events = events.filter(workspace_id__in=set(workspace_ids))
    now = timezone.now()
    with transaction.atomic():
        lock_in_transaction(namespace=_ROLLUP_LOCK[0], key=_ROLLUP_LOCK[1])
        rows = [
            DailyMessageCount(
                workspace_id=figures["workspace_id"],
                user_id=figures["user_id"],
                day=figures["day"],
                updated_at=now,
                **{name: figures[name] for name in _FIGURES},
            )
            for figures in _daily_figures(events)
        ]
        DailyMessageCount.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["workspace", "user", "day"],
            update_fields=[*_FIGURES, "updated_at"],
        )
    return RollupResult(days=chosen_days, rows=len(rows))


@dataclass(frozen=True)
class AuditResult:
    days: int
    rows: int
    mismatches: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def audit_daily_message_counts(*, days: Iterable[dt.date] | None = None, include_today: bool = False) -> AuditResult:
    """Compare every daily_message_count row with the sum of its ledger lines (read-only).

    By default every day up to yesterday; today is still being written to and rolled up.
    """
    events = UsageEvent.objects.all()
    rows = DailyMessageCount.objects.all()
    if days is not None:
        chosen = set(days)
        events, rows = events.filter(day__in=chosen), rows.filter(day__in=chosen)
    if not include_today:
        today = billing_day()
        events, rows = events.filter(day__lt=today), rows.filter(day__lt=today)
    expected = {
        (f["workspace_id"], f["user_id"], f["day"]): tuple(f[n] for n in _FIGURES) for f in _daily_figures(events)
    }
    actual = {
        (r["workspace_id"], r["user_id"], r["day"]): tuple(r[n] for n in _FIGURES)
        for r in rows.values("workspace_id", "user_id", "day", *_FIGURES)
    }
    zero = (0,) * len(_FIGURES)
    mismatches = []
    for ident in sorted(set(expected) | set(actual), key=lambda i: (i[2], i[0], i[1])):
        want, have = expected.get(ident, zero), actual.get(ident)
        if have != want and not (have is None and want == zero):
            workspace_id, user_id, day = ident
            mismatches.append(
                f"{day} workspace {workspace_id} user {user_id}: ledger {dict(zip(_FIGURES, want, strict=True))}, "
                f"daily_message_count {dict(zip(_FIGURES, have, strict=True)) if have else 'missing'}"
            )
    return AuditResult(days=len({i[2] for i in expected | actual}), rows=len(actual), mismatches=tuple(mismatches))


# ---- settlement of estimated usage --------------------------------------------------------------


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


def fetch_generation_stats(*, generation_id: str, api_key: str) -> GenerationStats:
    """GET {OPENROUTER_BASE_URL}/generation?id=…; native token counts where OpenRouter gives them."""
    response = requests.get(
        f"{settings.OPENROUTER_BASE_URL}/generation",
        params={"id": generation_id},
        headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        timeout=_GENERATION_TIMEOUT_SECONDS,
        allow_redirects=False,
    )
    if response.status_code == 404:
        raise GenerationNotReady(generation_id)
    if response.status_code != 200:
        raise GenerationStatsUnavailable(f"generation stats for {generation_id}: HTTP {response.status_code}")
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GenerationStatsUnavailable(f"generation stats for {generation_id}: malformed body") from exc

    def figure(native: str, plain: str) -> int:
        value = data.get(native)
        if value is None:
            value = data.get(plain)
        return _clamp(value or 0)

    return GenerationStats(
        prompt_tokens=figure("native_tokens_prompt", "tokens_prompt"),
        completion_tokens=figure("native_tokens_completion", "tokens_completion"),
        cached_tokens=figure("native_tokens_cached", "native_tokens_cached"),
    )


def _upstream_key_for(event: UsageEvent) -> str | None:
    """The key the generation was made with: the user's own for BYOK, the server's otherwise."""
    if not event.byok:
        return settings.OPENROUTER_API_KEY or None
    ciphertext = OpenRouterKey.objects.filter(user_id=event.user_id).values_list("encrypted_key", flat=True).first()
    return decrypt_secret(ciphertext) if ciphertext else None


def settle_generation(*, request_id: str) -> Settlement:
    """Correct an estimated request to OpenRouter's own figures with one settlement ledger line.

    Idempotent: the ledger holds at most one settlement per request (a unique constraint), and the
    counters and the day's roll-up are corrected only by the run that wrote it. Raises
    GenerationNotReady / GenerationStatsUnavailable / requests exceptions for the caller to retry.
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
    stats = fetch_generation_stats(generation_id=event.generation_id, api_key=api_key)
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
                    counters=counters_for(workspace_id=event.workspace_id, user_id=event.user_id, day=event.day),
                )
            ]
        )
    rollup_daily_message_counts(days=[event.day], workspace_ids=[event.workspace_id])
    return Settlement(request_id, "settled", delta)


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


def settle_pending_generations(*, limit: int = 200) -> dict[str, int]:
    """Try to settle every pending estimated request once; failures wait for the next run."""
    outcomes: dict[str, int] = {}
    for request_id in pending_settlement_request_ids(limit=limit):
        try:
            outcome = settle_generation(request_id=request_id).outcome
        except GenerationNotReady:
            outcome = "not_ready"
        except (GenerationStatsUnavailable, requests.RequestException) as exc:
            logger.warning("settlement of %s failed: %s", request_id, exc)
            outcome = "error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


# ---- idempotency keys ----------------------------------------------------------------------------


def purge_expired_idempotent_requests() -> int:
    """Forget Idempotency-Keys older than IDEMPOTENCY_KEY_TTL_SECONDS."""
    cutoff = timezone.now() - dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    deleted, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return deleted
