"""The usage ledger (append-only), the daily roll-up the seed calls daily_message_count, and the
database side of quota reservations and idempotent requests."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Workspace


class UsageEvent(models.Model):
    """One immutable ledger line: a request that reached the upstream, or a later settlement of it."""

    class Kind(models.TextChoices):
        REQUEST = "request", "Request"
        SETTLEMENT = "settlement", "Settlement (correction to upstream figures)"

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed upstream"
        CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"

    request_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.REQUEST)
    workspace = models.ForeignKey(
        "accounts.Workspace", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key = models.ForeignKey(
        "apikeys.DeveloperKey", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=40)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    counted_messages = models.IntegerField(default=0)
    byok = models.BooleanField(default=False)
    status = models.CharField(max_length=24, choices=Status.choices)
    tokens_estimated = models.BooleanField(default=False, help_text="Counted with tiktoken, not upstream figures.")
    generation_id = models.CharField(max_length=200, blank=True)
    web_search_requests = models.IntegerField(
        default=0,
        db_default=0,
        help_text="Hosted web searches the upstream reports running (billed by OpenRouter per search).",
    )
    latency_ms = models.IntegerField(default=0)
    day = models.DateField(help_text="The billing day (BILLING_DAY_TIMEZONE).")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["request_id", "kind"], name="one_ledger_line_per_request_kind")]
        indexes = [
            models.Index(fields=["workspace", "day"]),
            models.Index(fields=["day", "workspace", "user"]),
            models.Index(fields=["status", "tokens_estimated"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.kind}: {self.counted_messages} messages"


class DailyMessageCount(models.Model):
    """Per workspace × user × billing day, recomputed from the ledger by the roll-up."""

    workspace = models.ForeignKey(
        "accounts.Workspace", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    day = models.DateField()
    count = models.IntegerField(default=0, help_text="Messages counted against the plan (BYOK excluded).")
    byok_count = models.IntegerField(default=0, help_text="Messages of BYOK requests, recorded but not limited.")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    requests = models.IntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "daily_message_count"
        ordering = ["-day", "workspace_id", "user_id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "user", "day"], name="one_count_per_member_day")]

    def __str__(self) -> str:
        return f"{self.day} workspace {self.workspace_id} user {self.user_id}: {self.count}"


class DailyKeyModelCount(models.Model):
    """Per workspace × user × key × model × billing day: the auditor's breakdown, from the same roll-up."""

    workspace = models.ForeignKey(
        "accounts.Workspace", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key = models.ForeignKey(
        "apikeys.DeveloperKey", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    model = models.CharField(max_length=200)
    day = models.DateField()
    count = models.IntegerField(default=0, help_text="Messages counted against the plan (BYOK excluded).")
    byok_count = models.IntegerField(default=0, help_text="Messages of BYOK requests, recorded but not limited.")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    requests = models.IntegerField(default=0)
    failed_requests = models.IntegerField(default=0, help_text="Requests that failed upstream or were abandoned.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "daily_key_model_count"
        verbose_name = "daily count by key and model"
        verbose_name_plural = "daily counts by key and model"
        ordering = ["-day", "workspace_id", "user_id", "key_id", "model"]
        indexes = [models.Index(fields=["day", "workspace"]), models.Index(fields=["day", "key"])]

    def __str__(self) -> str:
        return f"{self.day} key {self.key_id or '-'} {self.model}: {self.count}"


class QuotaReservation(models.Model):
    """One in-flight message held by a request while Redis is unavailable (the database quota path).

    Deleted when the request's ledger line is written (same transaction); rows past `expires_at`
    belong to a process that died and no longer count.
    """

    request_id = models.CharField(max_length=64, unique=True)
    workspace_id = models.BigIntegerField()
    user_id = models.BigIntegerField()
    key_id = models.BigIntegerField(null=True, blank=True, help_text="Set when the key has a daily budget.")
    day = models.DateField()
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["workspace_id", "day"]), models.Index(fields=["key_id", "day"])]

    def __str__(self) -> str:
        return f"reservation {self.request_id} (workspace {self.workspace_id}, {self.day})"


class IdempotentRequest(models.Model):
    """A request made with an Idempotency-Key (Stripe's semantics, scoped to the developer key)."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"

    key = models.ForeignKey("apikeys.DeveloperKey", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    idempotency_key = models.CharField(max_length=255)
    body_sha256 = models.CharField(max_length=64)
    state = models.CharField(max_length=12, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.BinaryField(default=b"", blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "idempotency_key"], name="one_idempotent_request_per_key")
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.idempotency_key} ({self.state})"


class WorkspaceUsage(Workspace):
    """Workspaces as the billing admin shows them: today's usage against their limits."""

    class Meta:
        proxy = True
        verbose_name = "workspace usage"
        verbose_name_plural = "workspace usage"


class Refusal(models.Model):
    """Requests refused on /v1 (401, 403, 404, 429, 400, 503...), counted per minute per who and why.

    One row per minute per (status, code, endpoint, key or address, workspace, model): a flood of bad
    keys from one address is one row a minute with a large `count`, not a row per request. Written in
    batches off the response path by billing.refusals; never edited by staff.
    """

    minute = models.DateTimeField(help_text="The start of the minute (UTC) these refusals fell in.")
    day = models.DateField(help_text="The billing day (BILLING_DAY_TIMEZONE).")
    status = models.PositiveSmallIntegerField()
    code = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=40, blank=True)
    key = models.ForeignKey(
        "apikeys.DeveloperKey", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key_prefix = models.CharField(
        max_length=16, blank=True, help_text="The visible prefix of the key presented (wmk_…), known or not."
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    workspace = models.ForeignKey(
        "accounts.Workspace", null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    model = models.CharField(max_length=200, blank=True)
    address = models.CharField(max_length=64, blank=True, help_text="The client's address (IPv6 per /64).")
    message = models.CharField(max_length=300, blank=True, help_text="The first refusal's error message.")
    count = models.IntegerField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    group = models.CharField(max_length=64, help_text="A hash of the row's identity within its minute.")

    class Meta:
        ordering = ["-minute", "-id"]
        constraints = [models.UniqueConstraint(fields=["minute", "group"], name="one_refusal_row_per_minute_group")]
        indexes = [
            models.Index(fields=["day", "workspace"]),
            models.Index(fields=["day", "key"]),
            models.Index(fields=["day", "status", "code"]),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.status} {self.code or '-'} ×{self.count}"
