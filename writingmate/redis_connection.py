"""The one home for Redis clients: redis-py (its hiredis parser is installed), asyncio and sync.

Every Redis user goes through here (key grants, quotas, throttles, the ledger spool, readiness), and
Django's cache and Celery read the same `settings.REDIS_URL`. The URL is redis-py's:
`redis://` or `rediss://` (TLS; the certificate is verified unless the URL says `ssl_cert_reqs=none`),
an ACL user and password (`rediss://user:password@host:6380/2`), a db number, and any option redis-py
reads from the query string (`ssl_ca_certs=/path/ca.pem`, `ssl_cert_reqs=required`, ...).

The asyncio client has one connection pool per event loop (redis-py's asyncio connections belong to
the loop that opened them). All are None when REDIS_URL is unset: callers then use their in-process
or database path.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.backoff
import redis.exceptions
import redis.retry
from django.conf import settings

# Short timeouts: a stalled Redis must turn into a fallback, not a stalled request.
_SOCKET_TIMEOUT_SECONDS = 0.5
_MAX_CONNECTIONS = 200

_async_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def _options() -> dict[str, Any]:
    return {
        "socket_timeout": _SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": _SOCKET_TIMEOUT_SECONDS,
        "max_connections": _MAX_CONNECTIONS,
        "health_check_interval": 30,
    }


# A pooled connection Redis closed (a restart, a failover) is replaced once, at once. Not after a
# timeout: every caller has its own fallback, and waiting twice would only delay it.
_RETRIED = (redis.exceptions.ConnectionError,)


def async_redis() -> aioredis.Redis | None:
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 1, supported_errors=_RETRIED),
            **_options(),
        )
        _async_clients[loop] = client
    return client


@functools.cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1, supported_errors=_RETRIED), **_options()
    )


def sync_redis() -> redis.Redis | None:
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


async def close_async_redis() -> None:
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def forget_sync_redis() -> None:
    """Drop the process's sync client (tests that change REDIS_URL)."""
    _sync_client.cache_clear()


def celery_redis_url(url: str) -> str:
    """`url` as Celery's broker and result backend need it: a `rediss://` URL must name
    `ssl_cert_reqs` for them (Celery refuses one that does not), so verification is spelled out."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(parse_qsl(parts.query))
    query.setdefault("ssl_cert_reqs", "required")
    return urlunsplit(parts._replace(query=urlencode(query)))
