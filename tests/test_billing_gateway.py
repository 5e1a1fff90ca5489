"""Billing as the gateway drives it: cached-token discounts from the upstream's usage, BYOK exemption."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from django.utils import timezone

from accounts.access import bump_access_epoch
from accounts.encryption import encrypt_secret
from accounts.models import OpenRouterKey, Plan
from billing import quotas
from billing.models import DailyMessageCount, UsageEvent
from billing.rollups import audit_daily_message_counts, rollup_daily_message_counts
from billing.settlement import settle_pending_generations
from gateway.providers.openrouter import fetch_generation_stats
from tests.fake_upstream import FakeUpstream, running
from tests.support import make_user, wait_for_idle_server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

MODEL = "openai/gpt-5-mini"
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def fake_upstream(settings) -> Iterator[FakeUpstream]:
    with running() as fake:
        settings.OPENROUTER_BASE_URL = fake.base_url
        settings.OPENROUTER_API_KEY = "sk-or-server-key"
        settings.DEMO_PROVIDER_ENABLED = False
        yield fake


@pytest.fixture(autouse=True)
def _fresh(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()


def wait_for_events(count: int) -> list[UsageEvent]:
    deadline = time.monotonic() + 10
    while UsageEvent.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(UsageEvent.objects.order_by("id"))


def chat(live_server, key: str, **fields) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            f"{live_server.v1_base}/chat/completions",
            json={"model": MODEL, "messages": HELLO, **fields},
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
            stream=bool(fields.get("stream")),
        )


def test_cached_prompt_tokens_from_the_upstream_are_discounted(live_server, fake_upstream) -> None:
    caller = make_user("cached@example.com", plan="unlimited")
    # 20,000 prompt tokens of which 8,000 cached: 20,000 - 4,000 + 15,000 = 31,000 tokens → 2 messages.
    fake_upstream.usage = {
        "prompt_tokens": 20000,
        "completion_tokens": 15000,
        "total_tokens": 35000,
        "prompt_tokens_details": {"cached_tokens": 8000},
    }

    response = chat(live_server, caller.key)

    assert response.status_code == 200
    assert response.headers["x-writingmate-messages-counted"] == "2"
    [event] = wait_for_events(1)
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (20000, 15000, 8000)
    assert (event.counted_messages, event.tokens_estimated) == (2, False)

    # Without the cache the same request would have cost 3 messages (35,000 tokens).
    fake_upstream.usage = {**fake_upstream.usage, "prompt_tokens_details": {"cached_tokens": 0}}
    assert chat(live_server, caller.key).headers["x-writingmate-messages-counted"] == "3"
    wait_for_events(2)
    rollup_daily_message_counts()
    row = DailyMessageCount.objects.get()
    assert (row.count, row.input_tokens, row.output_tokens, row.cached_tokens) == (5, 40000, 30000, 8000)
    assert audit_daily_message_counts(include_today=True).ok


def test_a_streamed_request_is_billed_from_the_usage_chunk(live_server, fake_upstream) -> None:
    caller = make_user("streamed@example.com", plan="unlimited")
    fake_upstream.usage = {
        "prompt_tokens": 30000,
        "completion_tokens": 2000,
        "total_tokens": 32000,
        "prompt_tokens_details": {"cached_tokens": 30000},
    }

    response = chat(live_server, caller.key, stream=True)
    body = b"".join(response.iter_content(chunk_size=None))

    assert body.endswith(b"data: [DONE]\n\n")
    [event] = wait_for_events(1)
    # 30,000 - floor(30,000 * 0.5) = 15,000 effective input, + 2,000 output = 17,000 tokens → 2 messages.
    assert (event.prompt_tokens, event.cached_tokens, event.counted_messages) == (30000, 30000, 2)
    assert event.status == "succeeded" and not event.tokens_estimated


def test_byok_requests_pass_a_full_limit_and_are_recorded_as_byok(live_server, fake_upstream) -> None:
    plan = Plan.objects.create(
        slug="one-g", name="One", daily_message_limit=1, allowed_model_tiers=["basic", "premium"]
    )
    caller = make_user("byok-gw@example.com", plan=plan.slug)
    plain = make_user("plain-gw@example.com", plan=plan.slug)
    assert chat(live_server, plain.key).status_code == 200
    first = chat(live_server, caller.key)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-messages"] == "0"
    refused = chat(live_server, caller.key)
    assert refused.status_code == 429
    assert json.loads(refused.content)["error"]["code"] == "daily_limit_exceeded"

    OpenRouterKey.objects.create(user=caller.user, encrypted_key=encrypt_secret("sk-or-own-key"), last4="-key")
    bump_access_epoch()
    statuses = [chat(live_server, caller.key).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    events = wait_for_events(5)
    assert [e.byok for e in events if e.user_id == caller.user.pk] == [False, True, True, True]
    assert fake_upstream.requests_to("/chat/completions")[-1].headers["authorization"] == "Bearer sk-or-own-key"
    rollup_daily_message_counts()
    row = DailyMessageCount.objects.get(user_id=caller.user.pk)
    assert (row.count, row.byok_count, row.requests) == (1, 3, 4)
    # The other workspace on the same plan was never affected.
    assert DailyMessageCount.objects.get(user_id=plain.user.pk).count == 1


def test_an_abandoned_stream_is_estimated_then_settled_to_the_upstreams_figures(live_server, fake_upstream) -> None:
    caller = make_user("abandon@example.com", plan="unlimited")
    fake_upstream.chunk_delay_ms = 150
    fake_upstream.chunks = 20
    fake_upstream.usage = {"prompt_tokens": 40000, "completion_tokens": 900, "total_tokens": 40900}
    body = json.dumps({"model": MODEL, "messages": HELLO, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {caller.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)

    [event] = wait_for_events(1)
    assert (event.status, event.tokens_estimated, event.counted_messages) == ("client_disconnected", True, 1)
    assert event.generation_id.startswith("gen-")
    fake_upstream.wait_until_finished()
    wait_for_idle_server()  # SQLite's shared test database locks tables while the server thread writes
    UsageEvent.objects.update(created_at=timezone.now() - dt.timedelta(minutes=1))

    assert settle_pending_generations(fetch_stats=fetch_generation_stats) == {"settled": 1}

    settlement = UsageEvent.objects.get(kind=UsageEvent.Kind.SETTLEMENT)
    assert settlement.counted_messages == 2  # 40,900 upstream tokens → 3 messages, 1 counted so far
    assert settlement.prompt_tokens + event.prompt_tokens == 40000
    assert settlement.completion_tokens + event.completion_tokens == 900
    row = DailyMessageCount.objects.get()
    assert (row.count, row.requests, row.input_tokens, row.output_tokens) == (3, 1, 40000, 900)
    assert audit_daily_message_counts(include_today=True).ok
