"""Outbound HTTP to the upstreams: `post`, and the errors every provider sees (ProviderError).

One pooled aiohttp session per event loop carries every upstream call: JSON (chat, completions,
Responses) and multipart uploads (transcriptions). What it guarantees:

- TLS verified against the system CAs (`UPSTREAM_CA_FILE` replaces them, for a private CA);
- proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), read once per origin;
- response headers capped in size and number, so an upstream cannot make us buffer without bound;
- separate timeouts: connect, first byte (until the response headers arrive) and between chunks;
- no request body sent twice: aiohttp never resends a POST, and `ProviderError.retryable` is true only
  when the connection could not be opened, so nothing left this process;
- no redirects followed, no cookies kept (the session is shared by every caller), no decompression
  (bytes are relayed as they came; the gateway asks for identity encoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import urllib.request
from collections.abc import AsyncGenerator

import aiohttp
from django.conf import settings
from yarl import URL

from gateway.providers.base import ProviderError, UpstreamResponse
from writingmate.background import run_in_background

# A response's header block may hold at most this many fields, each line at most this long.
MAX_RESPONSE_HEADERS = 100
MAX_RESPONSE_HEADER_LINE_BYTES = 8190
_DRAIN_SECONDS = 1.0  # how long the end of a finished stream (its last chunk marker) may take to come
_KEEPALIVE_SECONDS = 30.0

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def tls_context() -> ssl.SSLContext:
    """Certificates verified against the system CAs, or only against settings.UPSTREAM_CA_FILE when set."""
    return _tls_context(settings.UPSTREAM_CA_FILE)


@functools.cache
def _tls_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file or None)


def upstream_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=settings.UPSTREAM_MAX_CONNECTIONS, keepalive_timeout=_KEEPALIVE_SECONDS)
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Proxies are resolved once per origin (_proxy_for): trust_env would read the environment
            # and ~/.netrc on every request.
            trust_env=False,
            max_line_size=MAX_RESPONSE_HEADER_LINE_BYTES,
            max_field_size=MAX_RESPONSE_HEADER_LINE_BYTES,
            max_headers=MAX_RESPONSE_HEADERS,
        )
        _sessions[loop] = session
    return session


async def close_upstream_session() -> None:
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@functools.lru_cache(maxsize=64)
def _proxy_for(scheme: str, host: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for this origin (its credentials apart), or (None, None)."""
    if urllib.request.proxy_bypass(host):
        return None, None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None, None
    url = URL(proxy)
    auth = aiohttp.BasicAuth(url.user or "", url.password or "") if url.user else None
    return str(url.with_user(None)), auth


def forget_proxies() -> None:
    """Read the proxy environment again on the next call (tests)."""
    _proxy_for.cache_clear()


@functools.lru_cache(maxsize=64)
def _parse(url: str) -> URL:
    return URL(url)  # the same few upstream URLs every time


def _timeout() -> aiohttp.ClientTimeout:
    # Until the headers arrive, the read timeout is the first-byte one; post() then shortens it.
    return _timeouts(settings.UPSTREAM_CONNECT_TIMEOUT_SECONDS, settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS)


@functools.lru_cache(maxsize=8)
def _timeouts(connect: float, first_byte: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=first_byte)


def _unreachable(exc: BaseException) -> ProviderError:
    # Nothing was sent: the connection (TCP, TLS or the proxy's) never opened. Safe to try again.
    return ProviderError(f"Could not reach the upstream ({type(exc).__name__}).", retryable=True)


def _no_answer_in_time() -> ProviderError:
    return ProviderError("The upstream did not respond in time.", status=504, retryable=False, code="upstream_timeout")


def _failed_after_sending(exc: BaseException) -> ProviderError:
    # The body may have reached the upstream (a dropped connection, a malformed answer): never resent.
    return ProviderError(f"The upstream failed to answer ({type(exc).__name__}).", retryable=False)


def _stalled_while_sending() -> ProviderError:
    return ProviderError(
        "The upstream stalled while sending its response.", status=504, retryable=False, code="upstream_timeout"
    )


def _dropped_while_sending() -> ProviderError:
    return ProviderError("The upstream dropped the connection while sending its response.", retryable=False)


async def post(url: str, *, headers: dict[str, str], data: bytes | aiohttp.FormData, stream: bool) -> UpstreamResponse:
    """POST to the upstream; for a successful stream, return before the body so it can be relayed."""
    target = _parse(url)
    proxy, proxy_auth = _proxy_for(target.scheme, target.host or "")
    try:
        response = await upstream_session().post(
            target,
            data=data,
            headers=headers,
            timeout=_timeout(),
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
            ssl=tls_context(),  # per request: the pool keeps connections apart by their TLS context
        )
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _unreachable(exc) from exc
    except TimeoutError as exc:  # aiohttp.SocketTimeoutError: no response headers within the first-byte timeout
        raise _no_answer_in_time() from exc
    except aiohttp.ClientError as exc:
        raise _failed_after_sending(exc) from exc
    except ValueError as exc:  # a header value with a line break, an unusable URL
        raise ProviderError(
            f"The upstream request could not be built: {exc}.", retryable=False, code="upstream_request_invalid"
        ) from exc

    if response.connection is not None and response.connection.protocol is not None:
        # From now on the between-chunks timeout, counted from here (the headers may have come with data).
        response.connection.protocol.read_timeout = settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS
        response.connection.protocol.start_timeout()
    response_headers = {name.lower(): value for name, value in response.headers.items()}

    if stream and response.status == 200:

        async def release(finished: bool) -> None:
            if not finished:
                response.close()  # aborts the connection: the upstream stops generating
            elif response.content.is_eof():
                response.release()
            else:
                run_in_background(_drain(response))  # the chunked end marker is usually a moment behind

        return UpstreamResponse(status=200, headers=response_headers, chunks=_relay_chunks(response), release=release)
    try:
        body = await response.read()
    except TimeoutError as exc:
        raise _stalled_while_sending() from exc
    except aiohttp.ClientError as exc:
        raise _dropped_while_sending() from exc
    finally:
        response.release()
    return UpstreamResponse(status=response.status, headers=response_headers, body=body)


async def _relay_chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
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


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what is left of a finished stream (its end marker) so its connection can be reused."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await response.content.readany():
                response.close()  # more than an end marker came after [DONE]: not worth keeping
                return
    except (TimeoutError, aiohttp.ClientError):
        response.close()
        return
    with contextlib.suppress(Exception):
        response.release()
