"""Staff admin for users, workspaces, memberships, plans, AppSumo tiers and licences, BYOK keys.

Every save or delete here can change what someone may do on /v1, so each one bumps the access
epoch after commit (cached key grants are rebuilt on the next request).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest, HttpResponseRedirect
from django.utils import timezone

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


def _owners_left(workspace_ids: set[int], *, removing: set[int], demoting: set[int]) -> list[int]:
    """Workspaces among `workspace_ids` that would have no owner without the memberships given."""
    owners = Membership.objects.filter(workspace_id__in=workspace_ids, role=Membership.Role.OWNER).exclude(
        pk__in=removing | demoting
    )
    with_owner = set(owners.values_list("workspace_id", flat=True))
    return sorted(workspace_ids - with_owner)


class LastOwnerInAdmin(Exception):
    def __init__(self, workspace_id: int) -> None:
        super().__init__(
            f"Workspace #{workspace_id} would have no owner: make someone else its owner before removing this one."
        )


class DeactivatedNotDeleted(admin.ModelAdmin):
    """The ledger and the refusal record point at users and workspaces: staff deactivate them instead."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class KeepsAnOwnerFormSet(BaseInlineFormSet):
    """Membership rows edited inline must leave every workspace they touch with an owner."""

    def clean(self) -> None:
        super().clean()
        removing, demoting, touched = set(), set(), set()
        for form in self.forms:
            instance = form.instance
            if instance.pk is None or not hasattr(form, "cleaned_data"):
                continue
            was_owner = Membership.objects.filter(pk=instance.pk, role=Membership.Role.OWNER).exists()
            if not was_owner:
                continue
            if form.cleaned_data.get("DELETE"):
                removing.add(instance.pk)
            elif form.cleaned_data.get("role") != Membership.Role.OWNER or (
                form.cleaned_data.get("workspace") and form.cleaned_data["workspace"].pk != instance.workspace_id
            ):
                demoting.add(instance.pk)
            else:
                continue
            touched.add(instance.workspace_id)
        # New owners added in the same save count too.
        added = {
            form.cleaned_data["workspace"].pk
            for form in self.forms
            if hasattr(form, "cleaned_data")
            and form.instance.pk is None
            and form.cleaned_data.get("role") == Membership.Role.OWNER
            and form.cleaned_data.get("workspace")
            and not form.cleaned_data.get("DELETE")
        }
        orphaned = [w for w in _owners_left(touched, removing=removing, demoting=demoting) if w not in added]
        if orphaned:
            raise ValidationError(
                "A workspace needs at least one owner: make someone else its owner before removing or changing "
                f"this one (workspace {', '.join(f'#{w}' for w in orphaned)})."
            )


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = KeepsAnOwnerFormSet
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "workspace", "role", "created_at"]
    readonly_fields = ["created_at"]


class UserMembershipInline(MembershipInline):
    autocomplete_fields = ["workspace"]
    verbose_name = "workspace membership"


@admin.register(User)
class UserAdmin(DeactivatedNotDeleted, BumpsAccessEpoch, DjangoUserAdmin):
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

    actions = ["deactivate_selected", "reactivate_selected"]

    @admin.action(description="Deactivate selected users (sign-in and API keys stop working)", permissions=["change"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        changed = queryset.filter(is_active=True).update(is_active=False)
        transaction.on_commit(bump_access_epoch)
        self.message_user(request, f"Deactivated {changed} user(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected users", permissions=["change"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        changed = queryset.filter(is_active=False).update(is_active=True)
        transaction.on_commit(bump_access_epoch)
        self.message_user(request, f"Reactivated {changed} user(s).", messages.SUCCESS)


class DeactivatedFilter(admin.SimpleListFilter):
    """Active or deactivated, for the models that are deactivated instead of deleted."""

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


@admin.register(Workspace)
class WorkspaceAdmin(DeactivatedNotDeleted, BumpsAccessEpoch):
    list_display = ["name", "id", "plan", "owners", "member_count", "active_licence", "deactivated_at", "created_at"]
    list_filter = [DeactivatedFilter, "plan", "created_at"]
    actions = ["deactivate_selected", "reactivate_selected"]
    search_fields = ["name", "=id", "memberships__user__email"]
    list_select_related = ["plan"]
    inlines = [MembershipInline]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workspace]:
        return super().get_queryset(request).prefetch_related("memberships__user", "appsumo_licences__tier")

    @admin.action(description="Deactivate selected workspaces (the API stops serving them)", permissions=["change"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> None:
        changed = queryset.filter(deactivated_at__isnull=True).update(deactivated_at=timezone.now())
        transaction.on_commit(bump_access_epoch)
        self.message_user(request, f"Deactivated {changed} workspace(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected workspaces", permissions=["change"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[Workspace]) -> None:
        changed = queryset.filter(deactivated_at__isnull=False).update(deactivated_at=None)
        transaction.on_commit(bump_access_epoch)
        self.message_user(request, f"Reactivated {changed} workspace(s).", messages.SUCCESS)

    @admin.display(description="members")
    @admin.display(description="Owners")
    def owners(self, obj: Workspace) -> str:
        emails = [m.user.email for m in obj.memberships.all() if m.role == Membership.Role.OWNER]
        return ", ".join(sorted(emails)) or "—"

    def member_count(self, obj: Workspace) -> int:
        return len(obj.memberships.all())

    @admin.display(description="AppSumo licence")
    def active_licence(self, obj: Workspace) -> str:
        active = [licence for licence in obj.appsumo_licences.all() if licence.deactivated_at is None]
        return str(active[0].tier) if active else "—"


@admin.register(Membership)
class MembershipAdmin(BumpsAccessEpoch):
    """Memberships may be removed here, but never a workspace's last owner (nor demoted or moved away)."""

    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role", "workspace__plan", "created_at"]
    search_fields = ["user__email", "workspace__name", "=workspace__id"]
    list_select_related = ["user", "workspace"]
    autocomplete_fields = ["user", "workspace"]

    def get_form(self, request: HttpRequest, obj: Membership | None = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        original = form.clean

        def clean(form_self: ModelForm) -> dict:
            data = original(form_self) or {}
            if obj is not None and obj.role == Membership.Role.OWNER:
                moved = data.get("workspace") is not None and data["workspace"].pk != obj.workspace_id
                if (data.get("role") != Membership.Role.OWNER or moved) and _owners_left(
                    {obj.workspace_id}, removing=set(), demoting={obj.pk}
                ):
                    raise ValidationError("A workspace needs at least one owner: make someone else its owner first.")
            return data

        form.clean = clean  # type: ignore[method-assign,assignment]  # wraps the generated form's own clean
        return form

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        with transaction.atomic():
            if obj.role == Membership.Role.OWNER and _owners_left(
                {obj.workspace_id}, removing={obj.pk}, demoting=set()
            ):
                raise LastOwnerInAdmin(obj.workspace_id)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        with transaction.atomic():
            doomed = list(queryset.select_for_update().values_list("pk", "workspace_id", "role"))
            owners = {pk for pk, _w, role in doomed if role == Membership.Role.OWNER}
            orphaned = _owners_left({w for _pk, w, _r in doomed}, removing=owners, demoting=set())
            # Only workspaces that had an owner among the doomed rows are at stake.
            orphaned = [w for w in orphaned if any(w == ws and pk in owners for pk, ws, _r in doomed)]
            if orphaned:
                raise LastOwnerInAdmin(orphaned[0])
            super().delete_queryset(request, queryset)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except LastOwnerInAdmin as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.path)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        try:
            return super().changelist_view(request, extra_context)
        except LastOwnerInAdmin as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


@admin.register(Plan)
class PlanAdmin(BumpsAccessEpoch):
    list_display = [
        "name",
        "slug",
        "daily_message_limit",
        "member_daily_message_limit",
        "allowed_model_tiers",
        "allowed_model_slugs",
        "includes_web_search",
    ]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(AppSumoTier)
class AppSumoTierAdmin(BumpsAccessEpoch):
    list_display = ["name", "slug", "daily_message_limit", "monthly_message_limit"]
    search_fields = ["slug", "name"]


@admin.register(AppSumoLicence)
class AppSumoLicenceAdmin(BumpsAccessEpoch):
    list_display = ["licence_key", "tier", "workspace", "activated_at", "deactivated_at"]
    list_filter = [DeactivatedFilter, "tier", "activated_at"]
    search_fields = ["licence_key", "workspace__name", "=workspace__id", "workspace__memberships__user__email"]
    list_select_related = ["tier", "workspace"]
    autocomplete_fields = ["workspace"]


@admin.register(OpenRouterKey)
class OpenRouterKeyAdmin(BumpsAccessEpoch):
    """Read-only apart from deletion: only the user sets their key, and the ciphertext is never shown."""

    list_display = ["user", "masked", "label", "credit_remaining", "credit_limit", "verified_at", "updated_at"]
    search_fields = ["user__email", "last4", "label"]
    list_filter = ["created_at", "updated_at", "verified_at"]
    list_select_related = ["user"]
    exclude = ["encrypted_key"]
    readonly_fields = [
        "user",
        "masked",
        "label",
        "credit_limit",
        "credit_remaining",
        "limit_reset",
        "verified_at",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="key")
    def masked(self, obj: OpenRouterKey) -> str:
        return f"…{obj.last4}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OpenRouterKey | None = None) -> bool:
        return False
