"""The API Keys settings page: list, create (the full key is shown once, in the POST response), revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views import View
from django.views.decorators.debug import sensitive_variables

from apikeys import selectors, services
from apikeys.forms import ApiKeyCreateForm
from apikeys.models import DeveloperKey


def _list_page(request: HttpRequest, *, form: ApiKeyCreateForm | None = None, status: int = 200) -> HttpResponse:
    context = {"keys": selectors.keys_of(user=request.user), "form": form or ApiKeyCreateForm()}
    return render(request, "apikeys/key_list.html", context, status=status)


class ApiKeyListView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return _list_page(request)


class ApiKeyCreateView(LoginRequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return redirect("apikey-list")

    @sensitive_variables("issued", "response")
    def post(self, request: HttpRequest) -> HttpResponse:
        form = ApiKeyCreateForm(request.POST)
        if not form.is_valid():
            return _list_page(request, form=form, status=400)
        issued = services.create_api_key(user=request.user, name=form.cleaned_data["name"])
        # The plaintext goes into this response only: no redirect (it would need storing), and no
        # cache may keep the page.
        response = render(request, "apikeys/key_created.html", {"issued": issued})
        add_never_cache_headers(response)
        patch_cache_control(response, no_store=True)
        return response


class ApiKeyRevokeView(LoginRequiredMixin, View):
    """GET asks for confirmation; POST revokes (idempotent)."""

    def key(self, request: HttpRequest, key_id: int) -> DeveloperKey:
        key = selectors.find_key_of(user=request.user, key_id=key_id)
        if key is None:
            raise Http404("No such key.")
        return key

    def get(self, request: HttpRequest, key_id: int) -> HttpResponse:
        return render(request, "apikeys/key_revoke_confirm.html", {"key": self.key(request, key_id)})

    def post(self, request: HttpRequest, key_id: int) -> HttpResponse:
        key = self.key(request, key_id)
        services.revoke_api_key(key=key)
        messages.success(request, f"Revoked “{key.name}” ({key.masked}). Requests with it now fail.")
        return redirect("apikey-list")
