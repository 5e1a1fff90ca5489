"""The request every API surface's view gets from gateway.asgi: Django's ASGIRequest plus what the
handler reads back once the response is out (the endpoint and model for metrics, the finalizers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from rest_framework.request import Request

Finalizer = Callable[[], Awaitable[None]]


class ApiRequest(ASGIRequest):
    request_id: str  # req_<32 hex>, sent back as x-request-id and upstream
    api_endpoint: str  # "chat.completions", as metrics and the ledger name it
    api_model: str  # the model the body asked for ("" until a view notes it)
    api_finalizers: list[Finalizer]  # run by the handler after the response is sent


def api_request(request: Request | HttpRequest) -> ApiRequest:
    """The ApiRequest under a DRF Request (or the request itself): gateway.asgi makes every one."""
    return cast(ApiRequest, request._request if isinstance(request, Request) else request)
