"""A daily limit of 10 against 50 concurrent chat requests through the live gateway: exactly 10 pass.

Once with the gateway in this process, once with two uvicorn processes sharing PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from accounts.models import Plan
from billing import quotas
from billing.models import DailyMessageCount, UsageEvent
from billing.rollups import audit_daily_message_counts, rollup_daily_message_counts
from tests.support import make_user

TRANSACTIONAL = pytest.mark.django_db(transaction=True, serialized_rollback=True)
CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "Count me once."}]}


@pytest.fixture(autouse=True)
def _fresh(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DEMO_PROVIDER_ENABLED = True
    settings.DEMO_STREAM_DELAY_SECONDS = 0
    quotas.reset_quota_state()


def limited_user(email: str):
    plan = Plan.objects.create(slug="ten-e2e", name="Ten", daily_message_limit=10, allowed_model_tiers=["basic"])
    return make_user(email, plan=plan.slug)


async def fire(urls: list[str], key: str, count: int) -> list[tuple[int, dict, dict]]:
    """`count` concurrent chat requests spread over `urls`: (status, headers, JSON body) each."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> tuple[int, dict, dict]:
            async with session.post(f"{urls[i % len(urls)]}/chat/completions", json=CHAT, headers=headers) as response:
                return response.status, dict(response.headers), await response.json()

        return await asyncio.gather(*(one(i) for i in range(count)))


def wait_for_ledger(count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while UsageEvent.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)


def check_outcomes(outcomes: list[tuple[int, dict, dict]], workspace_id: int) -> None:
    statuses = [status for status, _, _ in outcomes]
    assert (statuses.count(200), statuses.count(429)) == (10, 40), statuses
    for status, headers, body in outcomes:
        lowered = {name.lower(): value for name, value in headers.items()}
        if status == 200:
            assert lowered["x-ratelimit-limit-messages"] == "10"
            assert 0 <= int(lowered["x-ratelimit-remaining-messages"]) < 10
            assert lowered["x-writingmate-messages-counted"] == "1"
            continue
        error = body["error"]
        assert error["code"] == "daily_limit_exceeded"
        assert "daily message limit of the Ten plan: 10 messages" in error["message"]
        assert "resets at" in error["message"]
        assert 0 < int(lowered["retry-after"]) <= 86400
        assert lowered["x-should-retry"] == "false"

    # Only the 10 admitted requests can write a ledger line (a 429 writes none, and every response is in):
    # once they are there, nothing more can arrive.
    wait_for_ledger(10)
    assert UsageEvent.objects.count() == 10
    rollup_daily_message_counts()
    assert DailyMessageCount.objects.get(workspace_id=workspace_id).count == 10
    assert audit_daily_message_counts(include_today=True).ok


@TRANSACTIONAL
def test_fifty_concurrent_chats_through_the_gateway_admit_exactly_ten(live_server) -> None:
    caller = limited_user("e2e-one@example.com")
    outcomes = asyncio.run(fire([live_server.v1_base], caller.key, 50))
    check_outcomes(outcomes, caller.user.current_workspace_id)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@TRANSACTIONAL
def test_two_gateway_processes_together_admit_exactly_ten_of_fifty(two_gateways) -> None:
    caller = limited_user("e2e-two@example.com")
    outcomes = asyncio.run(fire([server.v1_base for server in two_gateways], caller.key, 50))
    check_outcomes(outcomes, caller.user.current_workspace_id)
