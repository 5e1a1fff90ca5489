"""The signed-in user of a login-required page, typed: `request.user` may be AnonymousUser elsewhere."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts.models import User


def signed_in_user(request: HttpRequest) -> User:
    """`request.user` on a view behind LoginRequiredMixin (which has already sent anyone else to log in)."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Sign in first.")
    return user
