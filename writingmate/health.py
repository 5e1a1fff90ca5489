"""Liveness (`/healthz`) and readiness (`/readyz`) probes: no auth, no configuration in the answer.

Readiness asks the database for `SELECT 1` and Redis (only when REDIS_URL is set) for PING, each
within READINESS_TIMEOUT_SECONDS. The database check runs on its own thread, never the gateway's
database pool, and at most one runs at a time, so a stalled database cannot pile up probe threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading

import psycopg
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from writingmate.redis_connection import async_redis

logger = logging.getLogger(__name__)

_database_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-db")
_database_check_running = threading.Lock()


def _query_database() -> None:
    # A fresh connection each time: it proves that new connections can be made (what a restarted
    # worker needs), and the probe holds no database connection between checks. On PostgreSQL it is
    # opened beside the pool (which may still be waiting out its reconnect backoff after an outage).
    connection = connections["default"]
    if connection.vendor == "postgresql":
        params = connection.get_connection_params()  # the pool's own options are not among them
        params["connect_timeout"] = max(1, math.ceil(settings.READINESS_TIMEOUT_SECONDS))
        with psycopg.connect(**params) as raw:
            raw.execute("SELECT 1").fetchone()
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


def _run_database_check() -> None:
    try:
        _query_database()
    finally:
        # Released when the query ends, not when a probe stops waiting: a stalled query keeps the
        # next probes from starting more threads.
        _database_check_running.release()


async def check_database(timeout_seconds: float) -> bool:
    if not _database_check_running.acquire(blocking=False):
        logger.warning("readiness: the previous database check has not finished yet")
        return False
    future = _database_executor.submit(_run_database_check)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout_seconds)
    except Exception:
        logger.warning("readiness: database check failed", exc_info=True)
        return False
    return True


async def check_redis(timeout_seconds: float) -> bool:
    client = async_redis()
    if client is None:
        return True
    try:
        await asyncio.wait_for(client.ping(), timeout_seconds)
    except Exception:
        logger.warning("readiness: Redis check failed", exc_info=True)
        return False
    return True


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
async def readyz(request: HttpRequest) -> JsonResponse:
    timeout = settings.READINESS_TIMEOUT_SECONDS
    names = ["database"] + (["redis"] if settings.REDIS_URL else [])
    results = await asyncio.gather(check_database(timeout), *([check_redis(timeout)] if settings.REDIS_URL else []))
    checks = {name: "ok" if ok else "unavailable" for name, ok in zip(names, results, strict=True)}
    ready = all(results)
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
