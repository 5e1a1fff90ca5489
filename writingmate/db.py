"""Database work from async code: a small dedicated thread pool, and one reconnect on a dropped connection."""

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


@functools.cache
def _executor() -> ThreadPoolExecutor:
    is_sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
    # SQLite has one writer at a time; more threads would only wait on its lock.
    return ThreadPoolExecutor(max_workers=1 if is_sqlite else 8, thread_name_prefix="api-db")


def _call_with_reconnect(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (OperationalError, InterfaceError):
        # A server restart leaves this thread holding a dead connection: drop it and try once more.
        for connection in connections.all(initialized_only=True):
            connection.close()
        close_old_connections()
        return fn()


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
