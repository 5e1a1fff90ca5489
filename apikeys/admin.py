"""Staff admin for developer keys: the hash is never shown; keys are revoked (through the service), never deleted."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from accounts.access import bump_access_epoch
from apikeys import keys
from apikeys.models import DeveloperKey
from apikeys.services import revoke_api_key


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(DeveloperKey)
class DeveloperKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "masked", "user", "status", "created_at", "last_used_at", "revoked_at", "expires_at"]
    list_filter = [KeyStatusFilter, "created_at", "last_used_at", "revoked_at"]
    search_fields = ["prefix", "user__email", "name"]
    search_help_text = "Visible prefix (wmk_… as shown to the user), user email or key name."
    list_select_related = ["user"]
    exclude = ["key_hash"]
    # The budget and allowlist are the owner's, set through apikeys.services.set_key_limits.
    readonly_fields = [
        "user",
        "masked",
        "prefix",
        "last4",
        "created_at",
        "last_used_at",
        "revoked_at",
        "daily_message_limit",
        "allowed_models",
        "limits_changed_at",
    ]
    actions = ["revoke_selected"]
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeveloperKey]:
        return super().get_queryset(request).defer("key_hash")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if term.startswith(keys.KEY_PREFIX) and len(term) > keys.VISIBLE_PREFIX_LENGTH:
            # "wmk_abc123…wxyz" as the user's page shows it: search by the visible prefix part. (We do
            # not offer look-up by full key: the search term lands in the URL and the access log.)
            search_term = term[: keys.VISIBLE_PREFIX_LENGTH]
        return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Keys are issued to users on their API Keys page or with `create_developer_key`.
        return False

    def save_model(self, request: HttpRequest, obj: DeveloperKey, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # expires_at is part of the cached grant.
        transaction.on_commit(bump_access_epoch)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[DeveloperKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            revoke_api_key(key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The ledger and the refusal record name keys: a key is revoked, never deleted.
        return False
