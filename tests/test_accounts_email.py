"""Password reset by email and email change with a signed confirmation link.

Mail goes to Django's test outbox (the locmem backend pytest-django installs); the default backend
outside tests is the console, and EMAIL_URL picks SMTP (tests/test_deploy_checks.py checks the setting).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from django.core import mail, signing
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import User

PASSWORD = "a-long-password-1"
LINK = re.compile(r"https?://testserver(/\S+)")


@pytest.fixture
def someone(db) -> User:
    return User.objects.create_user("someone@example.com", PASSWORD)


def page_client(user: User | None = None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def post_form(client: Client, url: str, data: dict | None = None, **kwargs):
    client.get(reverse("password_reset"))  # any page with a form sets the CSRF cookie, signed in or not
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, **kwargs)


def link_in(message: mail.EmailMessage) -> str:
    [path] = LINK.findall(message.body)
    return path


# ---- password reset -----------------------------------------------------------------------------


def test_password_reset_by_email_end_to_end(someone: User) -> None:
    client = page_client()
    assert b"Forgot your password?" in client.get(reverse("login")).content

    response = post_form(client, reverse("password_reset"), {"email": "SomeOne@Example.com"})

    assert response.status_code == 302 and response["Location"] == reverse("password_reset_done")
    [message] = mail.outbox
    assert message.to == ["someone@example.com"] and message.subject == "Reset your Writingmate password"
    confirm = client.get(link_in(message), follow=True)
    assert b"Choose a new password" in confirm.content
    done = post_form(
        client,
        confirm.redirect_chain[-1][0],
        {"new_password1": "a-new-password-2", "new_password2": "a-new-password-2"},
        follow=True,
    )
    assert b"Your password was changed" in done.content
    someone.refresh_from_db()
    assert someone.check_password("a-new-password-2")

    # The link works once.
    assert b"This link does not work" in client.get(link_in(message), follow=True).content
    login = post_form(
        page_client(), reverse("login"), {"username": "someone@example.com", "password": "a-new-password-2"}
    )
    assert login.status_code == 302


def test_a_reset_for_an_unknown_address_sends_nothing_and_says_the_same(db) -> None:
    response = post_form(page_client(), reverse("password_reset"), {"email": "nobody@example.com"}, follow=True)

    assert mail.outbox == []
    assert b"If an account uses the address you entered" in response.content


def test_the_reset_form_needs_its_csrf_token(someone: User) -> None:
    assert page_client().post(reverse("password_reset"), {"email": "someone@example.com"}).status_code == 403
    assert mail.outbox == []


# ---- email change -------------------------------------------------------------------------------


def test_email_change_happens_only_when_the_new_address_confirms(someone: User) -> None:
    client = page_client(someone)

    response = post_form(
        client, reverse("email-change"), {"new_email": "New@Example.com", "password": PASSWORD}, follow=True
    )

    assert b"We sent a confirmation link to new@example.com" in response.content
    confirm, notice = mail.outbox
    assert confirm.to == ["new@example.com"] and notice.to == ["someone@example.com"]
    assert "new@example.com" in notice.body and "/settings/email/confirm/" not in notice.body
    someone.refresh_from_db()
    assert someone.email == "someone@example.com"  # nothing changed yet

    link = link_in(confirm)
    page = client.get(link)
    assert page.status_code == 200 and b"Use new@example.com to sign in?" in page.content
    someone.refresh_from_db()
    assert someone.email == "someone@example.com"  # opening the link (a mail scanner might) changes nothing

    done = post_form(client, link, follow=True)
    assert b"Your email address is now new@example.com" in done.content
    someone.refresh_from_db()
    assert someone.email == "new@example.com"
    assert mail.outbox[-1].to == ["someone@example.com"] and "was changed" in mail.outbox[-1].subject

    again = post_form(client, link)
    assert again.status_code == 400 and b"no longer works" in again.content
    login = post_form(page_client(), reverse("login"), {"username": "NEW@example.com", "password": PASSWORD})
    assert login.status_code == 302


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"new_email": "someone@example.com", "password": PASSWORD}, "That is already your email address."),
        ({"new_email": "TAKEN@example.com", "password": PASSWORD}, "Another account uses that email address."),
        ({"new_email": "new@example.com", "password": "wrong-password-9"}, "That is not your current password."),
        ({"new_email": "not-an-email", "password": PASSWORD}, "Enter a valid email address."),
    ],
)
def test_email_change_requests_are_checked(someone: User, data: dict, error: str) -> None:
    User.objects.create_user("taken@example.com")

    response = post_form(page_client(someone), reverse("email-change"), data)

    assert response.status_code == 200 and error in response.content.decode()
    assert mail.outbox == []


def test_a_confirmation_link_works_only_for_its_account_signed_in(someone: User) -> None:
    other = User.objects.create_user("other@example.com", PASSWORD)
    change = services.request_email_change(
        user=someone, new_email="new@example.com", confirm_url=lambda token: f"http://testserver/t/{token}/"
    )
    token = mail.outbox[0].body.split("/t/")[1].split("/")[0]
    link = reverse("email-change-confirm", kwargs={"token": token})

    assert page_client().get(link)["Location"].startswith(reverse("login"))  # signed out: sign in first
    wrong_account = page_client(other)
    assert b"belongs to another account" in wrong_account.get(link).content
    assert post_form(wrong_account, link).status_code == 400
    other.refresh_from_db()
    someone.refresh_from_db()
    assert (other.email, someone.email) == ("other@example.com", "someone@example.com")
    assert change.new_email == "new@example.com"


def test_forged_expired_and_overtaken_links_are_refused(someone: User, settings) -> None:
    client = page_client(someone)
    forged = signing.dumps({"u": someone.pk, "o": someone.email, "n": "evil@example.com"}, salt="another-salt")
    assert b"This link is not valid" in client.get(reverse("email-change-confirm", args=[forged])).content

    settings.PASSWORD_RESET_TIMEOUT = -1  # every link is already past its age
    token = signing.dumps(
        {"u": someone.pk, "o": someone.email, "n": "late@example.com"}, salt=services.EMAIL_CHANGE_SALT
    )
    assert b"This link has expired" in post_form(client, reverse("email-change-confirm", args=[token])).content

    settings.PASSWORD_RESET_TIMEOUT = 3600
    User.objects.create_user("late@example.com")  # someone signed up with the address meanwhile
    taken = post_form(client, reverse("email-change-confirm", args=[token]))
    assert taken.status_code == 400 and b"Another account started using that email address" in taken.content
    someone.refresh_from_db()
    assert someone.email == "someone@example.com"


def test_the_email_change_form_needs_its_csrf_token(someone: User) -> None:
    response = page_client(someone).post(reverse("email-change"), {"new_email": "x@example.com", "password": PASSWORD})
    assert response.status_code == 403 and mail.outbox == []


# ---- SMTP from the environment ------------------------------------------------------------------


@pytest.fixture
def smtp_server() -> Iterator[tuple[list[Envelope], int]]:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""
    received: list[Envelope] = []

    class Keep:
        async def handle_DATA(self, server, session, envelope: Envelope) -> str:
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield received, port
    finally:
        controller.stop()


def test_email_url_selects_smtp_with_its_credentials() -> None:
    script = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, "
        "s.EMAIL_USE_TLS, s.EMAIL_TIMEOUT, s.DEFAULT_FROM_EMAIL]))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "writingmate.settings",
        "EMAIL_URL": "smtp+tls://mailer:p%40ss@smtp.example.com:587",
        "DEFAULT_FROM_EMAIL": "Writingmate <hello@example.com>",
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [
        "django.core.mail.backends.smtp.EmailBackend",
        "smtp.example.com",
        587,
        "mailer",
        "p@ss",
        True,
        10.0,
        "Writingmate <hello@example.com>",
    ]
    default = subprocess.run(
        [sys.executable, "-c", script],
        env={k: v for k, v in env.items() if k not in ("EMAIL_URL", "DEFAULT_FROM_EMAIL")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(default.stdout.splitlines()[-1])[0] == "django.core.mail.backends.console.EmailBackend"


def test_a_password_reset_is_delivered_over_smtp(someone: User, smtp_server, settings) -> None:
    received, port = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False

    post_form(page_client(), reverse("password_reset"), {"email": "someone@example.com"})

    [envelope] = received
    assert envelope.rcpt_tos == ["someone@example.com"]
    body = envelope.content.decode()
    assert "Subject: Reset your Writingmate password" in body and "/password-reset/" in body


def test_account_mails_are_capped_per_recipient(someone: User) -> None:
    client = page_client()
    for _ in range(3):
        assert post_form(client, reverse("password_reset"), {"email": "someone@example.com"}).status_code == 302

    refused = post_form(client, reverse("password_reset"), {"email": "SOMEONE@example.com"})

    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert b"Please wait a little" in refused.content
    assert len(mail.outbox) == 3
    # Another recipient from the same address is still served.
    assert post_form(client, reverse("password_reset"), {"email": "other@example.com"}).status_code == 302


def test_email_change_mails_share_the_cap(someone: User) -> None:
    client = page_client(someone)
    for _ in range(3):
        post_form(client, reverse("email-change"), {"new_email": "target@example.com", "password": PASSWORD})

    refused = post_form(client, reverse("email-change"), {"new_email": "target@example.com", "password": PASSWORD})

    assert refused.status_code == 429
    assert [m.to for m in mail.outbox].count(["target@example.com"]) == 3
