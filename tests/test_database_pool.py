"""Bounded database connections (issue #10 point 4): one psycopg pool per process, shared by the site and
the API's database threads, holds under concurrent load of both.

A gateway process with a pool of 3 serves signed-in site pages and /v1 chat completions from many
threads at once while a sampler counts its connections in pg_stat_activity (by application_name).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import connection
from django.test import Client

from tests.fault_support import gateway_env, running_gateway, settle_ledger
from tests.support import make_user

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POOL = 3
APPLICATION = "wm-pool-test"


def test_settings_bound_postgresql_with_a_pool_and_no_persistent_connections():
    database = settings.DATABASES["default"]
    assert database["CONN_MAX_AGE"] == 0
    assert database["OPTIONS"]["pool"]["max_size"] == settings.DATABASE_POOL_MAX_SIZE


def _database_url() -> str:
    db = connection.settings_dict
    return (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}?application_name={APPLICATION}"
    )


class ConnectionSampler:
    """Counts the gateway's connections every 10 ms on a connection of its own; keeps the peak."""

    def __init__(self) -> None:
        db = connection.settings_dict
        self.conninfo = psycopg.conninfo.make_conninfo(
            host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
        )
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = %s",
                    (APPLICATION,),
                ).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                time.sleep(0.01)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _signed_in(user) -> requests.Session:
    """A browser session for `user`, made here and stored in the shared database like a sign-in's."""
    client = Client()
    client.force_login(user)
    session = requests.Session()
    session.cookies.set(settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    return session


def test_site_pages_and_v1_together_stay_within_the_pool(fake_upstream):
    site_users = [make_user(f"pool-site-{n}@example.com") for n in range(4)]
    api_users = [make_user(f"pool-api-{n}@example.com") for n in range(6)]
    env = gateway_env(
        database_url=_database_url(),
        DATABASE_POOL_MIN_SIZE="1",
        DATABASE_POOL_MAX_SIZE=str(POOL),
        BILLING_LEDGER_LINGER_SECONDS="0",  # and writes its own ledger batch
    )
    with running_gateway(env) as gateway:
        sessions = [_signed_in(user.user) for user in site_users]

        def browse(n: int) -> int:
            page = ("/settings/", "/settings/api-keys/", "/settings/usage/")[n % 3]
            return sessions[n % len(sessions)].get(f"{gateway.url}{page}", timeout=60).status_code

        def call_api(n: int) -> int:
            return gateway.chat(api_users[n % len(api_users)].key).status_code

        with ConnectionSampler() as sampler, ThreadPoolExecutor(max_workers=24) as pool:
            site = [pool.submit(browse, n) for n in range(90)]
            api = [pool.submit(call_api, n) for n in range(90)]
            statuses = [f.result() for f in site], [f.result() for f in api]

        assert statuses == ([200] * 90, [200] * 90)
        settle_ledger(90, timeout=20)

    assert sampler.samples > 10
    assert 1 <= sampler.peak <= POOL, f"the gateway held {sampler.peak} connections with a pool of {POOL}"


def test_a_restart_that_breaks_every_idle_pooled_connection_costs_the_next_request_no_wait():
    """psycopg_pool alone meets broken connections one at a time, pausing 1, 2, 4 s between them."""
    pool = connection.pool
    taken = [pool.getconn() for _ in range(5)]
    for pooled in taken:
        pool.putconn(pooled)  # five idle connections, as after a busy minute
    with connection.cursor() as cursor:  # as a restart would: every other session of this database ends
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    started = time.monotonic()
    fresh = pool.getconn()
    try:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.putconn(fresh)
    assert time.monotonic() - started < 1.5
