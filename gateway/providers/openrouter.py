"""OpenRouter, the default upstream: OpenAI's wire format at settings.OPENROUTER_BASE_URL."""

from __future__ import annotations

import requests
from django.conf import settings

from billing.ledger import clamp_tokens
from billing.settlement import GenerationNotReady, GenerationStats, GenerationStatsUnavailable
from gateway.providers import http
from gateway.providers.base import UpstreamCall, UpstreamResponse
from writingmate import wire_json

_GENERATION_TIMEOUT_SECONDS = (3.05, 10.0)
_ATTRIBUTION = {"HTTP-Referer": "https://writingmate.ai", "X-Title": "Writingmate API"}


class OpenRouterProvider:
    name = "openrouter"

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        headers = {
            "Authorization": f"Bearer {call.api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if call.stream else "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": call.request_id,
            **_ATTRIBUTION,
            **call.headers,
        }
        data = call.raw_body if call.raw_body is not None else wire_json.dumps(call.json_body)
        return await http.post(
            f"{settings.OPENROUTER_BASE_URL}{call.path}", headers=headers, data=data, stream=call.stream
        )


def fetch_generation_stats(*, generation_id: str, api_key: str) -> GenerationStats:
    """GET {OPENROUTER_BASE_URL}/generation?id=…; native token counts where OpenRouter gives them.

    Synchronous (Celery's settlement tasks call it). Raises GenerationNotReady on 404 (OpenRouter
    learns of a generation a few seconds after it) and GenerationStatsUnavailable otherwise.
    """
    try:
        response = requests.get(
            f"{settings.OPENROUTER_BASE_URL}/generation",
            params={"id": generation_id},
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=_GENERATION_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise GenerationStatsUnavailable(f"generation stats for {generation_id}: {exc}") from exc
    if response.status_code == 404:
        raise GenerationNotReady(generation_id)
    if response.status_code != 200:
        raise GenerationStatsUnavailable(f"generation stats for {generation_id}: HTTP {response.status_code}")
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GenerationStatsUnavailable(f"generation stats for {generation_id}: malformed body") from exc

    def figure(native: str, plain: str) -> int:
        value = data.get(native)
        if value is None:
            value = data.get(plain)
        try:
            return clamp_tokens(value or 0)
        except (TypeError, ValueError):
            return 0

    return GenerationStats(
        prompt_tokens=figure("native_tokens_prompt", "tokens_prompt"),
        completion_tokens=figure("native_tokens_completion", "tokens_completion"),
        cached_tokens=figure("native_tokens_cached", "native_tokens_cached"),
    )
