"""/v1/responses (and /v1/responses/compact) served by the upstream's chat completions: plan storage,
translate, admit, call, translate back, keep, bill.

The admission, the upstream call and billing are the chat path's own (gateway.core.calls); what
differs is only the shape on our side (the modules beside this one). Streams are the chat relay's
events turned into Responses events, so a client that disconnects is billed exactly as on the chat
path. A compaction is one more model call, billed by the same formula.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from apikeys.authentication import ApiCaller
from billing.ledger import UsageRecord, count_for
from billing.recording import finish_request
from gateway.catalogue import CatalogueEntry
from gateway.core import validation
from gateway.core.calls import (
    Completion,
    CompletionStream,
    GatewayCall,
    admit,
    idempotently,
    observe_outcome,
    read_completion,
    reserve,
    send_upstream,
    usage_record,
)
from gateway.core.routing import Route, route_chat
from gateway.core.streaming import CallOutcome, relay_events, split_events
from gateway.errors import ApiError
from gateway.providers.base import UpstreamCall
from gateway.surfaces.openai.responses.events import ResponseEventStream, sse_frame
from gateway.surfaces.openai.responses.output import compacted_response, new_response_id, response_from_chat
from gateway.surfaces.openai.responses.request import ChatTranslation, chat_request_from_responses
from gateway.surfaces.openai.responses.tools import OMITTED_TOOLS_HEADER
from gateway.surfaces.openai.stored_responses import StoragePlan, keep_response, plan_storage

ENDPOINT = "responses"  # as recorded in the ledger
COMPACT_ENDPOINT = "responses.compact"
UPSTREAM_PATH = "/chat/completions"

Keep = Callable[[dict], Awaitable[None]]  # stores a finished Response (store: true) before the client gets it


def _event_payload(raw: bytes) -> dict | str | None:
    """The JSON of one relayed SSE event, "[DONE]", or None for a comment."""
    lines = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(lines)
    if data == b"[DONE]":
        return "[DONE]"
    try:
        parsed = json.loads(data)
    except ValueError:
        return {"error": {"message": "The upstream sent a malformed event."}}
    return parsed if isinstance(parsed, dict) else {"error": {"message": "The upstream sent a malformed event."}}


def _failure_message(payload: dict) -> str | None:
    error = payload.get("error")
    if not error:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or "The upstream failed mid-stream.")
    return str(error)


async def _response_events(
    relay: AsyncGenerator[bytes, None], events: ResponseEventStream, keep: Keep
) -> AsyncGenerator[bytes, None]:
    """Responses SSE frames for the relayed chat stream; the relay is always read to its end."""
    try:
        yield b"".join(sse_frame(event) for event in events.start())
        failure: str | None = None
        async for relayed in relay:
            out: list[bytes] = []
            for raw in split_events(relayed):
                payload = _event_payload(raw)
                if payload is None:
                    out.append(raw)  # a keep-alive comment: it keeps idle proxies from closing a silent stream
                    continue
                # After a failure the relay is still drained: it ends on its own and records the outcome.
                if failure is not None or isinstance(payload, str):  # str: the [DONE] marker
                    continue
                failure = _failure_message(payload)
                if failure is None:
                    out.extend(sse_frame(event) for event in events.feed(payload))
            if out:
                yield b"".join(out)
        terminal = events.fail(failure) if failure is not None else events.finish(completed_at=int(time.time()))
        if terminal and "response" in terminal[-1]:
            await keep(terminal[-1]["response"])  # durable before the client has the final event
        yield b"".join(sse_frame(event) for event in terminal)
    finally:
        await relay.aclose()


def _translate(body: dict, plan: StoragePlan, *, compact: bool, web_search_allowed: bool) -> ChatTranslation:
    if compact:
        body = {**body, "stream": False, "tools": None, "tool_choice": None}  # a compaction is one whole answer
    try:
        translation = chat_request_from_responses(body, compact=compact, web_search_allowed=web_search_allowed)
    except ApiError as error:
        raise plan.remap_error(error) from None
    # The chat path's own checks, as a backstop; they know function tools only, not the search server tool.
    chat_body = translation.chat_body
    if translation.tools.web_search:
        chat_body = {**chat_body, "tools": [t for t in chat_body.get("tools", []) if t["type"] == "function"] or None}
    validation.check_chat_request(chat_body)
    echo = {**translation.echo, "store": plan.store, "previous_response_id": plan.previous_response_id}
    return dataclasses.replace(translation, echo=echo)


def _keeper(*, plan: StoragePlan, caller: ApiCaller, request_id: str) -> Keep:
    async def keep(response: dict) -> None:
        if plan.store and not await keep_response(plan=plan, caller=caller, response=response, request_id=request_id):
            response["store"] = False  # the database refused it: the client is told, not misled

    return keep


async def _keep_nothing(response: dict) -> None:
    return None


async def create_response(
    *,
    caller: ApiCaller,
    body: dict,
    request_id: str,
    raw_body: bytes = b"",
    idempotency_key: str | None = None,
    compact: bool = False,
) -> GatewayCall:
    """A Response (or its event stream); with an Idempotency-Key, a repeated non-streaming request is replayed.

    `compact`: POST /responses/compact, answered with a CompactedResponse (never stored).
    """
    translations: list[ChatTranslation] = []
    # The previous response's context and referenced items come first: the translator sees the whole input.
    plan = await plan_storage(caller=caller, body=body)
    # admit() runs the check between the model and catalogue checks, as on the chat path.
    model, entry = await admit(
        caller=caller,
        body=plan.body,
        check=lambda raw: translations.append(
            _translate(raw, plan, compact=compact, web_search_allowed=caller.workspace.includes_web_search)
        ),
        kind="chat",
    )
    translation = translations[0]
    route = route_chat(entry=entry, caller=caller)
    keep = _keep_nothing if compact else _keeper(plan=plan, caller=caller, request_id=request_id)
    return await idempotently(
        caller=caller,
        idempotency_key=idempotency_key,
        raw_body=raw_body,
        stream=translation.stream,
        run=lambda: _respond(
            caller=caller,
            translation=translation,
            model=model,
            entry=entry,
            route=route,
            request_id=request_id,
            keep=keep,
            compact_endpoint=compact,
        ),
    )


async def compact_response(*, caller: ApiCaller, body: dict, request_id: str, **kwargs: object) -> GatewayCall:
    """POST /responses/compact: the conversation summarised into one compaction item."""
    return await create_response(caller=caller, body=body, request_id=request_id, compact=True, **kwargs)  # type: ignore[arg-type]


async def _respond(
    *,
    caller: ApiCaller,
    translation: ChatTranslation,
    model: str,
    entry: CatalogueEntry,
    route: Route,
    request_id: str,
    keep: Keep,
    compact_endpoint: bool = False,
) -> GatewayCall:
    endpoint = COMPACT_ENDPOINT if compact_endpoint else ENDPOINT
    reservation = await reserve(caller=caller, route=route, request_id=request_id)

    chat_body = {**translation.chat_body, "model": entry.upstream_name}
    if translation.stream:
        chat_body["stream_options"] = {"include_usage": True}  # usage goes into response.completed
    outcome = CallOutcome()
    relay: AsyncGenerator[bytes, None] | None = None
    stream: AsyncGenerator[bytes, None] | None = None

    def record() -> UsageRecord:
        return usage_record(
            caller=caller,
            route_byok=route.byok,
            model=model,
            endpoint=endpoint,
            request_id=request_id,
            body=chat_body,
            outcome=outcome,
        )

    async def finish() -> None:
        if stream is not None:
            await stream.aclose()  # a stream the client abandoned stops here, and its status says so
        if relay is not None:
            await relay.aclose()
        counted = await finish_request(reservation=reservation, usage=record())
        observe_outcome(endpoint=endpoint, model=model, outcome=outcome, counted=counted, byok=route.byok)

    call = UpstreamCall(
        path=UPSTREAM_PATH, api_key=route.api_key, request_id=request_id, json_body=chat_body, stream=translation.stream
    )
    upstream = await send_upstream(route, call, outcome=outcome, finish=finish, reservation=reservation)
    headers = reservation.budget.headers()
    if translation.tools.omitted:
        headers[OMITTED_TOOLS_HEADER] = ",".join(translation.tools.omitted)
    response_id, created_at = new_response_id(), int(time.time())

    if translation.stream:
        relay = relay_events(upstream, include_usage=True, outcome=outcome)
        events = ResponseEventStream(
            response_id=response_id,
            created_at=created_at,
            model=model,
            echo=translation.echo,
            tools=translation.tools,
            compact=translation.compact,
            input_items=translation.input_items,
        )
        stream = _response_events(relay, events, keep)
        return GatewayCall(result=CompletionStream(chunks=stream, headers=headers), finish=finish)

    completion = await read_completion(upstream, outcome=outcome, finish=finish)
    if completion.get("error") and not completion.get("choices"):
        # OpenRouter can answer 200 with only an error body when the provider failed after admission.
        outcome.status = "failed"
        outcome.error_kind = "status_5xx"
        await finish()
        message = _failure_message(completion) or "The upstream failed."
        raise ApiError(f"The upstream failed: {message}", status=502, error_type="server_error", code="upstream_error")
    if compact_endpoint:
        response = compacted_response(completion, created_at=created_at, input_items=translation.input_items)
    else:
        response = response_from_chat(
            completion,
            response_id=response_id,
            created_at=created_at,
            completed_at=int(time.time()),
            model=model,
            echo=translation.echo,
            tools=translation.tools,
            compact=translation.compact,
            input_items=translation.input_items,
        )
        await keep(response)
    headers["x-writingmate-messages-counted"] = str(count_for(record()))
    return GatewayCall(
        result=Completion(status=200, body=json.dumps(response).encode(), headers=headers), finish=finish
    )
