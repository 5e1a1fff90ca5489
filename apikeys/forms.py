"""The form behind "Create key" on the API Keys page."""

from django import forms


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Key name",
        help_text="Something that tells you where the key is used, e.g. “OpenCode on my laptop”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
