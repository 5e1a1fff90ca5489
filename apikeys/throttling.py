"""Blocking client addresses that keep presenting invalid API keys on /v1, without slowing valid keys.

The counter is touched only when a key fails (`note_invalid_key`): one Redis round trip (INCR and
EXPIRE pipelined) shared by every gateway process, or a process-local counter without Redis. Once an
address passes API_INVALID_KEY_LIMIT_PER_MINUTE failures in a one-minute window, the process that saw
it keeps the address in a local table until the window ends, so `ensure_address_allowed`, which runs
before authentication on every request, is a dict lookup with no I/O. Every other process learns of
the block on that address's next failure there.
IPv6 addresses count per /64, the block a single host is usually given.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time

from django.conf import settings
from rest_framework import exceptions

from writingmate.redis_connection import async_redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_COUNTER_KEY = "wm:badkey:"
_MAX_LOCAL_ENTRIES = 100_000


class TooManyInvalidKeys(exceptions.Throttled):
    """429 for an address that sent too many invalid keys; `wait` is the seconds until it may retry."""

    default_detail = "Too many requests with an invalid API key from your address."
    default_code = "too_many_invalid_keys"


# address bucket -> monotonic time until which it is blocked
_blocked_until: dict[str, float] = {}
# address bucket -> (window number, failures in it); used only without Redis or when Redis fails
_local_failures: dict[str, tuple[int, int]] = {}


def address_bucket(address: str) -> str:
    if ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


async def ensure_address_allowed(address: str) -> None:
    """Raise TooManyInvalidKeys while `address` is blocked; otherwise return at once (no I/O)."""
    if not _blocked_until:
        return
    until = _blocked_until.get(address_bucket(address))
    if until is None:
        return
    remaining = until - time.monotonic()
    if remaining <= 0:
        _blocked_until.pop(address_bucket(address), None)
        return
    raise TooManyInvalidKeys(wait=math.ceil(remaining))


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


def forget_blocked_addresses() -> None:
    """Clear this process's tables (tests, or an operator unblocking everyone)."""
    _blocked_until.clear()
    _local_failures.clear()
