"""Developer keys: format and checksum, keyed hash, nothing stored in clear, shown once, revocation."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from rest_framework.exceptions import AuthenticationFailed

from accounts.models import User
from apikeys import keys
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key, find_key_grant, revoke_api_key

KEY_PATTERN = re.compile(r"^wmk_[0-9A-Za-z]{49}$")


def authenticate(key: str) -> tuple:
    """The key's owner and grant as /v1 reads them from the database (the API's own path is async and
    runs on other connections, which cannot see this test's transaction: tests/test_authentication.py)."""
    grant = find_key_grant(key_hash=keys.hash_key(key))
    if grant is None:
        raise AuthenticationFailed("unknown, revoked or expired key")
    return User.objects.get(pk=grant.user_id), grant


def test_generated_keys_have_the_format_and_a_valid_checksum() -> None:
    generated = {keys.generate_key() for _ in range(200)}

    assert len(generated) == 200
    for key in generated:
        assert KEY_PATTERN.match(key) and len(key) == keys.KEY_LENGTH
        assert keys.is_well_formed(key)


def test_checksum_rejects_look_alikes() -> None:
    key = keys.generate_key()
    body_char = key[10]
    tampered = key[:10] + ("A" if body_char != "A" else "B") + key[11:]
    truncated, extended = key[:-1], key + "x"
    wrong_prefix = "sk_" + key[4:]

    for bad in (tampered, truncated, extended, wrong_prefix, "", "wmk_" + "!" * 49):
        assert not keys.is_well_formed(bad)


def test_hash_is_an_hmac_with_the_server_secret() -> None:
    key = keys.generate_key()
    expected = hmac.new(settings.API_KEY_HMAC_SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()

    assert keys.hash_key(key) == expected
    assert keys.hash_key(key) != hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.django_db
def test_service_stores_prefix_last4_and_hash_only() -> None:
    user = User.objects.create_user("keys@example.com")

    issued = create_api_key(user=user, name="  laptop ")

    stored = DeveloperKey.objects.get()
    assert issued.plaintext.startswith(stored.prefix) and len(stored.prefix) == keys.VISIBLE_PREFIX_LENGTH
    assert stored.last4 == issued.plaintext[-4:]
    assert stored.key_hash == keys.hash_key(issued.plaintext)
    assert stored.name == "laptop" and stored.status == "active"
    assert stored.masked == f"{stored.prefix}…{stored.last4}"


def all_database_values() -> list[tuple[str, str, object]]:
    """Every value of every column of every table: the raw key must be in none of them."""
    values = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            columns = [column.name for column in connection.introspection.get_table_description(cursor, table)]
            quoted = ", ".join(connection.ops.quote_name(column) for column in columns)
            cursor.execute(f"SELECT {quoted} FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                values.extend((table, column, value) for column, value in zip(columns, row, strict=True))
    return values


@pytest.mark.django_db
def test_raw_key_is_in_no_database_column_after_creation_through_the_page(client) -> None:
    user = User.objects.create_user("keys@example.com")
    client.force_login(user)

    response = client.post(reverse("apikey-create"), {"name": "CI"})
    key = re.search(r"wmk_[0-9A-Za-z]{49}", response.content.decode()).group(0)

    values = all_database_values()
    tables = {table for table, _, _ in values}
    assert {"apikeys_developerkey", "django_session", "accounts_user"} <= tables
    leaks = [(table, column) for table, column, value in values if value is not None and key in _text(value)]
    assert leaks == []
    # The body alone (without prefix) is not stored either.
    assert not [(t, c) for t, c, v in values if v is not None and key[len(keys.KEY_PREFIX) :] in _text(v)]


def _text(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("latin1")
    return str(value)


@pytest.mark.django_db
def test_key_page_shows_the_key_exactly_once(client) -> None:
    user = User.objects.create_user("keys@example.com")
    client.force_login(user)

    listing = client.get(reverse("apikey-list"))
    assert listing.status_code == 200 and b"csrfmiddlewaretoken" in listing.content

    response = client.post(reverse("apikey-create"), {"name": "My laptop"})

    assert response.status_code == 200  # no redirect: the key exists only in this response
    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    key = re.search(r'id="new-key"[^>]*value="(wmk_[0-9A-Za-z]{49})"', body).group(1)
    # Besides the key field, the key appears only where a setup sets an environment variable.
    lines_with_key = [line for line in body.splitlines() if key in line]
    assert len(lines_with_key) == 4
    assert all(line.lstrip().startswith(("export ", "<input", '<pre class="snippet__code"')) for line in lines_with_key)
    assert "will not be shown again" in body
    assert 'data-copy-target="new-key"' in body

    again = client.get(reverse("apikey-list")).content.decode()
    assert key not in again
    stored = DeveloperKey.objects.get()
    assert stored.masked in again and "My laptop" in again and "Active" in again
    assert authenticate(key)[0] == user


@pytest.mark.django_db
def test_create_needs_a_name_and_a_login(client) -> None:
    user = User.objects.create_user("keys@example.com")
    assert client.post(reverse("apikey-create"), {"name": "x"}).status_code == 302
    assert not DeveloperKey.objects.exists()

    client.force_login(user)
    response = client.post(reverse("apikey-create"), {"name": ""})
    assert response.status_code == 400
    assert not DeveloperKey.objects.exists()


@pytest.mark.django_db
def test_revoke_asks_for_confirmation_then_the_key_fails(client, django_capture_on_commit_callbacks) -> None:
    user = User.objects.create_user("keys@example.com")
    issued = create_api_key(user=user, name="old")
    assert authenticate(issued.plaintext)[0] == user
    client.force_login(user)

    confirm = client.get(reverse("apikey-revoke", args=[issued.key.pk]))
    assert confirm.status_code == 200 and b"Revoke \xe2\x80\x9cold\xe2\x80\x9d?" in confirm.content
    assert DeveloperKey.objects.get().revoked_at is None

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("apikey-revoke", args=[issued.key.pk]), follow=True)

    assert b"Revoked" in response.content and b"badge--revoked" in response.content
    assert DeveloperKey.objects.get().revoked_at is not None
    with pytest.raises(AuthenticationFailed):
        authenticate(issued.plaintext)


@pytest.mark.django_db
def test_revoke_is_idempotent_and_keeps_the_first_time() -> None:
    user = User.objects.create_user("keys@example.com")
    issued = create_api_key(user=user, name="k")
    revoke_api_key(key=issued.key)
    first = DeveloperKey.objects.get().revoked_at
    revoke_api_key(key=issued.key)
    assert DeveloperKey.objects.get().revoked_at == first


@pytest.mark.django_db
def test_another_users_keys_are_invisible_and_cannot_be_revoked(client) -> None:
    owner = User.objects.create_user("owner@example.com")
    other = User.objects.create_user("other@example.com")
    issued = create_api_key(user=owner, name="secret-project")
    client.force_login(other)

    assert b"secret-project" not in client.get(reverse("apikey-list")).content
    assert client.get(reverse("apikey-revoke", args=[issued.key.pk])).status_code == 404
    assert client.post(reverse("apikey-revoke", args=[issued.key.pk])).status_code == 404
    assert DeveloperKey.objects.get().revoked_at is None
