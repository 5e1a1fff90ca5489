"""The Messages API: admit, reserve, call the upstream (Claude as it came, others through chat), bill.

The same steps as chat completions (gateway.services): the model resolved and allowed by the plan,
one message reserved atomically, Idempotency-Key, the request recorded once by a finalizer after
the response, whether it succeeded, failed or the client left. Billing reads Anthropic's usage:
prompt = input + cache read + cache creation tokens, cached = cache read, completion = output.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping

from accounts.access import confirm_access_epoch
from apikeys.authentication import ApiCaller
from billing.recording import UsageRecord, count_for, finish_request
from gateway import catalogue
from gateway.core import calls as services
from gateway.core import validation
from gateway.core.calls import Completion, CompletionStream, GatewayCall
from gateway.core.routing import Route, route_chat
from gateway.core.upstream_fields import OMITTED_TOOLS_HEADER, UPSTREAM_CONTROL_FIELDS
from gateway.errors import ApiError
from gateway.providers.base import UpstreamCall
from gateway.surfaces.anthropic import translate
from gateway.surfaces.anthropic.adapt import Adaptation, adapt_request
from gateway.surfaces.anthropic.events import (
    ChatStreamTranslator,
    MessagesOutcome,
    delivered_message_text,
    relay_message_events,
    translate_chat_events,
)
from gateway.surfaces.anthropic.models import Resolved, is_claude, resolve_model
from gateway.surfaces.anthropic.passthrough import RawBody
from gateway.tokens import count_chat_prompt_tokens, count_text_tokens
from writingmate import wire_json

ENDPOINT = "messages"  # as the ledger records it
DEFAULT_VERSION = "2023-06-01"
# Members that would name another upstream, key or proxy: never sent (the one list every surface uses;
# send_upstream strips them from JSON bodies, and a passthrough body leaves them out here).
# (The OpenRouter routing fields are refused instead, as on /v1: _check_routing.)
LEAVE_OUT = UPSTREAM_CONTROL_FIELDS
_ROUTING = (*validation.ROUTING_PARAMS, "fallbacks")


def _check_routing(body: dict, entry: catalogue.CatalogueEntry) -> None:
    if entry.allow_routing_params:
        return
    for name in _ROUTING:
        if name in body:
            raise ApiError(
                f"{name}: not supported here; requests go to exactly the model you name.", status=400, param=name
            )


async def _admit(caller: ApiCaller, body: dict) -> tuple[Resolved, Route, Adaptation]:
    try:
        translate.check_request(body)
        resolved = await resolve_model(body.get("model"), caller.workspace, key=caller.grant)
        _check_routing(body, resolved.entry)
        adaptation = adapt_request(body, resolved, web_search_allowed=caller.workspace.includes_web_search)
        return resolved, route_chat(entry=resolved.entry, caller=caller), adaptation
    except ApiError:
        if caller.unconfirmed_epoch is not None:
            # A refusal must rest on current access (a plan upgraded a moment ago, say), not on memory.
            await confirm_access_epoch(caller.unconfirmed_epoch)
        raise


def estimate_input_tokens(body: dict) -> int:
    messages = translate.chat_messages(body)
    return count_chat_prompt_tokens(messages, body.get("tools") or None)


def usage_record(
    *, caller: ApiCaller, route: Route, model: str, request_id: str, body: dict, outcome: MessagesOutcome
) -> UsageRecord:
    """The ledger line: the upstream's usage, or an estimate of what was delivered when it has none."""
    tokens = outcome.tokens
    cache_read = tokens.get("cache_read_input_tokens", 0)
    prompt = tokens.get("input_tokens", 0) + cache_read + tokens.get("cache_creation_input_tokens", 0)
    estimated = not outcome.usage_final
    if outcome.usage_final:
        completion = tokens.get("output_tokens", 0)
    else:
        completion = count_text_tokens(delivered_message_text(outcome))
        spent = outcome.reached_upstream and (completion > 0 or outcome.status == "succeeded")
        if not spent:
            prompt, cache_read = 0, 0
        elif "input_tokens" not in tokens:  # no message_start either: count the request ourselves
            prompt = estimate_input_tokens(body)
    return UsageRecord(
        request_id=request_id,
        workspace_id=caller.workspace.workspace_id,
        user_id=caller.user_id,
        key_id=caller.key_id,
        model=model,
        endpoint=ENDPOINT,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=min(cache_read, prompt),
        byok=route.byok,
        status=outcome.status,
        latency_ms=int((time.monotonic() - outcome.started) * 1000),
        generation_id=outcome.generation_id,
        tokens_estimated=estimated,
        web_search_requests=outcome.web_search_requests,
    )


def _claude_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """anthropic-version and anthropic-beta go upstream exactly as the client sent them."""
    out = {"anthropic-version": headers.get("anthropic-version") or DEFAULT_VERSION}
    if headers.get("anthropic-beta"):
        out["anthropic-beta"] = headers["anthropic-beta"]
    return out


async def create_message(
    *,
    caller: ApiCaller,
    raw_body: bytes,
    body: dict,
    raw: RawBody,
    headers: Mapping[str, str],
    request_id: str,
    idempotency_key: str | None = None,
) -> GatewayCall:
    """`body` and `raw` from passthrough.parse_body of `raw_body` (the view parses, to label the request)."""
    resolved, route, adaptation = await _admit(caller, body)
    # Built before anything is reserved: a body a Claude upstream cannot take as it came is a 400 here.
    call = _upstream_call(body, raw, adaptation, resolved.entry, route=route, headers=headers, request_id=request_id)
    return await services.idempotently(
        caller=caller,
        idempotency_key=idempotency_key,
        raw_body=raw_body,
        stream=call.stream,
        run=lambda: _create_admitted(
            caller=caller,
            body=body,
            call=call,
            adaptation=adaptation,
            request_id=request_id,
            entry=resolved.entry,
            route=route,
        ),
    )


def _upstream_call(
    body: dict,
    raw: RawBody,
    adaptation: Adaptation,
    entry: catalogue.CatalogueEntry,
    *,
    route: Route,
    headers: Mapping[str, str],
    request_id: str,
) -> UpstreamCall:
    """A Claude model's Messages call with the body as it came; any other model's chat completion."""
    stream = body.get("stream") is True
    if is_claude(entry):
        leave_out = LEAVE_OUT | adaptation.leave_out
        raw_body = raw.with_model(entry.upstream_name, leave_out=leave_out, replace=adaptation.replace)
        return UpstreamCall(
            path="/messages",
            api_key=route.api_key,
            request_id=request_id,
            raw_body=raw_body,
            headers=_claude_headers(headers),
            stream=stream,
        )
    chat = translate.chat_request(adaptation.applied_to(body), upstream_model=entry.upstream_name, stream=stream)
    return UpstreamCall(
        path="/chat/completions", api_key=route.api_key, request_id=request_id, json_body=chat, stream=stream
    )


async def _create_admitted(
    *,
    caller: ApiCaller,
    body: dict,
    call: UpstreamCall,
    adaptation: Adaptation,
    request_id: str,
    entry: catalogue.CatalogueEntry,
    route: Route,
) -> GatewayCall:
    reservation = await services.reserve(caller=caller, route=route, request_id=request_id)
    stream = call.stream
    claude = is_claude(entry)
    outcome = MessagesOutcome()
    relay: AsyncGenerator[bytes, None] | None = None
    complete: UsageRecord | None = None

    def record() -> UsageRecord:
        return usage_record(
            caller=caller, route=route, model=entry.slug, request_id=request_id, body=body, outcome=outcome
        )

    async def finish() -> None:
        if relay is not None:
            await relay.aclose()  # a stream the client left stops here
        counted = await finish_request(reservation=reservation, usage=complete or record())
        services.observe_outcome(endpoint=ENDPOINT, model=entry.slug, outcome=outcome, counted=counted, byok=route.byok)

    upstream = await services.send_upstream(route, call, outcome=outcome, finish=finish, reservation=reservation)

    response_headers = reservation.budget.headers()
    # A chat model gets no server tool at all (translate leaves them out); a Claude model those the plan includes.
    omitted = adaptation.omitted_tools if claude else translate.server_tool_types(body)
    if omitted:
        response_headers[OMITTED_TOOLS_HEADER] = ",".join(omitted)
    if stream:
        if claude:
            relay = relay_message_events(upstream, outcome=outcome)
            return GatewayCall(result=CompletionStream(chunks=relay, headers=response_headers), finish=finish)
        translator = ChatStreamTranslator(
            message_id=translate.message_id_for(request_id), model=entry.slug, outcome=outcome
        )
        relay = translate_chat_events(upstream, translator=translator, outcome=outcome)
        # message_start and ping leave with the first translated events, in one send.
        opening = translator.start()
        return GatewayCall(
            result=CompletionStream(chunks=relay, headers=response_headers, opening=opening), finish=finish
        )

    answer = await services.read_completion(upstream, outcome=outcome, finish=finish)
    if (answer.get("type") == "error") if claude else not answer.get("choices"):
        # A 200 that carries an error (OpenRouter's answer when a provider fails after accepting).
        outcome.status, outcome.error_kind = "failed", "status_5xx"
        await finish()
        raise ApiError(f"The upstream failed: {_error_message(answer)}", status=502, error_type="server_error")
    if claude:
        outcome.generation_id = str(answer.get("id") or "")
        content = answer.get("content")
        usage = answer.get("usage")
        response_body = upstream.body
    else:
        message = translate.message_from_chat(answer, model=entry.slug, message_id=translate.message_id_for(request_id))
        content, usage = message["content"], message["usage"]
        response_body = wire_json.dumps(message)
    outcome.note_usage(usage, final=isinstance(answer.get("usage"), dict))
    outcome.delivered.clear()
    if not outcome.usage_final:  # no usage from the upstream: the estimate reads what the reply holds
        outcome.text.extend(_block_text(block) for block in content or [] if isinstance(block, dict))
    complete = record()
    response_headers["x-writingmate-messages-counted"] = str(count_for(complete))
    return GatewayCall(result=Completion(status=200, body=response_body, headers=response_headers), finish=finish)


def _error_message(answer: dict) -> str:
    error = answer.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return "it answered without a message."


def _block_text(block: dict) -> str:
    if block.get("type") == "tool_use":
        return json.dumps(block.get("input"))
    return str(block.get("text") or block.get("thinking") or "")


async def count_tokens(*, caller: ApiCaller, body: dict) -> dict:
    """Anthropic's count_tokens: authenticated and checked like a message, but nothing reserved or billed."""
    body = {**body, "max_tokens": body.get("max_tokens") or 1}
    await _admit(caller, body)
    return {"input_tokens": estimate_input_tokens(body)}


def _model_info(model_id: str, entry: catalogue.CatalogueEntry) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created))
    return {
        "type": "model",
        "id": model_id,
        "display_name": entry.display_name,
        "created_at": created,
        "lifecycle": "active",  # a catalogue model that is disabled is not listed at all
    }


async def retrieve_model(*, caller: ApiCaller, model_id: str) -> dict:
    """One model by any id a request may name (slug or alias), as the model that would serve it."""
    resolved = await resolve_model(model_id, caller.workspace, key=caller.grant)
    return _model_info(model_id, resolved.entry)


async def list_models(*, caller: ApiCaller, limit: int, after_id: str | None, before_id: str | None) -> dict:
    """The workspace's chat models in Anthropic's list shape (Claude Code reads it for its model picker)."""
    entries = [e for e in await catalogue.models_for(caller.workspace, key=caller.grant) if e.kind == "chat"]
    ids = [e.slug for e in entries]
    if after_id in ids:
        entries = entries[ids.index(after_id) + 1 :]
    elif before_id in ids:
        entries = entries[: ids.index(before_id)]
        entries = entries[-limit:]
    page = entries[:limit]
    data = [_model_info(e.slug, e) for e in page]
    return {
        "data": data,
        "has_more": len(entries) > len(page),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
