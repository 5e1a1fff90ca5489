"""Abandoned streams: recorded with an estimate, then settled to OpenRouter's generation stats."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.utils import timezone

from accounts.encryption import encrypt_secret
from accounts.models import OpenRouterKey, Plan
from billing import quotas, settlement
from billing.ledger import UsageRecord, record_usage
from billing.models import DailyMessageCount, UsageEvent
from billing.rollups import audit_daily_message_counts, rollup_daily_message_counts
from billing.settlement import GenerationNotReady
from gateway.providers.openrouter import fetch_generation_stats
from gateway.tasks import settle_generation_task, settle_pending_generations_task
from tests.fake_upstream import FakeUpstream, running
from tests.support import make_user


@pytest.fixture
def fake_upstream(settings) -> Iterator[FakeUpstream]:
    """The fake OpenRouter on loopback, answering GET /generation."""
    with running() as fake:
        settings.OPENROUTER_BASE_URL = fake.base_url
        settings.OPENROUTER_API_KEY = "sk-or-server-key"
        yield fake


@pytest.fixture(autouse=True)
def _fast_users(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    quotas.reset_quota_state()


def abandoned(user, request_id: str, generation_id: str, *, byok: bool = False, completion: int = 40) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        workspace_id=user.current_workspace_id,
        user_id=user.pk,
        key_id=None,
        model="openai/gpt-5-mini",
        endpoint="chat.completions",
        prompt_tokens=1000,
        completion_tokens=completion,
        cached_tokens=0,
        byok=byok,
        status="client_disconnected",
        latency_ms=900,
        generation_id=generation_id,
        tokens_estimated=True,
    )


def settle_generation(*, request_id: str) -> settlement.Settlement:
    return settlement.settle_generation(request_id=request_id, fetch_stats=fetch_generation_stats)


def settle_pending_generations() -> dict[str, int]:
    return settlement.settle_pending_generations(fetch_stats=fetch_generation_stats)


def age(request_id: str, seconds: int = 60) -> None:
    UsageEvent.objects.filter(request_id=request_id).update(created_at=timezone.now() - dt.timedelta(seconds=seconds))


@pytest.mark.django_db
def test_an_abandoned_stream_is_settled_to_the_upstreams_figures_once(fake_upstream) -> None:
    user = make_user("settle@example.com").user
    record_usage(usage=abandoned(user, "req_gone", "gen-abc"))
    rollup_daily_message_counts()
    fake_upstream.generation_stats["gen-abc"] = {
        "native_tokens_prompt": 30000,
        "native_tokens_completion": 9000,
        "native_tokens_cached": 12000,
    }

    first = settle_generation(request_id="req_gone")
    second = settle_generation(request_id="req_gone")

    # Upstream: 30,000 - 6,000 cached discount + 9,000 = 33,000 tokens → 3 messages, 2 more than estimated.
    assert (first.outcome, first.delta_messages) == ("settled", 2)
    assert second.outcome == "already_settled"
    settlement = UsageEvent.objects.get(kind=UsageEvent.Kind.SETTLEMENT)
    assert (settlement.prompt_tokens, settlement.completion_tokens, settlement.cached_tokens) == (29000, 8960, 12000)
    assert settlement.counted_messages == 2
    original = UsageEvent.objects.get(kind=UsageEvent.Kind.REQUEST)
    assert (original.prompt_tokens, original.counted_messages, original.tokens_estimated) == (1000, 1, True)
    row = DailyMessageCount.objects.get()
    assert (row.count, row.requests, row.input_tokens, row.output_tokens, row.cached_tokens) == (
        3,
        1,
        30000,
        9000,
        12000,
    )
    assert audit_daily_message_counts(include_today=True).ok
    generation_calls = fake_upstream.requests_to("/generation")
    assert len(generation_calls) == 1
    assert generation_calls[0].query == {"id": "gen-abc"}
    assert generation_calls[0].headers["authorization"] == "Bearer sk-or-server-key"


@pytest.mark.django_db
def test_a_byok_generation_is_looked_up_with_the_users_own_key(fake_upstream) -> None:
    user = make_user("own-key@example.com").user
    OpenRouterKey.objects.create(user=user, encrypted_key=encrypt_secret("sk-or-users-own"), last4="-own")
    record_usage(usage=abandoned(user, "req_byok", "gen-byok", byok=True))
    fake_upstream.generation_stats["gen-byok"] = {"native_tokens_prompt": 1000, "native_tokens_completion": 100}

    assert settle_generation(request_id="req_byok").outcome == "settled"

    assert fake_upstream.requests_to("/generation")[0].headers["authorization"] == "Bearer sk-or-users-own"
    assert UsageEvent.objects.get(kind=UsageEvent.Kind.SETTLEMENT).byok is True


@pytest.mark.django_db
def test_a_generation_openrouter_does_not_know_yet_is_retried_later(fake_upstream) -> None:
    user = make_user("early@example.com").user
    record_usage(usage=abandoned(user, "req_early", "gen-unknown"))

    with pytest.raises(GenerationNotReady):
        settle_generation(request_id="req_early")
    assert not UsageEvent.objects.filter(kind=UsageEvent.Kind.SETTLEMENT).exists()


@pytest.mark.django_db
def test_the_sweep_settles_every_pending_stream_and_skips_the_rest(fake_upstream) -> None:
    user = make_user("sweep@example.com").user
    record_usage(usage=abandoned(user, "req_1", "gen-1"))
    record_usage(usage=abandoned(user, "req_2", "gen-2", completion=0))  # counted 0 so far
    record_usage(usage=abandoned(user, "req_3", "gen-missing"))
    record_usage(usage=abandoned(user, "req_new", "gen-new"))  # too recent: OpenRouter may not have it yet
    for request_id in ("req_1", "req_2", "req_3"):
        age(request_id)
    fake_upstream.generation_stats["gen-1"] = {"native_tokens_prompt": 1000, "native_tokens_completion": 40}
    fake_upstream.generation_stats["gen-2"] = {"native_tokens_prompt": 1000, "native_tokens_completion": 20000}

    outcomes = settle_pending_generations_task.delay().get()

    assert outcomes == {"settled": 2, "not_ready": 1}
    deltas = dict(
        UsageEvent.objects.filter(kind=UsageEvent.Kind.SETTLEMENT).values_list("request_id", "counted_messages")
    )
    assert deltas == {"req_1": 0, "req_2": 2}
    assert settle_pending_generations() == {"not_ready": 1}


@pytest.mark.django_db
def test_the_settle_task_settles_one_request(fake_upstream) -> None:
    user = make_user("task@example.com").user
    record_usage(usage=abandoned(user, "req_task", "gen-task"))
    fake_upstream.generation_stats["gen-task"] = {"native_tokens_prompt": 10, "native_tokens_completion": 5}
    assert settle_generation_task.delay("req_task").get() == "settled"
    assert settle_generation(request_id="req_unknown").outcome == "not_found"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_settlement_corrects_the_quota_counter(fake_upstream) -> None:
    import asyncio

    from accounts.access import bump_access_epoch, load_user_access
    from billing.quotas import current_budget, reserve_message
    from billing.recording import finish_request
    from writingmate.redis_connection import close_async_redis

    plan = Plan.objects.create(slug="five-s", name="Five", daily_message_limit=5)
    user = make_user("counter@example.com", plan=plan.slug).user
    bump_access_epoch()
    access = load_user_access(user_id=user.pk).workspaces[user.current_workspace_id]

    async def finish_abandoned():
        reservation = await reserve_message(request_id="req_q", workspace=access, user_id=user.pk, byok=False)
        await finish_request(reservation=reservation, usage=abandoned(user, "req_q", "gen-q"))
        budget = await current_budget(workspace=access, user_id=user.pk)
        await close_async_redis()
        return budget

    async def budget_now():
        budget = await current_budget(workspace=access, user_id=user.pk)
        await close_async_redis()
        return budget

    assert asyncio.run(finish_abandoned()).remaining == 4
    fake_upstream.generation_stats["gen-q"] = {"native_tokens_prompt": 40000, "native_tokens_completion": 100}
    settle_generation(request_id="req_q")
    assert asyncio.run(budget_now()).remaining == 2


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_settlement_corrects_the_keys_own_budget_counter(fake_upstream) -> None:
    import asyncio
    import dataclasses

    from accounts.access import load_user_access
    from apikeys.models import DeveloperKey
    from apikeys.services import limits_version, set_key_limits
    from billing.quotas import KeyBudget, current_budget, reserve_message
    from billing.recording import finish_request
    from writingmate.redis_connection import close_async_redis

    user = make_user("key-counter@example.com").user  # unlimited plan: the key's budget is the only limit
    key = DeveloperKey.objects.get(user=user)
    set_key_limits(key=key, daily_message_limit=5, allowed_models=[])
    budget = KeyBudget(key.pk, key.prefix, 5, limits_version(key))
    access = load_user_access(user_id=user.pk).workspaces[user.current_workspace_id]
    line = dataclasses.replace(abandoned(user, "req_k", "gen-k"), key_id=key.pk)

    async def finish_abandoned():
        reservation = await reserve_message(
            request_id="req_k", workspace=access, user_id=user.pk, byok=False, key=budget
        )
        await finish_request(reservation=reservation, usage=line)
        return await budget_now()

    async def budget_now():
        remaining = (await current_budget(workspace=access, user_id=user.pk, key=budget)).remaining
        await close_async_redis()
        return remaining

    assert asyncio.run(finish_abandoned()) == 4
    fake_upstream.generation_stats["gen-k"] = {"native_tokens_prompt": 40000, "native_tokens_completion": 100}
    settle_generation(request_id="req_k")
    assert asyncio.run(budget_now()) == 2
