"""Errors in Anthropic's shape: {"type": "error", "error": {"type": ..., "message": ...}}.

The rest of the gateway raises gateway.errors.ApiError (OpenAI's vocabulary); on this surface the same
error is rendered with Anthropic's type for its status, so the anthropic SDKs raise their own classes
(AuthenticationError, NotFoundError, RateLimitError, ...).
"""

from __future__ import annotations

import json

from django.http import HttpResponse

from gateway.errors import ApiError

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(*, error_type: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


def error_response(error: ApiError, *, request_id: str) -> HttpResponse:
    """`error` as Anthropic answers it, with `request-id` (and `retry-after` on 429 from its headers)."""
    # A 503 is Anthropic's overloaded_error, except a model this server has no upstream for: not a load problem.
    error_type = "api_error" if error.code == "upstream_not_configured" else anthropic_type(error.status)
    body = error_body(error_type=error_type, message=error.message)
    response = HttpResponse(body, status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 429 and "retry-after" not in error.headers:
        response["retry-after"] = "1"
    if error.code == "upstream_not_configured":
        # Retrying cannot help (the anthropic SDKs and Claude Code read this header before retrying a 5xx).
        response["x-should-retry"] = "false"
    response["request-id"] = request_id
    return response


def error_event(*, error_type: str, message: str) -> bytes:
    """An error after the stream began: Anthropic's `event: error`, which the SDKs raise."""
    return b"event: error\ndata: " + error_body(error_type=error_type, message=message) + b"\n\n"


def not_found_model(model: str) -> ApiError:
    return ApiError(
        f"model: {model} (not a model of this workspace; list them at /api/anthropic/v1/models)",
        status=404,
        param="model",
        code="model_not_found",
    )
