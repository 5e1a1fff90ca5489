"""/api/anthropic/v1 routes (Claude Code appends /v1/messages to ANTHROPIC_BASE_URL=.../api/anthropic)."""

from django.urls import path, re_path

from gateway.surfaces.anthropic import views

PREFIX = "/api/anthropic/v1/"

api_patterns = [
    path("messages", views.MessagesView.as_view(), name="anthropic-messages"),
    path("messages/count_tokens", views.CountTokensView.as_view(), name="anthropic-count-tokens"),
    path("models", views.ModelsView.as_view(), name="anthropic-models"),
    # Model ids contain "/": the rest of the path, whether the slash came literal or as %2F.
    re_path(r"^models/(?P<model_id>.+)$", views.ModelView.as_view(), name="anthropic-model"),
]
