"""OpenRouter, the default upstream: OpenAI's wire format at settings.OPENROUTER_BASE_URL."""

from __future__ import annotations

import json

from django.conf import settings

from gateway.providers import http
from gateway.providers.base import UpstreamCall, UpstreamResponse

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
        data = (
            call.raw_body if call.raw_body is not None else json.dumps(call.json_body, separators=(",", ":")).encode()
        )
        return await http.post(
            f"{settings.OPENROUTER_BASE_URL}{call.path}", headers=headers, data=data, stream=call.stream
        )
