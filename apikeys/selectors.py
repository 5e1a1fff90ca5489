"""Reads for the API Keys page and admin."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from apikeys.models import DeveloperKey


def keys_of(*, user: User) -> QuerySet[DeveloperKey]:
    """Every key of the user, newest first, revoked ones included so the list is an audit trail."""
    return DeveloperKey.objects.filter(user=user).defer("key_hash")


def find_key_of(*, user: User, key_id: int) -> DeveloperKey | None:
    return DeveloperKey.objects.filter(user=user, pk=key_id).first()
