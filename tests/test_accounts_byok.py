"""The OpenRouter key (BYOK): checked for its format and with OpenRouter (GET /key) before it is saved,
encrypted at rest, shown as its last four characters with OpenRouter's label and limit, and removed
only after a confirmation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from accounts import access, openrouter_keys, services
from accounts.access import load_user_access
from accounts.encryption import decrypt_secret
from accounts.models import OpenRouterKey, User
from accounts.openrouter_keys import MalformedOpenRouterKey, OpenRouterKeyRejected, OpenRouterUnavailable

SECRET = "sk-or-v1-0123456789abcdef0123456789abcdefWXYZ"
OTHER = "sk-or-v1-" + "9" * 60 + "9876"


@pytest.fixture
def someone(db) -> User:
    return User.objects.create_user("byok@example.com")


def page_client(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post_form(client: Client, url: str, data: dict | None = None, **kwargs):
    client.get(reverse("settings"))
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, **kwargs)


def test_a_key_openrouter_accepts_is_saved_encrypted_with_its_label_and_limit(
    someone: User, fake_upstream, django_capture_on_commit_callbacks
) -> None:
    fake_upstream.key_info |= {"limit": 100, "limit_remaining": 74.5, "limit_reset": "monthly", "usage": 25.5}
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        stored = services.set_openrouter_key(user=someone, key=f"  {SECRET}\n")

    [asked] = fake_upstream.requests_to("/key")
    assert asked.method == "GET" and asked.headers["authorization"] == f"Bearer {SECRET}"
    assert stored.last4 == "WXYZ" and stored.label == "sk-or-v1-01...XYZ"
    assert (stored.credit_limit, stored.credit_remaining, stored.limit_reset) == (
        Decimal("100"),
        Decimal("74.5"),
        "monthly",
    )
    assert stored.verified_at is not None
    assert SECRET not in stored.encrypted_key and decrypt_secret(stored.encrypted_key) == SECRET
    assert load_user_access(user_id=someone.pk).byok_ciphertext == stored.encrypted_key
    assert access.local_access_epoch() == epoch + 1


def test_replacing_and_removing_bump_the_access_epoch(
    someone: User, fake_upstream, django_capture_on_commit_callbacks
) -> None:
    services.set_openrouter_key(user=someone, key=SECRET)
    epoch = access.local_access_epoch()

    with django_capture_on_commit_callbacks(execute=True):
        services.set_openrouter_key(user=someone, key=OTHER)
    assert OpenRouterKey.objects.get(user=someone).last4 == "9876"
    assert access.local_access_epoch() == epoch + 1

    with django_capture_on_commit_callbacks(execute=True):
        assert services.remove_openrouter_key(user=someone) is True
    assert services.remove_openrouter_key(user=someone) is False
    assert load_user_access(user_id=someone.pk).byok_ciphertext is None
    assert access.local_access_epoch() == epoch + 2


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("   ", "does not look like an OpenRouter API key"),
        ("not-a-key", "does not look like an OpenRouter API key"),
        ("sk-or-v1-short", "does not look like an OpenRouter API key"),
        ("sk-or-v1-0123456789abcdef 0123456789abcdef", "does not look like an OpenRouter API key"),
        ("sk-proj-0123456789abcdef0123456789abcdef", "does not look like an OpenRouter API key"),
        ("wmk_" + "a" * 49, "That is a Writingmate developer key"),
    ],
)
def test_a_malformed_key_is_refused_without_asking_openrouter(
    someone: User, fake_upstream, typed: str, says: str
) -> None:
    with pytest.raises(MalformedOpenRouterKey, match=says):
        services.set_openrouter_key(user=someone, key=typed)

    assert fake_upstream.requests_to("/key") == []
    assert not OpenRouterKey.objects.exists()


def test_a_key_openrouter_rejects_is_not_saved_and_an_old_one_stays(someone: User, fake_upstream) -> None:
    services.set_openrouter_key(user=someone, key=SECRET)
    fake_upstream.rejected_keys.add(OTHER)

    with pytest.raises(OpenRouterKeyRejected, match=r"OpenRouter did not accept this key \(User not found\.\)"):
        services.set_openrouter_key(user=someone, key=OTHER)

    assert decrypt_secret(OpenRouterKey.objects.get(user=someone).encrypted_key) == SECRET


@pytest.mark.parametrize("failure", ["500", "503", "429", "error_body_200"])
def test_when_openrouter_cannot_answer_nothing_is_saved(someone: User, fake_upstream, failure: str) -> None:
    fake_upstream.fail_next(failure, endpoint="/key")

    with pytest.raises(OpenRouterUnavailable, match="was not saved"):
        services.set_openrouter_key(user=someone, key=SECRET)

    assert not OpenRouterKey.objects.exists()


def test_when_openrouter_is_unreachable_or_slow_nothing_is_saved(
    someone: User, fake_upstream, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_upstream.hang_seconds = 3
    fake_upstream.fail_next("timeout_before_headers", endpoint="/key")
    monkeypatch.setattr(openrouter_keys, "READ_TIMEOUT_SECONDS", 0.3)
    with pytest.raises(OpenRouterUnavailable, match="did not answer in time"):
        services.set_openrouter_key(user=someone, key=SECRET)

    fake_upstream.stop()  # nothing listens on its port any more
    with pytest.raises(OpenRouterUnavailable, match="could not be reached"):
        services.set_openrouter_key(user=someone, key=SECRET)

    assert not OpenRouterKey.objects.exists()


def test_an_implausible_answer_is_not_trusted(someone: User, fake_upstream) -> None:
    fake_upstream.key_info |= {"limit": "Infinity"}

    with pytest.raises(OpenRouterUnavailable, match="not what we expected"):
        services.set_openrouter_key(user=someone, key=SECRET)
    assert not OpenRouterKey.objects.exists()


def test_the_settings_page_checks_saves_and_shows_label_and_remaining_limit(someone: User, fake_upstream) -> None:
    fake_upstream.key_info |= {"limit": 20, "limit_remaining": 12.345, "limit_reset": "weekly"}
    client = page_client(someone)

    assert client.post(reverse("openrouter-key-save"), {"key": SECRET}).status_code == 403  # CSRF
    response = post_form(client, reverse("openrouter-key-save"), {"key": SECRET}, follow=True)

    body = response.content.decode()
    assert "OpenRouter accepted your key ending in WXYZ" in body
    assert "sk-or-v1-01...XYZ" in body and "$12.35 left of $20.00 (resets weekly)" in body
    assert SECRET not in body and OpenRouterKey.objects.get(user=someone).encrypted_key not in body
    assert "Check and replace key" in body and reverse("openrouter-key-remove") in body


def test_the_settings_page_explains_a_refusal_and_an_outage(someone: User, fake_upstream) -> None:
    client = page_client(someone)

    malformed = post_form(client, reverse("openrouter-key-save"), {"key": "not-a-key"})
    assert malformed.status_code == 400 and "does not look like an OpenRouter API key" in malformed.content.decode()

    fake_upstream.rejected_keys.add(SECRET)
    rejected = post_form(client, reverse("openrouter-key-save"), {"key": SECRET})
    assert rejected.status_code == 400 and "OpenRouter did not accept this key" in rejected.content.decode()
    assert SECRET not in rejected.content.decode()  # the password field is never filled back in

    fake_upstream.rejected_keys.clear()
    fake_upstream.fail_next("503", endpoint="/key")
    outage = post_form(client, reverse("openrouter-key-save"), {"key": SECRET})
    assert outage.status_code == 503 and "so it was not saved" in outage.content.decode()

    assert not OpenRouterKey.objects.exists()
    assert "No OpenRouter key saved" in outage.content.decode()


def test_removing_asks_first_then_removes(someone: User, fake_upstream) -> None:
    services.set_openrouter_key(user=someone, key=SECRET)
    client = page_client(someone)

    confirm = client.get(reverse("openrouter-key-remove"))
    assert confirm.status_code == 200 and "Remove your OpenRouter key?" in confirm.content.decode()
    assert "WXYZ" in confirm.content.decode() and SECRET not in confirm.content.decode()
    assert OpenRouterKey.objects.filter(user=someone).exists()

    assert client.post(reverse("openrouter-key-remove")).status_code == 403  # CSRF
    assert OpenRouterKey.objects.filter(user=someone).exists()
    response = post_form(client, reverse("openrouter-key-remove"), follow=True)

    assert not OpenRouterKey.objects.filter(user=someone).exists()
    assert "Removed your OpenRouter key" in response.content.decode()
    assert client.get(reverse("openrouter-key-remove"))["Location"].endswith("#openrouter")


def test_one_users_key_is_not_anothers(someone: User, fake_upstream) -> None:
    other = User.objects.create_user("other@example.com")
    services.set_openrouter_key(user=other, key=SECRET)
    client = page_client(someone)

    assert "WXYZ" not in client.get(reverse("settings")).content.decode()
    assert "WXYZ" not in client.get(reverse("openrouter-key-remove")).content.decode()
    post_form(client, reverse("openrouter-key-remove"))
    assert OpenRouterKey.objects.filter(user=other).exists()


def test_check_again_refreshes_the_figures_and_keeps_a_key_openrouter_now_rejects(someone: User, fake_upstream) -> None:
    fake_upstream.key_info |= {"limit": 10, "limit_remaining": 10}
    services.set_openrouter_key(user=someone, key=SECRET)
    client = page_client(someone)
    assert client.post(reverse("openrouter-key-recheck")).status_code == 403  # CSRF

    fake_upstream.key_info |= {"limit_remaining": 3.5}
    response = post_form(client, reverse("openrouter-key-recheck"), follow=True)
    assert "OpenRouter still accepts your key" in response.content.decode()
    assert "$3.50 left of $10.00" in response.content.decode()
    assert fake_upstream.requests_to("/key")[-1].headers["authorization"] == f"Bearer {SECRET}"

    fake_upstream.rejected_keys.add(SECRET)
    response = post_form(client, reverse("openrouter-key-recheck"), follow=True)
    assert "OpenRouter did not accept this key" in response.content.decode()
    assert "Your saved key was kept" in response.content.decode()
    assert OpenRouterKey.objects.get(user=someone).credit_remaining == Decimal("3.5")


def test_check_again_without_a_key_does_nothing(someone: User, fake_upstream) -> None:
    response = post_form(page_client(someone), reverse("openrouter-key-recheck"), follow=True)
    assert response.status_code == 200 and fake_upstream.requests_to("/key") == []
