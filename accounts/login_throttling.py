"""Login brute-force throttling for the site and the admin, and a cap on account mails (password
reset, email change), kept in the cache (Redis in production).

Failures are counted per (address, email) and per address in a fixed window of
LOGIN_THROTTLE_WINDOW_SECONDS. Past LOGIN_THROTTLE_FAILURES_PER_ACCOUNT for one pair, or
LOGIN_THROTTLE_FAILURES_PER_ADDRESS for one address, `ThrottledModelBackend` refuses every sign-in from
there (also the correct password) until the window ends, and `LoginThrottleMiddleware` answers a POST
to a login page with a 429 that says so. Counting per pair, not per account alone, keeps a stranger
from locking a user out by failing on purpose.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase

logger = logging.getLogger(__name__)

_KEY_PREFIX = "wm:login-fail:"


def _client_address(request: HttpRequest | None) -> str:
    return (request.META.get("REMOTE_ADDR") or "unknown") if request is not None else "unknown"


def _counter_keys(address: str, username: str | None) -> tuple[str, str]:
    window = int(time.time() // settings.LOGIN_THROTTLE_WINDOW_SECONDS)
    # Hashed: the cache holds no email addresses.
    account = hashlib.sha256(f"{address}|{(username or '').strip().lower()}".encode()).hexdigest()[:32]
    return f"{_KEY_PREFIX}a:{address}:{window}", f"{_KEY_PREFIX}p:{account}:{window}"


def seconds_until_allowed(request: HttpRequest | None, username: str | None) -> int:
    """0 when a sign-in from this address for this email may be tried, else seconds to wait."""
    address_key, pair_key = _counter_keys(_client_address(request), username)
    counts = cache.get_many([address_key, pair_key])
    if (
        counts.get(address_key, 0) < settings.LOGIN_THROTTLE_FAILURES_PER_ADDRESS
        and counts.get(pair_key, 0) < settings.LOGIN_THROTTLE_FAILURES_PER_ACCOUNT
    ):
        return 0
    window = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    return max(1, int(window - time.time() % window))


def note_login_failure(request: HttpRequest | None, username: str | None) -> None:
    timeout = settings.LOGIN_THROTTLE_WINDOW_SECONDS * 2
    for key in _counter_keys(_client_address(request), username):
        cache.add(key, 0, timeout)
        try:
            cache.incr(key)
        except ValueError:
            # Expired between add and incr: this failure starts the count again.
            cache.set(key, 1, timeout)


# Account mails (password-reset and email-change links) per window of LOGIN_THROTTLE_WINDOW_SECONDS:
# enough for a user who mistyped or lost a mail, too few to flood someone's inbox through our forms.
ACCOUNT_MAILS_PER_RECIPIENT = 3
ACCOUNT_MAILS_PER_ADDRESS = 10


def take_account_mail_allowance(request: HttpRequest, recipient: str) -> int:
    """Count one account mail to `recipient` asked for from this address. 0 when it may be sent,
    else the seconds until the window ends (the count is taken either way, so a flood stays refused)."""
    window_seconds = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    window = int(time.time() // window_seconds)
    address = _client_address(request)
    recipient_hash = hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:32]
    limits = {
        f"{_KEY_PREFIX}mail-a:{address}:{window}": ACCOUNT_MAILS_PER_ADDRESS,
        f"{_KEY_PREFIX}mail-r:{recipient_hash}:{window}": ACCOUNT_MAILS_PER_RECIPIENT,
    }
    over = False
    for key, limit in limits.items():
        cache.add(key, 0, window_seconds * 2)
        try:
            count = cache.incr(key)
        except ValueError:
            cache.set(key, 1, window_seconds * 2)
            count = 1
        over = over or count > limit
    return max(1, int(window_seconds - time.time() % window_seconds)) if over else 0


class ThrottledModelBackend(ModelBackend):
    """ModelBackend that refuses throttled sign-ins and counts failed ones."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: object
    ):
        if username is None:
            named = kwargs.get(get_user_model().USERNAME_FIELD)
            username = named if isinstance(named, str) else None
        if seconds_until_allowed(request, username):
            # PermissionDenied stops django.contrib.auth from trying any other backend.
            raise PermissionDenied("too many failed sign-ins")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None and password is not None:
            note_login_failure(request, username)
            if seconds_until_allowed(request, username):
                logger.warning("sign-in throttled for %s after repeated failures", _client_address(request))
        return user


class LoginThrottleMiddleware:
    """Answers a POST to a login page with 429 while its sender is throttled, before the form runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method == "POST" and request.path_info in settings.LOGIN_THROTTLE_PATHS:
            wait = seconds_until_allowed(request, request.POST.get("username"))
            if wait:
                response = HttpResponse(
                    f"Too many failed sign-in attempts. Try again in {max(1, round(wait / 60))} minute(s).",
                    status=429,
                    content_type="text/plain; charset=utf-8",
                )
                response["Retry-After"] = str(wait)
                return response
        return self.get_response(request)
