"""Billing as the gateway drives it: cached-token discounts from the upstream's usage, BYOK exemption."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from django.db import connections

from accounts.access import bump_access_epoch
from accounts.encryption import encrypt_secret
from accounts.models import OpenRouterKey, Plan
from billing import quotas
from billing.models import DailyMessageCount, UsageEvent
from billing.services import audit_daily_message_counts, rollup_daily_message_counts
from tests.fake_upstream import FakeUpstream, running
from tests.support import make_user
from writingmate import db as api_db

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


@pytest.fixture(autouse=True, scope="module")
def _close_api_db_connections() -> Iterator[None]:
    yield
    executor = api_db._executor()
    barrier = threading.Barrier(executor._max_workers)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout=5)

    for future in [executor.submit(close) for _ in range(executor._max_workers)]:
        future.result(timeout=10)


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
