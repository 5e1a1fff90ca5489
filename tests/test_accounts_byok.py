"""The OpenRouter key (BYOK): encrypted at rest, shown only as its last four characters."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts import access, services
from accounts.access import load_user_access
from accounts.encryption import decrypt_secret
from accounts.models import OpenRouterKey, User

SECRET = "sk-or-v1-0123456789abcdef0123456789abcdefWXYZ"


@pytest.fixture
def someone(db) -> User:
    return User.objects.create_user("byok@example.com")


def test_set_replace_and_remove_bump_the_access_epoch(someone: User, django_capture_on_commit_callbacks) -> None:
    epoch = access.local_access_epoch()
    with django_capture_on_commit_callbacks(execute=True):
        stored = services.set_openrouter_key(user=someone, key=f"  {SECRET}\n")

    assert stored.last4 == "WXYZ"
    assert SECRET not in stored.encrypted_key
    assert decrypt_secret(stored.encrypted_key) == SECRET
    assert load_user_access(user_id=someone.pk).byok_ciphertext == stored.encrypted_key
    assert access.local_access_epoch() == epoch + 1

    with django_capture_on_commit_callbacks(execute=True):
        services.set_openrouter_key(user=someone, key="sk-or-v1-another-key-9876")
    assert OpenRouterKey.objects.get(user=someone).last4 == "9876"
    assert access.local_access_epoch() == epoch + 2

    with django_capture_on_commit_callbacks(execute=True):
        assert services.remove_openrouter_key(user=someone) is True
    assert services.remove_openrouter_key(user=someone) is False
    assert load_user_access(user_id=someone.pk).byok_ciphertext is None
    assert access.local_access_epoch() == epoch + 3


def test_empty_key_is_refused(someone: User) -> None:
    with pytest.raises(ValueError):
        services.set_openrouter_key(user=someone, key="   ")


def test_settings_page_saves_masks_replaces_and_removes(client, someone: User) -> None:
    client.force_login(someone)

    response = client.post(reverse("openrouter-key-save"), {"key": SECRET}, follow=True)
    body = response.content.decode()
    assert "WXYZ" in body
    assert SECRET not in body
    assert OpenRouterKey.objects.get(user=someone).encrypted_key not in body
    assert "Replace key" in body and "Remove OpenRouter key" in body

    assert client.post(reverse("openrouter-key-save"), {"key": ""}).status_code == 400

    client.post(reverse("openrouter-key-save"), {"key": "sk-or-v1-replacement-1111"})
    assert OpenRouterKey.objects.get(user=someone).last4 == "1111"

    response = client.post(reverse("openrouter-key-remove"), follow=True)
    assert not OpenRouterKey.objects.filter(user=someone).exists()
    assert "No OpenRouter key saved" in response.content.decode()


def test_one_users_key_is_not_anothers(client, someone: User) -> None:
    other = User.objects.create_user("other@example.com")
    services.set_openrouter_key(user=other, key=SECRET)
    client.force_login(someone)

    assert "WXYZ" not in client.get(reverse("settings")).content.decode()
    client.post(reverse("openrouter-key-remove"))
    assert OpenRouterKey.objects.filter(user=other).exists()
