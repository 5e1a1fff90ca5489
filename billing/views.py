"""The usage page in settings."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404
from django.views.generic import TemplateView

from billing import selectors
from billing.charts import bar_chart


class UsageDetailView(LoginRequiredMixin, TemplateView):
    template_name = "billing/usage.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        summary = selectors.find_usage_summary(user=self.request.user)
        if summary is None:
            raise Http404("You are not a member of a workspace.")
        return {**super().get_context_data(**kwargs), "summary": summary, "chart": bar_chart(days=summary.days)}
