"""The Redis counters: the reserve, settle and rebuild scripts (lua/*.lua) and the calls that run them.

A counter is a Redis hash of settled messages per ledger line (`request:<id>`, `settlement:<id>`) with a
running `total`, plus a sorted set of in-flight request ids scored by their expiry. Settles and
rebuilds both use HSETNX per ledger line, so either can run first, twice, or concurrently and the
total stays exact; a counter Redis lost is rebuilt from the ledger.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings
from django.utils import timezone
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from accounts.access import ACCESS_EPOCH_KEY, AccessChanged
from billing.quotas.breaker import local_holds, redis_health
from billing.quotas.database import rebuild_payload
from billing.quotas.scopes import Counter, Scope, distinct_counters
from writingmate.background import run_in_background
from writingmate.db import run_db
from writingmate.redis_connection import async_redis, sync_redis

logger = logging.getLogger("billing.quotas")

_LUA = Path(__file__).resolve().parent / "lua"
_RESERVE_LUA = (_LUA / "reserve.lua").read_text()
_SETTLE_LUA = (_LUA / "settle.lua").read_text()
_REBUILD_LUA = (_LUA / "rebuild.lua").read_text()
_REBUILD_CHUNK = 500


_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scripts_for(client: Any) -> tuple[Any, Any, Any]:
    """The reserve, settle and rebuild scripts of `client` (redis-py's sync or asyncio client: both register alike)."""
    scripts = _scripts.get(client)
    if scripts is None:
        scripts = (
            client.register_script(_RESERVE_LUA),
            client.register_script(_SETTLE_LUA),
            client.register_script(_REBUILD_LUA),
        )
        _scripts[client] = scripts
    return scripts


async def run_in_one_write(
    client: aioredis.Redis, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run `script` once per (keys, args), all pipelined in one write; loaded first if Redis lost it.

    Only for idempotent scripts (the settle): after a NOSCRIPT the whole batch runs again.
    """
    for _attempt in (1, 2):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        if not any(isinstance(result, NoScriptError) for result in results):
            break
        await client.script_load(script.script)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _rebuild_calls(counter: Counter, lines: list[tuple[str, int, str]], reservations: list[tuple[str, int]]):
    """The rebuild script's argument lists, in chunks; only the last marks the counter ready."""
    chunks = [lines[i : i + _REBUILD_CHUNK] for i in range(0, len(lines), _REBUILD_CHUNK)] or [[]]
    for index, chunk in enumerate(chunks):
        final = index == len(chunks) - 1
        args: list[object] = [counter.expire_at_ms, "1" if final else "0", len(chunk)]
        for fld, messages, request_id in chunk:
            args.extend((fld, messages, request_id))
        if final:
            for request_id, expires_ms in reservations:
                args.extend((request_id, expires_ms))
        yield args


_rebuilds_in_progress: dict[tuple[int, str, bool], asyncio.Future] = {}


async def rebuild_counter(client: Any, counter: Counter, *, since: dt.datetime | None = None) -> None:
    """Merge the ledger (lines written since `since`, or all) into a counter; idempotent.

    Concurrent callers in this loop share one rebuild.
    """
    loop_key = (id(asyncio.get_running_loop()), counter.key, since is None)
    pending = _rebuilds_in_progress.get(loop_key)
    if pending is not None:
        await asyncio.shield(pending)
        return
    future = asyncio.get_running_loop().create_future()
    _rebuilds_in_progress[loop_key] = future
    try:
        lines, reservations = await run_db(rebuild_payload, counter, since)
        rebuild = scripts_for(client)[2]
        for args in _rebuild_calls(counter, lines, reservations):
            await rebuild(keys=list(counter.redis_keys), args=args)
        if since is None:
            redis_health.reconciled(counter.key)
        future.set_result(None)
    except BaseException as exc:
        future.set_exception(exc)
        raise
    finally:
        _rebuilds_in_progress.pop(loop_key, None)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved, so an unawaited failure is not reported twice


def rebuild_counter_sync(*, client: Any, counter: Counter) -> None:
    lines, reservations = rebuild_payload(counter)
    rebuild = scripts_for(client)[2]
    for args in _rebuild_calls(counter, lines, reservations):
        rebuild(keys=list(counter.redis_keys), args=args)


async def _reconcile(client: object, counters: Sequence[Counter]) -> None:
    """The periodic merge: lines of the last few intervals, enough to catch settles Redis missed.

    A process whose own settles failed trips its breaker and merges everything when Redis is back.
    """
    since = timezone.now() - dt.timedelta(seconds=settings.BILLING_QUOTA_RECONCILE_SECONDS * 3 + 300)
    for counter in counters:
        try:
            await rebuild_counter(client, counter, since=since)
        except Exception:
            logger.warning("quota: could not reconcile counter %s with the ledger", counter.key, exc_info=True)


async def run_reserve_script(
    client: object, *, mode: str, request_id: str, scopes: Sequence[Scope], access_epoch: int | None = None
) -> tuple[bool, dict[str, tuple[int, int]]]:
    counters = distinct_counters(scopes)
    for counter in counters:
        if redis_health.needs_reconcile(counter.key):
            await rebuild_counter(client, counter)
    limits = {c.key: min(s.limit for s in scopes if s.counter.key == c.key) for c in counters}
    keys: list[str] = []
    args: list[object] = [
        mode,
        request_id,
        settings.BILLING_RESERVATION_TTL_SECONDS * 1000,
        settings.BILLING_QUOTA_RECONCILE_SECONDS * 1000,
        "" if access_epoch is None else access_epoch,
    ]
    for counter in counters:
        keys.extend(counter.redis_keys)
        args.extend((limits[counter.key], counter.expire_at_ms))
    keys.append(ACCESS_EPOCH_KEY)
    reserve = scripts_for(client)[0]
    for _attempt in range(3):
        result = [int(x) for x in await reserve(keys=keys, args=args)]
        if result[0] == 3:
            raise AccessChanged(f"access epoch {access_epoch} is no longer current")
        if result[0] == 2:
            for index in result[1:]:
                await rebuild_counter(client, counters[index - 1])
            continue
        if result[1]:
            # Once per interval a caller merges the ledger in, healing settles Redis missed.
            run_in_background(_reconcile(client, counters))
        figures = {c.key: (result[2 + 2 * i], result[3 + 2 * i]) for i, c in enumerate(counters)}
        return result[0] == 0, figures
    raise RuntimeError("quota counters could not be rebuilt")


@dataclass(frozen=True)
class CounterSettle:
    """Move one ledger line into Redis counters: release the request's hold, add its messages once.

    `counters` are the ones the request was reserved against; `if_present` are its scopes' other
    counters (limits it had none of), which take the line only if they exist.
    """

    request_id: str
    ledger_field: str
    messages: int
    counters: tuple[Counter, ...]
    if_present: tuple[Counter, ...] = ()


def _settle_args(item: CounterSettle) -> tuple[list[str], list[object]]:
    counters = item.counters + item.if_present
    keys: list[str] = []
    for counter in counters:
        keys.extend(counter.redis_keys)
    args: list[object] = [item.request_id, item.ledger_field, item.messages, len(item.counters)]
    args.extend(counter.expire_at_ms for counter in counters)
    return keys, args


async def settle_counters(items: Sequence[CounterSettle]) -> None:
    """Apply settles in one pipelined burst. Never raises: the ledger is durable and counters reconcile with it."""
    local_holds.discard(item.request_id for item in items)
    items = [item for item in items if item.counters or (item.if_present and item.messages)]
    client = async_redis()
    if not items or client is None or not redis_health.usable():
        return
    try:
        settle = scripts_for(client)[1]
        await run_in_one_write(client, settle, [_settle_args(item) for item in items])
    except Exception as exc:
        redis_health.failed(exc)
        logger.warning("quota: could not settle %d requests in Redis; counters will reconcile", len(items))


def settle_counters_sync(items: Sequence[CounterSettle]) -> None:
    """The same from sync code (Celery tasks). Never raises."""
    items = [item for item in items if item.counters or (item.if_present and item.messages)]
    client = sync_redis()
    if not items or client is None:
        return
    try:
        settle = scripts_for(client)[1]
        for item in items:
            keys, args = _settle_args(item)
            settle(keys=keys, args=args)
    except Exception:
        logger.warning("quota: could not settle %d ledger lines in Redis; counters will reconcile", len(items))
