"""Reads for the usage page and the admin: messages per day, today's limits, breakdowns by key and model."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from accounts.access import WorkspaceAccess, load_user_access
from accounts.models import Membership, User
from apikeys.models import DeveloperKey
from billing.models import DailyMessageCount, UsageEvent
from billing.quotas import billing_day, reserve_in_database, scopes_for

USAGE_PAGE_DAYS = 30


@dataclass(frozen=True)
class DayUsage:
    day: dt.date
    messages: int
    byok_messages: int
    requests: int


@dataclass(frozen=True)
class LimitUsage:
    code: str
    description: str
    limit: int
    used: int
    remaining: int
    resets_at: dt.datetime


@dataclass(frozen=True)
class BreakdownRow:
    label: str
    requests: int
    messages: int
    byok_messages: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class UsageSummary:
    workspace: WorkspaceAccess
    today: dt.date
    days: tuple[DayUsage, ...]
    used_today: int
    byok_today: int
    limits: tuple[LimitUsage, ...]
    by_key: tuple[BreakdownRow, ...]
    by_model: tuple[BreakdownRow, ...]
    sees_all_members: bool

    @property
    def remaining_today(self) -> int | None:
        return min((limit.remaining for limit in self.limits), default=None)


def limit_usage(*, workspace: WorkspaceAccess, user_id: int) -> tuple[LimitUsage, ...]:
    """Each limit that applies today with its used (settled + in-flight on the database path) and remaining."""
    day = billing_day()
    scopes = scopes_for(workspace=workspace, user_id=user_id, day=day)
    if not scopes:
        return ()
    _admitted, figures = reserve_in_database(
        request_id="", scopes=scopes, workspace_id=workspace.workspace_id, user_id=user_id, day=day, reserve=False
    )
    rows = []
    for scope in scopes:
        used = sum(figures[scope.counter.key])
        rows.append(
            LimitUsage(
                scope.code, scope.description, scope.limit, used, max(0, scope.limit - used), scope.counter.reset_at
            )
        )
    return tuple(rows)


def _breakdown(events: QuerySet[UsageEvent], field: str) -> list[dict]:
    zero = Value(0)
    return list(
        events.values(field)
        .annotate(
            requests=Count("id", filter=Q(kind=UsageEvent.Kind.REQUEST)),
            messages=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok_messages=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
            input_tokens=Coalesce(Sum("prompt_tokens"), zero),
            output_tokens=Coalesce(Sum("completion_tokens"), zero),
        )
        .order_by("-messages", "-requests", field)
    )


def _row(label: str, figures: dict) -> BreakdownRow:
    return BreakdownRow(
        label=label,
        requests=figures["requests"],
        messages=figures["messages"],
        byok_messages=figures["byok_messages"],
        input_tokens=figures["input_tokens"],
        output_tokens=figures["output_tokens"],
    )


def find_usage_summary(*, user: User, workspace_id: int | None = None) -> UsageSummary | None:
    """The usage page of `user`'s current (or given) workspace; None if they are not a member.

    Owners and admins see every member's keys; members see their own.
    """
    access = load_user_access(user_id=user.pk)
    if access is None:
        return None
    workspace = access.workspaces.get(workspace_id or access.current_workspace_id or 0)
    if workspace is None:
        return None
    today = billing_day()
    first = today - dt.timedelta(days=USAGE_PAGE_DAYS - 1)

    # Past days come from the roll-up; today from the ledger, which the roll-up has not caught up with.
    per_day = {
        row["day"]: (row["messages"], row["byok"], row["requests"])
        for row in DailyMessageCount.objects.filter(workspace_id=workspace.workspace_id, day__gte=first, day__lt=today)
        .values("day")
        .annotate(messages=Sum("count"), byok=Sum("byok_count"), requests=Sum("requests"))
        .order_by()
    }
    zero = Value(0)
    live = UsageEvent.objects.filter(workspace_id=workspace.workspace_id, day=today).aggregate(
        messages=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
        byok=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
        requests=Count("id", filter=Q(kind=UsageEvent.Kind.REQUEST)),
    )
    per_day[today] = (live["messages"], live["byok"], live["requests"])
    days = tuple(
        DayUsage(day, *per_day.get(day, (0, 0, 0)))
        for day in (first + dt.timedelta(days=i) for i in range(USAGE_PAGE_DAYS))
    )

    sees_all = workspace.role in (Membership.Role.OWNER, Membership.Role.ADMIN)
    events = UsageEvent.objects.filter(workspace_id=workspace.workspace_id, day__gte=first)
    if not sees_all:
        events = events.filter(user_id=user.pk)
    key_rows = _breakdown(events, "key_id")
    key_names = {
        key.pk: f"{key.name} ({key.masked})" + ("" if key.user_id == user.pk else f" · {key.user}")
        for key in DeveloperKey.objects.filter(pk__in=[r["key_id"] for r in key_rows if r["key_id"]]).select_related(
            "user"
        )
    }
    by_key = tuple(
        _row(key_names.get(r["key_id"], "Deleted key") if r["key_id"] else "Without a key (site)", r) for r in key_rows
    )
    by_model = tuple(_row(r["model"], r) for r in _breakdown(events, "model"))

    return UsageSummary(
        workspace=workspace,
        today=today,
        days=days,
        used_today=live["messages"],
        byok_today=live["byok"],
        limits=limit_usage(workspace=workspace, user_id=user.pk),
        by_key=by_key,
        by_model=by_model,
        sees_all_members=sees_all,
    )


def workspace_access_for_admin(*, workspace_id: int) -> WorkspaceAccess | None:
    """The limits of a workspace as the API sees them, via any member (limits do not depend on the member)."""
    for user_id in (
        Membership.objects.filter(workspace_id=workspace_id).order_by("id").values_list("user_id", flat=True)
    ):
        access = load_user_access(user_id=user_id)
        if access is not None and workspace_id in access.workspaces:
            return access.workspaces[workspace_id]
    return None


def workspace_used_today(*, workspace_ids: list[int]) -> dict[int, tuple[int, int, int]]:
    """{workspace id: (messages, BYOK messages, requests)} for today, from the ledger."""
    zero = Value(0)
    rows = (
        UsageEvent.objects.filter(workspace_id__in=workspace_ids, day=billing_day())
        .values("workspace_id")
        .annotate(
            messages=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
            requests=Count("id", filter=Q(kind=UsageEvent.Kind.REQUEST)),
        )
        .order_by()
    )
    return {r["workspace_id"]: (r["messages"], r["byok"], r["requests"]) for r in rows}


def member_usage_today(*, workspace_id: int) -> list[tuple[str, int, int]]:
    """(email, messages, BYOK messages) today for every member of a workspace, from the ledger."""
    zero = Value(0)
    used = {
        row["user_id"]: (row["messages"], row["byok"])
        for row in UsageEvent.objects.filter(workspace_id=workspace_id, day=billing_day())
        .values("user_id")
        .annotate(
            messages=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
            byok=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
        )
        .order_by()
    }
    members = Membership.objects.filter(workspace_id=workspace_id).select_related("user").order_by("id")
    return [(m.user.email, *used.get(m.user_id, (0, 0))) for m in members]


@dataclass(frozen=True)
class KeyUsage:
    """A developer key's ledger figures; messages are those counted against limits (BYOK excluded)."""

    requests_today: int = 0
    messages_today: int = 0
    requests_month: int = 0
    messages_month: int = 0


def key_usage(*, key_ids: list[int], today: dt.date | None = None) -> dict[int, KeyUsage]:
    """{key id: usage today and this billing month} from the ledger, in one query; keys unused are absent."""
    today = today or billing_day()
    is_request = Q(kind=UsageEvent.Kind.REQUEST)
    counted = Q(byok=False)
    rows = (
        UsageEvent.objects.filter(key_id__in=key_ids, day__gte=today.replace(day=1), day__lte=today)
        .order_by()
        .values("key_id")
        .annotate(
            requests_today=Count("id", filter=is_request & Q(day=today)),
            messages_today=Coalesce(Sum("counted_messages", filter=counted & Q(day=today)), Value(0)),
            requests_month=Count("id", filter=is_request),
            messages_month=Coalesce(Sum("counted_messages", filter=counted), Value(0)),
        )
    )
    return {row.pop("key_id"): KeyUsage(**row) for row in rows}
