"""Two gateway processes sharing PostgreSQL and Redis behave as one system: keys, revocation, usage."""

from __future__ import annotations

import pytest
import requests

from accounts.access import bump_access_epoch
from accounts.models import Membership
from apikeys.models import DeveloperKey
from apikeys.services import revoke_api_key
from billing.models import DailyMessageCount
from billing.services import audit_daily_message_counts, rollup_daily_message_counts
from tests.support import make_user, wait_for_usage_events

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

CHAT = {"model": "demo/echo", "messages": [{"role": "user", "content": "Hello from a scaled-out test"}]}


def chat(server, key: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{server.v1_base}/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=20,
    )


def test_keys_revocations_memberships_and_usage_are_shared(two_gateways):
    first, second = two_gateways
    caller = make_user("scale@example.com", plan="unlimited")
    owner = make_user("owner@example.com", plan="pro")
    membership = Membership.objects.create(user=caller.user, workspace=owner.workspace)
    bump_access_epoch()

    # A key created in this process works on both gateways, and each caches it.
    assert chat(first, caller.key).status_code == 200
    assert chat(second, caller.key).status_code == 200
    shared = {"x-writingmate-workspace": str(owner.workspace.pk)}
    assert chat(first, caller.key, **shared).status_code == 200

    # Removing the membership reaches both processes on their next request.
    membership.delete()
    bump_access_epoch()
    assert chat(second, caller.key, **shared).status_code == 403
    assert chat(first, caller.key, **shared).status_code == 403

    # Usage from both processes lands in one ledger and reconciles with daily_message_count.
    events = wait_for_usage_events(3)
    assert {e.workspace_id for e in events} == {caller.workspace.pk, owner.workspace.pk}
    rollup_daily_message_counts()
    assert DailyMessageCount.objects.get(workspace=caller.workspace).count == 2
    assert DailyMessageCount.objects.get(workspace=owner.workspace).count == 1
    assert audit_daily_message_counts(include_today=True).ok

    # Revocation in one place stops the key everywhere, cached or not.
    revoke_api_key(key=DeveloperKey.objects.get(user=caller.user))
    assert chat(first, caller.key).status_code == 401
    assert chat(second, caller.key).status_code == 401
