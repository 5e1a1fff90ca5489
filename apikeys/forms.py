"""The forms of the API Keys pages: create (with an optional expiry), rename, and a key's own limits."""

from __future__ import annotations

import datetime as dt
import re

from django import forms
from django.utils import timezone

NEVER = "never"
EXPIRY_CHOICES = [(NEVER, "Never"), ("30", "In 30 days"), ("90", "In 90 days")]


def key_name_field() -> forms.CharField:
    # CharField strips, so a name of only spaces is "required" too.
    return forms.CharField(
        max_length=100,
        label="Key name",
        help_text="Something that tells you where the key is used, e.g. “OpenCode on my laptop”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )


class ApiKeyCreateForm(forms.Form):
    name = key_name_field()
    expires_in = forms.ChoiceField(
        choices=EXPIRY_CHOICES,
        initial=NEVER,
        required=False,  # absent means never, as before expiry was offered
        label="Expires",
        help_text="An expired key stops working; you can always revoke a key sooner.",
    )

    def expires_at(self) -> dt.datetime | None:
        """The expiry the user chose, from now; None for a key that never expires."""
        choice = self.cleaned_data["expires_in"] or NEVER
        return None if choice == NEVER else timezone.now() + dt.timedelta(days=int(choice))


class ApiKeyRenameForm(forms.Form):
    name = key_name_field()


_MODEL_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/~+-]{0,199}$")
MAX_ALLOWED_MODELS = 100


class ApiKeyLimitsForm(forms.Form):
    daily_message_limit = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10_000_000,
        label="Daily message budget",
        help_text="Messages this key may spend per billing day, in every workspace it is used in. Empty: no "
        "budget of its own (your plan's limits still apply). Requests with your own OpenRouter key do not count.",
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )
    allowed_models = forms.CharField(
        required=False,
        label="Allowed models",
        help_text="One model slug per line, e.g. openai/gpt-5-mini. Empty: every model your plan allows.",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"}),
    )

    def clean_allowed_models(self) -> list[str]:
        slugs: list[str] = []
        for raw in re.split(r"[\s,]+", self.cleaned_data["allowed_models"] or ""):
            slug = raw.strip()
            if not slug or slug in slugs:
                continue
            if not _MODEL_SLUG.match(slug):
                raise forms.ValidationError(f"“{slug[:60]}” is not a model slug (like openai/gpt-5-mini).")
            slugs.append(slug)
        if len(slugs) > MAX_ALLOWED_MODELS:
            raise forms.ValidationError(f"At most {MAX_ALLOWED_MODELS} models.")
        return slugs
