"""Reads for the usage page and the admin: messages per day, today's limits, breakdowns by key and model."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Max, Q, Sum, Value
from django.db.models.functions import Coalesce

from accounts.access import WorkspaceAccess, load_user_access
from accounts.models import Membership, User
from apikeys.models import DeveloperKey
from billing.models import DailyKeyModelCount, Refusal, UsageEvent
from billing.quotas import billing_day, reserve_in_database, scopes_for

USAGE_PAGE_DAYS = 30


@dataclass(frozen=True)
class DayUsage:
    day: dt.date
    messages: int
    byok_messages: int
    requests: int
    failed: int = 0


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
    workspaces: tuple[WorkspaceAccess, ...]
    today: dt.date
    span: UsageRange
    days: tuple[DayUsage, ...]
    used_today: int
    byok_today: int
    limits: tuple[LimitUsage, ...]
    by_key: tuple[BreakdownRow, ...]
    by_model: tuple[BreakdownRow, ...]
    by_day_model: tuple[DayModelRow, ...]
    refusals: tuple[RefusalRow, ...]
    refusals_today: tuple[RefusalRow, ...]
    failures: tuple[tuple[str, int], ...]  # (reason, requests) of requests that did not succeed
    sees_all_members: bool

    @property
    def remaining_today(self) -> int | None:
        return min((limit.remaining for limit in self.limits), default=None)

    @property
    def exhausted_limits(self) -> tuple[LimitUsage, ...]:
        """The limits with nothing left today, soonest reset first."""
        return tuple(sorted((lim for lim in self.limits if lim.remaining <= 0), key=lambda lim: lim.resets_at))

    @property
    def refused_total(self) -> int:
        return sum(r.count for r in self.refusals)

    @property
    def failed_total(self) -> int:
        return sum(count for _reason, count in self.failures)

    @property
    def total_messages(self) -> int:
        return sum(d.messages for d in self.days)


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


@dataclass(frozen=True)
class UsageRange:
    """The billing days a usage page shows, first to last inclusive; `preset` is 7, 30 or 90, or None."""

    first: dt.date
    last: dt.date
    preset: int | None

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @classmethod
    def last_days(cls, days: int, *, today: dt.date) -> UsageRange:
        return cls(today - dt.timedelta(days=days - 1), today, days)


@dataclass(frozen=True)
class DayModelRow:
    day: dt.date
    model: str
    requests: int
    failed: int
    messages: int
    byok_messages: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class RefusalRow:
    status: int
    code: str
    count: int
    last_at: dt.datetime
    message: str


@dataclass(frozen=True)
class UsageFigures:
    """One (day, key, model) of the page's scope: from the roll-up for past days, the ledger for today."""

    day: dt.date
    key_id: int | None
    model: str
    requests: int
    failed: int
    messages: int
    byok_messages: int
    input_tokens: int
    output_tokens: int


_SUMS = ("requests", "failed", "messages", "byok_messages", "input_tokens", "output_tokens")


def _usage_figures(*, workspace_id: int, user_id: int | None, span: UsageRange, today: dt.date) -> list[UsageFigures]:
    zero = Value(0)
    rolled = DailyKeyModelCount.objects.filter(workspace_id=workspace_id, day__gte=span.first, day__lte=span.last)
    rolled = rolled.filter(day__lt=today)
    live = UsageEvent.objects.filter(workspace_id=workspace_id, day=today) if span.first <= today <= span.last else None
    if user_id is not None:
        rolled = rolled.filter(user_id=user_id)
        live = live.filter(user_id=user_id) if live is not None else None
    rows = [
        UsageFigures(r["day"], r["key_id"], r["model"], *(r[name] for name in _SUMS))
        for r in rolled.values("day", "key_id", "model")
        .annotate(
            requests=Sum("requests"),
            failed=Sum("failed_requests"),
            messages=Sum("count"),
            byok_messages=Sum("byok_count"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        .order_by()
    ]
    if live is not None:
        request = Q(kind=UsageEvent.Kind.REQUEST)
        rows += [
            UsageFigures(today, r["key_id"], r["model"], *(r[name] for name in _SUMS))
            for r in live.values("key_id", "model")
            .annotate(
                requests=Count("id", filter=request),
                failed=Count("id", filter=request & ~Q(status=UsageEvent.Status.SUCCEEDED)),
                messages=Coalesce(Sum("counted_messages", filter=Q(byok=False)), zero),
                byok_messages=Coalesce(Sum("counted_messages", filter=Q(byok=True)), zero),
                input_tokens=Coalesce(Sum("prompt_tokens"), zero),
                output_tokens=Coalesce(Sum("completion_tokens"), zero),
            )
            .order_by()
        ]
    return rows


def _summed(rows: list[UsageFigures], label: str) -> BreakdownRow:
    return BreakdownRow(
        label=label,
        requests=sum(r.requests for r in rows),
        messages=sum(r.messages for r in rows),
        byok_messages=sum(r.byok_messages for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
    )


def _grouped(rows: list[UsageFigures], key) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _order(breakdown: list[BreakdownRow]) -> tuple[BreakdownRow, ...]:
    return tuple(sorted(breakdown, key=lambda r: (-r.messages, -r.requests, r.label)))


def _refusal_rows(*, workspace_id: int, user_id: int | None, first: dt.date, last: dt.date) -> tuple[RefusalRow, ...]:
    refusals = Refusal.objects.filter(workspace_id=workspace_id, day__gte=first, day__lte=last)
    if user_id is not None:
        refusals = refusals.filter(user_id=user_id)
    grouped = (
        refusals.values("status", "code")
        .annotate(total=Sum("count"), last=Max("last_at"), message=Max("message"))
        .order_by("-total", "status", "code")
    )
    return tuple(RefusalRow(g["status"], g["code"], g["total"], g["last"], g["message"]) for g in grouped)


def _failures(*, workspace_id: int, user_id: int | None, span: UsageRange) -> tuple[tuple[str, int], ...]:
    failed = UsageEvent.objects.filter(
        workspace_id=workspace_id, day__gte=span.first, day__lte=span.last, kind=UsageEvent.Kind.REQUEST
    ).exclude(status=UsageEvent.Status.SUCCEEDED)
    if user_id is not None:
        failed = failed.filter(user_id=user_id)
    labels = dict(UsageEvent.Status.choices)
    counted = failed.values("status").annotate(total=Count("id")).order_by("-total", "status")
    return tuple((labels.get(row["status"], row["status"]), row["total"]) for row in counted)


def find_usage_summary(
    *, user: User, workspace_id: int | None = None, span: UsageRange | None = None
) -> UsageSummary | None:
    """The usage page of `user`'s current (or given) workspace over `span` (default the last 30 days);
    None if they are not a member.

    The chart is the workspace's (its limits are the workspace's); owners and admins see every
    member's keys, models and refusals, members their own.
    """
    access = load_user_access(user_id=user.pk)
    if access is None:
        return None
    workspace = access.workspaces.get(workspace_id or access.current_workspace_id or 0)
    if workspace is None:
        return None
    today = billing_day()
    span = span or UsageRange.last_days(USAGE_PAGE_DAYS, today=today)
    sees_all = workspace.role in (Membership.Role.OWNER, Membership.Role.ADMIN)
    scope_user = None if sees_all else user.pk

    everyone = _usage_figures(workspace_id=workspace.workspace_id, user_id=None, span=span, today=today)
    per_day = _grouped(everyone, lambda r: r.day)
    days = tuple(
        DayUsage(
            day,
            sum(r.messages for r in per_day.get(day, ())),
            sum(r.byok_messages for r in per_day.get(day, ())),
            sum(r.requests for r in per_day.get(day, ())),
            sum(r.failed for r in per_day.get(day, ())),
        )
        for day in (span.first + dt.timedelta(days=i) for i in range(span.days))
    )
    today_rows = per_day.get(today, [])

    if sees_all:
        mine = everyone
    else:
        mine = _usage_figures(workspace_id=workspace.workspace_id, user_id=scope_user, span=span, today=today)
    by_key_rows = _grouped(mine, lambda r: r.key_id)
    key_names = {
        key.pk: f"{key.name} ({key.masked})" + ("" if key.user_id == user.pk else f" · {key.user}")
        for key in DeveloperKey.objects.filter(pk__in=[k for k in by_key_rows if k]).select_related("user")
    }
    by_key = _order(
        [
            _summed(rows, key_names.get(key_id, "Deleted key") if key_id else "Without a key (site)")
            for key_id, rows in by_key_rows.items()
        ]
    )
    by_model = _order([_summed(rows, model) for model, rows in _grouped(mine, lambda r: r.model).items()])
    by_day_model = tuple(
        DayModelRow(
            day,
            model,
            *(sum(getattr(r, name) for r in rows) for name in _SUMS),
        )
        for (day, model), rows in sorted(
            _grouped(mine, lambda r: (r.day, r.model)).items(), key=lambda item: (item[0][0], item[0][1]), reverse=True
        )
    )

    return UsageSummary(
        workspace=workspace,
        workspaces=tuple(sorted(access.workspaces.values(), key=lambda w: w.workspace_name.lower())),
        today=today,
        span=span,
        days=days,
        used_today=sum(r.messages for r in today_rows),
        byok_today=sum(r.byok_messages for r in today_rows),
        limits=limit_usage(workspace=workspace, user_id=user.pk),
        by_key=by_key,
        by_model=by_model,
        by_day_model=by_day_model,
        refusals=_refusal_rows(
            workspace_id=workspace.workspace_id, user_id=scope_user, first=span.first, last=span.last
        ),
        refusals_today=_refusal_rows(workspace_id=workspace.workspace_id, user_id=scope_user, first=today, last=today),
        failures=_failures(workspace_id=workspace.workspace_id, user_id=scope_user, span=span),
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
