"""A key's own controls (like OpenRouter's): a daily message budget and a model allowlist, set by its owner.

Real HTTP against the live server and the fake upstream; the budget is held in the same reservation as
the plan's limits (Redis when configured, else the database path), so it is exact under concurrency.
The two-process cases are in test_scale_out.py and test_billing_quotas.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
import requests
from django.test import Client
from django.urls import reverse

from accounts.access import bump_access_epoch
from accounts.models import Membership
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key, set_key_limits
from tests.fault_support import assert_openai_error, auth, chat, settle_ledger
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_MODEL = "google/gemini-2.5-flash"


@pytest.fixture
def api(live_server, fake_upstream) -> str:
    return live_server.api_base


def post(api: str, key: str, **fields: object) -> requests.Response:
    return requests.post(f"{api}/chat/completions", json=chat(**fields), headers=auth(key), timeout=30)


def signed_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_owner_sets_a_budget_and_an_allowlist_on_the_key_page() -> None:
    caller = make_user("owner@example.com")
    key = DeveloperKey.objects.get(user=caller.user)
    client = signed_in_client(caller.user)
    limits = reverse("apikey-limits", args=[key.pk])

    response = client.post(
        limits, {"daily_message_limit": "25", "allowed_models": "openai/gpt-5-mini\n google/gemini-2.5-flash, "}
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.daily_message_limit == 25
    assert key.allowed_models == ["openai/gpt-5-mini", "google/gemini-2.5-flash"]
    page = client.get(reverse("apikey-detail", args=[key.pk])).content.decode()
    assert "Saved the limits" in page and "0 of 25 messages" in page and "<code>openai/gpt-5-mini</code>" in page

    for bad in ({"daily_message_limit": "0"}, {"daily_message_limit": "-3"}, {"allowed_models": "not a slug!"}):
        assert client.post(limits, {"daily_message_limit": "", "allowed_models": "", **bad}).status_code == 400
    key.refresh_from_db()
    assert key.daily_message_limit == 25

    assert client.post(limits, {"daily_message_limit": "", "allowed_models": ""}).status_code == 302
    key.refresh_from_db()
    assert (key.daily_message_limit, key.allowed_models) == (None, [])

    stranger = signed_in_client(make_user("stranger@example.com").user)
    assert stranger.post(limits, {"daily_message_limit": "1", "allowed_models": ""}).status_code == 404
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(caller.user)
    assert csrf.post(limits, {"daily_message_limit": "1", "allowed_models": ""}).status_code == 403
    key.refresh_from_db()
    assert key.daily_message_limit is None


def test_a_key_over_its_daily_budget_gets_a_429_that_names_the_key_and_other_keys_still_work(api, fake_upstream):
    caller = make_user("budget@example.com")  # an unlimited plan: only the key's own budget applies
    key = DeveloperKey.objects.get(user=caller.user)
    set_key_limits(key=key, daily_message_limit=2, allowed_models=[])
    second_key = create_api_key(user=caller.user, name="second").plaintext

    first, second = post(api, caller.key), post(api, caller.key)
    refused = post(api, caller.key)

    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-messages"] == "2"
    assert second.headers["x-ratelimit-remaining-messages"] == "0"
    error = assert_openai_error(refused, status=429, code="key_daily_limit_reached", error_type="insufficient_quota")
    assert f"daily message budget of the developer key {key.prefix}…: 2 messages, 2 used" in error["message"]
    assert "Settings → API Keys" in error["message"]
    assert int(refused.headers["retry-after"]) > 0 and refused.headers["x-should-retry"] == "false"
    assert len(fake_upstream.requests_to("/chat/completions")) == 2
    # The same user's other key, in the same workspace, is not refused for this key's budget.
    assert post(api, second_key).status_code == 200
    settle_ledger(3)


def test_concurrent_requests_with_one_key_admit_exactly_its_budget(api, fake_upstream):
    caller = make_user("budget-race@example.com")
    set_key_limits(key=DeveloperKey.objects.get(user=caller.user), daily_message_limit=3, allowed_models=[])
    fake_upstream.latency_ms = 300  # every request is in flight at once

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: post(api, caller.key), range(10)))

    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 7
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "key_daily_limit_reached"
    assert len(fake_upstream.requests_to("/chat/completions")) == 3
    assert sum(e.counted_messages for e in settle_ledger(3)) == 3


def test_a_model_outside_the_keys_allowlist_is_refused_with_a_403_naming_the_key_and_not_listed(api, fake_upstream):
    caller = make_user("allow@example.com")
    key = DeveloperKey.objects.get(user=caller.user)
    set_key_limits(key=key, daily_message_limit=None, allowed_models=["openai/gpt-5-mini"])

    refused = post(api, caller.key, model=OTHER_MODEL)
    allowed = post(api, caller.key)  # openai/gpt-5-mini

    error = assert_openai_error(refused, status=403, code="model_not_allowed_for_key", param="model")
    assert f"not in the model allowlist of the developer key {key.prefix}…" in error["message"]
    assert "openai/gpt-5-mini" in error["message"]
    assert allowed.status_code == 200
    assert [r.json["model"] for r in fake_upstream.requests_to("/chat/completions")] == ["openai/gpt-5-mini"]
    listed = requests.get(f"{api}/models", headers=auth(caller.key), timeout=10).json()["data"]
    assert [m["id"] for m in listed] == ["openai/gpt-5-mini"]
    hidden = requests.get(f"{api}/models/{quote(OTHER_MODEL, safe='')}", headers=auth(caller.key), timeout=10)
    assert_openai_error(hidden, status=404, code="model_not_found", param="model")
    # The same user's keys without an allowlist see the whole plan.
    other_key = create_api_key(user=caller.user, name="unrestricted").plaintext
    assert post(api, other_key, model=OTHER_MODEL).status_code == 200
    settle_ledger(2)


def test_limit_changes_on_the_page_apply_to_the_very_next_request_of_a_cached_key(api, fake_upstream):
    caller = make_user("epoch@example.com")
    key = DeveloperKey.objects.get(user=caller.user)
    client = signed_in_client(caller.user)
    limits = reverse("apikey-limits", args=[key.pk])
    assert post(api, caller.key, model=OTHER_MODEL).status_code == 200  # the grant is now cached and remembered
    settle_ledger(1)

    client.post(limits, {"daily_message_limit": "", "allowed_models": "openai/gpt-5-mini"})
    assert_openai_error(
        post(api, caller.key, model=OTHER_MODEL), status=403, code="model_not_allowed_for_key", param="model"
    )

    # A budget set during the day counts the day's earlier requests: its counter starts from the ledger.
    client.post(limits, {"daily_message_limit": "2", "allowed_models": ""})
    assert post(api, caller.key, model=OTHER_MODEL).status_code == 200
    assert_openai_error(post(api, caller.key), status=429, code="key_daily_limit_reached")

    # Lifted, used while it had no budget, set again: the new budget still sees every message of the day.
    client.post(limits, {"daily_message_limit": "", "allowed_models": ""})
    assert post(api, caller.key).status_code == 200
    settle_ledger(3)
    client.post(limits, {"daily_message_limit": "3", "allowed_models": ""})
    assert_openai_error(post(api, caller.key), status=429, code="key_daily_limit_reached")
    client.post(limits, {"daily_message_limit": "4", "allowed_models": ""})
    assert post(api, caller.key).status_code == 200
    settle_ledger(4)


def test_one_budget_covers_the_key_in_every_workspace_it_is_used_in(api, fake_upstream):
    caller = make_user("two-workspaces@example.com")
    team = make_user("team-owner@example.com").workspace
    Membership.objects.create(user=caller.user, workspace=team, role=Membership.Role.MEMBER)
    bump_access_epoch()
    set_key_limits(key=DeveloperKey.objects.get(user=caller.user), daily_message_limit=4, allowed_models=[])
    fake_upstream.latency_ms = 300
    workspaces = [str(caller.workspace.pk), str(team.pk)]

    def one(n: int) -> requests.Response:
        headers = auth(caller.key, **{"x-writingmate-workspace": workspaces[n % 2]})
        return requests.post(f"{api}/chat/completions", json=chat(), headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(one, range(10)))

    assert sorted(r.status_code for r in responses) == [200] * 4 + [429] * 6
    events = settle_ledger(4)
    assert sum(e.counted_messages for e in events) == 4
