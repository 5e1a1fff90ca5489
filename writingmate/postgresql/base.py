"""Django's PostgreSQL backend, with one change to its connection pool: a broken connection found when
one is taken from the pool makes the pool check all its idle connections at once.

After a database restart every idle pooled connection is broken. psycopg_pool meets them one at a
time as they are taken, pausing 1, 2, 4, 8 s between them, so with a few of them the next request
waits past DATABASE_POOL_TIMEOUT_SECONDS and fails, and so do the ones behind it. Sweeping on the
first failure replaces them all with new connections in one go (settings.DATABASES ENGINE).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.db.backends.postgresql import base
from psycopg import Connection
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)


def _check_or_sweep(pool: ConnectionPool, connection: Connection[Any]) -> None:
    try:
        ConnectionPool.check_connection(connection)
    except Exception:
        logger.warning("a pooled database connection was broken; checking every idle one")
        pool.check()  # discards the broken ones and opens new ones in the background
        raise


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        pool = super().pool  # type: ignore[misc]  # Django 5.1+ has it; django-stubs 5.2.9 does not declare it
        # Django passes psycopg_pool's plain check when CONN_HEALTH_CHECKS is on; wrap it once.
        if pool is not None and getattr(pool, "_check", None) is ConnectionPool.check_connection:
            pool._check = functools.partial(_check_or_sweep, pool)
        return pool
