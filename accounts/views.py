"""Site pages for accounts: sign-up, password reset, email change, the settings page, workspaces, members
and the BYOK key.

One view per action; each validates a form, calls one service and redirects (POST/redirect/GET).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.debug import sensitive_post_parameters
from django.views.generic import FormView, TemplateView

from accounts import selectors, services
from accounts.forms import (
    ROLE_CHOICES,
    EmailChangeForm,
    MemberAddForm,
    MemberRoleForm,
    OpenRouterKeyForm,
    PasswordChangeForm,
    SignupForm,
    WorkspaceCreateForm,
    WorkspaceRenameForm,
)
from accounts.http import signed_in_user
from accounts.login_throttling import take_account_mail_allowance
from accounts.models import Membership, User
from accounts.openrouter_keys import OpenRouterKeyError, OpenRouterUnavailable


def _settings_context(user: User, **forms: Any) -> dict[str, Any]:
    return {
        "memberships": selectors.memberships_of(user=user),
        "openrouter_key": selectors.find_openrouter_key(user=user),
        "workspace_form": forms.get("workspace_form") or WorkspaceCreateForm(),
        "openrouter_form": forms.get("openrouter_form") or OpenRouterKeyForm(),
    }


# Error reports (DEBUG pages, admin mails) must not show passwords or BYOK keys from the POST.
@method_decorator(sensitive_post_parameters("password1", "password2"), name="dispatch")
class SignupView(FormView):
    template_name = "registration/signup.html"
    form_class = SignupForm

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.user.is_authenticated:
            return redirect("settings")
        return super().dispatch(request, *args, **kwargs)

    def form_valid(self, form: SignupForm) -> HttpResponse:
        try:
            user = services.sign_up(email=form.cleaned_data["email"], password=form.cleaned_data["password1"])
        except services.EmailTaken:
            form.add_error("email", "An account with this email already exists. Log in instead.")
            return self.form_invalid(form)
        # Whichever backend is configured first (sign-in throttling wraps ModelBackend).
        login(self.request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
        messages.success(self.request, "Welcome to Writingmate. Create a developer key to use the API.")
        return redirect("settings")


class SettingsView(LoginRequiredMixin, TemplateView):
    template_name = "accounts/settings.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(**kwargs) | _settings_context(signed_in_user(self.request))


class WorkspaceCreateView(LoginRequiredMixin, View):
    def post(self, request: HttpRequest) -> HttpResponse:
        form = WorkspaceCreateForm(request.POST)
        if not form.is_valid():
            context = _settings_context(signed_in_user(request), workspace_form=form)
            return render(request, "accounts/settings.html", context, status=400)
        workspace = services.create_workspace(user=signed_in_user(request), name=form.cleaned_data["name"])
        messages.success(request, f"Created the workspace “{workspace.name}”.")
        return redirect("workspace-detail", workspace_id=workspace.pk)


class WorkspaceSwitchView(LoginRequiredMixin, View):
    def post(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        try:
            workspace = services.switch_current_workspace(user=signed_in_user(request), workspace_id=workspace_id)
        except services.NotAllowed as error:
            raise Http404(str(error)) from error
        except services.WorkspaceDeactivated as error:
            messages.error(request, str(error))
            return _back_to(request, fallback=reverse("settings"))
        messages.success(request, f"“{workspace.name}” is now your current workspace; the API uses it by default.")
        return _back_to(request, fallback=reverse("settings"))


class WorkspaceMembershipMixin(LoginRequiredMixin):
    """Resolves `workspace_id` to the requesting user's membership; 404 for a workspace they are not in."""

    def membership(self, request: HttpRequest, workspace_id: int) -> Membership:
        membership = selectors.find_membership(user=signed_in_user(request), workspace_id=workspace_id)
        if membership is None:
            raise Http404("No such workspace.")
        return membership


class WorkspaceDetailView(WorkspaceMembershipMixin, View):
    template_name = "accounts/workspace_detail.html"

    def get(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        return render(request, self.template_name, _workspace_context(self.membership(request, workspace_id)))


def _workspace_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    members = list(selectors.members_of(workspace_id=membership.workspace_id))
    return {
        "membership": membership,
        "workspace": membership.workspace,
        "members": members,
        # The last owner gets no Remove, Leave or demote control; the services refuse them anyway.
        "sole_owner": sum(member.role == Membership.Role.OWNER for member in members) == 1,
        "member_form": extra.get("member_form") or MemberAddForm(),
        "rename_form": extra.get("rename_form") or WorkspaceRenameForm(initial={"name": membership.workspace.name}),
        "role_choices": ROLE_CHOICES,
    }


class WorkspaceRenameView(WorkspaceMembershipMixin, View):
    def post(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        membership = self.membership(request, workspace_id)
        form = WorkspaceRenameForm(request.POST)
        if not form.is_valid():
            context = _workspace_context(membership, rename_form=form)
            return render(request, WorkspaceDetailView.template_name, context, status=400)
        try:
            workspace = services.rename_workspace(
                actor=signed_in_user(request), workspace=membership.workspace, name=form.cleaned_data["name"]
            )
        except services.NotAllowed as error:
            form.add_error("name", str(error))
            context = _workspace_context(membership, rename_form=form)
            return render(request, WorkspaceDetailView.template_name, context, status=403)
        messages.success(request, f"Renamed the workspace to “{workspace.name}”.")
        return redirect("workspace-detail", workspace_id=workspace_id)


class WorkspaceLeaveView(WorkspaceMembershipMixin, View):
    """GET asks for confirmation; POST leaves."""

    template_name = "accounts/workspace_leave_confirm.html"

    def get(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        membership = self.membership(request, workspace_id)
        context = _workspace_context(membership)
        return render(request, self.template_name, context)

    def post(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        self.membership(request, workspace_id)
        try:
            workspace = services.leave_workspace(user=signed_in_user(request), workspace_id=workspace_id)
        except services.WorkspaceRuleError as error:
            messages.error(request, str(error))
            return redirect("workspace-detail", workspace_id=workspace_id)
        messages.success(request, f"You left “{workspace.name}”.")
        return redirect(reverse("settings") + "#workspaces")


class MemberRoleChangeView(WorkspaceMembershipMixin, View):
    def post(self, request: HttpRequest, workspace_id: int, membership_id: int) -> HttpResponse:
        self.membership(request, workspace_id)
        target = selectors.members_of(workspace_id=workspace_id).filter(pk=membership_id).first()
        if target is None:
            raise Http404("No such member.")
        form = MemberRoleForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose one of the roles: member, admin or owner.")
            return redirect("workspace-detail", workspace_id=workspace_id)
        try:
            changed = services.change_member_role(
                actor=signed_in_user(request), membership=target, role=form.cleaned_data["role"]
            )
        except services.WorkspaceRuleError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"{changed.user.email} is now {changed.get_role_display().lower()}.")
        return redirect("workspace-detail", workspace_id=workspace_id)


class MemberAddView(WorkspaceMembershipMixin, View):
    def post(self, request: HttpRequest, workspace_id: int) -> HttpResponse:
        membership = self.membership(request, workspace_id)
        form = MemberAddForm(request.POST)
        if not form.is_valid():
            context = _workspace_context(membership, member_form=form)
            return render(request, WorkspaceDetailView.template_name, context, status=400)
        try:
            added = services.add_member_by_email(
                actor=signed_in_user(request),
                workspace=membership.workspace,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
            )
        except services.WorkspaceRuleError as error:
            form.add_error("email", str(error))
            context = _workspace_context(membership, member_form=form)
            status = 403 if isinstance(error, services.NotAllowed) else 400
            return render(request, WorkspaceDetailView.template_name, context, status=status)
        messages.success(request, f"Added {added.user.email} as {added.get_role_display().lower()}.")
        return redirect("workspace-detail", workspace_id=workspace_id)


class MemberRemoveView(WorkspaceMembershipMixin, View):
    """GET asks for confirmation; POST removes."""

    template_name = "accounts/member_remove_confirm.html"

    def target(self, workspace_id: int, membership_id: int) -> Membership:
        target = selectors.members_of(workspace_id=workspace_id).filter(pk=membership_id).first()
        if target is None:
            raise Http404("No such member.")
        return target

    def get(self, request: HttpRequest, workspace_id: int, membership_id: int) -> HttpResponse:
        membership = self.membership(request, workspace_id)
        context = {"workspace": membership.workspace, "target": self.target(workspace_id, membership_id)}
        return render(request, self.template_name, context)

    def post(self, request: HttpRequest, workspace_id: int, membership_id: int) -> HttpResponse:
        self.membership(request, workspace_id)
        target = self.target(workspace_id, membership_id)
        try:
            services.remove_member(actor=signed_in_user(request), membership=target)
        except services.WorkspaceRuleError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Removed {target.user.email} from {target.workspace.name}.")
        if target.user_id == signed_in_user(request).pk and not selectors.find_membership(
            user=signed_in_user(request), workspace_id=workspace_id
        ):
            return redirect("settings")
        return redirect("workspace-detail", workspace_id=workspace_id)


@method_decorator(sensitive_post_parameters("key"), name="dispatch")
class OpenRouterKeySaveView(LoginRequiredMixin, View):
    def post(self, request: HttpRequest) -> HttpResponse:
        form = OpenRouterKeyForm(request.POST)
        if not form.is_valid():
            context = _settings_context(signed_in_user(request), openrouter_form=form)
            return render(request, "accounts/settings.html", context, status=400)
        try:
            stored = services.set_openrouter_key(user=signed_in_user(request), key=form.cleaned_data["key"])
        except OpenRouterKeyError as error:
            form.add_error("key", str(error))
            # 400 for a key that is wrong; 503 when OpenRouter could not be asked (nothing was saved).
            status = 503 if isinstance(error, OpenRouterUnavailable) else 400
            context = _settings_context(signed_in_user(request), openrouter_form=form)
            return render(request, "accounts/settings.html", context, status=status)
        messages.success(request, f"OpenRouter accepted your key ending in {stored.last4}; requests now use it.")
        return redirect(reverse("settings") + "#openrouter")


class OpenRouterKeyRecheckView(LoginRequiredMixin, View):
    def post(self, request: HttpRequest) -> HttpResponse:
        try:
            stored = services.recheck_openrouter_key(user=signed_in_user(request))
        except OpenRouterKeyError as error:
            messages.error(request, f"{error} Your saved key was kept; replace or remove it below.")
        else:
            if stored is not None:
                messages.success(request, "OpenRouter still accepts your key; its figures below are current.")
        return redirect(reverse("settings") + "#openrouter")


class OpenRouterKeyRemoveView(LoginRequiredMixin, View):
    """GET asks for confirmation; POST removes."""

    template_name = "accounts/openrouter_key_remove_confirm.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        openrouter_key = selectors.find_openrouter_key(user=signed_in_user(request))
        if openrouter_key is None:
            return redirect(reverse("settings") + "#openrouter")
        return render(request, self.template_name, {"openrouter_key": openrouter_key})

    def post(self, request: HttpRequest) -> HttpResponse:
        if services.remove_openrouter_key(user=signed_in_user(request)):
            messages.success(request, "Removed your OpenRouter key. Requests now use Writingmate's own.")
        return redirect(reverse("settings") + "#openrouter")


def _back_to(request: HttpRequest, *, fallback: str) -> HttpResponseRedirect:
    """Redirect to the `next` field when it is one of our own paths (never an open redirect)."""
    target = request.POST.get("next", "")
    if target.startswith("/") and not target.startswith("//"):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(fallback)


def _too_many_mails(request: HttpRequest, wait_seconds: int) -> HttpResponse:
    response = render(
        request,
        "registration/too_many_mails.html",
        {"minutes": max(1, round(wait_seconds / 60))},
        status=429,
    )
    response["Retry-After"] = str(wait_seconds)
    return response


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset view, with account mails capped per recipient and per client address."""

    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        wait = take_account_mail_allowance(self.request, form.cleaned_data["email"])
        if wait:
            return _too_many_mails(self.request, wait)
        return super().form_valid(form)


@method_decorator(sensitive_post_parameters("password"), name="dispatch")
class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = PasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return super().get_form_kwargs() | {"request": self.request}


class EmailChangeView(LoginRequiredMixin, FormView):
    """Asks for the new address (and the password); mails a confirmation link there."""

    template_name = "accounts/email_change_form.html"
    form_class = EmailChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return super().get_form_kwargs() | {"user": signed_in_user(self.request), "request": self.request}

    def form_valid(self, form: EmailChangeForm) -> HttpResponse:
        wait = take_account_mail_allowance(self.request, form.cleaned_data["new_email"])
        if wait:
            return _too_many_mails(self.request, wait)
        try:
            change = services.request_email_change(
                user=signed_in_user(self.request),
                new_email=form.cleaned_data["new_email"],
                confirm_url=lambda token: self.request.build_absolute_uri(
                    reverse("email-change-confirm", kwargs={"token": token})
                ),
            )
        except services.EmailTaken as error:
            form.add_error("new_email", str(error))
            return self.form_invalid(form)
        messages.success(
            self.request,
            f"We sent a confirmation link to {change.new_email}. Your address changes only when you open it.",
        )
        return redirect(reverse("settings") + "#account")


class EmailChangeConfirmView(LoginRequiredMixin, View):
    """GET shows what the link will change (mail scanners open links; a GET changes nothing); POST applies it."""

    template_name = "accounts/email_change_confirm.html"

    def get(self, request: HttpRequest, token: str) -> HttpResponse:
        try:
            change = services.read_email_change(user=signed_in_user(request), token=token)
        except services.EmailChangeInvalid as error:
            return render(request, self.template_name, {"error": str(error)}, status=400)
        return render(request, self.template_name, {"change": change, "token": token})

    def post(self, request: HttpRequest, token: str) -> HttpResponse:
        try:
            change = services.confirm_email_change(user=signed_in_user(request), token=token)
        except (services.EmailChangeInvalid, services.EmailTaken) as error:
            return render(request, self.template_name, {"error": str(error)}, status=400)
        messages.success(request, f"Your email address is now {change.new_email}; sign in with it from now on.")
        return redirect(reverse("settings") + "#account")
