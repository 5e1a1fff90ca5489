"""The model catalogue: which slugs /v1 serves, through which upstream, and in which plan tier."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class CatalogueModelQuerySet(models.QuerySet["CatalogueModel"]):
    def enabled(self) -> CatalogueModelQuerySet:
        return self.filter(enabled=True)


class CatalogueModel(models.Model):
    class Provider(models.TextChoices):
        OPENROUTER = "openrouter", "OpenRouter"
        DEMO = "demo", "Demo (offline)"
        TRANSCRIPTION = "transcription", "Transcription upstream"

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat / completions / responses"
        TRANSCRIPTION = "transcription", "Audio transcription"

    slug = models.CharField(max_length=200, unique=True, help_text="The id clients send, e.g. openai/gpt-5-mini.")
    display_name = models.CharField(max_length=200)
    provider = models.CharField(max_length=20, choices=Provider.choices, default=Provider.OPENROUTER)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.CHAT)
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="The upstream's name for this model; empty means the slug itself."
    )
    tier = models.CharField(max_length=40, default="basic", help_text="Plans allow models by tier.")
    owned_by = models.CharField(max_length=100, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    allow_routing_params = models.BooleanField(
        default=False,
        help_text="Let clients send OpenRouter routing fields (models, route, provider, plugins, transforms).",
    )
    created = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CatalogueModelQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.slug

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.slug


class ModelAlias(models.Model):
    """Another id for a catalogue model, as Anthropic's clients send it (`claude-sonnet-4-5-20250929`).

    The Anthropic surface resolves a model id that is not a catalogue slug through this table.
    `fallback` serves workspaces whose plan does not include `target`: a client's default model
    (Claude Code asks for `claude-opus-5-5` unless told otherwise) still answers on every plan.
    """

    alias = models.CharField(max_length=200, unique=True, help_text="The id a client sends, e.g. claude-sonnet-4-5.")
    target = models.ForeignKey(
        CatalogueModel,
        on_delete=models.PROTECT,
        related_name="aliases",
        limit_choices_to={"kind": CatalogueModel.Kind.CHAT},
        help_text="The catalogue model this id means.",
    )
    fallback = models.ForeignKey(
        CatalogueModel,
        on_delete=models.PROTECT,
        related_name="fallback_aliases",
        null=True,
        blank=True,
        limit_choices_to={"kind": CatalogueModel.Kind.CHAT},
        help_text="Served instead when the workspace's plan does not include the target (optional).",
    )
    stands_in = models.BooleanField(
        default=False,
        help_text=(
            "The id names a model this server does not have (Claude Code's defaults): adapt the request's "
            "top-level settings to the target, so it is not refused for them. Adaptive thinking becomes a "
            "thinking budget, output_config.effort is left out, max_tokens is capped below."
        ),
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The target's largest max_tokens; a request asking for more is capped (empty: no cap).",
    )
    note = models.CharField(max_length=200, blank=True, help_text="Why this alias exists (shown to staff only).")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["alias"]
        verbose_name = "model alias"
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.alias} → {self.target_id}"


class StoredResponse(models.Model):
    """A Response kept for its workspace (`store: true`), so it can be read, listed and continued.

    Each row is self-contained: `input_items` is the whole input the model saw (a previous
    response's input and output included), so deleting or purging one response never breaks
    another. The content is JSON text exactly as sent to the client; staff see only the metadata.
    """

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    # No database constraints: a stored response is written on the request path and expires by itself.
    workspace = models.ForeignKey(
        "accounts.Workspace", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    # Each index costs every store an update; these two are read only in admin.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    key = models.ForeignKey(
        "apikeys.DeveloperKey",
        null=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    request_id = models.CharField(max_length=64, help_text="The request that created it, as in the usage ledger.")
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=20)
    previous_response_id = models.CharField(max_length=64, blank=True)
    input_items = models.TextField(help_text="JSON array: every input item the model saw, in order.")
    response = models.TextField(help_text="JSON object: the Response as the client received it.")
    input_bytes = models.PositiveIntegerField()
    response_bytes = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id


class StoredResponseItem(models.Model):
    """Where an item of a stored response lives, so `item_reference` input items can find it by id."""

    workspace_id = models.BigIntegerField()
    item_id = models.CharField(max_length=128)
    response = models.ForeignKey(StoredResponse, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    # Index into the response's input items followed by its output items.
    position = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace_id", "item_id"], name="gateway_storeditem_unique_id"),
        ]

    def __str__(self) -> str:
        return self.item_id
