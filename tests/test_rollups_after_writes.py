"""daily_message_count is current without Celery beat (issue 14 point 3): the serving process rolls up
the days its ledger writes touched, by workspace × user and by key × model."""

from __future__ import annotations

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
