"""Limits that hold exactly under concurrency: Redis fast path, database fallback, BYOK, AppSumo caps."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis.asyncio
from django.conf import settings as django_settings
from django.utils import timezone

from accounts.access import WorkspaceAccess, bump_access_epoch, load_user_access
from accounts.models import AppSumoLicence, AppSumoTier, Plan
from apikeys.models import DeveloperKey
from billing import quotas
from billing.ledger import UsageRecord, record_usage
from billing.models import DailyMessageCount, QuotaReservation, UsageEvent
from billing.quotas import QuotaExceeded, Reservation, current_budget, reserve_message
from billing.quotas import breaker as quota_breaker
from billing.quotas import counters as quota_counters
from billing.quotas import reserve as quota_reserve
from billing.recording import finish_request
from billing.rollups import rollup_daily_message_counts
from tests.support import make_user, wait_until
from tests.support import run_async as run
from writingmate.db import run_db
from writingmate.redis_connection import sync_redis

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _fresh_quota_state(settings) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test users
    quotas.reset_quota_state()
    yield
    quotas.reset_quota_state()


@pytest.fixture(params=["database", "redis-down", pytest.param("redis", marks=pytest.mark.redis)])
def quota_backend(request: pytest.FixtureRequest, settings) -> str:
    """Each way limits are enforced: no Redis configured, Redis configured but down, Redis up."""
    if request.param == "database":
        settings.REDIS_URL = ""
    elif request.param == "redis-down":
        settings.REDIS_URL = UNREACHABLE_REDIS
        settings.BILLING_REDIS_RETRY_SECONDS = 60
    return request.param


@pytest.fixture(params=["redis-down", pytest.param("redis", marks=pytest.mark.redis)])
def fallback_or_redis(request: pytest.FixtureRequest, settings) -> str:
    """Redis, and the database path it falls back to (the same path as no Redis at all)."""
    if request.param == "redis-down":
        settings.REDIS_URL = UNREACHABLE_REDIS
        settings.BILLING_REDIS_RETRY_SECONDS = 60
    return request.param


def plan(slug: str, *, daily: int | None, member_daily: int | None = None) -> Plan:
    return Plan.objects.create(
        slug=slug, name=slug.title(), daily_message_limit=daily, member_daily_message_limit=member_daily
    )


def access_of(user, workspace_id: int | None = None) -> WorkspaceAccess:
    bump_access_epoch()
    user_access = load_user_access(user_id=user.pk)
    return user_access.workspaces[workspace_id or user_access.current_workspace_id]


def usage(
    reservation: Reservation, *, prompt: int = 10, completion: int = 5, key_id: int | None = None, **kw
) -> UsageRecord:
    return UsageRecord(
        request_id=reservation.request_id,
        workspace_id=reservation.workspace_id,
        user_id=reservation.user_id,
        key_id=key_id,
        model="openai/gpt-5-mini",
        endpoint="chat.completions",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=kw.pop("cached", 0),
        byok=kw.pop("byok", reservation.byok),
        status=kw.pop("status", "succeeded"),
        latency_ms=12,
        **kw,
    )


async def reserve_many(access: WorkspaceAccess, user_id: int, count: int, *, prefix: str = "req", byok: bool = False):
    async def one(i: int):
        try:
            return await reserve_message(request_id=f"{prefix}_{i}", workspace=access, user_id=user_id, byok=byok)
        except QuotaExceeded as exc:
            return exc

    return await asyncio.gather(*(one(i) for i in range(count)))


async def reserve_and_finish_all(
    access: WorkspaceAccess, user_id: int, count: int, *, prefix: str = "req", **usage_kw
) -> list:
    outcomes = await reserve_many(access, user_id, count, prefix=prefix)
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    await asyncio.gather(*(finish_request(reservation=r, usage=usage(r, **usage_kw)) for r in admitted))
    return outcomes


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_fifty_concurrent_requests_against_a_limit_of_ten_admit_exactly_ten(quota_backend: str) -> None:
    owner = make_user("ten@example.com", plan=plan("ten", daily=10).slug).user
    other = make_user("other@example.com", plan="ten").user
    access = access_of(owner)

    outcomes = run(reserve_and_finish_all(access, owner.pk, 50))

    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert (len(admitted), len(refused)) == (10, 40)
    assert {r.code for r in refused} == {"daily_limit_exceeded"}
    rollup_daily_message_counts()
    row = DailyMessageCount.objects.get(workspace_id=access.workspace_id)
    assert (row.count, row.requests, row.input_tokens, row.output_tokens) == (10, 10, 100, 50)
    assert QuotaReservation.objects.count() == 0
    # Another workspace on the same plan is untouched.
    assert run(current_budget(workspace=access_of(other), user_id=other.pk)).remaining == 10
    assert run(current_budget(workspace=access, user_id=owner.pk)).remaining == 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_refusal_says_which_limit_its_size_and_when_it_resets(quota_backend: str) -> None:
    owner = make_user("full@example.com", plan=plan("two", daily=2).slug).user
    access = access_of(owner)
    run(reserve_and_finish_all(access, owner.pk, 2))

    with pytest.raises(QuotaExceeded) as caught:
        run(reserve_message(request_id="req_over", workspace=access, user_id=owner.pk, byok=False))

    exc = caught.value
    tomorrow = quotas.day_start(quotas.billing_day() + dt.timedelta(days=1))
    assert (exc.code, exc.limit, exc.reset_at) == ("daily_limit_exceeded", 2, tomorrow)
    assert 0 < exc.retry_after_seconds <= 86400
    assert "workspace daily message limit of the Two plan: 2 messages" in exc.message
    assert tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ") in exc.message
    headers = exc.headers()
    assert headers["retry-after"] == str(exc.retry_after_seconds)
    assert headers["x-should-retry"] == "false"
    assert headers["x-ratelimit-remaining-messages"] == "0"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_in_flight_request_holds_one_message_and_settles_to_its_true_count(fallback_or_redis: str) -> None:
    owner = make_user("big@example.com", plan=plan("five", daily=5).slug).user
    access = access_of(owner)

    async def scenario():
        first = await reserve_message(request_id="req_big", workspace=access, user_id=owner.pk, byok=False)
        assert first.budget.remaining == 4
        during = await current_budget(workspace=access, user_id=owner.pk)
        counted = await finish_request(reservation=first, usage=usage(first, prompt=40000, completion=8000))
        after = await current_budget(workspace=access, user_id=owner.pk)
        return during, counted, after

    during, counted, after = run(scenario())
    assert (during.limit, during.remaining) == (5, 4)
    assert counted == 3
    assert (after.limit, after.remaining) == (5, 2)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_settling_twice_counts_once(fallback_or_redis: str) -> None:
    owner = make_user("twice@example.com", plan=plan("three", daily=3).slug).user
    access = access_of(owner)

    async def scenario():
        reservation = await reserve_message(request_id="req_dup", workspace=access, user_id=owner.pk, byok=False)
        await finish_request(reservation=reservation, usage=usage(reservation))
        await finish_request(reservation=reservation, usage=usage(reservation))
        return await current_budget(workspace=access, user_id=owner.pk)

    assert run(scenario()).remaining == 2
    assert UsageEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_byok_requests_are_recorded_in_full_but_never_limited(quota_backend: str) -> None:
    owner = make_user("byok@example.com", plan=plan("one", daily=1).slug).user
    access = access_of(owner)

    async def scenario():
        plain = await reserve_message(request_id="req_plain", workspace=access, user_id=owner.pk, byok=False)
        await finish_request(reservation=plain, usage=usage(plain))
        byok = []
        for i in range(3):
            reservation = await reserve_message(
                request_id=f"req_byok_{i}", workspace=access, user_id=owner.pk, byok=True
            )
            await finish_request(reservation=reservation, usage=usage(reservation, prompt=20000, completion=1))
            byok.append(reservation)
        return byok, await current_budget(workspace=access, user_id=owner.pk)

    byok, budget = run(scenario())
    assert [r.budget.remaining for r in byok] == [0, 0, 0]  # the budget is reported, not consumed
    assert (budget.limit, budget.remaining) == (1, 0)
    with pytest.raises(QuotaExceeded):
        run(reserve_message(request_id="req_plain_2", workspace=access, user_id=owner.pk, byok=False))
    events = UsageEvent.objects.filter(byok=True)
    assert [e.counted_messages for e in events] == [2, 2, 2]
    rollup_daily_message_counts()
    row = DailyMessageCount.objects.get(workspace_id=access.workspace_id)
    assert (row.count, row.byok_count, row.requests) == (1, 6, 4)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_per_member_limit_applies_to_each_member_and_the_workspace_limit_to_all(fallback_or_redis: str) -> None:
    owner = make_user("lead@example.com", plan=plan("team", daily=5, member_daily=3).slug).user
    member = make_user("member@example.com").user
    workspace = owner.current_workspace
    workspace.memberships.create(user=member, role="member")
    owner_access, member_access = access_of(owner), access_of(member, workspace.pk)

    owner_outcomes = run(reserve_and_finish_all(owner_access, owner.pk, 4))
    assert [type(o).__name__ for o in owner_outcomes].count("Reservation") == 3
    assert {o.code for o in owner_outcomes if isinstance(o, QuotaExceeded)} == {"member_daily_limit_exceeded"}
    member_outcomes = run(reserve_and_finish_all(member_access, member.pk, 4))
    # Two left in the workspace's 5 for the member, though their own limit would allow 3.
    assert [type(o).__name__ for o in member_outcomes].count("Reservation") == 2
    assert {o.code for o in member_outcomes if isinstance(o, QuotaExceeded)} == {"daily_limit_exceeded"}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_appsumo_daily_and_monthly_caps_apply_on_top_of_the_plan(quota_backend: str) -> None:
    owner = make_user("sumo@example.com", plan=plan("roomy", daily=100).slug).user
    tier = AppSumoTier.objects.create(slug="tiny", name="Tiny", daily_message_limit=3, monthly_message_limit=5)
    AppSumoLicence.objects.create(licence_key="LIC-1", tier=tier, workspace=owner.current_workspace)
    access = access_of(owner)
    assert access.licence_daily_message_limit == 3

    outcomes = run(reserve_and_finish_all(access, owner.pk, 6))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 3
    assert {o.code for o in outcomes if isinstance(o, QuotaExceeded)} == {"appsumo_daily_limit_exceeded"}

    # Earlier this month (but not today) the workspace used 2 more: the monthly cap of 5 is reached.
    earlier = quotas.billing_day().replace(day=1)
    if earlier == quotas.billing_day():
        earlier = quotas.billing_day() + dt.timedelta(days=1)  # the 1st: use a later day of the same month
    for i in range(2):
        record_usage(usage=usage_for(owner, f"req_earlier_{i}"), day=earlier)
    quotas.reset_quota_state()
    if quota_backend == "redis":
        sync_redis().flushdb()  # counters are rebuilt from the ledger

    with pytest.raises(QuotaExceeded) as caught:
        run(reserve_message(request_id="req_month", workspace=access, user_id=owner.pk, byok=False))
    assert caught.value.code == "appsumo_monthly_limit_exceeded"
    assert caught.value.limit == 5
    assert caught.value.reset_at == quotas.day_start(
        quotas.month_bounds(quotas.billing_day())[1] + dt.timedelta(days=1)
    )


def usage_for(user, request_id: str) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        workspace_id=user.current_workspace_id,
        user_id=user.pk,
        key_id=None,
        model="openai/gpt-5-mini",
        endpoint="chat.completions",
        prompt_tokens=10,
        completion_tokens=5,
        cached_tokens=0,
        byok=False,
        status="succeeded",
        latency_ms=5,
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_unlimited_plans_skip_the_counters_and_report_no_limit(fallback_or_redis: str) -> None:
    owner = make_user("free-for-all@example.com", plan="unlimited").user
    access = access_of(owner)
    reservation = run(reserve_message(request_id="req_u", workspace=access, user_id=owner.pk, byok=False))
    assert reservation.counters == ()
    headers = reservation.budget.headers()
    assert "x-ratelimit-limit-messages" not in headers and "x-ratelimit-remaining-messages" not in headers
    assert headers["x-ratelimit-reset-messages"].endswith("s")
    assert run(finish_request(reservation=reservation, usage=usage(reservation))) == 1


def test_budget_headers_use_openai_duration_style() -> None:
    reset_at = timezone.now() + dt.timedelta(hours=3, minutes=2, seconds=5)
    headers = quotas.Budget(limit=10, remaining=7, reset_at=reset_at).headers()
    assert headers["x-ratelimit-limit-messages"] == "10"
    assert headers["x-ratelimit-remaining-messages"] == "7"
    assert headers["x-ratelimit-reset-messages"] in ("3h2m5s", "3h2m4s", "3h2m6s")
    assert quotas.format_duration(360) == "6m0s"
    assert quotas.format_duration(59) == "59s"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_billing_day_follows_its_timezone_setting(settings) -> None:
    settings.BILLING_DAY_TIMEZONE = "America/New_York"
    at = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)  # 22:00 on the 21st in New York
    assert quotas.billing_day(at) == dt.date(2026, 11, 21)
    assert quotas.day_start(dt.date(2026, 11, 22)) == dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


# ---- Redis specifics ---------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_counters_redis_lost_are_rebuilt_from_the_ledger() -> None:
    owner = make_user("lost@example.com", plan=plan("four", daily=4).slug).user
    access = access_of(owner)
    run(reserve_and_finish_all(access, owner.pk, 3))

    sync_redis().flushdb()

    outcomes = run(reserve_many(access, owner.pk, 3, prefix="after"))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_messages_used_while_a_limit_was_lifted_count_when_it_returns_the_same_day(settings) -> None:
    settings.BILLING_QUOTA_RECONCILE_SECONDS = 3600  # no periodic merge to paper over a stale counter
    limited = plan("five", daily=5, member_daily=5)
    owner = make_user("lifted@example.com", plan=limited.slug).user
    workspace = owner.current_workspace
    run(reserve_and_finish_all(access_of(owner), owner.pk, 2, prefix="before"))

    workspace.plan = Plan.objects.get(slug="unlimited")
    workspace.save(update_fields=["plan"])
    run(reserve_and_finish_all(access_of(owner), owner.pk, 2, prefix="lifted"))
    workspace.plan = limited
    workspace.save(update_fields=["plan"])

    outcomes = run(reserve_many(access_of(owner), owner.pk, 3, prefix="after"))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 1  # 2 + 2 used of 5: one left, for both limits


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_rebuild_racing_settles_never_double_counts() -> None:
    owner = make_user("race@example.com", plan=plan("nine", daily=9).slug).user
    access = access_of(owner)
    counter = quotas.counters_for(workspace_id=access.workspace_id, user_id=owner.pk, day=quotas.billing_day())[0]

    async def scenario():
        reservations = [r for r in await reserve_many(access, owner.pk, 4) if isinstance(r, Reservation)]
        # Ledger lines land, then a rebuild merges them while the settles for the same lines also run.
        await finish_request(reservation=reservations[0], usage=usage(reservations[0]))
        client = sync_redis()
        for _ in range(2):
            await run_db(quotas.rebuild_counter_sync, client=client, counter=counter)
        await asyncio.gather(
            *(finish_request(reservation=r, usage=usage(r)) for r in reservations[1:]),
            run_db(quotas.rebuild_counter_sync, client=client, counter=counter),
        )
        await run_db(quotas.rebuild_counter_sync, client=client, counter=counter)
        return await current_budget(workspace=access, user_id=owner.pk)

    budget = run(scenario())
    assert budget.remaining == 5
    assert int(sync_redis().hget(counter.redis_keys[0], "total")) == 4


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_reservations_of_a_crashed_process_expire(settings) -> None:
    settings.BILLING_RESERVATION_TTL_SECONDS = 1
    owner = make_user("crash@example.com", plan=plan("two-b", daily=2).slug).user
    access = access_of(owner)
    outcomes = run(reserve_many(access, owner.pk, 3))  # never finished: the process "died"
    assert sum(isinstance(o, Reservation) for o in outcomes) == 2

    # The holds expire by their score in Redis: wait for exactly that, not for a second and a bit.
    wait_until(lambda: run(current_budget(workspace=access, user_id=owner.pk)).remaining == 2, timeout=10)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_settles_that_redis_missed_during_an_outage_are_reconciled(settings) -> None:
    owner = make_user("outage@example.com", plan=plan("six", daily=6).slug).user
    access = access_of(owner)
    redis_url = settings.REDIS_URL
    run(reserve_and_finish_all(access, owner.pk, 2))  # counters exist in Redis: 2 used

    settings.REDIS_URL = UNREACHABLE_REDIS
    run(reserve_and_finish_all(access, owner.pk, 2, prefix="down"))  # database path: ledger has 4
    settings.REDIS_URL = redis_url
    quota_breaker.redis_health.down_until = 0  # the breaker's pause is over

    outcomes = run(reserve_many(access, owner.pk, 5, prefix="back"))
    assert sum(isinstance(o, Reservation) for o in outcomes) == 2


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_requests_in_flight_when_redis_dies_still_count_on_the_database_path(monkeypatch) -> None:
    owner = make_user("dies@example.com", plan=plan("ten-d", daily=10).slug).user
    access = access_of(owner)

    async def scenario():
        held = [r for r in await reserve_many(access, owner.pk, 6, prefix="before") if isinstance(r, Reservation)]
        dead = redis.asyncio.Redis.from_url(UNREACHABLE_REDIS, socket_connect_timeout=0.2)
        # Redis dies with 6 requests in flight
        monkeypatch.setattr(quota_reserve, "async_redis", lambda: dead)
        monkeypatch.setattr(quota_counters, "async_redis", lambda: dead)
        during = await reserve_many(access, owner.pk, 10, prefix="during")
        admitted = [r for r in during if isinstance(r, Reservation)]
        await asyncio.gather(*(finish_request(reservation=r, usage=usage(r)) for r in held + admitted))
        await dead.aclose()
        return held, admitted

    held, admitted = run(scenario())
    assert (len(held), len(admitted)) == (6, 4)
    assert {r.backend for r in admitted} == {"database"}
    rollup_daily_message_counts()
    assert DailyMessageCount.objects.get(workspace_id=access.workspace_id).count == 10


@pytest.mark.redis
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_settle_redis_never_saw_is_healed_by_the_periodic_merge(settings) -> None:
    settings.BILLING_QUOTA_RECONCILE_SECONDS = 0
    owner = make_user("heal@example.com", plan=plan("three-h", daily=3).slug).user
    access = access_of(owner)
    run(reserve_and_finish_all(access, owner.pk, 2))
    counter = quotas.counters_for(workspace_id=access.workspace_id, user_id=owner.pk, day=quotas.billing_day())[0]
    hash_key = counter.redis_keys[0]
    # As if the settle of req_0 had been lost: the ledger has it, the counter does not.
    sync_redis().hdel(hash_key, "request:req_0")
    sync_redis().hincrby(hash_key, "total", -1)

    async def scenario():
        first = await current_budget(workspace=access, user_id=owner.pk)
        # The merge runs in the background: wait until the counter shows it (or give up after 5 s).
        deadline = asyncio.get_running_loop().time() + 5
        while (after := await current_budget(workspace=access, user_id=owner.pk)).remaining != 1:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        return first, after

    before, after = run(scenario())
    assert (before.remaining, after.remaining) == (2, 1)


# ---- two processes sharing PostgreSQL (and Redis) ----------------------------------------------

_WORKER = """
import asyncio, json, os, sys
import django
django.setup()
from accounts.access import load_user_access
from billing.quotas import KeyBudget, QuotaExceeded, reserve_message
from billing.ledger import UsageRecord
from billing.recording import finish_request
from writingmate.redis_connection import close_async_redis

user_id, prefix = int(sys.argv[1]), sys.argv[2]
key_id, key_limit = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (None, None)
key = KeyBudget(key_id, "wmk_test", key_limit) if key_id else None
access = load_user_access(user_id=user_id)
workspace = access.workspaces[access.current_workspace_id]

async def one(i):
    rid = f"{prefix}_{i}"
    try:
        reservation = await reserve_message(
            request_id=rid, workspace=workspace, user_id=user_id, byok=False, key=key
        )
    except QuotaExceeded as exc:
        assert exc.code == ("key_daily_limit_reached" if key else "daily_limit_exceeded"), exc.code
        return 0
    await finish_request(reservation=reservation, usage=UsageRecord(
        request_id=rid, workspace_id=workspace.workspace_id, user_id=user_id, key_id=key_id, model="m",
        endpoint="chat.completions", prompt_tokens=10, completion_tokens=5, cached_tokens=0, byok=False,
        status="succeeded", latency_ms=1))
    return 1

async def main():
    results = await asyncio.gather(*(one(i) for i in range(25)))
    await close_async_redis()
    print(json.dumps({"admitted": sum(results)}))

asyncio.run(main())
"""


def _database_url() -> str:
    db = django_settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis), "database"])
def test_two_processes_together_admit_exactly_the_limit(backend: str) -> None:
    owner = make_user("procs@example.com", plan=plan("ten-p", daily=10).slug).user

    assert run_workers(backend, owner.pk) == 10
    rollup_daily_message_counts()
    assert DailyMessageCount.objects.get(workspace_id=owner.current_workspace_id).count == 10


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis), "database"])
def test_two_processes_together_admit_exactly_a_keys_own_budget(backend: str) -> None:
    caller = make_user("key-procs@example.com")  # unlimited plan: only the key's budget applies
    key = DeveloperKey.objects.get(user=caller.user)

    assert run_workers(backend, caller.user.pk, key_id=key.pk, key_limit=7) == 7
    assert sum(UsageEvent.objects.filter(key_id=key.pk).values_list("counted_messages", flat=True)) == 7


def run_workers(backend: str, user_id: int, *, key_id: int | None = None, key_limit: int | None = None) -> int:
    """Two processes, 25 concurrent reservations each; how many of the 50 were admitted."""
    key_args = [str(key_id), str(key_limit)] if key_id else []
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "writingmate.settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": django_settings.REDIS_URL if backend == "redis" else "",
        "CONN_MAX_AGE": "0",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(user_id), f"p{n}", *key_args],
            env=env,
            cwd=django_settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    admitted = 0
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        admitted += json.loads(out.strip().splitlines()[-1])["admitted"]
    return admitted


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_released_hold_is_given_back(fallback_or_redis: str) -> None:
    owner = make_user("release@example.com", plan=plan("one-r", daily=1).slug).user
    access = access_of(owner)

    async def scenario():
        first = await reserve_message(request_id="req_a", workspace=access, user_id=owner.pk, byok=False)
        await quotas.release_reservation(first)
        return await reserve_message(request_id="req_b", workspace=access, user_id=owner.pk, byok=False)

    assert run(scenario()).budget.remaining == 0
    assert UsageEvent.objects.count() == 0
