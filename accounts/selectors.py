"""Reads for the settings pages: a user's workspaces, a workspace's members, their BYOK key."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from accounts.models import Membership, OpenRouterKey, User


def memberships_of(*, user: User) -> QuerySet[Membership]:
    """The user's memberships with workspace, plan and member count, oldest workspace first."""
    return (
        Membership.objects.filter(user=user)
        .select_related("workspace__plan")
        .annotate(member_count=Count("workspace__memberships"))
        .order_by("workspace_id")
    )


def find_membership(*, user: User, workspace_id: int) -> Membership | None:
    return Membership.objects.select_related("workspace__plan").filter(user=user, workspace_id=workspace_id).first()


def members_of(*, workspace_id: int) -> QuerySet[Membership]:
    return Membership.objects.filter(workspace_id=workspace_id).select_related("user").order_by("created_at", "id")


def find_openrouter_key(*, user: User) -> OpenRouterKey | None:
    return OpenRouterKey.objects.filter(user=user).defer("encrypted_key").first()
