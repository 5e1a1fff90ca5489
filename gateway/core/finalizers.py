"""Work a /v1 request leaves for after its response: run by gateway.asgi once the response is out
or the client is gone (billing records the request there, off the client's latency)."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.request import Request

from gateway.core.api_request import Finalizer, api_request


def add_finalizer(request: Request | HttpRequest, finalizer: Finalizer) -> None:
    """Run `finalizer` after the response is sent, or after the client disconnected."""
    api_request(request).api_finalizers.append(finalizer)
