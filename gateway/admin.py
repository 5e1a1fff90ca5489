"""Staff admin for the model catalogue. Edits reach every API process within the catalogue's reload interval."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from gateway.models import CatalogueModel, ModelAlias, StoredResponse


@admin.register(CatalogueModel)
class CatalogueModelAdmin(admin.ModelAdmin):
    list_display = ["slug", "display_name", "provider", "kind", "tier", "context_length", "enabled", "updated_at"]
    list_filter = ["enabled", "provider", "kind", "tier", "allow_routing_params"]
    search_fields = ["slug", "display_name", "upstream_model"]
    list_editable = ["enabled"]
    readonly_fields = ["updated_at"]
    actions = ["enable_selected", "disable_selected"]

    @admin.action(description="Enable selected models", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[CatalogueModel]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"Enabled {count} model(s).", messages.SUCCESS)

    @admin.action(description="Disable selected models", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[CatalogueModel]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} model(s).", messages.SUCCESS)


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    """Which catalogue model an Anthropic id (claude-sonnet-4-5-20250929, Claude Code's defaults) means."""

    list_display = ["alias", "target", "fallback", "stands_in", "max_output_tokens", "note", "updated_at"]
    list_filter = ["stands_in"]
    list_select_related = ["target", "fallback"]
    search_fields = ["alias", "target__slug", "fallback__slug", "note"]
    autocomplete_fields = ["target", "fallback"]
    readonly_fields = ["updated_at"]


@admin.register(StoredResponse)
class StoredResponseAdmin(admin.ModelAdmin):
    """Who stored what size of response when, and until when: never its content (that is the customer's)."""

    list_display = ["id", "workspace", "user", "key", "model", "status", "input_bytes", "response_bytes", "created_at"]
    list_filter = ["status", "created_at"]
    list_select_related = ["workspace", "user", "key"]
    search_fields = ["=id", "=request_id", "=previous_response_id", "model", "workspace__name", "user__email"]
    date_hierarchy = "created_at"
    # The content columns are left out of every page, not just made read-only.
    fields = readonly_fields = [  # type: ignore[assignment]  # one list for both: the stubs type them apart
        "id",
        "workspace",
        "user",
        "key",
        "request_id",
        "model",
        "status",
        "previous_response_id",
        "input_bytes",
        "response_bytes",
        "created_at",
        "expires_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[StoredResponse]:
        return super().get_queryset(request).defer("input_items", "response")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
