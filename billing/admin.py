"""Staff admin for billing: the ledger, the daily counts (by member, and by key and model) and the refusal
record, read-only, with names instead of ids, totals of the filtered rows, a billing-day filter and CSV;
and each workspace's usage today against its limits.

The auditor's question ("which key of which user in which workspace spent how many messages on which
model yesterday, and was any request refused?") is: Daily counts by key and model → Yesterday. Each
row shows the refusals of its key that day beside its usage, linked to them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseBase, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from accounts.models import AppSumoLicence, Membership
from apikeys import keys
from apikeys.models import DeveloperKey
from billing import selectors
from billing.exports import csv_response
from billing.models import DailyKeyModelCount, DailyMessageCount, Refusal, UsageEvent, WorkspaceUsage
from billing.quotas import MEMBER_DAILY_LIMIT, billing_day


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger is append-only, roll-ups are recomputed and refusals are counted: staff look, never edit."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BillingDayFilter(admin.SimpleListFilter):
    """By billing day (the ledger's `day`, in BILLING_DAY_TIMEZONE), not by when a row was written."""

    title = "billing day"
    parameter_name = "billing_day"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("today", "Today"), ("yesterday", "Yesterday"), ("7", "Last 7 days"), ("30", "Last 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        today = billing_day()
        match self.value():
            case "today":
                return queryset.filter(day=today)
            case "yesterday":
                return queryset.filter(day=today - dt.timedelta(days=1))
            case "7" | "30":
                return queryset.filter(day__gt=today - dt.timedelta(days=int(self.value() or 0)))
        return queryset


def key_label(key: DeveloperKey | None) -> str:
    return "—" if key is None else f"{key.name} ({key.masked})"


class NamesAndTotals(ReadOnlyAdmin):
    """Lists that show names (user email, workspace name, key name and prefix) and totals of the filtered rows.

    The workspace, user and key of each row come with `prefetch_related`: three queries per page
    whatever its length, and a row whose user or key is gone still shows (an INNER JOIN through
    `select_related` would hide it, and these foreign keys have no database constraint).
    """

    change_list_template = "admin/billing/change_list_totals.html"
    related_names: tuple[str, ...] = ("workspace", "user", "key")
    totals: tuple[tuple[str, str], ...] = ()  # (label, aggregate expression's field)
    list_per_page = 50
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related(*self.related_names)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if term.startswith(keys.KEY_PREFIX) and len(term) > keys.VISIBLE_PREFIX_LENGTH:
            # A key as the user's page masks it (wmk_abc123…wxyz): search by its visible prefix.
            search_term = term[: keys.VISIBLE_PREFIX_LENGTH]
        return super().get_search_results(request, queryset, search_term)

    def total_figures(self, queryset: QuerySet) -> list[tuple[str, int]]:
        zero = Value(0)
        figures = queryset.order_by().aggregate(
            **{f"total_{field}": Coalesce(Sum(field), zero) for _label, field in self.totals if field != "rows"},
            total_rows=Count("pk"),
        )
        return [(label, figures[f"total_{field}"]) for label, field in self.totals]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data and "cl" in response.context_data:
            response.context_data["totals"] = self.total_figures(response.context_data["cl"].queryset)
        return response

    @admin.display(description="workspace", ordering="workspace_id")
    def workspace_name(self, obj: Any) -> str:  # any model with these foreign keys
        return obj.workspace.name if obj.workspace is not None else "—"

    @admin.display(description="user", ordering="user_id")
    def user_email(self, obj: Any) -> str:  # any model with these foreign keys
        return obj.user.email if obj.user is not None else "—"

    @admin.display(description="key", ordering="key_id")
    def key_name(self, obj: Any) -> str:  # any model with these foreign keys
        return key_label(obj.key)


def _refusals_link(count: int | None, **filters: object) -> str:
    if not count:
        return "0"
    query = "&".join(f"{name}={value}" for name, value in filters.items())
    return format_html('<a href="{}?{}">{}</a>', reverse("admin:billing_refusal_changelist"), query, count)


# ---- the ledger --------------------------------------------------------------------------------


@admin.register(UsageEvent)
class UsageEventAdmin(NamesAndTotals):
    change_list_template = "admin/billing/usageevent/change_list.html"
    list_display = (
        "created_at",
        "workspace_name",
        "user_email",
        "key_name",
        "model",
        "status",
        "counted_messages",
        "tokens",
        "web_searches",
        "byok",
    )
    list_display_links = ("created_at",)
    list_filter = (
        BillingDayFilter,
        ("workspace", admin.RelatedOnlyFieldListFilter),
        ("key", admin.RelatedOnlyFieldListFilter),
        "status",
        "model",
        "endpoint",
        "byok",
        "kind",
        "tokens_estimated",
    )
    date_hierarchy = "day"
    search_fields = (
        "=request_id",
        "=generation_id",
        "model",
        "user__email",
        "workspace__name",
        "key__name",
        "=key__prefix",
    )
    search_help_text = "Request or generation id, model, user email, workspace name, key name or prefix (wmk_…)."
    totals: tuple[tuple[str, str], ...] = (
        ("Lines", "rows"),
        ("Messages", "counted_messages"),
        ("Input tokens", "prompt_tokens"),
    )
    totals += (("Output tokens", "completion_tokens"), ("Web searches", "web_search_requests"))
    actions = ("export_selected_csv",)

    def total_figures(self, queryset: QuerySet) -> list[tuple[str, int]]:
        # Lines include settlements (corrections); requests are the request lines only.
        requests = queryset.order_by().filter(kind=UsageEvent.Kind.REQUEST).count()
        figures = super().total_figures(queryset)
        return [figures[0], ("Requests", requests), *figures[1:]]

    @admin.display(description="tokens in / out")
    def tokens(self, obj: UsageEvent) -> str:
        return f"{obj.prompt_tokens} / {obj.completion_tokens}"

    # A short heading: "Web search requests" widened the ledger list past 1280 px (test_browser_audit).
    @admin.display(description="searches", ordering="web_search_requests")
    def web_searches(self, obj: UsageEvent) -> int:
        return obj.web_search_requests

    def get_urls(self) -> list[URLPattern]:
        export = path(
            "export-csv/", self.admin_site.admin_view(self.export_csv_view), name="billing_usageevent_export_csv"
        )
        return [export, *super().get_urls()]

    def export_csv_view(self, request: HttpRequest) -> HttpResponseBase:
        """Every event the changelist shows with the same filters, search and date drill-down."""
        if not self.has_view_permission(request):
            return HttpResponseBadRequest("Not allowed.")
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter.")
        return csv_response(changelist.get_queryset(request))

    @admin.action(description="Export selected usage events as CSV")
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[UsageEvent]) -> StreamingHttpResponse:
        return csv_response(queryset)


# ---- daily counts ------------------------------------------------------------------------------

_COUNT_TOTALS = (
    ("Rows", "rows"),
    ("Messages", "count"),
    ("BYOK messages", "byok_count"),
    ("Requests", "requests"),
    ("Input tokens", "input_tokens"),
    ("Output tokens", "output_tokens"),
)


def _refused_subquery(**match: str) -> Subquery:
    refusals = (
        Refusal.objects.filter(day=OuterRef("day"), **{field: OuterRef(outer) for field, outer in match.items()})
        .order_by()
        .values("day")
        .annotate(total=Sum("count"))
        .values("total")
    )
    return Subquery(refusals, output_field=IntegerField())


@admin.register(DailyMessageCount)
class DailyMessageCountAdmin(NamesAndTotals):
    related_names = ("workspace", "user")
    list_display = (
        "day",
        "workspace_name",
        "user_email",
        "count",
        "byok_count",
        "requests",
        "tokens",
        "refused",
        "updated_at",
    )
    list_display_links = ("day",)
    list_filter = (BillingDayFilter, ("workspace", admin.RelatedOnlyFieldListFilter))
    date_hierarchy = "day"
    search_fields = ("user__email", "workspace__name", "=workspace__id")
    search_help_text = "User email or workspace name."
    totals = (*_COUNT_TOTALS, ("Refused", "refused_requests"))

    def get_queryset(self, request: HttpRequest) -> QuerySet[DailyMessageCount]:
        refused = _refused_subquery(workspace_id="workspace_id", user_id="user_id")
        return super().get_queryset(request).annotate(refused_requests=refused)

    @admin.display(description="tokens in / out")
    def tokens(self, obj: DailyMessageCount) -> str:
        return f"{obj.input_tokens} / {obj.output_tokens}"

    @admin.display(description="refused", ordering="refused_requests")
    def refused(self, obj: Any) -> str:  # a DailyMessageCount annotated with refused_requests
        return _refusals_link(
            obj.refused_requests, workspace__id__exact=obj.workspace_id, user__id__exact=obj.user_id, day=obj.day
        )


@admin.register(DailyKeyModelCount)
class DailyKeyModelCountAdmin(NamesAndTotals):
    list_display = (
        "day",
        "workspace_name",
        "user_email",
        "key_name",
        "model",
        "messages",
        "requests_and_failed",
        "tokens",
        "refused",
    )
    list_display_links = ("day",)
    list_filter = (
        BillingDayFilter,
        ("workspace", admin.RelatedOnlyFieldListFilter),
        ("key", admin.RelatedOnlyFieldListFilter),
        "model",
    )
    date_hierarchy = "day"
    search_fields = ("user__email", "workspace__name", "key__name", "=key__prefix", "model")
    search_help_text = "User email, workspace name, key name or prefix (wmk_…), or model."
    totals = (*_COUNT_TOTALS, ("Failed", "failed_requests"), ("Refused (their keys)", "refused_requests"))

    def get_queryset(self, request: HttpRequest) -> QuerySet[DailyKeyModelCount]:
        return super().get_queryset(request).annotate(refused_requests=_refused_subquery(key_id="key_id"))

    def total_figures(self, queryset: QuerySet) -> list[tuple[str, int]]:
        figures = super().total_figures(queryset)
        # A key's refusals repeat on each of its model rows: count each key and day once.
        pairs = set(queryset.order_by().values_list("key_id", "day").distinct())
        keys_, days = {k for k, _d in pairs if k}, {d for _k, d in pairs}
        refused = sum(
            count
            for key_id, day, count in Refusal.objects.filter(key_id__in=keys_, day__in=days)
            .order_by()
            .values_list("key_id", "day")
            .annotate(total=Sum("count"))
            if (key_id, day) in pairs
        )
        return [(label, refused if label.startswith("Refused") else value) for label, value in figures]

    @admin.display(description="messages", ordering="count")
    def messages(self, obj: DailyKeyModelCount) -> str:
        return f"{obj.count} (+{obj.byok_count} BYOK)" if obj.byok_count else str(obj.count)

    @admin.display(description="requests (failed)", ordering="requests")
    def requests_and_failed(self, obj: DailyKeyModelCount) -> str:
        return f"{obj.requests} ({obj.failed_requests})" if obj.failed_requests else str(obj.requests)

    @admin.display(description="tokens in / out")
    def tokens(self, obj: DailyKeyModelCount) -> str:
        return f"{obj.input_tokens} / {obj.output_tokens}"

    @admin.display(description="refused", ordering="refused_requests")
    def refused(self, obj: Any) -> str:  # a DailyKeyModelCount annotated with refused_requests
        if obj.key_id is None:
            return "—"
        return _refusals_link(obj.refused_requests, key__id__exact=obj.key_id, day=obj.day)


# ---- refusals ----------------------------------------------------------------------------------


@admin.register(Refusal)
class RefusalAdmin(NamesAndTotals):
    list_display = (
        "minute",
        "status",
        "code",
        "key_shown",
        "user_email",
        "workspace_name",
        "model",
        "address",
        "count",
    )
    list_display_links = ("minute",)
    list_filter = (
        BillingDayFilter,
        "status",
        "code",
        "endpoint",
        ("workspace", admin.RelatedOnlyFieldListFilter),
        ("key", admin.RelatedOnlyFieldListFilter),
    )
    date_hierarchy = "day"
    search_fields = ("user__email", "workspace__name", "key__name", "=key_prefix", "=address", "model", "code")
    search_help_text = "User email, workspace name, key name or prefix (wmk_…), address, model or error code."
    totals = (("Rows", "rows"), ("Refused requests", "count"))

    @admin.display(description="key", ordering="key_prefix")
    def key_shown(self, obj: Refusal) -> str:
        if obj.key is not None:
            return key_label(obj.key)
        return f"{obj.key_prefix}… (unknown)" if obj.key_prefix else "—"


# ---- workspaces today --------------------------------------------------------------------------


def _licence_figure(field: str) -> Subquery:
    licences = AppSumoLicence.objects.filter(workspace_id=OuterRef("pk"), deactivated_at__isnull=True)
    return Subquery(licences.values(f"tier__{field}")[:1], output_field=IntegerField())


@admin.register(WorkspaceUsage)
class WorkspaceUsageAdmin(ReadOnlyAdmin):
    list_display = ("name", "plan", "messages_today", "daily_limit", "remaining_today", "appsumo_daily_limit")
    list_select_related = ("plan",)
    search_fields = ("name", "=id")
    list_filter = ("plan",)
    fields = ("name", "plan", "limits_today", "members_today")
    readonly_fields = ("limits_today", "members_today")

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkspaceUsage]:
        today = (
            UsageEvent.objects.filter(workspace_id=OuterRef("pk"), day=billing_day(), byok=False)
            .values("workspace_id")
            .annotate(total=Sum("counted_messages"))
            .values("total")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                used_today=Coalesce(Subquery(today, output_field=IntegerField()), Value(0)),
                licence_daily=_licence_figure("daily_message_limit"),
            )
        )

    @admin.display(description="Messages today", ordering="used_today")
    def messages_today(self, obj: Any) -> int:  # a WorkspaceUsage with its queryset annotations
        return obj.used_today

    @admin.display(description="Plan daily limit")
    def daily_limit(self, obj: Any) -> str:  # a WorkspaceUsage with its queryset annotations
        return "Unlimited" if obj.plan.daily_message_limit is None else str(obj.plan.daily_message_limit)

    @admin.display(description="AppSumo daily limit")
    def appsumo_daily_limit(self, obj: Any) -> str:  # a WorkspaceUsage with its queryset annotations
        return "—" if obj.licence_daily is None else str(obj.licence_daily)

    @admin.display(description="Remaining today")
    def remaining_today(self, obj: Any) -> str:  # a WorkspaceUsage with its queryset annotations
        limits = [x for x in (obj.plan.daily_message_limit, obj.licence_daily) if x is not None]
        return "Unlimited" if not limits else str(max(0, min(limits) - obj.used_today))

    @admin.display(description="Limits today (settled and in flight)")
    def limits_today(self, obj: Any) -> str:  # a WorkspaceUsage with its queryset annotations
        access = selectors.workspace_access_for_admin(workspace_id=obj.pk)
        if access is None:
            return "This workspace has no members."
        owner_id = Membership.objects.filter(workspace_id=obj.pk).order_by("id").values_list("user_id", flat=True)[0]
        rows = [
            row for row in selectors.limit_usage(workspace=access, user_id=owner_id) if row.code != MEMBER_DAILY_LIMIT
        ]
        if not rows:
            return f"{obj.used_today} messages today; no limit applies."
        return format_html(
            "<table><tr><th>Limit</th><th>Size</th><th>Used</th><th>Remaining</th><th>Resets (UTC)</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((r.description, r.limit, r.used, r.remaining, r.resets_at.strftime("%Y-%m-%d %H:%M")) for r in rows),
            ),
        )

    @admin.display(description="Members today")
    def members_today(self, obj: Any) -> str:  # a WorkspaceUsage with its queryset annotations
        per_member = selectors.member_usage_today(workspace_id=obj.pk)
        limit = obj.plan.member_daily_message_limit
        return format_html(
            "<table><tr><th>Member</th><th>Messages today</th><th>BYOK messages</th><th>Per-member limit</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((email, used, byok, "—" if limit is None else limit) for email, used, byok in per_member),
            ),
        )
