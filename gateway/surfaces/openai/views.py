"""The /v1 endpoints: authenticate, parse, call one service, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from django.core.exceptions import SuspiciousOperation
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import APIException

from accounts.access import AccessChanged
from apikeys.authentication import ApiCaller, InvalidApiKey, authenticate_api_request
from apikeys.throttling import ensure_address_allowed, note_invalid_key
from billing.quotas import current_budget
from gateway import catalogue
from gateway.core import calls
from gateway.core.finalizers import add_finalizer
from gateway.core.refusals import note_refused
from gateway.core.streaming import EventStreamResponse
from gateway.core.validation import parse_json_object
from gateway.errors import ApiError, error_response, from_drf_exception, service_unavailable
from gateway.surfaces.openai import audio, stored_responses
from gateway.surfaces.openai.responses import service as responses_service

logger = logging.getLogger(__name__)

ApiView = Callable[..., Awaitable[HttpResponseBase]]


def api_endpoint(*, method: str, name: str, reserves_quota: bool = False) -> Callable[[ApiView], ApiView]:
    """Method check, bearer authentication and OpenAI-shaped errors around an async /v1 view.

    `name` labels the request in metrics and the ledger ("chat.completions"). `reserves_quota`: the
    view reserves quota before anything else happens, so it may run on a grant remembered in memory
    whose access epoch the reservation confirms; if access changed meanwhile, the view runs again
    with a freshly read grant. (Not with an Idempotency-Key: a replay reserves nothing.)
    """

    def decorate(view: ApiView) -> ApiView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, **kwargs: str) -> HttpResponseBase:
            request.api_endpoint = name
            if request.method != method:
                error = ApiError(
                    f"Method {request.method} is not allowed on {request.path}; use {method}.",
                    status=405,
                    code="method_not_allowed",
                )
                response = _refused(request, error)
                response["Allow"] = method
                return response
            caller: ApiCaller | None = None
            try:
                await ensure_address_allowed(request.META.get("REMOTE_ADDR") or "")
                allow_unconfirmed = reserves_quota and "HTTP_IDEMPOTENCY_KEY" not in request.META
                caller = await _authenticate(request, allow_unconfirmed=allow_unconfirmed)
                try:
                    return await view(request, caller, **kwargs)
                except AccessChanged:
                    # Nothing was held or sent upstream yet: start over on a freshly read grant.
                    caller = await _authenticate(request, allow_unconfirmed=False)
                    return await view(request, caller, **kwargs)
            except ApiError as exc:
                return _refused(request, exc, caller=caller)
            except APIException as exc:
                return _refused(request, from_drf_exception(exc), caller=caller, cause=exc)
            except DatabaseError:
                # Keys or limits cannot be checked: fail closed, with a status the SDKs retry.
                logger.warning("database unavailable on %s (%s)", request.path, request.request_id, exc_info=True)
                return _refused(request, service_unavailable(), caller=caller)

        return wrapper

    return decorate


def _refused(
    request: HttpRequest, error: ApiError, *, caller: ApiCaller | None = None, cause: Exception | None = None
) -> HttpResponse:
    note_refused(request, error, caller=caller, cause=cause)
    return error_response(error)


async def _authenticate(request: HttpRequest, *, allow_unconfirmed: bool) -> ApiCaller:
    try:
        return await authenticate_api_request(
            authorization=request.META.get("HTTP_AUTHORIZATION"),
            workspace_header=request.META.get("HTTP_X_WRITINGMATE_WORKSPACE"),
            allow_unconfirmed=allow_unconfirmed,
        )
    except InvalidApiKey:
        await note_invalid_key(request.META.get("REMOTE_ADDR") or "")
        raise


def _json(payload: object, *, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(payload), content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _model_object(entry: catalogue.CatalogueEntry) -> dict:
    return {"id": entry.slug, "object": "model", "created": entry.created, "owned_by": entry.owned_by}


@api_endpoint(method="GET", name="models.list")
async def models_list(request: HttpRequest, caller: ApiCaller) -> HttpResponse:
    entries = await catalogue.models_for(caller.workspace, key=caller.grant)
    budget = await current_budget(workspace=caller.workspace, user_id=caller.user_id, key=calls.key_budget(caller))
    return _json({"object": "list", "data": [_model_object(e) for e in entries]}, headers=budget.headers())


@api_endpoint(method="GET", name="models.retrieve")
async def models_retrieve(request: HttpRequest, caller: ApiCaller, model_id: str) -> HttpResponse:
    slug = unquote(model_id)
    for entry in await catalogue.models_for(caller.workspace, key=caller.grant):
        if entry.slug == slug:
            return _json(_model_object(entry))
    raise ApiError(f"The model '{slug}' does not exist", status=404, param="model", code="model_not_found")


def _respond(request: HttpRequest, call: calls.GatewayCall) -> HttpResponseBase:
    add_finalizer(request, call.finish)
    result = call.result
    if isinstance(result, calls.CompletionStream):
        return EventStreamResponse(result.chunks, headers=result.headers)
    response = HttpResponse(result.body, status=result.status, content_type="application/json")
    for name, value in result.headers.items():
        response[name] = value
    return response


def _json_body(request: HttpRequest) -> dict:
    body = parse_json_object(request.body, request.content_type)
    if isinstance(body.get("model"), str):
        request.api_model = body["model"]
    return body


async def _proxied_json(request: HttpRequest, caller: ApiCaller, create: Callable[..., Awaitable]) -> HttpResponseBase:
    call = await create(
        caller=caller,
        body=_json_body(request),
        request_id=request.request_id,
        raw_body=request.body,
        idempotency_key=request.META.get("HTTP_IDEMPOTENCY_KEY"),
    )
    return _respond(request, call)


@api_endpoint(method="POST", name="chat.completions", reserves_quota=True)
async def chat_completions(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    return await _proxied_json(request, caller, calls.create_chat_completion)


@api_endpoint(method="POST", name="completions", reserves_quota=True)
async def completions(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    return await _proxied_json(request, caller, calls.create_completion)


@api_endpoint(method="POST", name="responses")
async def responses(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    return await _proxied_json(request, caller, responses_service.create_response)


@api_endpoint(method="POST", name="responses.compact")
async def responses_compact(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    return await _proxied_json(request, caller, responses_service.compact_response)


@api_endpoint(method="GET", name="responses.retrieve")
async def _response_retrieve(request: HttpRequest, caller: ApiCaller, response_id: str) -> HttpResponse:
    if request.GET.get("stream") not in (None, "", "false"):
        raise ApiError(
            "Streaming a stored response again is only for background responses, which this API does not run.",
            param="stream",
            code="unsupported_parameter",
        )
    body = await stored_responses.retrieve_response(caller=caller, response_id=response_id)
    return HttpResponse(body, content_type="application/json")


@api_endpoint(method="DELETE", name="responses.delete")
async def _response_delete(request: HttpRequest, caller: ApiCaller, response_id: str) -> HttpResponse:
    return _json(await stored_responses.delete_response(caller=caller, response_id=response_id))


async def response_detail(request: HttpRequest, response_id: str) -> HttpResponseBase:
    """GET or DELETE /v1/responses/{id}."""
    view = _response_delete if request.method == "DELETE" else _response_retrieve
    return await view(request, response_id=response_id)


@api_endpoint(method="GET", name="responses.input_items")
async def response_input_items(request: HttpRequest, caller: ApiCaller, response_id: str) -> HttpResponse:
    query = stored_responses.list_query(dict(request.GET.lists()))
    return _json(await stored_responses.list_input_items(caller=caller, response_id=response_id, query=query))


def _parse_multipart(request: HttpRequest) -> tuple[dict[str, list[str]], audio.AudioUpload | None]:
    try:
        fields, files = request.POST, request.FILES
    except (MultiPartParserError, SuspiciousOperation) as exc:
        raise ApiError(f"The multipart body could not be parsed: {exc}", status=400, code="invalid_multipart") from None
    uploaded = files.get("file")
    upload = None
    if uploaded is not None:
        upload = audio.AudioUpload(
            filename=uploaded.name or "",
            content_type=uploaded.content_type or "",
            size=uploaded.size or 0,
            file=uploaded.file,
        )
    return {name: fields.getlist(name) for name in fields}, upload


@api_endpoint(method="POST", name="audio.transcriptions")
async def audio_transcriptions(request: HttpRequest, caller: ApiCaller) -> HttpResponseBase:
    if request.content_type != "multipart/form-data":
        raise ApiError(
            f"Unsupported content type {request.content_type!r}: send multipart/form-data with the audio as 'file'.",
            status=415,
            code="unsupported_media_type",
        )
    # Django spools big files to disk while it parses; that file I/O stays off the event loop.
    fields, upload = await asyncio.to_thread(_parse_multipart, request)
    if fields.get("model"):
        request.api_model = fields["model"][-1]
    try:
        call = await audio.create_transcription(
            caller=caller, fields=fields, upload=upload, request_id=request.request_id
        )
    finally:
        # The lean handler skips response.close(), whose request.close() would close (and so delete)
        # the uploaded temporary files; the upstream call is over by now, so close them here.
        for _, files in request.FILES.lists():
            for uploaded in files:
                uploaded.close()
    return _respond(request, call)
