"""daily_message_count is current without Celery beat (issue 14 point 3): the serving process rolls up
the days its ledger writes touched, by workspace × user and by key × model."""

from __future__ import annotations

import itertools
import time

import pytest
import requests
from django.db import OperationalError

from apikeys.models import DeveloperKey
from billing.models import DailyKeyModelCount, DailyMessageCount
from billing.quotas import billing_day
from tests.fault_support import auth, chat
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(query, expected, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = query()
        except OperationalError:  # SQLite: the server's writer may hold the table right now
            found = None
        if found == expected or time.monotonic() > deadline:
            assert found == expected
            return found
        time.sleep(0.05)


def test_usage_is_rolled_up_by_the_serving_process_without_beat(live_server, fake_upstream, settings):
    settings.BILLING_ROLLUP_AFTER_WRITES_SECONDS = 0.5
    caller = make_user("rolled@example.com")
    key = DeveloperKey.objects.get(user=caller.user)
    url = f"{live_server.v1_base}/chat/completions"
    for model in ("openai/gpt-5-mini", "openai/gpt-5-mini", "openai/gpt-5"):
        assert requests.post(url, json=chat(model=model), headers=auth(caller.key), timeout=30).status_code == 200

    today = billing_day()
    wait_for(
        lambda: list(DailyMessageCount.objects.filter(day=today).values_list("user_id", "requests")),
        [(caller.user.pk, 3)],
    )
    wait_for(
        lambda: sorted(
            DailyKeyModelCount.objects.filter(day=today).values_list("key_id", "model", "requests", "count")
        ),
        [(key.pk, "openai/gpt-5", 1, 1), (key.pk, "openai/gpt-5-mini", 2, 2)],
    )


def test_roll_ups_after_writes_are_throttled_to_one_per_interval(settings, monkeypatch):
    import asyncio

    from billing import quotas, recording
    from billing.ledger import UsageRecord
    from billing.quotas import Reservation
    from tests.support import run_async

    settings.BILLING_ROLLUP_AFTER_WRITES_SECONDS = 0.4
    settings.BILLING_LEDGER_LINGER_SECONDS = 0
    user = make_user("throttled@example.com").user
    runs: list[float] = []
    original = recording._roll_up

    def counting(touched):
        # Only this test's roll-ups: a live server left by the test before may still roll up its own workspace.
        if any(workspace_id == user.current_workspace_id for _, workspace_id in touched):
            runs.append(time.monotonic())
        original(touched)

    monkeypatch.setattr(recording, "_roll_up", counting)
    budget = quotas.Budget(limit=None, remaining=None, reset_at=quotas.day_start(billing_day()))

    async def ten_batches():
        for i in range(10):
            usage = UsageRecord(
                f"thr{i}",
                user.current_workspace_id,
                user.pk,
                None,
                "openai/gpt-5-mini",
                "chat.completions",
                10,
                5,
                0,
                False,
                "succeeded",
                5,
            )
            reservation = Reservation(f"thr{i}", user.current_workspace_id, user.pk, False, budget, billing_day())
            await recording.finish_request(reservation=reservation, usage=usage)
            await asyncio.sleep(0.05)
        while recording._rollups().task is not None:  # the last roll-up of the touched day
            await asyncio.sleep(0.02)

    run_async(ten_batches())

    # The first batch is rolled up at once, later ones at most once per interval, however busy the machine.
    assert 1 <= len(runs) < 10
    assert all(later - earlier >= 0.39 for earlier, later in itertools.pairwise(runs)), runs
    assert DailyMessageCount.objects.get(user=user).requests == 10
