"""The admin: every page loads for a superuser, secrets never show, actions go through services."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import access
from accounts import services as account_services
from accounts.models import AppSumoLicence, AppSumoTier, Membership, OpenRouterKey, Plan, User, Workspace
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key
from gateway.models import CatalogueModel


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("root@example.com")


@pytest.fixture
def populated(superuser: User, fake_upstream) -> dict:
    """At least one row of each of our models, so change pages and list columns are exercised."""
    member = User.objects.create_user("member@example.com")
    workspace = account_services.create_workspace(user=superuser, name="Audit team")
    Membership.objects.create(user=member, workspace=workspace, role=Membership.Role.MEMBER)
    AppSumoLicence.objects.create(licence_key="AS-123", tier=AppSumoTier.objects.first(), workspace=workspace)
    account_services.set_openrouter_key(user=member, key="sk-or-v1-supersecretvalue-ABCD")
    issued = create_api_key(user=member, name="member key")
    return {"member": member, "workspace": workspace, "issued": issued}


def test_every_changelist_add_and_change_page_loads(client, superuser: User, populated: dict) -> None:
    client.force_login(superuser)
    request = RequestFactory().get("/admin/")
    request.user = superuser
    checked = []

    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert client.get(changelist).status_code == 200, changelist
        assert client.get(changelist, {"q": "example"}).status_code == 200, changelist
        if model_admin.has_add_permission(request):
            add = reverse(f"admin:{opts.app_label}_{opts.model_name}_add")
            assert client.get(add).status_code == 200, add
        instance = model._default_manager.first()
        if instance is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(instance.pk)])
            assert client.get(change).status_code == 200, change
        checked.append(model)

    for model in (
        User,
        Workspace,
        Membership,
        AppSumoLicence,
        AppSumoTier,
        OpenRouterKey,
        DeveloperKey,
        CatalogueModel,
    ):
        assert model in checked


def test_developer_key_pages_never_show_the_hash_or_the_key(client, superuser: User, populated: dict) -> None:
    client.force_login(superuser)
    key = DeveloperKey.objects.get()
    plaintext = populated["issued"].plaintext

    for url in (
        reverse("admin:apikeys_developerkey_changelist"),
        reverse("admin:apikeys_developerkey_change", args=[key.pk]),
    ):
        body = client.get(url).content.decode()
        assert key.key_hash not in body and plaintext not in body
        assert key.masked in body


def test_developer_keys_are_found_by_visible_prefix_masked_form_and_email(
    client, superuser: User, populated: dict
) -> None:
    client.force_login(superuser)
    other = create_api_key(user=superuser, name="root key")
    url = reverse("admin:apikeys_developerkey_changelist")
    mine = populated["issued"]

    def found(term: str) -> set[str]:
        return {row.name for row in client.get(url, {"q": term}).context["cl"].result_list}

    assert found(mine.key.prefix) == {"member key"}
    assert found(mine.key.masked) == {"member key"}
    assert found("member@example.com") == {"member key"}
    assert found(other.key.prefix) == {"root key"}


def test_revoke_action_calls_the_service(
    client, superuser: User, populated: dict, django_capture_on_commit_callbacks
) -> None:
    client.force_login(superuser)
    key = DeveloperKey.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:apikeys_developerkey_changelist"),
            {"action": "revoke_selected", "_selected_action": [key.pk]},
            follow=True,
        )

    assert b"Revoked 1 key(s)." in response.content
    key.refresh_from_db()
    assert key.revoked_at is not None and key.status == "revoked"
    active = client.get(reverse("admin:apikeys_developerkey_changelist"), {"status": "active"})
    assert key not in active.context["cl"].result_list


def test_openrouter_keys_show_only_the_last_four(client, superuser: User, populated: dict) -> None:
    client.force_login(superuser)
    stored = OpenRouterKey.objects.get()

    for url in (
        reverse("admin:accounts_openrouterkey_changelist"),
        reverse("admin:accounts_openrouterkey_change", args=[stored.pk]),
    ):
        body = client.get(url).content.decode()
        assert "…ABCD" in body
        assert stored.encrypted_key not in body and "supersecretvalue" not in body


def test_catalogue_filters_and_search(client, superuser: User) -> None:
    client.force_login(superuser)
    url = reverse("admin:gateway_cataloguemodel_changelist")

    def slugs(params: dict) -> set[str]:
        return {row.slug for row in client.get(url, params).context["cl"].result_list}

    assert slugs({"q": "gpt-5"}) >= {"openai/gpt-5", "openai/gpt-5-mini"}
    assert slugs({"provider__exact": "demo"}) == set(
        CatalogueModel.objects.filter(provider="demo").values_list("slug", flat=True)
    )
    assert "openai/gpt-5" not in slugs({"tier__exact": "basic"})
    assert slugs({"kind__exact": "transcription", "enabled__exact": "1"}) >= {"openai/whisper-1"}


def test_workspace_search_by_member_email_and_plan_change_bumps_epoch(
    client, superuser: User, populated: dict, django_capture_on_commit_callbacks
) -> None:
    client.force_login(superuser)
    url = reverse("admin:accounts_workspace_changelist")
    found = client.get(url, {"q": "member@example.com"}).context["cl"].result_list
    assert {w.name for w in found} >= {"Audit team", "Personal workspace"}

    workspace = populated["workspace"]
    epoch = access.local_access_epoch()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:accounts_workspace_change", args=[workspace.pk]),
            {
                "name": workspace.name,
                "plan": Plan.objects.get(slug="pro").pk,
                "memberships-TOTAL_FORMS": "0",
                "memberships-INITIAL_FORMS": "0",
                "memberships-MIN_NUM_FORMS": "0",
                "memberships-MAX_NUM_FORMS": "1000",
            },
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert access.local_access_epoch() > epoch
    workspace.refresh_from_db()
    assert workspace.plan.slug == "pro"


def test_the_workspace_list_names_the_owners_at_the_same_query_cost_for_any_number_of_rows(
    client, superuser: User, populated: dict
) -> None:
    client.force_login(superuser)
    url = reverse("admin:accounts_workspace_changelist")

    def page() -> tuple[str, int]:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, {"q": "Audit team"})
        assert response.status_code == 200
        return response.content.decode(), len(captured)

    html, queries = page()
    assert re.findall(r'class="field-owners">([^<]*)<', html) == ["root@example.com"]  # the member is no owner
    for i in range(10):
        account_services.create_workspace(
            user=User.objects.create_user(f"owner{i}@example.com"), name=f"Audit team {i}"
        )
    html, more = page()
    assert "owner9@example.com" in re.findall(r'class="field-owners">([^<]*)<', html)
    assert more == queries


def test_admin_refuses_a_current_workspace_the_user_is_not_in(client, superuser: User, populated: dict) -> None:
    client.force_login(superuser)
    member = populated["member"]
    foreign = User.objects.get(email="root@example.com").current_workspace
    page = client.get(reverse("admin:accounts_user_change", args=[member.pk]))
    data = {
        key: value
        for key, value in page.context["adminform"].form.initial.items()
        if key in ("email", "name", "is_active", "date_joined")
    }
    data |= {
        "current_workspace": foreign.pk,
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }

    response = client.post(reverse("admin:accounts_user_change", args=[member.pk]), data)

    assert response.status_code == 200
    assert b"must be one the user is a member of" in response.content
    member.refresh_from_db()
    assert member.current_workspace != foreign
