"""The database path of the quotas: used messages from the ledger, in-flight holds as rows, a lock per workspace.

Used while Redis is unavailable, and by the Redis counters to rebuild themselves from the ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, IntegerField, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Workspace
from billing.models import QuotaReservation, UsageEvent
from billing.quotas.scopes import Counter, Scope, distinct_counters

# Namespaces of the PostgreSQL advisory locks taken per workspace and per developer key on the database path.
_ADVISORY_LOCK_CLASS = 0x574D
_KEY_LOCK_CLASS = 0x574B


def _owner_filter(counter: Counter) -> dict[str, int | None]:
    """Whose lines a counter counts: one key's (in any workspace), or a workspace's (or one member's)."""
    if counter.key_id is not None:
        return {"key_id": counter.key_id}
    owner: dict[str, int | None] = {"workspace_id": counter.workspace_id}
    if counter.user_id is not None:
        owner["user_id"] = counter.user_id
    return owner


def _group_field(counter: Counter) -> str:
    # A field constant over the counter's rows, so an aggregate over them is one row.
    return "key_id" if counter.key_id is not None else "workspace_id"


def counter_events(counter: Counter) -> QuerySet[UsageEvent]:
    return UsageEvent.objects.filter(
        **_owner_filter(counter), day__gte=counter.first_day, day__lte=counter.last_day, byok=False
    )


def counter_reservations(counter: Counter, now: dt.datetime) -> QuerySet[QuotaReservation]:
    return QuotaReservation.objects.filter(
        **_owner_filter(counter), day__gte=counter.first_day, day__lte=counter.last_day, expires_at__gt=now
    )


def ledger_lines_for(counter: Counter, *, since: dt.datetime | None = None) -> list[tuple[str, int, str]]:
    """(field, messages, request id) of every ledger line that counts against `counter` (written since `since`)."""
    events = counter_events(counter).exclude(counted_messages=0)
    if since is not None:
        events = events.filter(created_at__gte=since)
    rows = events.values_list("kind", "request_id", "counted_messages")
    return [(f"{kind}:{request_id}", messages, request_id) for kind, request_id, messages in rows]


def rebuild_payload(
    counter: Counter, since: dt.datetime | None = None
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int]]]:
    # Holds first, then the ledger: a request finishing in between shows up in both and is counted
    # once, as used. The other order could miss it in both.
    now = timezone.now()
    holds = list(counter_reservations(counter, now).values_list("request_id", "expires_at"))
    lines = ledger_lines_for(counter, since=since)
    finished = {request_id for _field, _messages, request_id in lines}
    reservations = [
        (request_id, int(expires_at.timestamp() * 1000))
        for request_id, expires_at in holds
        if request_id not in finished
    ]
    return lines, reservations


def figures_at_once(counters: Sequence[Counter], *, workspace_id: int, request_id: str) -> dict[str, tuple[int, int]]:
    """{counter key: (used, in flight)} read in ONE statement, so one snapshot.

    Separate queries under READ COMMITTED could read the ledger before a request's line commits and
    the holds after its reservation is deleted, missing it in both: one admission too many.
    """
    now = timezone.now()
    annotations = {}
    for index, counter in enumerate(counters):
        group = _group_field(counter)
        used = counter_events(counter).order_by().values(group).annotate(total=Sum("counted_messages"))
        holds = (
            counter_reservations(counter, now)
            .exclude(request_id=request_id)
            .order_by()
            .values(group)
            .annotate(total=Count("id"))
        )
        annotations[f"used_{index}"] = Coalesce(Subquery(used.values("total"), output_field=IntegerField()), Value(0))
        annotations[f"holds_{index}"] = Coalesce(Subquery(holds.values("total"), output_field=IntegerField()), Value(0))
    row = Workspace.objects.filter(pk=workspace_id).annotate(**annotations).values(*annotations).first()
    if row is None:  # a workspace deleted under a live key: nothing to count against
        return {counter.key: (0, 0) for counter in counters}
    return {counter.key: (row[f"used_{i}"], row[f"holds_{i}"]) for i, counter in enumerate(counters)}


def lock_in_transaction(*, namespace: int, key: int) -> None:
    """Serialise holders of (namespace, key) until the current transaction ends.

    PostgreSQL: a transaction-level advisory lock. SQLite has one writer, so a first write takes its
    write lock for the rest of the transaction; callers there are serialised whatever the key.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, key % 2**31])
    else:
        QuotaReservation.objects.filter(pk=-1).delete()


def _lock_workspace(workspace_id: int, key_id: int | None) -> None:
    """The workspace's lock, then (a key's budget spans workspaces) the key's; always in that order."""
    lock_in_transaction(namespace=_ADVISORY_LOCK_CLASS, key=workspace_id)
    # Reservations of processes that died would otherwise linger until their workspace's next reserve.
    QuotaReservation.objects.filter(workspace_id=workspace_id, expires_at__lte=timezone.now()).delete()
    if key_id is not None:
        lock_in_transaction(namespace=_KEY_LOCK_CLASS, key=key_id)


def reserve_in_database(
    *,
    request_id: str,
    scopes: Sequence[Scope],
    workspace_id: int,
    user_id: int,
    day: dt.date,
    reserve: bool,
    extra_holds: dict[str, int] | None = None,
) -> tuple[bool, dict[str, tuple[int, int]]]:
    """Check every scope and, if all have room (and `reserve`), hold one message. Under a workspace lock
    (and the key's, when the key has a budget of its own).

    `extra_holds` are in-flight messages per counter key the database does not know (Redis holds).
    Returns (admitted, {counter key: (used, in flight)}), in-flight figures including this reservation.
    """
    counters = distinct_counters(scopes)
    key_id = next((c.key_id for c in counters if c.key_id is not None), None)
    with transaction.atomic():
        if reserve:
            _lock_workspace(workspace_id, key_id)
        now = timezone.now()
        figures = figures_at_once(counters, workspace_id=workspace_id, request_id=request_id)
        if extra_holds:
            figures = {key: (used, held + extra_holds.get(key, 0)) for key, (used, held) in figures.items()}
        admitted = all(sum(figures[s.counter.key]) + 1 <= s.limit for s in scopes)
        if reserve and admitted:
            expires_at = now + dt.timedelta(seconds=settings.BILLING_RESERVATION_TTL_SECONDS)
            QuotaReservation.objects.update_or_create(
                request_id=request_id,
                defaults={
                    "workspace_id": workspace_id,
                    "user_id": user_id,
                    "key_id": key_id,
                    "day": day,
                    "expires_at": expires_at,
                },
            )
            figures = {key: (used, inflight + 1) for key, (used, inflight) in figures.items()}
    return admitted, figures


def release_database_reservations(*, request_ids: Iterable[str]) -> None:
    QuotaReservation.objects.filter(request_id__in=list(request_ids)).delete()
