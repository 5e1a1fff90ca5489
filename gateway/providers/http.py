"""The one outbound HTTP client: a pooled keep-alive aiohttp session per event loop.

aiohttp was chosen by measurement (docs/decisions.md): under concurrency its client costs a
fraction of httpx's. Timeouts are explicit and separate: connect, first byte (until the response
headers arrive) and between chunks. Redirects are never followed, and cookies are never kept: the
session is shared by every caller, so one caller's upstream cookies must not ride on another's request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings

from gateway.providers.base import ProviderError, UpstreamResponse

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def upstream_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=settings.UPSTREAM_MAX_CONNECTIONS, keepalive_timeout=30, enable_cleanup_closed=True
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay bytes as they came; the gateway asks for identity encoding
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
            json_serialize=json.dumps,
        )
        _sessions[loop] = session
    return session


async def close_upstream_session() -> None:
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.UPSTREAM_CONNECT_TIMEOUT_SECONDS,
        sock_read=settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS,
    )


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError as exc:
        raise ProviderError(
            "The upstream stalled in the middle of its response.", status=504, retryable=False, code="upstream_timeout"
        ) from exc
    except aiohttp.ClientError as exc:
        raise ProviderError(
            "The upstream dropped the connection in the middle of its response.", retryable=False
        ) from exc
    finally:
        if response.content.at_eof():
            response.release()
        else:
            response.close()  # aborts the connection, which is how the upstream learns to stop


async def post(url: str, *, headers: dict[str, str], data: bytes | aiohttp.FormData, stream: bool) -> UpstreamResponse:
    """POST to the upstream; for a successful stream, return before the body so it can be relayed."""
    session = upstream_session()
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS):
            response = await session.post(url, data=data, headers=headers, timeout=_timeout(), allow_redirects=False)
    except TimeoutError as exc:
        raise ProviderError(
            "The upstream did not respond in time.", status=504, retryable=False, code="upstream_timeout"
        ) from exc
    except aiohttp.ClientError as exc:
        raise ProviderError(f"Could not reach the upstream ({type(exc).__name__}).") from exc

    response_headers = {name.lower(): value for name, value in response.headers.items()}
    if stream and response.status == 200:

        async def abort() -> None:
            response.close()

        return UpstreamResponse(status=200, headers=response_headers, chunks=_relay(response), release=abort)
    try:
        body = await response.read()
    except TimeoutError as exc:
        raise ProviderError(
            "The upstream stalled while sending its response.", status=504, code="upstream_timeout"
        ) from exc
    except aiohttp.ClientError as exc:
        raise ProviderError("The upstream dropped the connection while sending its response.") from exc
    finally:
        response.release()
    return UpstreamResponse(status=response.status, headers=response_headers, body=body)
