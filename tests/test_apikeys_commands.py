"""The operator commands: create_developer_key and seed_demo print the key alone on the last line."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from apikeys import keys
from apikeys.models import DeveloperKey
from apikeys.services import find_key_grant


def run(*args: str) -> list[str]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().rstrip("\n").split("\n")


def authenticated_user(key: str) -> User:
    """The key's owner as /v1 reads it from the database (the API's async path uses other connections)."""
    grant = find_key_grant(key_hash=keys.hash_key(key))
    assert grant is not None, "the printed key does not authenticate"
    return User.objects.get(pk=grant.user_id)


@pytest.mark.django_db
def test_create_developer_key_prints_the_key_alone_on_the_last_line() -> None:
    user = User.objects.create_user("ops@example.com")

    lines = run("create_developer_key", "OPS@example.com", "--name", "deploy")

    key = lines[-1]
    assert keys.is_well_formed(key)
    assert len(lines) == 2 and key not in lines[0] and "ops@example.com" in lines[0]
    assert authenticated_user(key) == user
    assert DeveloperKey.objects.get().name == "deploy"


@pytest.mark.django_db
def test_create_developer_key_for_an_unknown_user_fails_without_a_key() -> None:
    with pytest.raises(CommandError, match="No user"):
        run("create_developer_key", "nobody@example.com")
    assert not DeveloperKey.objects.exists()


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_a_fresh_working_key(settings) -> None:
    settings.DEBUG = True

    first = run("seed_demo")
    second = run("seed_demo")

    user = User.objects.get(email="demo@writingmate.local")
    assert User.objects.filter(email="demo@writingmate.local").count() == 1
    assert user.current_workspace.plan.slug == "unlimited"
    assert user.current_workspace.plan.allows_model(slug="demo/echo", tier="basic")
    assert first[-1] != second[-1]
    for lines in (first, second):
        assert keys.is_well_formed(lines[-1])
        assert authenticated_user(lines[-1]) == user
        assert "password: writingmate-demo" in lines[0]
    assert user.check_password("writingmate-demo")
    assert DeveloperKey.objects.filter(user=user).count() == 2


@pytest.mark.django_db
def test_seed_demo_without_debug_prints_a_random_password_once(settings) -> None:
    settings.DEBUG = False

    first = run("seed_demo")
    second = run("seed_demo")

    password = first[0].split("password: ", 1)[1].split(")", 1)[0]
    assert password != "writingmate-demo" and len(password) >= 12
    assert User.objects.get(email="demo@writingmate.local").check_password(password)
    assert "password unchanged" in second[0] and password not in "\n".join(second)
