"""Forms for sign-up, workspaces, members and the BYOK key, plus the admin's user forms."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import password_validation
from django.http import HttpRequest

from accounts.login_throttling import note_login_failure, seconds_until_allowed
from accounts.models import Membership, User, Workspace


def check_current_password(request: HttpRequest | None, user: User, password: str) -> None:
    """Raise unless `password` is the user's. A wrong guess counts as a failed sign-in from this address,
    so a session left open somewhere cannot be used to guess the password faster than the login page."""
    wait = seconds_until_allowed(request, user.email)
    if wait:
        raise forms.ValidationError(
            f"Too many wrong passwords. Try again in {max(1, round(wait / 60))} minute(s).", code="throttled"
        )
    if not user.check_password(password):
        note_login_failure(request, user.email)
        raise forms.ValidationError("That is not your current password.", code="password_incorrect")


class SignupForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Confirm password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email already exists. Log in instead.")
        return email

    def clean(self) -> dict:
        cleaned = super().clean() or {}  # Form.clean returns cleaned_data; the stubs allow None
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords do not match.")
        elif password1:
            try:
                password_validation.validate_password(password1, User(email=cleaned.get("email", "")))
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned


class EmailChangeForm(forms.Form):
    new_email = forms.EmailField(
        label="New email address", max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = forms.CharField(
        label="Your current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text="So that nobody who finds your computer signed in can take over the account.",
    )

    def __init__(self, *args: Any, user: User, request: HttpRequest | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.request = request

    def clean_new_email(self) -> str:
        email = User.normalize_username(self.cleaned_data["new_email"])
        if email == self.user.email:
            raise forms.ValidationError("That is already your email address.")
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("Another account uses that email address.")
        return email

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        check_current_password(self.request, self.user, password)
        return password


class PasswordChangeForm(auth_forms.PasswordChangeForm):
    """Django's form, with the current password checked as sign-ins are (throttled per address)."""

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        check_current_password(self.request, self.user, old_password)
        return old_password


class WorkspaceCreateForm(forms.Form):
    name = forms.CharField(max_length=200, label="Workspace name")


class WorkspaceRenameForm(forms.Form):
    name = forms.CharField(max_length=200, label="Workspace name")


ROLE_CHOICES = [
    (Membership.Role.MEMBER, "Member"),
    (Membership.Role.ADMIN, "Admin"),
    (Membership.Role.OWNER, "Owner"),
]


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


class MemberAddForm(forms.Form):
    email = forms.EmailField(label="Email of an existing user", widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Membership.Role.MEMBER)


class OpenRouterKeyForm(forms.Form):
    key = forms.CharField(
        label="OpenRouter API key",
        max_length=500,
        strip=True,
        help_text="From openrouter.ai → Keys; it starts with sk-or-. We check it with OpenRouter before saving it.",
        # render_value=False: the saved key is never sent back to the browser.
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}, render_value=False),
    )


class AdminUserCreationForm(auth_forms.AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class AdminUserChangeForm(auth_forms.UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"

    def clean_current_workspace(self) -> Workspace | None:
        workspace = self.cleaned_data.get("current_workspace")
        if workspace is not None and not Membership.objects.filter(user=self.instance, workspace=workspace).exists():
            raise forms.ValidationError("The current workspace must be one the user is a member of.")
        return workspace
