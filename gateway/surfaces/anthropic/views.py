"""/api/anthropic/v1 as DRF views: authenticate (x-api-key or Bearer), call one service, answer in
Anthropic's shape. DRF's pipeline is gateway.core.api_view's; only the key's header, the error shape
and the `request-id` header are this surface's own.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from rest_framework.request import Request

from apikeys.authentication import ApiKeyAuthentication
from gateway.core.api_request import ApiRequest, api_request
from gateway.core.api_view import AsyncApiView
from gateway.core.calls import CompletionStream, GatewayCall
from gateway.core.finalizers import add_finalizer
from gateway.core.streaming import EventStreamResponse
from gateway.errors import ApiError
from gateway.surfaces.anthropic import service
from gateway.surfaces.anthropic.errors import error_response
from gateway.surfaces.anthropic.events import PING
from gateway.surfaces.anthropic.passthrough import RawBody, parse_body

_MISSING_KEY = (
    "x-api-key header is required: send your Writingmate developer key as x-api-key (ANTHROPIC_API_KEY) "
    "or as Authorization: Bearer (ANTHROPIC_AUTH_TOKEN). Create one in Settings → API Keys."
)


class AnthropicKeyAuthentication(ApiKeyAuthentication):
    """The developer key from x-api-key (ANTHROPIC_API_KEY) first, else Authorization: Bearer."""

    missing_key_message = _MISSING_KEY

    def presented_authorization(self, request: Request) -> str | None:
        api_key = request.META.get("HTTP_X_API_KEY", "").strip()
        if api_key:
            return f"Bearer {api_key}"
        return request.META.get("HTTP_AUTHORIZATION")


class AnthropicView(AsyncApiView):
    """This surface's views: its key header, Anthropic's error shape, `request-id` on every response."""

    authentication_classes = [AnthropicKeyAuthentication]

    def error_response(self, error: ApiError) -> HttpResponse:
        return error_response(error, request_id=api_request(self.request).request_id)

    def finalize_response(  # type: ignore[override]  # DRF's stubs say Response; /v1 also sends bytes and streams
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[arg-type]
        response["request-id"] = api_request(request).request_id
        return response


def _json(payload: object, *, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(payload), content_type="application/json")
    for header, value in (headers or {}).items():
        response[header] = value
    return response


def _respond(request: HttpRequest, call: GatewayCall) -> HttpResponseBase:
    add_finalizer(request, call.finish)
    result = call.result
    if isinstance(result, CompletionStream):
        return EventStreamResponse(result.chunks, headers=result.headers, heartbeat=PING, opening=result.opening)
    response = HttpResponse(result.body, status=result.status, content_type="application/json")
    for header, value in result.headers.items():
        response[header] = value
    return response


_ANTHROPIC_HEADERS = (("anthropic-version", "HTTP_ANTHROPIC_VERSION"), ("anthropic-beta", "HTTP_ANTHROPIC_BETA"))


def _anthropic_headers(request: HttpRequest) -> dict[str, str]:
    """anthropic-version and anthropic-beta as sent, read from META: `request.headers` would build a
    mapping of every header of every request for these two."""
    meta = request.META
    return {name: meta[key] for name, key in _ANTHROPIC_HEADERS if key in meta}


def _parsed_body(request: ApiRequest) -> tuple[dict, RawBody]:
    body, raw = parse_body(request.body)
    if isinstance(body.get("model"), str):
        request.api_model = body["model"][:200]  # for the access log, metrics and the refusal record
    return body, raw


class MessagesView(AnthropicView):
    endpoint = service.ENDPOINT
    reserves_quota = True

    async def post(self, request: Request) -> HttpResponseBase:
        http_request = api_request(request)
        body, raw = _parsed_body(http_request)
        call = await service.create_message(
            caller=self.caller,
            raw_body=http_request.body,
            body=body,
            raw=raw,
            headers=_anthropic_headers(http_request),
            request_id=http_request.request_id,
            idempotency_key=request.META.get("HTTP_IDEMPOTENCY_KEY"),
        )
        return _respond(http_request, call)


class CountTokensView(AnthropicView):
    endpoint = "messages.count_tokens"

    async def post(self, request: Request) -> HttpResponseBase:
        body, _ = _parsed_body(api_request(request))
        return _json(await service.count_tokens(caller=self.caller, body=body))


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError("limit: Input should be an integer between 1 and 1000", status=400, param="limit")
    return int(raw)


class ModelsView(AnthropicView):
    endpoint = "models.list"

    async def get(self, request: Request) -> HttpResponseBase:
        page = await service.list_models(
            caller=self.caller,
            limit=_limit(request.query_params.get("limit")),
            after_id=request.query_params.get("after_id"),
            before_id=request.query_params.get("before_id"),
        )
        return _json(page)


class ModelView(AnthropicView):
    endpoint = "models.retrieve"

    async def get(self, request: Request, model_id: str) -> HttpResponseBase:
        return _json(await service.retrieve_model(caller=self.caller, model_id=unquote(model_id)))
