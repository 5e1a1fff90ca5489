"""Developer keys: issue (shown once), rename, revoke, and resolve a presented key to what it may do."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from accounts.access import UserAccess, bump_access_epoch, load_user_access
from accounts.models import User
from apikeys import keys
from apikeys.models import DeveloperKey
from apikeys.throttling import mark_key_known


@dataclass(frozen=True)
class IssuedKey:
    key: DeveloperKey
    plaintext: str


@dataclass(frozen=True)
class KeyGrant:
    """A valid key and what its user may do, as cached for the API."""

    key_id: int
    key_prefix: str
    expires_at: float | None  # epoch seconds
    access: UserAccess
    # The key's own controls: a daily message budget (None: none of its own) and a model allowlist
    # (empty: whatever the plan allows). `limits_version` changes whenever either does.
    daily_message_limit: int | None = None
    allowed_models: tuple[str, ...] = ()
    limits_version: int = 0

    @property
    def user_id(self) -> int:
        return self.access.user_id

    def allows_model(self, slug: str) -> bool:
        return not self.allowed_models or slug in self.allowed_models

    def to_dict(self) -> dict:
        return {
            "key_id": self.key_id,
            "key_prefix": self.key_prefix,
            "expires_at": self.expires_at,
            "access": self.access.to_dict(),
            "daily_message_limit": self.daily_message_limit,
            "allowed_models": list(self.allowed_models),
            "limits_version": self.limits_version,
        }

    @classmethod
    def from_dict(cls, data: dict) -> KeyGrant:
        return cls(
            key_id=data["key_id"],
            key_prefix=data["key_prefix"],
            expires_at=data["expires_at"],
            access=UserAccess.from_dict(data["access"]),
            daily_message_limit=data.get("daily_message_limit"),
            allowed_models=tuple(data.get("allowed_models") or ()),
            limits_version=data.get("limits_version") or 0,
        )


def create_api_key(*, user: User, name: str, expires_at: dt.datetime | None = None) -> IssuedKey:
    plaintext = keys.generate_key()
    key = DeveloperKey.objects.create(
        user=user,
        name=name.strip() or "Developer key",
        prefix=keys.visible_prefix(plaintext),
        last4=plaintext[-4:],
        key_hash=keys.hash_key(plaintext),
        expires_at=expires_at,
    )
    transaction.on_commit(lambda: mark_key_known(key.key_hash))
    return IssuedKey(key=key, plaintext=plaintext)


def rename_api_key(*, key: DeveloperKey, name: str) -> None:
    """A key's name is only a label for its owner: the grant does not carry it, so no epoch bump."""
    DeveloperKey.objects.filter(pk=key.pk).update(name=name.strip() or key.name)
    key.refresh_from_db(fields=["name"])


def revoke_api_key(*, key: DeveloperKey) -> None:
    """Idempotent; cached grants are invalidated so the next request with the key fails."""
    with transaction.atomic():
        DeveloperKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        transaction.on_commit(bump_access_epoch)
    key.refresh_from_db(fields=["revoked_at"])


def find_key_grant(*, key_hash: str) -> KeyGrant | None:
    """The grant for an active key with this hash, or None (unknown, revoked, expired or inactive user)."""
    key = DeveloperKey.objects.active().filter(key_hash=key_hash).first()
    if key is None:
        return None
    access = load_user_access(user_id=key.user_id)
    if access is None:
        return None
    return KeyGrant(
        key_id=key.pk,
        key_prefix=key.prefix,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        access=access,
        daily_message_limit=key.daily_message_limit,
        allowed_models=tuple(key.allowed_models or ()),
        limits_version=limits_version(key),
    )


def limits_version(key: DeveloperKey) -> int:
    """Names the key's quota counter: a budget set anew starts from the ledger, not a stale counter."""
    return int(key.limits_changed_at.timestamp() * 1000) if key.limits_changed_at else 0


def set_key_limits(*, key: DeveloperKey, daily_message_limit: int | None, allowed_models: list[str]) -> None:
    """Set a key's daily budget and model allowlist; cached grants see the change on their next request."""
    with transaction.atomic():
        DeveloperKey.objects.filter(pk=key.pk).update(
            daily_message_limit=daily_message_limit,
            allowed_models=list(allowed_models),
            limits_changed_at=timezone.now(),
        )
        transaction.on_commit(bump_access_epoch)
    key.refresh_from_db(fields=["daily_message_limit", "allowed_models", "limits_changed_at"])


def touch_last_used(*, key_id: int) -> None:
    DeveloperKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
