"""The invalid-key throttle for /v1: a flood of bad keys from one address costs bounded work, and a
valid key from that address is never refused because of it.

Only presented keys that no cache vouches for are ever throttled. Each failed key counts against its
address (`note_invalid_key`: one Redis round trip, INCR and EXPIRE pipelined, shared by every
gateway process; a process-local counter without Redis). Past API_INVALID_KEY_LIMIT_PER_MINUTE
failures in a one-minute window the process that saw it keeps the address in a local table until the
window ends; while it is there, a key that is neither a cached grant nor known valid gets a 429
without a database lookup. A key is known valid once it has authenticated (or was created) within
KNOWN_KEY_DAYS: `wm:known-key:<hash>` in Redis, read in the same MGET as the grant, or a process set.
IPv6 addresses count per /64, the block a single host is usually given.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from typing import Any

from django.conf import settings
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from writingmate.redis_connection import async_redis, sync_redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
KNOWN_KEY_DAYS = 30
KNOWN_KEY_PREFIX = "wm:known-key:"
_COUNTER_KEY = "wm:badkey:"
_MAX_LOCAL_ENTRIES = 100_000


class TooManyInvalidKeys(exceptions.Throttled):
    """429 for a key nobody vouches for, from an address past the limit; `wait` is seconds to retry."""

    default_detail = "Too many requests with an invalid API key from your address."
    default_code = "too_many_invalid_keys"


# address bucket -> monotonic time until which unvouched keys from it are refused
_blocked_until: dict[str, float] = {}
# address bucket -> (window number, failures in it); used only without Redis or when Redis fails
_local_failures: dict[str, tuple[int, int]] = {}
# key hashes this process saw authenticate (the Redis marker's stand-in without Redis)
_known_keys: set[str] = set()


def address_bucket(address: str) -> str:
    if ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


def client_address(request: Request | Any) -> str:
    return request.META.get("REMOTE_ADDR") or ""


def blocked_seconds(address: str) -> int | None:
    """Seconds until `address` may try unvouched keys again, or None if it may now (a dict lookup)."""
    if not _blocked_until:
        return None
    bucket = address_bucket(address)
    until = _blocked_until.get(bucket)
    if until is None:
        return None
    remaining = until - time.monotonic()
    if remaining <= 0:
        _blocked_until.pop(bucket, None)
        return None
    return math.ceil(remaining)


async def note_invalid_key(address: str) -> None:
    """Count one invalid key from `address`; past the limit the address is blocked until the window ends."""
    bucket = address_bucket(address)
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    failures = await _count_failure(bucket, window)
    if failures > settings.API_INVALID_KEY_LIMIT_PER_MINUTE:
        if bucket not in _blocked_until:
            logger.warning("blocking %s after %d invalid API keys in a minute", bucket, failures)
        if len(_blocked_until) > _MAX_LOCAL_ENTRIES:
            _blocked_until.clear()
        _blocked_until[bucket] = time.monotonic() + (window + 1) * WINDOW_SECONDS - now


async def _count_failure(bucket: str, window: int) -> int:
    client = async_redis()
    if client is not None:
        key = f"{_COUNTER_KEY}{bucket}:{window}"
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS * 2)
                failures, _ = await pipe.execute()
            return int(failures)
        except Exception:
            logger.warning("Redis unavailable for the invalid-key counter; counting in this process", exc_info=True)
    seen_window, failures = _local_failures.get(bucket, (window, 0))
    failures = failures + 1 if seen_window == window else 1
    if len(_local_failures) > _MAX_LOCAL_ENTRIES:
        _local_failures.clear()
    _local_failures[bucket] = (window, failures)
    return failures


def is_known_locally(key_hash: str) -> bool:
    return key_hash in _known_keys


def remember_known_locally(key_hash: str) -> None:
    if len(_known_keys) > _MAX_LOCAL_ENTRIES:
        _known_keys.clear()
    _known_keys.add(key_hash)


def mark_key_known(key_hash: str) -> None:
    """A new key is known valid from its first request, even from an address that floods bad keys."""
    remember_known_locally(key_hash)
    client = sync_redis()
    if client is not None:
        try:
            client.set(KNOWN_KEY_PREFIX + key_hash, b"1", ex=KNOWN_KEY_DAYS * 86400)
        except Exception:
            logger.warning("could not mark a new key as known in Redis", exc_info=True)


class InvalidKeyThrottle(BaseThrottle):
    """DRF's throttle step for /v1: a request is throttled only while its key is unauthenticated.

    DRF checks throttles after authentication, but this one must act before the database lookup it
    protects, so `ApiKeyAuthentication` runs the view's throttles (`view.check_throttles`) right before
    it would look up a key no cache vouches for; by DRF's own throttle step the request is
    authenticated and passes. It raises its own 429 instead of returning False because DRF reports
    every refusal as a generic "throttled", and clients read `too_many_invalid_keys`.
    """

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.auth is not None:
            return True  # an authenticated key is never refused for other keys from its address
        wait = blocked_seconds(client_address(request))
        if wait is not None:
            raise TooManyInvalidKeys(wait=wait)
        return True


def forget_blocked_addresses() -> None:
    """Clear this process's tables (tests, or an operator unblocking everyone)."""
    _blocked_until.clear()
    _local_failures.clear()
    _known_keys.clear()
