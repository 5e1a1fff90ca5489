"""Fault suite: Redis stopped and PostgreSQL restarted while a gateway process serves traffic.

The gateway runs as its own uvicorn process and reaches PostgreSQL and Redis through TCP proxies the
test can cut: a cut drops every open connection and refuses new ones, which is what a stopped or
restarting server looks like to its clients. The shared services themselves are never touched.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Plan
from billing.ledger import LEDGER_SPOOL_KEY
from billing.tasks import rollup_daily_message_counts_task
from tests.fault_support import (
    GatewayProcess,
    assert_ledger_reconciles,
    assert_openai_error,
    gateway_env,
    running_gateway,
    settle_ledger,
)
from tests.support import make_user, wait_until
from writingmate.redis_connection import sync_redis

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class CuttableProxy:
    """A loopback TCP proxy to `target_port` whose traffic can be cut and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _pipe(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, destination)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            sockets = list(self._open)
        self._drop(*sockets)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxies() -> Iterator[tuple[CuttableProxy, CuttableProxy]]:
    database = CuttableProxy(int(connection.settings_dict.get("PORT") or 5432))
    redis = CuttableProxy(urlparse(settings.REDIS_URL).port or 6379)
    yield database, redis
    database.close()
    redis.close()


@pytest.fixture
def gateway(proxies, fake_upstream, transactional_db) -> Iterator[GatewayProcess]:
    database, redis = proxies
    db = connection.settings_dict
    env = gateway_env(
        database_url=f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@127.0.0.1:{database.port}/{db['NAME']}",
        redis_url=f"redis://127.0.0.1:{redis.port}{urlparse(settings.REDIS_URL).path or '/0'}",
        BILLING_REDIS_RETRY_SECONDS="0.5",
        BILLING_QUOTA_RECONCILE_SECONDS="1",
        READINESS_TIMEOUT_SECONDS="1",
    )
    with running_gateway(env) as gateway:
        yield gateway


def test_redis_stopped_during_traffic_falls_back_without_losing_a_message_or_a_limit(gateway, proxies):
    redis = proxies[1]
    Plan.objects.create(slug="edge8", name="Edge 8", daily_message_limit=8, allowed_model_tiers=["basic"])
    caller = make_user("redis-outage@example.com", plan="edge8")

    before = [gateway.chat(caller.key) for _ in range(3)]
    redis.cut()
    during = [gateway.chat(caller.key) for _ in range(3)]
    ready_during = gateway.ready()
    redis.restore()
    time.sleep(1.5)  # past BILLING_REDIS_RETRY_SECONDS: the gateway tries Redis again
    after = [gateway.chat(caller.key) for _ in range(5)]
    ready_after = gateway.ready()

    assert [r.status_code for r in before + during] == [200] * 6
    assert ready_during.status_code == 503 and ready_during.json()["checks"] == {
        "database": "ok",
        "redis": "unavailable",
    }
    assert ready_after.status_code == 200
    # Two more fit under the limit of 8; the Redis counters that missed the outage must not let more in.
    assert [r.status_code for r in after] == [200, 200, 429, 429, 429]
    for response in after[2:]:
        assert_openai_error(response, status=429, code="daily_limit_exceeded")
    events = settle_ledger(8, timeout=10)
    assert {e.status for e in events} == {"succeeded"}
    assert_ledger_reconciles()


def test_postgresql_restarting_during_traffic_loses_no_usage_event(gateway, proxies):
    database = proxies[0]
    caller = make_user("pg-restart@example.com", plan="unlimited")
    assert gateway.chat(caller.key).status_code == 200  # the key's grant is now cached in Redis

    database.cut()
    during = [gateway.chat(caller.key) for _ in range(4)]
    ready_during = gateway.ready()
    time.sleep(1)
    database.restore()
    after = [gateway.chat(caller.key) for _ in range(3)]
    ready_after = gateway.ready()

    # Grants and quotas live in Redis, and the ledger write waits for the database in the background:
    # clients notice nothing.
    assert [r.status_code for r in during + after] == [200] * 7
    assert ready_during.status_code == 503 and ready_during.json()["checks"]["database"] == "unavailable"
    assert ready_after.status_code == 200
    served = 1 + sum(r.status_code == 200 for r in during + after)
    events = settle_ledger(served, timeout=30)
    assert len({e.request_id for e in events}) == served
    assert_ledger_reconciles()


@pytest.fixture
def gateway_with_short_ledger_retry(proxies, fake_upstream, transactional_db) -> Iterator[GatewayProcess]:
    database, redis = proxies
    db = connection.settings_dict
    env = gateway_env(
        database_url=f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@127.0.0.1:{database.port}/{db['NAME']}",
        redis_url=f"redis://127.0.0.1:{redis.port}{urlparse(settings.REDIS_URL).path or '/0'}",
        BILLING_LEDGER_RETRY_SECONDS="0.5",
        DATABASE_POOL_TIMEOUT_SECONDS="1",
        READINESS_TIMEOUT_SECONDS="1",
    )
    with running_gateway(env) as gateway:
        yield gateway


def test_a_long_database_outage_spools_usage_to_redis_and_the_rollup_replays_it(
    gateway_with_short_ledger_retry, proxies
):
    gateway, database = gateway_with_short_ledger_retry, proxies[0]
    caller = make_user("pg-long-outage@example.com", plan="unlimited")
    assert gateway.chat(caller.key).status_code == 200
    settle_ledger(1)

    database.cut()
    during = [gateway.chat(caller.key) for _ in range(3)]
    # Past BILLING_LEDGER_RETRY_SECONDS the gateway spools the three lines to Redis: wait for exactly that.
    # (Each write attempt first waits DATABASE_POOL_TIMEOUT_SECONDS for a connection the dead database
    # cannot give, so the spool comes after that, not after the retry window alone: about 20 s at 10 s.)
    wait_until(lambda: sync_redis().llen(LEDGER_SPOOL_KEY) == 3, timeout=60, message="nothing was spooled")
    database.restore()
    rollup_daily_message_counts_task()

    assert [r.status_code for r in during] == [200] * 3
    events = settle_ledger(4)
    assert len({e.request_id for e in events}) == 4
    assert_ledger_reconciles()


def test_redis_and_the_database_down_together_fail_cleanly_and_recover(gateway, proxies):
    database, redis = proxies
    caller = make_user("both-down@example.com", plan="unlimited")
    assert gateway.chat(caller.key).status_code == 200

    database.cut()
    redis.cut()
    during = gateway.chat(caller.key)
    ready = gateway.ready()
    database.restore()
    redis.restore()
    wait_until(lambda: gateway.ready().status_code == 200, timeout=15, message="the gateway never recovered")
    after = gateway.chat(caller.key)

    assert ready.status_code == 503 and ready.json()["checks"] == {"database": "unavailable", "redis": "unavailable"}
    assert after.status_code == 200
    events = settle_ledger(2, timeout=10)
    assert {e.status for e in events} == {"succeeded"}
    assert_ledger_reconciles()
    # Neither the key nor the limits can be checked: the request must fail closed with a handled 503
    # that the SDKs retry, not an unhandled exception.
    assert_openai_error(during, status=503, code=during.json()["error"]["code"], error_type="server_error")
