"""Chat and legacy completions: validate, admit, route, call the upstream, and hand the outcome to billing.

Each call returns a `GatewayCall`: the result to send (a whole body or an event stream) and the
`finish` coroutine that the view schedules to run after the response is out (or the client left),
which records usage and settles the reservation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from django.conf import settings

from accounts.access import confirm_access_epoch
from apikeys.authentication import ApiCaller
from billing.idempotency import (
    REPLAYED_HEADER,
    IdempotencyError,
    Proceed,
    Replay,
    abandon_idempotent,
    begin_idempotent,
    complete_idempotent,
)
from billing.ledger import UsageRecord, count_for
from billing.quotas import KeyBudget, QuotaExceeded, Reservation, reserve_message
from billing.recording import finish_request
from gateway import catalogue, metrics
from gateway.core import validation
from gateway.core.routing import Route, route_chat
from gateway.core.streaming import CallOutcome, relay_events, web_search_requests
from gateway.core.upstream_fields import strip_upstream_control_fields
from gateway.errors import ApiError
from gateway.providers.base import ProviderError, UpstreamCall, UpstreamResponse
from gateway.tokens import count_chat_prompt_tokens, count_text_tokens
from writingmate import wire_json

logger = logging.getLogger(__name__)

_MAX_SANE_TOKENS = 10**9


@dataclass(frozen=True)
class Completion:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class CompletionStream:
    chunks: AsyncGenerator[bytes, None]
    headers: dict[str, str]
    opening: bytes = b""  # what the stream opens with (Anthropic's message_start): see send_event_stream


@dataclass(frozen=True)
class GatewayCall:
    result: Completion | CompletionStream
    finish: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class _Endpoint:
    name: str  # as recorded in the ledger
    path: str  # upstream path
    check: Callable[[dict], None]


CHAT = _Endpoint("chat.completions", "/chat/completions", validation.check_chat_request)
COMPLETIONS = _Endpoint("completions", "/completions", validation.check_completion_request)


def quota_error(exc: QuotaExceeded) -> ApiError:
    return ApiError(
        exc.message,
        status=429,
        code=exc.code,
        error_type="insufficient_quota",
        headers=exc.headers(),
    )


def upstream_error(response: UpstreamResponse, *, byok: bool) -> ApiError:
    """Map an upstream's non-200 answer to the error our client sees."""
    message, param, code = f"The upstream answered with HTTP {response.status}.", None, None
    try:
        error = json.loads(response.body).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param = found if isinstance(found := error.get("param"), str) else None
            code = found if isinstance(found := error.get("code"), str) else None
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    status = response.status
    if status == 429:
        headers = {"retry-after": response.headers["retry-after"]} if "retry-after" in response.headers else {}
        return ApiError(
            message, status=429, code=code or "rate_limit_exceeded", error_type="rate_limit_error", headers=headers
        )
    if status in (401, 403):
        if byok:
            return ApiError(
                f"OpenRouter rejected your own OpenRouter key (BYOK): {message} Update it in Settings.",
                status=400,
                code="byok_key_rejected",
            )
        logger.error("upstream rejected the server's credentials: HTTP %s", status)
        return ApiError(
            "The upstream rejected this server's credentials.",
            status=502,
            error_type="server_error",
            code="upstream_auth_failed",
        )
    if 400 <= status < 500:
        return ApiError(message, status=status, param=param, code=code)
    return ApiError(f"The upstream failed: {message}", status=502, error_type="server_error", code="upstream_error")


async def _send_with_retry(route: Route, call: UpstreamCall) -> UpstreamResponse:
    """Send once more only when the first copy was never sent (the connection could not be opened).

    Never after a 5xx, a dropped connection or a timeout: the upstream may have received the body and
    run (and billed) the model; a second copy would run it twice.
    """
    try:
        return await route.provider.send(call)
    except ProviderError as exc:
        if not exc.retryable:
            raise
    await asyncio.sleep(settings.UPSTREAM_RETRY_BACKOFF_SECONDS)
    return await route.provider.send(call)


def _sane(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_SANE_TOKENS else None


def _upstream_tokens(usage: dict | None) -> tuple[int, int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = _sane(usage.get("prompt_tokens")), _sane(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _sane(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return prompt, completion, min(cached or 0, prompt)


def _delivered_text(outcome: CallOutcome) -> str:
    parts: list[str] = []
    for payload in outcome.delivered:
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            parts.append(str(choice.get("text") or "") + str(delta.get("content") or ""))
            for tool_call in delta.get("tool_calls") or []:
                function = tool_call.get("function") or {}
                parts.append(str(function.get("name") or "") + str(function.get("arguments") or ""))
    return "".join(parts)


def _estimate_prompt_tokens(body: dict) -> int:
    if "messages" in body:
        return count_chat_prompt_tokens(body["messages"], body.get("tools"))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return count_text_tokens(prompt)
    if isinstance(prompt, list):
        return sum(count_text_tokens(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 1 for p in prompt)
    return 0


def usage_record(
    *, caller: ApiCaller, route_byok: bool, model: str, endpoint: str, request_id: str, body: dict, outcome: CallOutcome
) -> UsageRecord:
    """The ledger line for an outcome: the upstream's usage, or a tiktoken estimate of what was delivered."""
    tokens = _upstream_tokens(outcome.usage)
    estimated = tokens is None
    if tokens is None:
        if outcome.usage is not None:
            logger.warning(
                "upstream usage looked wrong for %s; estimating with tiktoken: %r", request_id, outcome.usage
            )
        completion = count_text_tokens(_delivered_text(outcome))
        spent = outcome.reached_upstream and (completion > 0 or outcome.status == "succeeded")
        tokens = (_estimate_prompt_tokens(body) if spent else 0, completion, 0)
    prompt_tokens, completion_tokens, cached_tokens = tokens
    return UsageRecord(
        request_id=request_id,
        workspace_id=caller.workspace.workspace_id,
        user_id=caller.user_id,
        key_id=caller.key_id,
        model=model,
        endpoint=endpoint,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
        byok=route_byok,
        status=outcome.status,
        latency_ms=int((time.monotonic() - outcome.started) * 1000),
        generation_id=outcome.generation_id,
        tokens_estimated=estimated,
        web_search_requests=web_search_requests(outcome.usage),
    )


async def admit(
    *, caller: ApiCaller, body: dict, check: Callable[[dict], None], kind: str
) -> tuple[str, catalogue.CatalogueEntry]:
    """(model, catalogue entry) for a request the workspace may make, or the 400/403/404 that says why not."""
    model = validation.check_model_param(body)
    entry = (await catalogue.enabled_models()).get(model)
    validation.check_routing(body, entry, model)
    check(body)
    entry = await catalogue.ensure_model_allowed(slug=model, workspace=caller.workspace, kind=kind, key=caller.grant)
    return model, entry


def key_budget(caller: ApiCaller) -> KeyBudget | None:
    """The developer key's own daily budget, if its owner set one."""
    grant = caller.grant
    if grant.daily_message_limit is None:
        return None
    return KeyBudget(grant.key_id, grant.key_prefix, grant.daily_message_limit, grant.limits_version)


async def reserve(*, caller: ApiCaller, route: Route, request_id: str) -> Reservation:
    try:
        return await reserve_message(
            request_id=request_id,
            workspace=caller.workspace,
            user_id=caller.user_id,
            byok=route.byok,
            access_epoch=caller.unconfirmed_epoch,
            key=key_budget(caller),
        )
    except QuotaExceeded as exc:
        raise quota_error(exc) from None


async def send_upstream(
    route: Route,
    call: UpstreamCall,
    *,
    outcome: CallOutcome,
    finish: Callable[[], Awaitable[None]],
    reservation: Reservation,
) -> UpstreamResponse:
    """The upstream's 200 response; any failure is first recorded through `finish`, then raised as an ApiError.

    Body fields that name an upstream, a credential or a proxy are dropped here, for every surface.
    """
    call = strip_upstream_control_fields(call)
    try:
        outcome.reached_upstream = True
        upstream = await _send_with_retry(route, call)
    except ProviderError as exc:
        outcome.status = "failed"
        outcome.error_kind = "timeout" if exc.status == 504 else "connect"
        await finish()
        raise ApiError(exc.message, status=exc.status, error_type="server_error", code=exc.code) from None
    except asyncio.CancelledError:
        outcome.status = "client_disconnected"
        await asyncio.shield(finish())
        raise

    if upstream.status != 200:
        outcome.status = "failed"
        outcome.error_kind = "status_5xx" if upstream.status >= 500 else "status_4xx"
        await finish()
        error = upstream_error(upstream, byok=route.byok)
        error.headers.update(reservation.budget.headers())
        raise error
    return upstream


async def read_completion(
    upstream: UpstreamResponse, *, outcome: CallOutcome, finish: Callable[[], Awaitable[None]]
) -> dict:
    """The upstream's whole JSON answer, its usage and id noted in `outcome`; a 502 (recorded) if it is not JSON."""
    try:
        completion = wire_json.loads(upstream.body)
        if not isinstance(completion, dict):
            raise ValueError("not an object")
    except ValueError:
        outcome.status = "failed"
        outcome.error_kind = "malformed"
        await finish()
        raise ApiError(
            "The upstream sent a response that is not JSON.",
            status=502,
            error_type="server_error",
            code="upstream_malformed_response",
        ) from None
    outcome.usage = completion.get("usage")
    outcome.generation_id = str(completion.get("id") or "")
    outcome.delivered.append(upstream.body)
    return completion


def observe_outcome(*, endpoint: str, model: str, outcome: CallOutcome, counted: int, byok: bool) -> None:
    metrics.record_messages(count=counted, byok=byok)
    if outcome.first_byte_at is not None:
        metrics.record_first_token(endpoint=endpoint, model=model, seconds=outcome.first_byte_at - outcome.started)
    if outcome.error_kind:
        metrics.record_upstream_error(kind=outcome.error_kind)


async def _nothing_to_finish() -> None:
    return None


async def claim_idempotency(*, caller: ApiCaller, idempotency_key: str, raw_body: bytes) -> Replay | Proceed:
    try:
        return await begin_idempotent(key_id=caller.key_id, idempotency_key=idempotency_key, body=raw_body)
    except IdempotencyError as exc:
        raise ApiError(exc.message, status=exc.status, param=exc.param, code=exc.code) from None


def replayed(replay: Replay) -> GatewayCall:
    headers = {**replay.headers, REPLAYED_HEADER: "true"}
    return GatewayCall(
        result=Completion(status=replay.status, body=replay.body, headers=headers), finish=_nothing_to_finish
    )


async def idempotently(
    *,
    caller: ApiCaller,
    idempotency_key: str | None,
    raw_body: bytes,
    stream: bool,
    run: Callable[[], Awaitable[GatewayCall]],
) -> GatewayCall:
    """`run()`, or the stored response of an earlier request with the same Idempotency-Key and body.

    Streams are never replayed: the key only applies to whole responses.
    """
    if idempotency_key is None or stream:
        return await run()
    claim = await claim_idempotency(caller=caller, idempotency_key=idempotency_key, raw_body=raw_body)
    if isinstance(claim, Replay):
        return replayed(claim)
    try:
        call = await run()
    except BaseException:
        await asyncio.shield(abandon_idempotent(claim))
        raise
    result = call.result
    assert isinstance(result, Completion)
    await complete_idempotent(claim, status=result.status, headers=result.headers, body=result.body)
    return call


async def _proxy(
    endpoint: _Endpoint, *, caller: ApiCaller, body: dict, request_id: str, raw_body: bytes, idempotency_key: str | None
) -> GatewayCall:
    try:
        model, entry = await admit(caller=caller, body=body, check=endpoint.check, kind="chat")
        route = route_chat(entry=entry, caller=caller)
    except ApiError:
        if caller.unconfirmed_epoch is not None:
            # A refusal must rest on current access (a plan upgraded a moment ago, say), not on memory.
            await confirm_access_epoch(caller.unconfirmed_epoch)
        raise
    return await idempotently(
        caller=caller,
        idempotency_key=idempotency_key,
        raw_body=raw_body,
        stream=bool(body.get("stream")),
        run=lambda: _proxy_admitted(
            endpoint, caller=caller, body=body, request_id=request_id, model=model, entry=entry, route=route
        ),
    )


async def _proxy_admitted(
    endpoint: _Endpoint,
    *,
    caller: ApiCaller,
    body: dict,
    request_id: str,
    model: str,
    entry: catalogue.CatalogueEntry,
    route: Route,
) -> GatewayCall:
    reservation = await reserve(caller=caller, route=route, request_id=request_id)

    stream = bool(body.get("stream"))
    include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
    upstream_body = {**body, "model": entry.upstream_name}
    if stream:
        upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    outcome = CallOutcome()
    relay: AsyncGenerator[bytes, None] | None = None
    complete: UsageRecord | None = None  # a whole (non-streaming) response's record, built once

    def record() -> UsageRecord:
        return usage_record(
            caller=caller,
            route_byok=route.byok,
            model=model,
            endpoint=endpoint.name,
            request_id=request_id,
            body=body,
            outcome=outcome,
        )

    async def finish() -> None:
        if relay is not None:
            await relay.aclose()  # a stream the client abandoned stops here, and its status says so
        counted = await finish_request(reservation=reservation, usage=complete or record())
        observe_outcome(endpoint=endpoint.name, model=model, outcome=outcome, counted=counted, byok=route.byok)

    call = UpstreamCall(
        path=endpoint.path, api_key=route.api_key, request_id=request_id, json_body=upstream_body, stream=stream
    )
    upstream = await send_upstream(route, call, outcome=outcome, finish=finish, reservation=reservation)

    headers = reservation.budget.headers()
    if stream:
        relay = relay_events(upstream, include_usage=include_usage, outcome=outcome)
        return GatewayCall(result=CompletionStream(chunks=relay, headers=headers), finish=finish)

    await read_completion(upstream, outcome=outcome, finish=finish)
    complete = record()
    headers["x-writingmate-messages-counted"] = str(count_for(complete))
    return GatewayCall(result=Completion(status=200, body=upstream.body, headers=headers), finish=finish)


async def create_chat_completion(
    *, caller: ApiCaller, body: dict, request_id: str, raw_body: bytes = b"", idempotency_key: str | None = None
) -> GatewayCall:
    return await _proxy(
        CHAT, caller=caller, body=body, request_id=request_id, raw_body=raw_body, idempotency_key=idempotency_key
    )


async def create_completion(
    *, caller: ApiCaller, body: dict, request_id: str, raw_body: bytes = b"", idempotency_key: str | None = None
) -> GatewayCall:
    return await _proxy(
        COMPLETIONS, caller=caller, body=body, request_id=request_id, raw_body=raw_body, idempotency_key=idempotency_key
    )
