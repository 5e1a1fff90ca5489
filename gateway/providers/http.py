"""Outbound HTTP to the upstreams: `post`, and the errors every provider sees (ProviderError).

JSON bodies (chat, completions, Responses) go through gateway.providers.http1, a lean HTTP/1.1 client
chosen by measurement (docs/decisions.md); multipart uploads (transcriptions) through a pooled aiohttp
session, which builds and streams forms. Timeouts are explicit and separate: connect, first byte (until
the response headers arrive) and between chunks. Redirects are never followed, and cookies are never
kept: the clients are shared by every caller, so one caller's upstream cookies must not ride on
another's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings

from gateway.providers import http1
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
    http1.close_pools()
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.UPSTREAM_CONNECT_TIMEOUT_SECONDS,
        sock_read=settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS,
    )


async def post(url: str, *, headers: dict[str, str], data: bytes | aiohttp.FormData, stream: bool) -> UpstreamResponse:
    """POST to the upstream; for a successful stream, return before the body so it can be relayed."""
    if isinstance(data, bytes):
        return await _post_bytes(url, headers=headers, body=data, stream=stream)
    return await _post_form(url, headers=headers, data=data)


def _no_answer_in_time() -> ProviderError:
    return ProviderError("The upstream did not respond in time.", status=504, retryable=False, code="upstream_timeout")


def _stalled_while_sending() -> ProviderError:
    return ProviderError("The upstream stalled while sending its response.", status=504, code="upstream_timeout")


def _dropped_while_sending() -> ProviderError:
    return ProviderError("The upstream dropped the connection while sending its response.")


def _timeouts() -> http1.Timeouts:
    return http1.Timeouts(
        connect=settings.UPSTREAM_CONNECT_TIMEOUT_SECONDS,
        first_byte=settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS,
        between_chunks=settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS,
    )


async def _post_bytes(url: str, *, headers: dict[str, str], body: bytes, stream: bool) -> UpstreamResponse:
    try:
        response = await http1.post(
            url, headers=headers, body=body, timeouts=_timeouts(), max_connections=settings.UPSTREAM_MAX_CONNECTIONS
        )
    except http1.UpstreamTimeout as exc:
        raise _no_answer_in_time() from exc
    except ConnectionError as exc:  # http1.UpstreamUnreachable, or UpstreamDropped before the headers
        raise ProviderError(f"Could not reach the upstream: {exc}.") from exc
    except ValueError as exc:
        raise ProviderError(
            f"The upstream request could not be built: {exc}.", retryable=False, code="upstream_request_invalid"
        ) from exc

    if stream and response.status == 200:

        async def release(finished: bool) -> None:
            response.release(finished=finished)  # an unfinished stream aborts the connection

        return UpstreamResponse(status=200, headers=response.headers, chunks=_relay_chunks(response), release=release)
    try:
        body = await response.read()
    except http1.UpstreamTimeout as exc:
        raise _stalled_while_sending() from exc
    except ConnectionError as exc:
        raise _dropped_while_sending() from exc
    finally:
        response.release()
    return UpstreamResponse(status=response.status, headers=response.headers, body=body)


async def _relay_chunks(response: http1.Response) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(response.chunks()) as chunks:
            async for chunk in chunks:
                yield chunk
    except http1.UpstreamTimeout as exc:
        raise ProviderError(
            "The upstream stalled in the middle of its response.", status=504, retryable=False, code="upstream_timeout"
        ) from exc
    except ConnectionError as exc:
        raise ProviderError(
            "The upstream dropped the connection in the middle of its response.", retryable=False
        ) from exc
    finally:
        response.release()


async def _post_form(url: str, *, headers: dict[str, str], data: aiohttp.FormData) -> UpstreamResponse:
    session = upstream_session()
    try:
        async with asyncio.timeout(settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS):
            response = await session.post(url, data=data, headers=headers, timeout=_timeout(), allow_redirects=False)
    except TimeoutError as exc:
        raise _no_answer_in_time() from exc
    except aiohttp.ClientError as exc:
        raise ProviderError(f"Could not reach the upstream ({type(exc).__name__}).") from exc

    response_headers = {name.lower(): value for name, value in response.headers.items()}
    try:
        body = await response.read()
    except TimeoutError as exc:
        raise _stalled_while_sending() from exc
    except aiohttp.ClientError as exc:
        raise _dropped_while_sending() from exc
    finally:
        response.release()
    return UpstreamResponse(status=response.status, headers=response_headers, body=body)
