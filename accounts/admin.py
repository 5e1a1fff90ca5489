"""Staff admin for users, workspaces, memberships, plans, AppSumo tiers and licences, BYOK keys.

Every save or delete here can change what someone may do on /v1, so each one bumps the access
epoch after commit (cached key grants are rebuilt on the next request).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db import transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from accounts.access import bump_access_epoch
from accounts.forms import AdminUserChangeForm, AdminUserCreationForm
from accounts.models import AppSumoLicence, AppSumoTier, Membership, OpenRouterKey, Plan, User, Workspace


class BumpsAccessEpoch(admin.ModelAdmin):
    """Invalidate cached /v1 grants after any admin write."""

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        transaction.on_commit(bump_access_epoch)

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        transaction.on_commit(bump_access_epoch)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        super().delete_model(request, obj)
        transaction.on_commit(bump_access_epoch)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().delete_queryset(request, queryset)
        transaction.on_commit(bump_access_epoch)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "workspace", "role", "created_at"]
    readonly_fields = ["created_at"]


class UserMembershipInline(MembershipInline):
    autocomplete_fields = ["workspace"]
    verbose_name = "workspace membership"


@admin.register(User)
class UserAdmin(BumpsAccessEpoch, DjangoUserAdmin):
    form = AdminUserChangeForm
    add_form = AdminUserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name", "current_workspace")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "usable_password", "password1", "password2")}),)
    list_display = ["email", "name", "current_workspace", "is_active", "is_staff", "date_joined", "last_login"]
    list_filter = ["is_active", "is_staff", "is_superuser", "date_joined", "last_login"]
    search_fields = ["email", "name"]
    ordering = ["email"]
    readonly_fields = ["last_login", "date_joined"]
    autocomplete_fields = ["current_workspace"]
    inlines = [UserMembershipInline]

    def save_model(self, request: HttpRequest, obj: User, form: ModelForm, change: bool) -> None:
        # The add form saves the user directly, not through UserManager.create_user, so give the new
        # user the personal workspace every user has here.
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if not change:
                Workspace.objects.create_personal(owner=obj)

    def get_inlines(self, request: HttpRequest, obj: User | None) -> list:
        return self.inlines if obj is not None else []


@admin.register(Workspace)
class WorkspaceAdmin(BumpsAccessEpoch):
    list_display = ["name", "id", "plan", "member_count", "active_licence", "created_at"]
    list_filter = ["plan", "created_at"]
    search_fields = ["name", "=id", "memberships__user__email"]
    list_select_related = ["plan"]
    inlines = [MembershipInline]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workspace]:
        return super().get_queryset(request).prefetch_related("memberships", "appsumo_licences__tier")

    @admin.display(description="members")
    def member_count(self, obj: Workspace) -> int:
        return len(obj.memberships.all())

    @admin.display(description="AppSumo licence")
    def active_licence(self, obj: Workspace) -> str:
        active = [licence for licence in obj.appsumo_licences.all() if licence.deactivated_at is None]
        return str(active[0].tier) if active else "—"


@admin.register(Membership)
class MembershipAdmin(BumpsAccessEpoch):
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role", "workspace__plan", "created_at"]
    search_fields = ["user__email", "workspace__name", "=workspace__id"]
    list_select_related = ["user", "workspace"]
    autocomplete_fields = ["user", "workspace"]


@admin.register(Plan)
class PlanAdmin(BumpsAccessEpoch):
    list_display = [
        "name",
        "slug",
        "daily_message_limit",
        "member_daily_message_limit",
        "allowed_model_tiers",
        "allowed_model_slugs",
    ]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(AppSumoTier)
class AppSumoTierAdmin(BumpsAccessEpoch):
    list_display = ["name", "slug", "daily_message_limit", "monthly_message_limit"]
    search_fields = ["slug", "name"]


class LicenceActiveFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("deactivated", "Deactivated")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(deactivated_at__isnull=True)
        if self.value() == "deactivated":
            return queryset.filter(deactivated_at__isnull=False)
        return queryset


@admin.register(AppSumoLicence)
class AppSumoLicenceAdmin(BumpsAccessEpoch):
    list_display = ["licence_key", "tier", "workspace", "activated_at", "deactivated_at"]
    list_filter = [LicenceActiveFilter, "tier", "activated_at"]
    search_fields = ["licence_key", "workspace__name", "=workspace__id", "workspace__memberships__user__email"]
    list_select_related = ["tier", "workspace"]
    autocomplete_fields = ["workspace"]


@admin.register(OpenRouterKey)
class OpenRouterKeyAdmin(BumpsAccessEpoch):
    """Read-only apart from deletion: only the user sets their key, and the ciphertext is never shown."""

    list_display = ["user", "masked", "created_at", "updated_at"]
    search_fields = ["user__email", "last4"]
    list_filter = ["created_at", "updated_at"]
    list_select_related = ["user"]
    exclude = ["encrypted_key"]
    readonly_fields = ["user", "masked", "created_at", "updated_at"]

    @admin.display(description="key")
    def masked(self, obj: OpenRouterKey) -> str:
        return f"…{obj.last4}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OpenRouterKey | None = None) -> bool:
        return False
