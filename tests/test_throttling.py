"""Throttling: invalid API keys per client address on /v1, and failed sign-ins on the site and admin."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.contrib.auth import authenticate
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from rest_framework.request import Request

from accounts.login_throttling import LoginThrottleMiddleware
from accounts.models import User
from apikeys import throttling
from apikeys.throttling import InvalidKeyThrottle, TooManyInvalidKeys, blocked_seconds, note_invalid_key

LIMIT = 5


@pytest.fixture(autouse=True)
def _limit(settings):
    # Blocked addresses, counters and the cache are reset before every test (tests.support.reset_process_state).
    settings.API_INVALID_KEY_LIMIT_PER_MINUTE = LIMIT


async def fail(address: str, times: int) -> None:
    for _ in range(times):
        await note_invalid_key(address)


def allowed(address: str) -> bool:
    return blocked_seconds(address) is None


def unauthenticated_request(address: str) -> Request:
    request = Request(RequestFactory().get("/v1/models", REMOTE_ADDR=address))
    request.auth = None
    return request


def exercise_blocking() -> None:
    asyncio.run(fail("203.0.113.7", LIMIT))
    assert allowed("203.0.113.7")  # at the limit, not past it

    asyncio.run(fail("203.0.113.7", 1))

    assert not allowed("203.0.113.7")
    assert allowed("203.0.113.8")
    with pytest.raises(TooManyInvalidKeys) as blocked:
        InvalidKeyThrottle().allow_request(unauthenticated_request("203.0.113.7"), view=None)
    assert 0 < blocked.value.wait <= throttling.WINDOW_SECONDS
    assert blocked.value.status_code == 429
    assert blocked.value.get_codes() == "too_many_invalid_keys"


@override_settings(REDIS_URL="")
def test_an_address_past_the_limit_is_blocked_in_process_without_redis():
    exercise_blocking()


@pytest.mark.redis
def test_an_address_past_the_limit_is_blocked_and_every_process_learns_it_from_redis():
    exercise_blocking()

    # Another process has no local block yet; the shared counter blocks it on its first failure there.
    throttling.forget_blocked_addresses()
    assert allowed("203.0.113.7")
    asyncio.run(fail("203.0.113.7", 1))
    assert not allowed("203.0.113.7")


@override_settings(REDIS_URL="redis://127.0.0.1:9/13")
def test_a_redis_outage_falls_back_to_counting_in_process():
    exercise_blocking()


@override_settings(REDIS_URL="")
def test_ipv6_addresses_count_per_64_block():
    asyncio.run(fail("2001:db8:1:2::1", LIMIT))
    asyncio.run(fail("2001:db8:1:2:ffff::9", 1))

    assert not allowed("2001:db8:1:2::abcd")
    assert allowed("2001:db8:1:3::1")


@override_settings(REDIS_URL="")
def test_the_block_ends_with_the_window(monkeypatch):
    asyncio.run(fail("198.51.100.1", LIMIT + 1))
    assert not allowed("198.51.100.1")

    real_monotonic = time.monotonic
    monkeypatch.setattr(throttling.time, "monotonic", lambda: real_monotonic() + throttling.WINDOW_SECONDS + 1)

    assert allowed("198.51.100.1")


def test_the_throttle_passes_authenticated_keys_and_unblocked_addresses_without_io(monkeypatch):
    asyncio.run(fail("198.51.100.2", LIMIT + 1))  # this address is blocked

    def no_redis():
        raise AssertionError("the throttle's check must not touch Redis")

    monkeypatch.setattr(throttling, "async_redis", no_redis)
    monkeypatch.setattr(throttling, "sync_redis", no_redis)
    from_blocked = unauthenticated_request("198.51.100.2")
    from_blocked.auth = object()  # a valid key: authenticated
    throttle = InvalidKeyThrottle()

    assert throttle.allow_request(from_blocked, view=None) is True
    assert throttle.allow_request(unauthenticated_request("192.0.2.44"), view=None) is True
    with pytest.raises(TooManyInvalidKeys):
        throttle.allow_request(unauthenticated_request("198.51.100.2"), view=None)


# --- sign-in throttling ----------------------------------------------------------------------------

PASSWORD = "a-long-password-1"


@pytest.fixture
def staff(db) -> User:
    return User.objects.create_superuser("admin@example.com", PASSWORD)


def sign_in(address: str, password: str):
    request = RequestFactory().post("/login/", REMOTE_ADDR=address)
    return authenticate(request, username="admin@example.com", password=password)


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=3, LOGIN_THROTTLE_FAILURES_PER_ADDRESS=10)
def test_repeated_wrong_passwords_lock_that_address_out_of_that_account_only(staff):
    for _ in range(3):
        assert sign_in("203.0.113.10", "wrong") is None

    assert sign_in("203.0.113.10", PASSWORD) is None  # even the right password, until the window ends
    assert sign_in("203.0.113.11", PASSWORD) == staff  # the owner elsewhere is not locked out


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=100, LOGIN_THROTTLE_FAILURES_PER_ADDRESS=4)
def test_one_address_spraying_many_accounts_is_locked_out(staff):
    for n in range(4):
        request = RequestFactory().post("/login/", REMOTE_ADDR="203.0.113.20")
        assert authenticate(request, username=f"user{n}@example.com", password="guess") is None

    assert sign_in("203.0.113.20", PASSWORD) is None
    assert sign_in("203.0.113.21", PASSWORD) == staff


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=3)
def test_the_admin_login_answers_429_once_throttled(client, staff):
    for _ in range(3):
        response = client.post(
            "/admin/login/?next=/admin/",
            {"username": "admin@example.com", "password": "wrong"},
            REMOTE_ADDR="203.0.113.30",
        )
        assert response.status_code == 200  # the form again, with its error

    throttled = client.post(
        "/admin/login/?next=/admin/",
        {"username": "admin@example.com", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.30",
    )
    other_address = client.post(
        "/admin/login/?next=/admin/",
        {"username": "admin@example.com", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.31",
    )

    assert throttled.status_code == 429
    assert 0 < int(throttled["Retry-After"]) <= 15 * 60
    assert other_address.status_code == 302


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=1)
def test_the_middleware_only_looks_at_posts_to_login_pages(staff):
    sign_in("203.0.113.40", "wrong")
    middleware = LoginThrottleMiddleware(lambda request: HttpResponse("view"))
    factory = RequestFactory()

    login_post = factory.post("/login/", {"username": "admin@example.com"}, REMOTE_ADDR="203.0.113.40")
    login_get = factory.get("/login/", REMOTE_ADDR="203.0.113.40")
    other_post = factory.post("/settings/", {"username": "admin@example.com"}, REMOTE_ADDR="203.0.113.40")

    assert middleware(login_post).status_code == 429
    assert middleware(login_get).status_code == 200
    assert middleware(other_post).status_code == 200


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=2)
def test_the_sites_login_page_is_throttled_too(client, staff):
    for _ in range(2):
        failed = client.post(
            "/login/", {"username": "admin@example.com", "password": "wrong"}, REMOTE_ADDR="203.0.113.50"
        )
        assert failed.status_code == 200

    throttled = client.post(
        "/login/", {"username": "admin@example.com", "password": PASSWORD}, REMOTE_ADDR="203.0.113.50"
    )
    elsewhere = client.post(
        "/login/", {"username": "admin@example.com", "password": PASSWORD}, REMOTE_ADDR="203.0.113.51"
    )

    assert throttled.status_code == 429
    assert b"Too many failed sign-in attempts" in throttled.content
    assert elsewhere.status_code == 302


@override_settings(LOGIN_THROTTLE_FAILURES_PER_ACCOUNT=3)
@pytest.mark.parametrize(
    ("url", "fields"),
    [
        ("/settings/password/", {"new_password1": "An0ther-long-pass", "new_password2": "An0ther-long-pass"}),
        ("/settings/email/", {"new_email": "new-address@example.com"}),
    ],
)
def test_wrong_current_passwords_on_account_pages_count_as_failed_sign_ins(client, staff, url, fields):
    """A session left open somewhere cannot be used to guess the password faster than the login page allows."""
    client.force_login(staff)
    field = "old_password" if "password" in url else "password"
    for _ in range(3):
        page = client.post(url, {**fields, field: "wrong"}, REMOTE_ADDR="203.0.113.60")
        assert "That is not your current password." in page.content.decode()

    refused = client.post(url, {**fields, field: PASSWORD}, REMOTE_ADDR="203.0.113.60")
    assert refused.status_code == 200 and "Too many wrong passwords" in refused.content.decode()
    assert sign_in("203.0.113.60", PASSWORD) is None  # the login page counts the same failures

    accepted = client.post(url, {**fields, field: PASSWORD}, REMOTE_ADDR="203.0.113.61")
    assert accepted.status_code == 302  # from another address the right password still works
