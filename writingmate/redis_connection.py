"""Redis clients: redis-py (asyncio, one pool per event loop; and sync) and, for the commands every
/v1 request runs, writingmate.fast_redis (one pipelined connection per event loop).

All are None when REDIS_URL is unset: callers then use their in-process or database path.
"""

from __future__ import annotations

import asyncio
import functools

import redis
import redis.asyncio as aioredis
from django.conf import settings

from writingmate.fast_redis import FastRedis

# Short timeouts: a stalled Redis must turn into a fallback, not a stalled request.
_SOCKET_TIMEOUT_SECONDS = 0.5

_async_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}
_fast_clients: dict[asyncio.AbstractEventLoop, FastRedis] = {}


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def async_redis() -> aioredis.Redis | None:
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=_SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=_SOCKET_TIMEOUT_SECONDS,
            max_connections=200,
        )
        _async_clients[loop] = client
    return client


def fast_redis() -> FastRedis | None:
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    client = _fast_clients.get(loop)
    if client is None:
        client = _fast_clients[loop] = FastRedis(settings.REDIS_URL, timeout_seconds=_SOCKET_TIMEOUT_SECONDS)
    return client


@functools.cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=_SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=_SOCKET_TIMEOUT_SECONDS
    )


def sync_redis() -> redis.Redis | None:
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


async def close_async_redis() -> None:
    loop = asyncio.get_running_loop()
    client = _async_clients.pop(loop, None)
    if client is not None:
        await client.aclose()
    fast = _fast_clients.pop(loop, None)
    if fast is not None:
        await fast.close()
