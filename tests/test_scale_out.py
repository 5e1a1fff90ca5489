"""Scale-out: two gateway processes on different ports, one PostgreSQL and one Redis, behave as one system.

Also: a gateway asked to stop lets an open stream finish before it exits (graceful shutdown).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounts.models import Plan
from apikeys.keys import generate_key
from apikeys.models import DeveloperKey
from apikeys.services import revoke_api_key, set_key_limits
from billing.models import DailyMessageCount
from tests.fault_support import (
    assert_ledger_reconciles,
    assert_openai_error,
    chat,
    gateway_env,
    running_gateway,
    settle_ledger,
)
from tests.support import make_user

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LIMIT = 6
KEY_BUDGET = 5


@pytest.fixture
def gateway_process_env(fake_upstream) -> dict[str, str]:
    """conftest's two_gateways, on the fake upstream (gateway_env's default) with a small invalid-key limit."""
    return {"API_INVALID_KEY_LIMIT_PER_MINUTE": "3"}


def test_keys_revocations_limits_and_usage_are_shared_by_two_gateway_processes(two_gateways, fake_upstream):
    first, second = two_gateways
    Plan.objects.create(slug="shared6", name="Shared 6", daily_message_limit=LIMIT, allowed_model_tiers=["basic"])
    caller = make_user("scale@example.com", plan="shared6")
    other = make_user("scale-other@example.com", plan="unlimited")

    # A key created once works on both.
    assert first.chat(other.key).status_code == second.chat(other.key).status_code == 200

    # A revocation made anywhere is seen by both on their next request, although both had it cached.
    revoke_api_key(key=DeveloperKey.objects.get(user=other.user))
    for gateway in (first, second):
        assert_openai_error(gateway.chat(other.key), status=401, code="invalid_api_key")

    # One daily limit across both: 16 concurrent requests, alternating processes, admit exactly LIMIT.
    fake_upstream.latency_ms = 300
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda n: (first, second)[n % 2].chat(caller.key), range(16)))
    assert sorted(r.status_code for r in responses) == [200] * LIMIT + [429] * (16 - LIMIT)

    # Usage from both processes lands in one ledger that reconciles.
    events = settle_ledger(2 + LIMIT, timeout=10)
    assert sum(e.counted_messages for e in events if e.workspace_id == caller.workspace.pk) == LIMIT
    assert_ledger_reconciles()
    assert DailyMessageCount.objects.get(workspace_id=caller.workspace.pk).count == LIMIT


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_a_keys_own_daily_budget_is_exact_across_two_gateway_processes(backend, fake_upstream):
    caller = make_user("key-scale@example.com", plan="unlimited")  # only the key's own budget applies
    key = DeveloperKey.objects.get(user=caller.user)
    set_key_limits(key=key, daily_message_limit=KEY_BUDGET, allowed_models=[])
    # Without Redis both processes enforce it in PostgreSQL, under the key's advisory lock.
    env = gateway_env(**({"REDIS_URL": ""} if backend == "database" else {}))
    fake_upstream.latency_ms = 300
    with running_gateway(env) as first, running_gateway(env) as second:
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(lambda n: (first, second)[n % 2].chat(caller.key), range(16)))

    assert sorted(r.status_code for r in responses) == [200] * KEY_BUDGET + [429] * (16 - KEY_BUDGET)
    for response in responses:
        if response.status_code == 429:
            assert_openai_error(
                response,
                status=429,
                code="key_daily_limit_reached",
                error_type="insufficient_quota",
                message_contains=f"daily message budget of the developer key {key.prefix}…",
            )
    events = settle_ledger(KEY_BUDGET, timeout=10)
    assert sum(e.counted_messages for e in events) == KEY_BUDGET
    assert_ledger_reconciles()


def test_invalid_key_counts_are_shared_by_the_processes(two_gateways):
    first, second = two_gateways
    statuses = [gateway.chat(generate_key()).status_code for gateway in (first, second, first, second)]
    blocked = second.chat(generate_key())

    assert statuses == [401, 401, 401, 401]  # the fourth failure passed the limit of 3, counted across both
    assert_openai_error(blocked, status=429, code="too_many_invalid_keys")


def test_a_stopping_gateway_lets_an_open_stream_finish(fake_upstream, transactional_db):
    caller = make_user("graceful@example.com")
    fake_upstream.chunks = 15
    fake_upstream.chunk_delay_ms = 100  # about 1.5 s of stream
    env = gateway_env()
    body = json.dumps(chat(stream=True)).encode()
    with running_gateway(env, uvicorn_args=("--log-level", "warning", "--timeout-graceful-shutdown", "10")) as gateway:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {caller.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            received = b""
            while b"data: " not in received:
                received += sock.recv(65536)
            gateway.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while b"data: [DONE]" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            stop_deadline = time.monotonic() + 10
            while gateway.process.poll() is None and time.monotonic() < stop_deadline:
                time.sleep(0.05)
            exit_code = gateway.process.poll()
        refused = True
        try:
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            refused = False
        except OSError:
            pass

    payload = received.split(b"\r\n\r\n", 1)[1]
    assert b"data: [DONE]" in payload, payload[-300:]
    assert time.monotonic() - started < 10
    assert exit_code is not None  # it did exit once the stream was done
    assert refused
    [event] = settle_ledger(1, timeout=10)
    assert event.status == "succeeded"
