"""Every /v1 failure as OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from django.db import DatabaseError
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
}


class ApiError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPE_BY_STATUS.get(status, "api_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(message, status=400, param=param, code=code)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        f"The model `{model}` does not exist or you do not have access to it. List available models at /v1/models.",
        status=404,
        param="model",
        code="model_not_found",
    )


def service_unavailable() -> ApiError:
    return ApiError(
        "The service is temporarily unavailable. Please retry shortly.",
        status=503,
        error_type="server_error",
        code="service_unavailable",
    )


def from_drf_exception(exc: drf_exceptions.APIException) -> ApiError:
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else None
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    headers = {}
    wait = getattr(exc, "wait", None)  # Throttled sets it in __init__; the stubs do not declare it
    if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
    return ApiError(str(detail), status=exc.status_code, code=code, headers=headers)


def unsupported_media_type(content_type: str, expected: str) -> ApiError:
    media_type = content_type.split(";", 1)[0].strip()
    return ApiError(
        f"Unsupported content type {media_type!r}: send {expected}.", status=415, code="unsupported_media_type"
    )


def method_not_allowed(method: str, path: str, allowed: list[str]) -> ApiError:
    return ApiError(
        f"Method {method} is not allowed on {path}; use {', '.join(allowed)}.",
        status=405,
        code="method_not_allowed",
        headers={"Allow": ", ".join(allowed)},
    )


def as_api_error(exc: Exception, context: dict[str, Any]) -> ApiError | None:
    """`exc` as the ApiError a /v1 client gets, or None for an exception nobody expected (a bug)."""
    view = context.get("view")
    request = context.get("request")
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, drf_exceptions.MethodNotAllowed) and request is not None:
        allowed = [method for method in getattr(view, "allowed_methods", []) if method != "OPTIONS"]
        return method_not_allowed(request.method, request.path, allowed)
    if isinstance(exc, drf_exceptions.UnsupportedMediaType) and request is not None:
        expected = getattr(view, "expected_content", "application/json")
        return unsupported_media_type(request.content_type or "", expected)
    if isinstance(exc, drf_exceptions.APIException):
        return from_drf_exception(exc)
    if isinstance(exc, Http404):
        return ApiError(str(exc) or "Not found.", status=404, code="not_found")
    if isinstance(exc, DatabaseError):
        # Keys or limits cannot be checked: fail closed, with a status the SDKs retry.
        path = getattr(request, "path", "?")
        logger.warning("database unavailable on %s (%s)", path, getattr(request, "request_id", "-"), exc_info=True)
        return service_unavailable()
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """REST_FRAMEWORK's EXCEPTION_HANDLER for the gateway's surfaces: every failure as an ApiError,
    rendered by the view in its surface's shape (OpenAI's by default) and noted in the refusal record.

    None (an unexpected exception) lets it propagate to gateway.asgi, which logs it and answers 500.
    """
    error = as_api_error(exc, context)
    if error is None:
        return None
    refuse = getattr(context.get("view"), "refuse", None)
    return refuse(error, cause=exc) if refuse is not None else error_response(error)


def error_response(error: ApiError, *, extra_headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(error.body()), status=error.status, content_type="application/json")
    for name, value in {**error.headers, **(extra_headers or {})}.items():
        response[name] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="writingmate"'
    return response
