"""The usage page in settings, and its CSV export."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpResponse
from django.views.generic import TemplateView

from accounts.http import signed_in_user
from billing import selectors
from billing.charts import bar_chart
from billing.forms import PRESETS, UsageFilterForm
from billing.quotas import billing_day


class UsageDetailView(LoginRequiredMixin, TemplateView):
    template_name = "billing/usage.html"

    def get(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponse:
        form = UsageFilterForm(request.GET or None, today=billing_day())
        summary = selectors.find_usage_summary(
            user=signed_in_user(request),
            workspace_id=form.workspace_id() if form.is_bound else None,
            span=form.usage_range(),
        )
        if summary is None:
            raise Http404("You are not a member of that workspace.")
        if request.GET.get("format") == "csv":
            return usage_csv(summary)
        context = self.get_context_data(form=form, summary=summary, chart=bar_chart(days=summary.days), presets=PRESETS)
        return self.render_to_response(context)


def tokens(row: selectors.BreakdownRow) -> tuple[int, int]:
    return row.input_tokens, row.output_tokens


def usage_csv(summary: selectors.UsageSummary) -> HttpResponse:
    """What the page shows, as one CSV: by day and model, by key, and the refusals, one `table` each."""
    span = summary.span
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = (
        f'attachment; filename="usage-{summary.workspace.workspace_id}-{span.first:%Y%m%d}-{span.last:%Y%m%d}.csv"'
    )
    writer = csv.writer(response)
    figures = ["requests", "failed", "messages", "byok_messages", "input_tokens", "output_tokens"]
    writer.writerow(["table", "day", "model", "key", "status", "code", "refused", *figures])
    for day_row in summary.by_day_model:
        writer.writerow(
            ["by_day_and_model", day_row.day, day_row.model, "", "", "", "", *(getattr(day_row, f) for f in figures)]
        )
    for key_row in summary.by_key:
        writer.writerow(
            [
                "by_key",
                "",
                "",
                key_row.label,
                "",
                "",
                "",
                key_row.requests,
                "",
                key_row.messages,
                key_row.byok_messages,
                *tokens(key_row),
            ]
        )
    for refusal in summary.refusals:
        writer.writerow(["refused", "", "", "", refusal.status, refusal.code, refusal.count, "", "", "", "", ""])
    return response
