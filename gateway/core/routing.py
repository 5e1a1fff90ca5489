"""Which provider and which credentials serve a request. Only settings and the user's own saved
BYOK key decide this; nothing in the client's request can change the upstream URL or key."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from accounts.encryption import decrypt_secret
from apikeys.authentication import ApiCaller
from gateway.catalogue import CatalogueEntry
from gateway.errors import ApiError
from gateway.providers.base import Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openrouter import OpenRouterProvider
from gateway.providers.transcription import TranscriptionProvider

_openrouter = OpenRouterProvider()
_demo = DemoProvider()
_transcription = TranscriptionProvider()


@dataclass(frozen=True)
class Route:
    provider: Provider
    api_key: str
    byok: bool


def route_chat(*, entry: CatalogueEntry, caller: ApiCaller) -> Route:
    if entry.is_demo:
        return Route(provider=_demo, api_key="", byok=False)
    if caller.byok_ciphertext:
        return Route(provider=_openrouter, api_key=decrypt_secret(caller.byok_ciphertext), byok=True)
    if not settings.OPENROUTER_API_KEY:
        raise ApiError(
            f"No upstream is configured for `{entry.slug}` on this server (OPENROUTER_API_KEY is unset). "
            "Try a demo/... model, or save your own OpenRouter key in Settings.",
            status=503,
            error_type="server_error",
            code="upstream_not_configured",
        )
    return Route(provider=_openrouter, api_key=settings.OPENROUTER_API_KEY, byok=False)


def route_transcription(*, entry: CatalogueEntry, caller: ApiCaller) -> Route:
    """Speech to text goes to the server's transcription upstream, BYOK or not.

    A BYOK key is an OpenRouter key, and OpenRouter has no /audio/transcriptions, so these requests
    use the server's key and count against the plan like any other (docs/decisions.md).
    """
    if entry.is_demo:
        return Route(provider=_demo, api_key="", byok=False)
    if not settings.TRANSCRIPTION_API_KEY:
        raise ApiError(
            f"No transcription upstream is configured for `{entry.slug}` on this server "
            "(TRANSCRIPTION_API_KEY is unset). Try demo/transcribe.",
            status=503,
            error_type="server_error",
            code="upstream_not_configured",
        )
    return Route(provider=_transcription, api_key=settings.TRANSCRIPTION_API_KEY, byok=False)
