"""The OpenAI surface's /v1 endpoints as DRF views: parse, call one service, shape the response.

Authentication, permissions, throttling and errors are DRF's pipeline (gateway.core.api_view and
REST_FRAMEWORK in settings); each view reads top to bottom from its handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from django.http import HttpResponse, HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response

from billing.quotas import current_budget
from gateway import catalogue
from gateway.core import calls
from gateway.core.api_request import api_request
from gateway.core.api_view import AsyncApiView
from gateway.core.finalizers import add_finalizer
from gateway.core.streaming import EventStreamResponse
from gateway.errors import ApiError
from gateway.parsers import JsonObjectParser, MultipartFormParser, invalid_json
from gateway.surfaces.openai import audio, stored_responses
from gateway.surfaces.openai.responses import service as responses_service


def note_model(request: Request, model: object) -> None:
    """Label the request's metrics and access line with the model it asked for."""
    if isinstance(model, str):
        api_request(request).api_model = model


def respond_with(request: Request, call: calls.GatewayCall) -> HttpResponseBase:
    """The response for a gateway call; its `finish` (billing) runs once the response is out."""
    add_finalizer(request, call.finish)
    result = call.result
    if isinstance(result, calls.CompletionStream):
        return EventStreamResponse(result.chunks, headers=result.headers)
    # Upstream bytes pass through as they came: no parse and re-render of a whole completion.
    response = HttpResponse(result.body, status=result.status, content_type="application/json")
    for name, value in result.headers.items():
        response[name] = value
    return response


def json_object(request: Request) -> dict:
    """The request's JSON object (DRF's parser), or the 400/415 that says why there is none."""
    raw = request.body  # read first: the idempotency check compares the exact bytes
    body = request.data
    if not raw or not isinstance(body, dict):
        raise invalid_json()
    note_model(request, body.get("model"))
    return body


def _model_object(entry: catalogue.CatalogueEntry) -> dict:
    return {"id": entry.slug, "object": "model", "created": entry.created, "owned_by": entry.owned_by}


class ModelsView(AsyncApiView):
    endpoint = "models.list"

    async def get(self, request: Request) -> Response:
        entries = await catalogue.models_for(self.caller.workspace, key=self.caller.grant)
        budget = await current_budget(
            workspace=self.caller.workspace, user_id=self.caller.user_id, key=calls.key_budget(self.caller)
        )
        return Response({"object": "list", "data": [_model_object(e) for e in entries]}, headers=budget.headers())


class ModelView(AsyncApiView):
    endpoint = "models.retrieve"

    async def get(self, request: Request, model_id: str) -> Response:
        slug = unquote(model_id)
        for entry in await catalogue.models_for(self.caller.workspace, key=self.caller.grant):
            if entry.slug == slug:
                return Response(_model_object(entry))
        raise ApiError(f"The model '{slug}' does not exist", status=404, param="model", code="model_not_found")


class _ProxiedJsonView(AsyncApiView):
    """POST a JSON body to one gateway call."""

    parser_classes = [JsonObjectParser]
    create: Callable[..., Awaitable[calls.GatewayCall]]

    async def post(self, request: Request) -> HttpResponseBase:
        call = await type(self).create(
            caller=self.caller,
            body=json_object(request),
            request_id=api_request(request).request_id,
            raw_body=request.body,
            idempotency_key=request.META.get("HTTP_IDEMPOTENCY_KEY"),
        )
        return respond_with(request, call)


class ChatCompletionsView(_ProxiedJsonView):
    endpoint = "chat.completions"
    reserves_quota = True
    create = staticmethod(calls.create_chat_completion)


class CompletionsView(_ProxiedJsonView):
    endpoint = "completions"
    reserves_quota = True
    create = staticmethod(calls.create_completion)


class ResponsesView(_ProxiedJsonView):
    endpoint = "responses"
    create = staticmethod(responses_service.create_response)


class ResponsesCompactView(_ProxiedJsonView):
    endpoint = "responses.compact"
    create = staticmethod(responses_service.compact_response)


class ResponseView(AsyncApiView):
    """GET or DELETE /v1/responses/{id}: a stored response of this caller's workspace."""

    endpoint_by_method = {"GET": "responses.retrieve", "DELETE": "responses.delete"}

    async def get(self, request: Request, response_id: str) -> HttpResponse:
        if request.query_params.get("stream") not in (None, "", "false"):
            raise ApiError(
                "Streaming a stored response again is only for background responses, which this API does not run.",
                param="stream",
                code="unsupported_parameter",
            )
        body = await stored_responses.retrieve_response(caller=self.caller, response_id=response_id)
        return HttpResponse(body, content_type="application/json")  # stored JSON, sent as stored

    async def delete(self, request: Request, response_id: str) -> Response:
        return Response(await stored_responses.delete_response(caller=self.caller, response_id=response_id))


class ResponseInputItemsView(AsyncApiView):
    endpoint = "responses.input_items"

    async def get(self, request: Request, response_id: str) -> Response:
        query = stored_responses.list_query(dict(request.query_params.lists()))
        return Response(
            await stored_responses.list_input_items(caller=self.caller, response_id=response_id, query=query)
        )


def _audio_upload(request: Request) -> tuple[dict[str, list[str]], audio.AudioUpload | None]:
    fields, files = request.POST, request.FILES  # DRF parses the multipart body here
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


class TranscriptionsView(AsyncApiView):
    endpoint = "audio.transcriptions"
    parser_classes = [MultipartFormParser]
    expected_content = "multipart/form-data with the audio as 'file'"

    async def post(self, request: Request) -> HttpResponseBase:
        # Django spools big files to disk while it parses; that file I/O stays off the event loop.
        fields, upload = await asyncio.to_thread(_audio_upload, request)
        try:
            if fields.get("model"):
                note_model(request, fields["model"][-1])
            call = await audio.create_transcription(
                caller=self.caller, fields=fields, upload=upload, request_id=api_request(request).request_id
            )
        finally:
            # The lean handler skips response.close(), whose request.close() would close (and so
            # delete) the uploaded temporary files; the upstream call is over by now.
            for _, files in request.FILES.lists():
                for uploaded in files:
                    uploaded.close()
        return respond_with(request, call)
