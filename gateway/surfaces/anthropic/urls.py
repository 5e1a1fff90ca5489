"""/api/anthropic/v1 routes (Claude Code appends /v1/messages to ANTHROPIC_BASE_URL=.../api/anthropic)."""

from django.urls import path, re_path

from gateway.surfaces.anthropic import views

PREFIX = "/api/anthropic/v1/"

api_patterns = [
    path("messages", views.messages, name="anthropic-messages"),
    path("messages/count_tokens", views.count_tokens, name="anthropic-count-tokens"),
    path("models", views.models_list, name="anthropic-models"),
    # Model ids contain "/": the rest of the path, whether the slash came literal or as %2F.
    re_path(r"^models/(?P<model_id>.+)$", views.models_retrieve, name="anthropic-model"),
]
