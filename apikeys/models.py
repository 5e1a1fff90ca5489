"""Developer keys: only a keyed hash, a visible prefix and the last four characters are stored."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class DeveloperKeyQuerySet(models.QuerySet["DeveloperKey"]):
    def active(self) -> DeveloperKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class DeveloperKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="developer_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    last4 = models.CharField(max_length=4)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Per-key controls, set by the key's owner on the API Keys page (apikeys.services.set_key_limits).
    daily_message_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Messages this key may spend per billing day; empty for no budget of its own."
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model slugs this key may use; empty for every model the plan allows."
    )
    limits_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the budget or allowlist last changed (names the key's quota counter)."
    )

    objects = DeveloperKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.prefix}…{self.last4}"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"
