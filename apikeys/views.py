"""The API Keys settings pages: list, create (the full key is shown once, in the POST response), a key's
own page (rename, usage, its daily budget and model allowlist), revoke.

The pages show each key's usage from the billing ledger: a page composing a lower app's keys with a
higher app's figures is the one place apikeys reads billing (see docs/decisions.md, "keys").
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views import View
from django.views.decorators.debug import sensitive_variables

from accounts.http import signed_in_user
from apikeys import selectors, services
from apikeys.forms import ApiKeyCreateForm, ApiKeyLimitsForm, ApiKeyRenameForm
from apikeys.models import DeveloperKey
from apikeys.snippets import openai_base_url, setup_snippets
from billing.selectors import KeyUsage, key_usage


def _origin(request: HttpRequest) -> str:
    """This server as the browser reached it (proxy headers as settings allow), for ready-to-paste setups."""
    return f"{request.scheme}://{request.get_host()}"


def _list_page(request: HttpRequest, *, form: ApiKeyCreateForm | None = None, status: int = 200) -> HttpResponse:
    keys = list(selectors.keys_of(user=signed_in_user(request)))
    usage = key_usage(key_ids=[key.pk for key in keys])
    context = {
        "rows": [(key, usage.get(key.pk, KeyUsage())) for key in keys],
        "form": form or ApiKeyCreateForm(),
        "base_url": openai_base_url(_origin(request)),
        "snippets": setup_snippets(origin=_origin(request)),
    }
    return render(request, "apikeys/key_list.html", context, status=status)


def _owned_key(request: HttpRequest, key_id: int) -> DeveloperKey:
    key = selectors.find_key_of(user=signed_in_user(request), key_id=key_id)
    if key is None:
        raise Http404("No such key.")
    return key


class ApiKeyListView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return _list_page(request)


class ApiKeyCreateView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return redirect("apikey-list")

    @sensitive_variables("issued", "response", "context")
    def post(self, request: HttpRequest) -> HttpResponse:
        form = ApiKeyCreateForm(request.POST)
        if not form.is_valid():
            return _list_page(request, form=form, status=400)
        issued = services.create_api_key(
            user=signed_in_user(request), name=form.cleaned_data["name"], expires_at=form.expires_at()
        )
        # The plaintext goes into this response only: no redirect (it would need storing), and no
        # cache may keep the page.
        context = {
            "issued": issued,
            "base_url": openai_base_url(_origin(request)),
            "snippets": setup_snippets(origin=_origin(request), key=issued.plaintext),
        }
        response = render(request, "apikeys/key_created.html", context)
        add_never_cache_headers(response)
        patch_cache_control(response, no_store=True)
        return response


def _detail_page(
    request: HttpRequest,
    key: DeveloperKey,
    *,
    rename_form: ApiKeyRenameForm | None = None,
    limits_form: ApiKeyLimitsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    limits = {"daily_message_limit": key.daily_message_limit, "allowed_models": "\n".join(key.allowed_models or [])}
    context = {
        "key": key,
        "usage": key_usage(key_ids=[key.pk]).get(key.pk, KeyUsage()),
        "rename_form": rename_form or ApiKeyRenameForm(initial={"name": key.name}),
        "limits_form": limits_form or ApiKeyLimitsForm(initial=limits),
    }
    return render(request, "apikeys/key_detail.html", context, status=status)


class ApiKeyDetailView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        return _detail_page(request, _owned_key(request, key_id))


class ApiKeyRenameView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        return redirect("apikey-detail", key_id=key_id)

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = _owned_key(request, key_id)
        form = ApiKeyRenameForm(request.POST)
        if not form.is_valid():
            return _detail_page(request, key, rename_form=form, status=400)
        old_name = key.name
        services.rename_api_key(key=key, name=form.cleaned_data["name"])
        messages.success(request, f"Renamed “{old_name}” to “{key.name}”.")
        return redirect("apikey-detail", key_id=key.pk)


class ApiKeyLimitsView(LoginRequiredMixin, View):
    """The key's own daily budget and model allowlist (cached grants see a change on their next request)."""

    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        return redirect("apikey-detail", key_id=key_id)

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = _owned_key(request, key_id)
        form = ApiKeyLimitsForm(request.POST)
        if not form.is_valid():
            return _detail_page(request, key, limits_form=form, status=400)
        services.set_key_limits(
            key=key,
            daily_message_limit=form.cleaned_data["daily_message_limit"],
            allowed_models=form.cleaned_data["allowed_models"],
        )
        messages.success(request, f"Saved the limits of “{key.name}”. They apply from its next request.")
        return redirect("apikey-detail", key_id=key.pk)


class ApiKeyRevokeView(LoginRequiredMixin, View):
    """GET asks for confirmation; POST revokes (idempotent)."""

    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        return render(request, "apikeys/key_revoke_confirm.html", {"key": _owned_key(request, key_id)})

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = _owned_key(request, key_id)
        services.revoke_api_key(key=key)
        messages.success(request, f"Revoked “{key.name}” ({key.masked}). Requests with it now fail.")
        return redirect("apikey-list")
