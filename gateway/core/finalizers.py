"""Work a /v1 request leaves for after its response: run by gateway.asgi once the response is out
or the client is gone (billing records the request there, off the client's latency)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.http import HttpRequest

Finalizer = Callable[[], Awaitable[None]]


def add_finalizer(request: HttpRequest, finalizer: Finalizer) -> None:
    """Run `finalizer` after the response is sent, or after the client disconnected."""
    request.api_finalizers.append(finalizer)
