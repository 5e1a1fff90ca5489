"""What every case of the fault and abuse suite checks: the exact error shape, and the ledger afterwards."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from django.conf import settings
from django.db import OperationalError, connection

from billing.models import UsageEvent
from billing.rollups import audit_daily_message_counts, rollup_daily_message_counts
from tests.support import wait_for_idle_server

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")
HELLO = [{"role": "user", "content": "Say hello"}]
MODEL = "openai/gpt-5-mini"
_LEAKS = ("Traceback", 'File "', "django.", "psycopg", "sqlite3", "sk-or-server-key")


def chat(**fields: object) -> dict:
    return {"model": MODEL, "messages": HELLO, **fields}


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def assert_openai_error(
    response: requests.Response,
    *,
    status: int,
    code: str | None,
    error_type: str | None = None,
    param: str | None = None,
    message_contains: str = "",
) -> dict:
    """The response is OpenAI's error body with exactly these fields, a request id and no internals."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    assert REQUEST_ID.match(response.headers.get("x-request-id", "")), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["code"] == code, error
    assert error["param"] == param, error
    if error_type is not None:
        assert error["type"] == error_type, error
    assert message_contains in error["message"], error
    for leak in _LEAKS:
        assert leak not in response.text, f"{leak!r} leaked: {response.text}"
    return error


def settle_ledger(expected_events: int | None = None, timeout: float = 5.0) -> list[UsageEvent]:
    """The ledger's request lines once the in-process server has finished every request it took (the
    ledger is written after the response); with `expected_events`, wait until exactly that many exist
    (for gateway processes, whose requests this process cannot see)."""
    wait_for_idle_server(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            events: list[UsageEvent] | None = list(
                UsageEvent.objects.filter(kind=UsageEvent.Kind.REQUEST).order_by("id")
            )
        except OperationalError:
            events = None  # SQLite's shared-cache test database refuses reads while the server's writer holds it
        if events is not None and (expected_events is None or len(events) >= expected_events):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    events = events or []
    if expected_events is not None:
        assert len(events) == expected_events, [(e.status, e.endpoint) for e in events]
    return events


def assert_nothing_recorded(fake_upstream) -> None:
    """Rejected before the upstream: no call went out and no ledger line was written (checked once the
    server has finished with every request, so nothing can still be on its way)."""
    wait_for_idle_server()
    assert fake_upstream.requests_to("/chat/completions") == []
    assert UsageEvent.objects.count() == 0


def assert_ledger_reconciles() -> None:
    """daily_message_count, recomputed by the roll-up, equals the ledger for every day, today included."""
    rollup_daily_message_counts()
    audit = audit_daily_message_counts(include_today=True)
    assert audit.ok, audit.mismatches


def sse_events(raw: bytes) -> list[object]:
    """The data payloads of an SSE body: JSON objects, or the string "[DONE]"."""
    events: list[object] = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                payload = line[len(b"data: ") :]
                events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """A gateway started as its own uvicorn process (PostgreSQL only: it must share the test database)."""

    def __init__(self, port: int, process: subprocess.Popen, stderr_path: Path) -> None:
        self.port = port
        self.process = process
        self.stderr_path = stderr_path
        self.url = f"http://127.0.0.1:{port}"
        self.api_base = f"{self.url}/api/openai/v1"
        self.v1_base = f"{self.url}/v1"
        # Checked when the process stops: no request may have died with an unhandled exception.
        self.expect_no_unhandled_errors = True

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def chat(self, key: str, **fields: object) -> requests.Response:
        return requests.post(f"{self.url}/v1/chat/completions", json=chat(**fields), headers=auth(key), timeout=30)

    def ready(self) -> requests.Response:
        return requests.get(f"{self.url}/readyz", timeout=10)


def gateway_env(*, database_url: str | None = None, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a gateway process on this test session's database and Redis."""
    db = connection.settings_dict
    default_database = (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    return {
        **os.environ,
        "DEBUG": "1",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": database_url or default_database,
        "REDIS_URL": redis_url if redis_url is not None else settings.REDIS_URL,
        "OPENROUTER_BASE_URL": settings.OPENROUTER_BASE_URL,
        "OPENROUTER_API_KEY": settings.OPENROUTER_API_KEY,
        "DEMO_PROVIDER_ENABLED": "0",
        "UPSTREAM_RETRY_BACKOFF_SECONDS": "0.01",
        **extra,
    }


@contextmanager
def running_gateway(
    env: dict[str, str], *, uvicorn_args: tuple[str, ...] = ("--log-level", "warning")
) -> Iterator[GatewayProcess]:
    """Start a gateway process, wait for /healthz, and stop it afterwards; fails if a request died unhandled.

    Its stderr goes to a file (a pipe nobody reads would stall a chatty process) and is shown when
    the process fails to start or a request died unhandled.
    """
    port = free_port()
    stderr_path = Path(tempfile.mkstemp(prefix="gateway-", suffix=".stderr")[1])
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "writingmate.asgi:application", "--port", str(port), *uvicorn_args],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
    gateway = GatewayProcess(port, process, stderr_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{gateway.url}/healthz", timeout=1)
            break
        except requests.ConnectionError:
            assert process.poll() is None, gateway.stderr()
            assert time.monotonic() < deadline, f"the gateway did not start:\n{gateway.stderr()}"
            time.sleep(0.1)  # polling for the port to open (a condition), not waiting a fixed time
    try:
        yield gateway
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr = gateway.stderr()
        stderr_path.unlink(missing_ok=True)
        with connection.cursor() as cursor:
            # The process's connections would keep PostgreSQL from dropping the test database.
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    unhandled = stderr.find("unhandled error")
    if gateway.expect_no_unhandled_errors:
        assert unhandled < 0, stderr[unhandled : unhandled + 6000]
