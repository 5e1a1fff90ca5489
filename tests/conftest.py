"""Shared fixtures: service detection, a live ASGI server, clean caches, users and keys."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import DatabaseError
from django.test.utils import modify_settings

from tests.fake_upstream import FakeUpstream
from writingmate.celery import app as celery_app
from writingmate.db import close_connections

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"

# Tests run Celery tasks in-process even when REDIS_URL points the broker at Redis.
celery_app.conf.task_always_eager = True
celery_app.conf.task_eager_propagates = True
# SQLite's in-memory test database locks whole tables between threads (the API's writer and the test
# reading the ledger); a file in WAL mode lets readers and the writer overlap, as in production.
if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = str(
        Path(tempfile.mkdtemp(prefix="writingmate-tests-")) / "test.sqlite3"
    )
# Hashing test passwords with PBKDF2 would cost a third of a second per user.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The in-process server's ledger lines land at once, so none lands after its test has flushed the
# database; the linger itself is tested in test_billing_ledger.py (and is on in subprocess gateways).
settings.BILLING_LEDGER_LINGER_SECONDS = 0


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def using_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def _empty_tables_by_deleting() -> None:
    """Transactional tests (every live-server test) empty the database after each test. PostgreSQL's
    TRUNCATE gives every table new files: ~0.1 s a test here, up to 0.9 s when the machine is busy;
    deleting the few rows a test wrote costs milliseconds. LOCK TABLE first waits for
    writers still in flight (the server's ledger, gateway processes), as TRUNCATE's own lock does, so
    none of their rows outlives the test. Every foreign key is DEFERRABLE INITIALLY DEFERRED and the
    flush runs in one transaction, so the order of the DELETEs does not matter."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or allow_cascade or not tables:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        names = [self.quote_name(table) for table in tables]
        return [f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE;", *(f"DELETE FROM {n};" for n in names)]

    DatabaseOperations.sql_flush = sql_flush


if using_postgres():
    _empty_tables_by_deleting()


def _restore_seed_data_in_bulk() -> None:
    """After each flush, serialized rollback puts the migrations' seed data (plans, the model catalogue)
    back. Django saves the rows one at a time, an UPDATE and then an INSERT each, some 300 queries a
    test; into a table the flush emptied, one INSERT per model puts back the same rows. A table that
    still has rows (the first transactional test after the migrations) and rows with many-to-many data
    or deferred fields are saved Django's way."""
    from itertools import groupby

    from django.core import serializers
    from django.db.backends.base.creation import BaseDatabaseCreation
    from django.db.transaction import atomic

    def deserialize_db_from_string(self, data: str) -> None:
        alias = self.connection.alias
        objects = list(serializers.deserialize("json", data, using=alias))
        with atomic(using=alias):
            with self.connection.constraint_checks_disabled():
                for model, rows in groupby(objects, key=lambda row: type(row.object)):
                    rows = list(rows)
                    manager = model._base_manager.using(alias)
                    if (
                        any(row.m2m_data or row.deferred_fields for row in rows)
                        or model._meta.parents
                        or manager.exists()
                    ):
                        for row in rows:
                            row.save()
                    else:
                        manager.bulk_create([row.object for row in rows])
            self.connection.check_constraints(table_names={type(row.object)._meta.db_table for row in objects})

    BaseDatabaseCreation.deserialize_db_from_string = deserialize_db_from_string


_restore_seed_data_in_bulk()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    postgres_reason = None if using_postgres() else "needs PostgreSQL: set DATABASE_URL=postgres://..."
    redis_url = settings.REDIS_URL
    redis_reason = None
    if not redis_url:
        redis_reason = "needs Redis: set REDIS_URL=redis://..."
    elif not _reachable(redis_url, 6379):
        redis_reason = f"Redis at {redis_url} is not reachable"
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker and marker.kwargs.get("transaction") and "serialized_rollback" not in marker.kwargs:
            # Transactional tests flush the database; this brings the migrations' seed data back.
            item.add_marker(pytest.mark.django_db(**marker.kwargs, serialized_rollback=True), append=False)
        for marker, reason in (("postgres", postgres_reason), ("redis", redis_reason)):
            if reason and item.get_closest_marker(marker):
                if REQUIRE_SERVICES:
                    item.add_marker(
                        pytest.mark.xfail(reason=f"REQUIRE_SERVICES=1 but {reason}", run=False, strict=True)
                    )
                else:
                    item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_SERVICES:
        problems = []
        if not using_postgres():
            problems.append("DATABASE_URL is not PostgreSQL")
        if not settings.REDIS_URL or not _reachable(settings.REDIS_URL, 6379):
            problems.append("Redis is not reachable at REDIS_URL")
        if problems:
            raise pytest.UsageError("REQUIRE_SERVICES=1: " + "; ".join(problems))


@pytest.fixture(autouse=True)
def django_db_serialized_rollback() -> None:
    """Transactional tests get the migrations' seed data (plans, catalogue) back after each flush."""


@pytest.fixture(autouse=True, scope="module")
def _close_api_db_connections(django_db_blocker) -> Iterator[None]:
    """The API's database threads keep connections; close them so the next module's flush is not blocked."""
    yield
    with django_db_blocker.unblock():
        close_connections()


@pytest.fixture(autouse=True)
def _no_rollups_after_writes(settings) -> None:
    """Roll-ups after ledger writes would run on the live server after a test's end; the tests that
    want them turn them on."""
    settings.BILLING_ROLLUP_AFTER_WRITES_SECONDS = 0


@pytest.fixture(autouse=True)
def _clean_caches() -> Iterator[None]:
    from tests.support import reset_process_state

    reset_process_state()
    yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, port: int) -> None:
        # pytest-django's autouse live-server helper enables and disables this around each test.
        self._live_server_modified_settings = modify_settings(ALLOWED_HOSTS={"append": "127.0.0.1"})
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_base = f"{self.url}/api/openai/v1"
        self.v1_base = f"{self.url}/v1"


@pytest.fixture(scope="session")
def _uvicorn_server(django_db_setup: None, django_db_blocker) -> Iterator[LiveServer]:
    """One uvicorn serving the real ASGI app in a thread of this process, for the whole session."""
    import uvicorn

    from writingmate.asgi import application

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    yield LiveServer(port)
    server.should_exit = True
    thread.join(timeout=10)
    with django_db_blocker.unblock():
        _close_database_sessions()


def _close_database_sessions() -> None:
    """The server's database threads keep connections open; PostgreSQL would refuse to drop the test DB."""
    from django.db import connection

    if using_postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def live_server(transactional_db: None, _uvicorn_server: LiveServer) -> Iterator[LiveServer]:
    """The real ASGI app under uvicorn on a loopback port; data the test writes is committed."""
    yield _uvicorn_server
    # A request's ledger line is written after its response: let it land before the database is
    # flushed, or it would turn up in the next test. Refusals the server counted are written now rather
    # than at its writer's next flush, up to REFUSAL_FLUSH_SECONDS (2 s) away: waiting for that timer
    # cost ~2 s in every test that made a refused request.
    from billing.refusals import flush_refusals_sync
    from writingmate.asgi import application

    deadline = time.monotonic() + 10
    while application.api_handler.in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        flush_refusals_sync()
    except DatabaseError:
        pass  # a test that broke the database has failed already; it is flushed next in any case


@pytest.fixture
def fake_upstream(settings) -> Iterator[FakeUpstream]:
    """A fresh fake OpenRouter (and transcription upstream) on loopback, wired into the settings."""
    fake = FakeUpstream().start()
    settings.OPENROUTER_BASE_URL = fake.base_url
    settings.OPENROUTER_API_KEY = "sk-or-server-key"
    settings.DEMO_PROVIDER_ENABLED = False
    settings.TRANSCRIPTION_BASE_URL = fake.base_url
    settings.TRANSCRIPTION_API_KEY = "sk-transcribe-key"
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def gateway_process_env() -> dict[str, str]:
    """What two_gateways' processes add to tests.fault_support.gateway_env(): the demo provider here; a
    test module that wants another upstream (the fake one) overrides this fixture."""
    return {
        "DEMO_PROVIDER_ENABLED": "1",
        "DEMO_STREAM_DELAY_SECONDS": "0",
        "OPENROUTER_API_KEY": "",
        "LOG_LEVEL": "WARNING",
        "CELERY_TASK_ALWAYS_EAGER": "1",
    }


@pytest.fixture
def two_gateways(transactional_db: None, gateway_process_env: dict[str, str]) -> Iterator[list]:
    """Two uvicorn processes (tests.fault_support.running_gateway: stderr kept, unhandled errors fail the
    test) on free ports, sharing this test's PostgreSQL database and Redis."""
    from tests.fault_support import gateway_env, running_gateway

    env = gateway_env(**gateway_process_env)
    with running_gateway(env) as first, running_gateway(env) as second:
        yield [first, second]
