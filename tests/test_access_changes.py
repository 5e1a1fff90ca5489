"""A change to what a user may do takes effect on the very next /v1 request.

Chat and completions may run on a grant the process remembers from an earlier request; the quota
reservation confirms, in its own Redis round trip, that no access changed since (apikeys.authentication,
billing.quotas). These tests change access between two requests of the same key and check that the
second request sees the change, whichever way the reservation goes (limited plan: the reserve script;
unlimited plan: a plain epoch read), and that nothing is held or counted twice when a request starts over.
"""

from __future__ import annotations

import pytest
import requests

from accounts.access import AccessChanged, bump_access_epoch, load_user_access
from accounts.models import Plan
from accounts.services import add_member_by_email, create_workspace, set_openrouter_key
from apikeys.models import DeveloperKey
from apikeys.services import revoke_api_key
from billing.quotas import reserve_message
from tests.fault_support import assert_openai_error, auth, chat, settle_ledger
from tests.support import make_user, run_async

pytestmark = pytest.mark.django_db(transaction=True)

PLANS = ["free", "unlimited"]  # the reserve script, and the plain epoch read


@pytest.fixture
def url(live_server, fake_upstream):
    return f"{live_server.v1_base}/chat/completions"


@pytest.mark.parametrize("plan", PLANS)
def test_a_revoked_key_stops_on_the_next_completion(url, fake_upstream, plan):
    caller = make_user(plan=plan)
    assert requests.post(url, json=chat(), headers=auth(caller.key), timeout=10).status_code == 200
    settle_ledger(1)  # SQLite: the server's write is done before this test writes

    revoke_api_key(key=DeveloperKey.objects.get(user=caller.user))
    response = requests.post(url, json=chat(), headers=auth(caller.key), timeout=10)

    assert_openai_error(response, status=401, code="invalid_api_key", message_contains="Check the key in Settings")
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    assert [event.status for event in settle_ledger(1)] == ["succeeded"]


def test_a_plan_upgrade_allows_a_model_on_the_next_request(url, fake_upstream):
    caller = make_user(plan="free")
    assert requests.post(url, json=chat(), headers=auth(caller.key), timeout=10).status_code == 200
    premium = chat(model="openai/gpt-5")
    assert requests.post(url, json=premium, headers=auth(caller.key), timeout=10).status_code == 403
    settle_ledger(1)

    workspace = caller.workspace
    workspace.plan = Plan.objects.get(slug="pro")
    workspace.save(update_fields=["plan"])
    bump_access_epoch()  # as the admin's save does

    upgraded = requests.post(url, json=premium, headers=auth(caller.key), timeout=10)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.headers["x-ratelimit-limit-messages"] == "500"


@pytest.mark.parametrize("plan", PLANS)
def test_a_request_that_starts_over_after_an_access_change_is_held_and_counted_once(url, fake_upstream, plan):
    caller = make_user(plan=plan)
    first = requests.post(url, json=chat(), headers=auth(caller.key), timeout=10)
    settle_ledger(1)
    bump_access_epoch()  # any change anywhere: the remembered grant is no longer confirmed
    second = requests.post(url, json=chat(), headers=auth(caller.key), timeout=10)
    settle_ledger(2)
    third = requests.post(url, json=chat(), headers=auth(caller.key), timeout=10)

    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert len(fake_upstream.requests_to("/chat/completions")) == 3
    events = settle_ledger(3)
    assert sorted(e.request_id for e in events) == sorted(r.headers["x-request-id"] for r in (first, second, third))
    if plan == "free":
        # The third request's own hold is the only one in flight: the second left none behind.
        assert third.headers["x-ratelimit-remaining-messages"] == str(25 - 3)


def test_a_new_byok_key_is_used_on_the_next_request(url, fake_upstream):
    caller = make_user(plan="free")
    assert requests.post(url, json=chat(), headers=auth(caller.key), timeout=10).status_code == 200
    settle_ledger(1)

    set_openrouter_key(user=caller.user, key="sk-or-v1-" + "b" * 64)
    assert requests.post(url, json=chat(), headers=auth(caller.key), timeout=10).status_code == 200

    [server, byok] = fake_upstream.requests_to("/chat/completions")
    assert server.headers["authorization"] == "Bearer sk-or-server-key"
    assert byok.headers["authorization"] == "Bearer sk-or-v1-" + "b" * 64


def test_a_workspace_joined_a_moment_ago_can_be_chosen_on_the_next_request(url, fake_upstream):
    member = make_user("member@example.com", plan="free")
    assert requests.post(url, json=chat(), headers=auth(member.key), timeout=10).status_code == 200
    settle_ledger(1)
    owner = make_user("owner@example.com", plan="free")
    team = create_workspace(user=owner.user, name="Team")
    add_member_by_email(actor=owner.user, workspace=team, email=member.user.email)

    chosen = auth(member.key, **{"x-writingmate-workspace": str(team.pk)})
    response = requests.post(url, json=chat(), headers=chosen, timeout=10)

    assert response.status_code == 200, response.text
    assert [e.workspace_id for e in settle_ledger(2)].count(team.pk) == 1


@pytest.mark.redis  # the access epoch the reservation confirms lives in Redis
def test_a_reservation_for_a_stale_epoch_holds_nothing():
    caller = make_user(plan="free")
    workspace = caller.user.current_workspace
    access = load_user_access(user_id=caller.user.pk).workspaces[workspace.pk]
    bump_access_epoch()

    async def reserve(request_id: str, epoch: int | None):
        return await reserve_message(
            request_id=request_id, workspace=access, user_id=caller.user.pk, byok=False, access_epoch=epoch
        )

    with pytest.raises(AccessChanged):
        run_async(reserve("req_stale", -1))
    held = run_async(reserve("req_fresh", None))
    assert held.budget.remaining == 25 - 1
