"""Every way of creating a user gives them a personal workspace on the free plan, as their current one."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from accounts.models import Membership, User, Workspace


def assert_has_personal_workspace(user: User) -> None:
    user.refresh_from_db()
    assert user.current_workspace is not None
    assert user.current_workspace.plan.slug == "free"
    membership = Membership.objects.get(user=user)
    assert membership.workspace == user.current_workspace
    assert membership.role == Membership.Role.OWNER


@pytest.mark.django_db
def test_create_user_gets_a_personal_workspace() -> None:
    user = User.objects.create_user("Someone@Example.com", "a-long-password-1")

    assert user.email == "someone@example.com"
    assert_has_personal_workspace(user)


@pytest.mark.django_db
def test_createsuperuser_noinput_gets_a_personal_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-password-1")

    call_command("createsuperuser", "--noinput", "--email", "root@example.com", verbosity=0)

    user = User.objects.get(email="root@example.com")
    assert user.is_superuser and user.is_staff
    assert user.check_password("a-long-password-1")
    assert_has_personal_workspace(user)


@pytest.mark.django_db
def test_admin_add_form_gets_a_personal_workspace(admin_client) -> None:
    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {
            "email": "added@example.com",
            "usable_password": "true",
            "password1": "a-long-password-1",
            "password2": "a-long-password-1",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    user = User.objects.get(email="added@example.com")
    assert user.check_password("a-long-password-1")
    assert_has_personal_workspace(user)


@pytest.mark.django_db
def test_sign_up_page_creates_a_user_with_a_personal_workspace_and_logs_them_in(client) -> None:
    page = client.get(reverse("signup"))
    assert page.status_code == 200
    assert b"csrfmiddlewaretoken" in page.content

    response = client.post(
        reverse("signup"),
        {"email": "new@example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("settings")
    user = User.objects.get(email="new@example.com")
    assert_has_personal_workspace(user)
    assert client.get(reverse("settings")).context["user"] == user


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": "taken@example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"}, "email"),
        ({"email": "x@example.com", "password1": "a-long-password-1", "password2": "another-password-2"}, "password2"),
        ({"email": "x@example.com", "password1": "short", "password2": "short"}, "password1"),
        ({"email": "not-an-email", "password1": "a-long-password-1", "password2": "a-long-password-1"}, "email"),
    ],
)
def test_sign_up_rejects_bad_input_without_creating_anyone(client, data: dict, field: str) -> None:
    User.objects.create_user("Taken@example.com", "a-long-password-1")

    response = client.post(reverse("signup"), data)

    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_log_in_log_out_and_password_change(client) -> None:
    User.objects.create_user("me@example.com", "a-long-password-1")

    assert client.get(reverse("settings"))["Location"].startswith(reverse("login"))
    response = client.post(reverse("login"), {"username": "me@example.com", "password": "a-long-password-1"})
    assert response.status_code == 302 and response["Location"] == reverse("settings")

    response = client.post(
        reverse("password_change"),
        {"old_password": "a-long-password-1", "new_password1": "a-new-password-2", "new_password2": "a-new-password-2"},
    )
    assert response.status_code == 302
    assert client.get(reverse("password_change_done")).status_code == 200
    assert User.objects.get().check_password("a-new-password-2")
    # The session survives its own password change.
    assert client.get(reverse("settings")).status_code == 200

    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("settings")).status_code == 302


@pytest.mark.django_db
def test_pages_render_for_anonymous_visitors(client) -> None:
    for name in ("login", "signup"):
        response = client.get(reverse(name))
        assert response.status_code == 200
        assert b"csrfmiddlewaretoken" in response.content
        assert b'<link rel="stylesheet" href="/static/css/site.css">' in response.content
    assert client.get("/")["Location"] == reverse("settings")


# ---- emails ignore case (issue 10 point 9) -------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("typed", ["Me@Example.com", "ME@EXAMPLE.COM", "  me@example.com "])
def test_sign_in_ignores_the_case_of_the_email(client, typed: str) -> None:
    User.objects.create_user("Me@Example.com", "a-long-password-1")

    response = client.post(reverse("login"), {"username": typed, "password": "a-long-password-1"})

    assert response.status_code == 302 and response["Location"] == reverse("settings")
    assert client.get(reverse("settings")).status_code == 200


@pytest.mark.django_db
def test_admin_sign_in_ignores_case_and_a_wrong_password_still_fails(client) -> None:
    User.objects.create_superuser("root@example.com", "a-long-password-1")

    wrong = client.post(reverse("admin:login"), {"username": "ROOT@example.com", "password": "wrong-password-9"})
    assert wrong.status_code == 200 and client.get(reverse("admin:index")).status_code == 302
    right = client.post(reverse("admin:login"), {"username": "ROOT@example.com", "password": "a-long-password-1"})
    assert right.status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200


@pytest.mark.django_db
def test_two_accounts_cannot_differ_only_by_case(client, admin_client) -> None:
    User.objects.create_user("taken@example.com", "a-long-password-1")

    signup = client.post(
        reverse("signup"),
        {"email": "TAKEN@Example.com", "password1": "a-long-password-1", "password2": "a-long-password-1"},
    )
    assert "email" in signup.context["form"].errors
    admin_add = admin_client.post(
        reverse("admin:accounts_user_add"),
        {"email": "Taken@EXAMPLE.com", "usable_password": "false"},
    )
    assert admin_add.status_code == 200 and "email" in admin_add.context["adminform"].form.errors
    # The database refuses it too, whatever path a future writer takes.
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(email="TAKEN@EXAMPLE.COM")
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1


@pytest.mark.django_db
def test_every_way_of_writing_an_email_stores_it_lowercased(admin_client) -> None:
    assert User.objects.create_user(" Mixed@Example.COM ").email == "mixed@example.com"
    admin_client.post(
        reverse("admin:accounts_user_add"),
        {"email": "Added@Example.com", "usable_password": "false"},
    )
    assert User.objects.filter(email="added@example.com").exists()


@pytest.mark.django_db
def test_the_migration_lowercases_old_emails_and_renames_old_default_workspaces() -> None:
    migration = importlib.import_module("accounts.migrations.0004_user_email_ignoring_case")
    old = User.objects.create_user("old@example.com")
    User.objects.filter(pk=old.pk).update(email="Old@Example.com")
    Workspace.objects.filter(pk=old.current_workspace_id).update(name="Old@Example.com's workspace")
    named = Workspace.objects.create(name="someone@else.com's workspace", plan=old.current_workspace.plan)

    migration.lowercase_emails_and_rename_personal_workspaces(django_apps, None)

    old.refresh_from_db()
    assert old.email == "old@example.com"
    assert old.current_workspace.name == "Personal workspace"
    named.refresh_from_db()
    assert named.name == "someone@else.com's workspace"  # not its owner's email: a name someone chose
