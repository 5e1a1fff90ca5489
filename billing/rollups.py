"""Daily roll-ups of the ledger (daily_message_count) and their audit.

Every roll-up recomputes its rows from the ledger, so it is idempotent and safe to re-run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.ledger import drain_ledger_spool
from billing.models import DailyKeyModelCount, DailyMessageCount, UsageEvent
from billing.quotas import billing_day, lock_in_transaction

_ROLLUP_LOCK = (0x574E, 1)


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


def _key_model_figures(events) -> Iterable[dict]:
    zero = Value(0)
    return (
        events.values("workspace_id", "user_id", "key_id", "model", "day")
        .annotate(
            count=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok_count=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
            input_tokens=Coalesce(Sum("prompt_tokens"), zero),
            output_tokens=Coalesce(Sum("completion_tokens"), zero),
            cached_tokens=Coalesce(Sum("cached_tokens"), zero),
            requests=Count("id", filter=Q(kind=UsageEvent.Kind.REQUEST)),
            failed_requests=Count(
                "id", filter=Q(kind=UsageEvent.Kind.REQUEST) & ~Q(status=UsageEvent.Status.SUCCEEDED)
            ),
        )
        .order_by()
    )


def _rollup_by_key_and_model(events, *, days: tuple[dt.date, ...], workspace_ids: set[int] | None, now) -> None:
    """Replace the (day, workspace) slices of daily_key_model_count that `events` covers (under the roll-up lock).

    Delete and insert rather than upsert: a key-less (site) row has a NULL key, which a unique
    constraint cannot match on every database.
    """
    stale = DailyKeyModelCount.objects.filter(day__in=days)
    if workspace_ids is not None:
        stale = stale.filter(workspace_id__in=workspace_ids)
    stale.delete()
    DailyKeyModelCount.objects.bulk_create(
        [DailyKeyModelCount(updated_at=now, **figures) for figures in _key_model_figures(events)], batch_size=1000
    )


def rollup_daily_message_counts(
    *, days: Iterable[dt.date] | None = None, workspace_ids: Iterable[int] | None = None
) -> RollupResult:
    """Recompute daily_message_count rows of `days` from the ledger and upsert them.

    Idempotent, and safe to run concurrently: runs take a lock and read the ledger after acquiring
    it, so a slower run can never overwrite a newer result with older figures.
    """
    chosen_days = tuple(sorted(set(days if days is not None else default_rollup_days())))
    events = UsageEvent.objects.filter(day__in=chosen_days)
    chosen_workspaces = set(workspace_ids) if workspace_ids is not None else None
    if chosen_workspaces is not None:
        events = events.filter(workspace_id__in=chosen_workspaces)
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
        _rollup_by_key_and_model(events, days=chosen_days, workspace_ids=chosen_workspaces, now=now)
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
    mismatches += _audit_by_key_and_model(events, days=days, include_today=include_today)
    return AuditResult(days=len({i[2] for i in expected | actual}), rows=len(actual), mismatches=tuple(mismatches))


_KEY_MODEL_FIGURES = (*_FIGURES, "failed_requests")


def _audit_by_key_and_model(events, *, days: Iterable[dt.date] | None, include_today: bool) -> list[str]:
    """daily_key_model_count against the same ledger lines."""
    rows = DailyKeyModelCount.objects.all()
    if days is not None:
        rows = rows.filter(day__in=set(days))
    if not include_today:
        rows = rows.filter(day__lt=billing_day())
    identity = ("workspace_id", "user_id", "key_id", "model", "day")
    expected = {
        tuple(f[n] for n in identity): tuple(f[n] for n in _KEY_MODEL_FIGURES) for f in _key_model_figures(events)
    }
    actual: dict[tuple, tuple] = {}
    for r in rows.values(*identity, *_KEY_MODEL_FIGURES):
        ident = tuple(r[n] for n in identity)
        figures = tuple(r[n] for n in _KEY_MODEL_FIGURES)
        # Two rows for one identity would be double counting: add them up so the audit sees it.
        actual[ident] = (
            tuple(a + b for a, b in zip(actual[ident], figures, strict=True)) if ident in actual else figures
        )
    zero = (0,) * len(_KEY_MODEL_FIGURES)
    mismatches = []
    for ident in sorted(set(expected) | set(actual), key=lambda i: (i[4], i[0], i[1], i[2] or 0, i[3])):
        want, have = expected.get(ident, zero), actual.get(ident)
        if have != want and not (have is None and want == zero):
            workspace_id, user_id, key_id, model, day = ident
            mismatches.append(
                f"{day} workspace {workspace_id} user {user_id} key {key_id} model {model}: "
                f"ledger {dict(zip(_KEY_MODEL_FIGURES, want, strict=True))}, daily_key_model_count "
                f"{dict(zip(_KEY_MODEL_FIGURES, have, strict=True)) if have else 'missing'}"
            )
    return mismatches


def drain_spool_and_roll_up(*, days: Iterable[dt.date] | None = None) -> tuple[int, RollupResult]:
    """Replay spooled ledger lines (rolling up the days they touched), then roll up `days`.

    Returns the number of lines replayed and the roll-up of `days` (default today and yesterday).
    """
    replayed = drain_ledger_spool()
    for day in {day for day, _ in replayed}:
        rollup_daily_message_counts(days=[day], workspace_ids={w for d, w in replayed if d == day})
    return len(replayed), rollup_daily_message_counts(days=days)
