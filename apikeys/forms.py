"""The forms of the API Keys pages: create (with an optional expiry) and rename."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils import timezone

NEVER = "never"
EXPIRY_CHOICES = [(NEVER, "Never"), ("30", "In 30 days"), ("90", "In 90 days")]


class ApiKeyNameField(forms.CharField):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            max_length=100,
            label="Key name",
            help_text="Something that tells you where the key is used, e.g. “OpenCode on my laptop”.",
            widget=forms.TextInput(attrs={"autocomplete": "off"}),
            **kwargs,
        )

    def clean(self, value: object) -> str:
        name = super().clean(value).strip()
        if not name:
            raise forms.ValidationError("Give the key a name.", code="required")
        return name


class ApiKeyCreateForm(forms.Form):
    name = ApiKeyNameField()
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
    name = ApiKeyNameField()
