"""/api/anthropic/v1: authenticate (x-api-key or Bearer), call one service, answer in Anthropic's shape."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework.exceptions import APIException

from accounts.access import AccessChanged
from apikeys.authentication import ApiCaller, InvalidApiKey, authenticate_api_request
from apikeys.throttling import ensure_address_allowed, note_invalid_key
from gateway.core.calls import CompletionStream, GatewayCall
from gateway.core.finalizers import add_finalizer
from gateway.core.refusals import note_refused
from gateway.core.streaming import EventStreamResponse
from gateway.errors import ApiError, from_drf_exception, service_unavailable
from gateway.surfaces.anthropic import service
from gateway.surfaces.anthropic.errors import error_response
from gateway.surfaces.anthropic.events import PING

logger = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponseBase]]
_MISSING_KEY = (
    "x-api-key header is required: send your Writingmate developer key as x-api-key (ANTHROPIC_API_KEY) "
    "or as Authorization: Bearer (ANTHROPIC_AUTH_TOKEN). Create one in Settings → API Keys."
)


def _authorization(request: HttpRequest) -> str | None:
    """The developer key as a bearer credential: x-api-key (ANTHROPIC_API_KEY) first, else Authorization."""
    api_key = request.META.get("HTTP_X_API_KEY", "").strip()
    if api_key:
        return f"Bearer {api_key}"
    return request.META.get("HTTP_AUTHORIZATION")


async def _authenticate(request: HttpRequest, *, allow_unconfirmed: bool) -> ApiCaller:
    authorization = _authorization(request)
    try:
        if not authorization:
            raise InvalidApiKey(_MISSING_KEY)
        return await authenticate_api_request(
            authorization=authorization,
            workspace_header=request.META.get("HTTP_X_WRITINGMATE_WORKSPACE"),
            allow_unconfirmed=allow_unconfirmed,
        )
    except InvalidApiKey:
        await note_invalid_key(request.META.get("REMOTE_ADDR") or "")
        raise


def messages_endpoint(*, method: str, name: str, reserves_quota: bool = False) -> Callable[[View], View]:
    """Method check, key authentication and Anthropic-shaped errors around an async view of this surface."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, **kwargs: str) -> HttpResponseBase:
            request.api_endpoint = name
            caller: ApiCaller | None = None
            try:
                if request.method != method:
                    raise ApiError(f"Method {request.method} is not allowed here; use {method}.", status=405)
                await ensure_address_allowed(request.META.get("REMOTE_ADDR") or "")
                allow_unconfirmed = reserves_quota and "HTTP_IDEMPOTENCY_KEY" not in request.META
                caller = await _authenticate(request, allow_unconfirmed=allow_unconfirmed)
                try:
                    response = await view(request, caller, **kwargs)
                except AccessChanged:
                    # Nothing was held or sent upstream yet: start over on a freshly read grant.
                    caller = await _authenticate(request, allow_unconfirmed=False)
                    response = await view(request, caller, **kwargs)
            except ApiError as exc:
                return _refused(request, exc, caller=caller)
            except APIException as exc:
                return _refused(request, from_drf_exception(exc), caller=caller, cause=exc)
            except DatabaseError:
                logger.warning("database unavailable on %s (%s)", request.path, request.request_id, exc_info=True)
                return _refused(request, service_unavailable(), caller=caller)
            response["request-id"] = request.request_id
            return response

        return wrapper

    return decorate


def _refused(
    request: HttpRequest, error: ApiError, *, caller: ApiCaller | None = None, cause: Exception | None = None
) -> HttpResponse:
    note_refused(request, error, caller=caller, cause=cause)  # the refusal record, as on /v1
    return error_response(error, request_id=request.request_id)


def _json(payload: object, *, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(payload), content_type="application/json")
    for header, value in (headers or {}).items():
        response[header] = value
    return response


def _respond(request: HttpRequest, call: GatewayCall) -> HttpResponseBase:
    add_finalizer(request, call.finish)
    result = call.result
    if isinstance(result, CompletionStream):
        return EventStreamResponse(result.chunks, headers=result.headers, heartbeat=PING)
    response = HttpResponse(result.body, status=result.status, content_type="application/json")
    for header, value in result.headers.items():
        response[header] = value
    return response


def _note_model(request: HttpRequest) -> None:
    """The model named in the body, for the access log and metrics (cheap: no full parse)."""
    head = request.body[:512]
    start = head.find(b'"model"')
    if start != -1:
        value = head[start + 7 :].lstrip(b" \t\r\n:").split(b'"', 2)
        if len(value) > 1:
            request.api_model = value[1].decode("utf-8", "replace")[:200]


@messages_endpoint(method="POST", name=service.ENDPOINT, reserves_quota=True)
async def messages(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    _note_model(request)
    call = await service.create_message(
        caller=caller,
        raw_body=request.body,
        headers=request.headers,
        request_id=request.request_id,
        idempotency_key=request.META.get("HTTP_IDEMPOTENCY_KEY"),
    )
    return _respond(request, call)


@messages_endpoint(method="POST", name="messages.count_tokens")
async def count_tokens(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    _note_model(request)
    return _json(await service.count_tokens(caller=caller, raw_body=request.body))


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError("limit: Input should be an integer between 1 and 1000", status=400, param="limit")
    return int(raw)


@messages_endpoint(method="GET", name="models.list")
async def models_list(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    page = await service.list_models(
        caller=caller,
        limit=_limit(request.GET.get("limit")),
        after_id=request.GET.get("after_id"),
        before_id=request.GET.get("before_id"),
    )
    return _json(page)


@messages_endpoint(method="GET", name="models.retrieve")
async def models_retrieve(request: HttpRequest, caller: ApiCaller, model_id: str) -> HttpResponseBase:
    return _json(await service.retrieve_model(caller=caller, model_id=unquote(model_id)))
