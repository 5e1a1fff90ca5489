"""Database work from async code: a small dedicated thread pool, and one reconnect on a dropped connection.

On PostgreSQL each call takes a connection from the process's psycopg pool (settings.DATABASES
OPTIONS["pool"]) and gives it back when it returns, so these threads and the site share one bound.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connections

T = TypeVar("T")


_MAX_THREADS = 8


def _pooled() -> bool:
    return bool(settings.DATABASES["default"].get("OPTIONS", {}).get("pool"))


@functools.cache
def _executor() -> ThreadPoolExecutor:
    is_sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
    # SQLite has one writer at a time; more threads would only wait on its lock. With the pool, more
    # threads than pooled connections would only wait for one.
    workers = 1 if is_sqlite else min(_MAX_THREADS, settings.DATABASE_POOL_MAX_SIZE) if _pooled() else _MAX_THREADS
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="api-db")


def _call_with_reconnect(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (OperationalError, InterfaceError):
        # A server restart leaves this thread holding a dead connection: drop it and try once more.
        for connection in connections.all(initialized_only=True):
            connection.close()
        close_old_connections()
        return fn()
    finally:
        if _pooled():
            # Back to the process's pool at once: these threads share its bound with the site's requests.
            connections["default"].close()


def close_connections() -> None:
    """Close the database connections every worker thread holds (shutdown, tests)."""
    executor = _executor()
    workers = executor._max_workers
    barrier = threading.Barrier(workers)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=5)  # every worker takes one, so each thread closes its own

    for future in [executor.submit(close) for _ in range(workers)]:
        future.result(timeout=10)


async def run_db(fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), _call_with_reconnect, functools.partial(fn, *args, **kwargs))
