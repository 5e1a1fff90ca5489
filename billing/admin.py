"""Staff admin: the ledger and roll-ups read-only (with CSV export of a filtered list), and each
workspace's usage today against its limits."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import IntegerField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseBadRequest, HttpResponseBase, StreamingHttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join

from accounts.models import AppSumoLicence, Membership
from billing import selectors
from billing.models import DailyMessageCount, UsageEvent, WorkspaceUsage
from billing.quotas import MEMBER_DAILY_LIMIT, billing_day

CSV_COLUMNS = (
    "created_at",
    "day",
    "request_id",
    "kind",
    "workspace_id",
    "user_id",
    "key_id",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "counted_messages",
    "byok",
    "tokens_estimated",
    "generation_id",
    "latency_ms",
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger is append-only and roll-ups are recomputed: staff look, never edit."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_rows(queryset: QuerySet[UsageEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for row in queryset.values_list(*CSV_COLUMNS).iterator(chunk_size=2000):
        yield writer.writerow(row)


def csv_response(queryset: QuerySet[UsageEvent], *, filename: str = "usage-events.csv") -> StreamingHttpResponse:
    response = StreamingHttpResponse(_csv_rows(queryset.order_by("created_at", "id")), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "request_id",
        "kind",
        "workspace_id",
        "user_id",
        "key_id",
        "model",
        "endpoint",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "counted_messages",
        "byok",
        "tokens_estimated",
    )
    list_filter = (
        ("workspace", admin.RelatedOnlyFieldListFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
        ("key", admin.RelatedOnlyFieldListFilter),
        "model",
        "endpoint",
        "status",
        "byok",
        "kind",
        "tokens_estimated",
    )
    date_hierarchy = "created_at"
    search_fields = ("=request_id", "=generation_id", "model")
    show_full_result_count = False
    actions = ("export_selected_csv",)

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


@admin.register(DailyMessageCount)
class DailyMessageCountAdmin(ReadOnlyAdmin):
    list_display = (
        "day",
        "workspace_id",
        "user_id",
        "count",
        "byok_count",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "requests",
        "updated_at",
    )
    list_filter = (("workspace", admin.RelatedOnlyFieldListFilter),)
    date_hierarchy = "day"
    search_fields = ("=workspace__id", "=user__email")


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
    def messages_today(self, obj: WorkspaceUsage) -> int:
        return obj.used_today

    @admin.display(description="Plan daily limit")
    def daily_limit(self, obj: WorkspaceUsage) -> str:
        return "Unlimited" if obj.plan.daily_message_limit is None else str(obj.plan.daily_message_limit)

    @admin.display(description="AppSumo daily limit")
    def appsumo_daily_limit(self, obj: WorkspaceUsage) -> str:
        return "—" if obj.licence_daily is None else str(obj.licence_daily)

    @admin.display(description="Remaining today")
    def remaining_today(self, obj: WorkspaceUsage) -> str:
        limits = [x for x in (obj.plan.daily_message_limit, obj.licence_daily) if x is not None]
        return "Unlimited" if not limits else str(max(0, min(limits) - obj.used_today))

    @admin.display(description="Limits today (settled and in flight)")
    def limits_today(self, obj: WorkspaceUsage) -> str:
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
    def members_today(self, obj: WorkspaceUsage) -> str:
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
