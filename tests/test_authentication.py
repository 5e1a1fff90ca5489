"""Bearer keys and workspace selection on /v1: exact OpenAI-shaped errors for every bad case."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from django.utils import timezone

from accounts.access import bump_access_epoch
from accounts.models import Membership, User, Workspace
from apikeys import keys
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key, revoke_api_key
from tests.support import make_user, move_key_clock_forward, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY). Create a Writingmate developer key in Settings → API Keys."
)


def get_models(server, headers):
    return requests.get(f"{server.api_base}/models", headers=headers, timeout=10)


def test_a_valid_key_authenticates(live_server):
    caller = make_user()
    assert get_models(live_server, {"Authorization": f"Bearer {caller.key}"}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, MISSING),
        ({"Authorization": ""}, MISSING),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, MISSING),
        ({"Authorization": "Bearer"}, MISSING),
        (
            {"Authorization": "Bearer not-a-key"},
            "Incorrect API key provided: not-********-key. Check the key in Settings → API Keys.",
        ),
    ],
)
def test_missing_or_malformed_keys_are_401(live_server, headers, message):
    response = get_models(live_server, headers)

    assert response.status_code == 401
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    }
    assert response.headers["www-authenticate"].startswith("Bearer")


def _unknown_reason(presented: str) -> dict:
    masked = f"{presented[:4]}********{presented[-4:]}"
    return {
        "error": {
            "message": f"Incorrect API key provided: {masked}. Check the key in Settings → API Keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_a_key_with_a_bad_checksum_is_401_without_a_lookup(live_server):
    caller = make_user()
    tampered = caller.key[:-1] + ("A" if caller.key[-1] != "A" else "B")

    response = get_models(live_server, {"Authorization": f"Bearer {tampered}"})

    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("Incorrect API key provided: wmk_********")


def test_an_unknown_well_formed_key_is_401(live_server):
    make_user()
    unknown = keys.generate_key()

    response = get_models(live_server, {"Authorization": f"Bearer {unknown}"})

    assert response.status_code == 401 and response.json() == _unknown_reason(unknown)


def test_unknown_malformed_revoked_and_expired_keys_get_byte_identical_401_bodies(live_server):
    caller = make_user()
    revoked = create_api_key(user=caller.user, name="revoked")
    expired = create_api_key(user=caller.user, name="expired", expires_at=timezone.now() - dt.timedelta(seconds=1))
    revoke_api_key(key=revoked.key)
    unknown = keys.generate_key()
    malformed = caller.key[:-1] + ("A" if caller.key[-1] != "A" else "B")  # bad checksum, same length

    bodies = {}
    for name, presented in (
        ("unknown", unknown),
        ("malformed", malformed),
        ("revoked", revoked.plaintext),
        ("expired", expired.plaintext),
    ):
        response = get_models(live_server, {"Authorization": f"Bearer {presented}"})
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == 'Bearer realm="writingmate"'
        bodies[name] = response.content.replace(f"{presented[:4]}********{presented[-4:]}".encode(), b"<masked>")

    assert len(set(bodies.values())) == 1, bodies
    assert b"<masked>" in bodies["unknown"]


def test_a_revoked_key_fails_on_the_next_request_even_when_cached(live_server):
    caller = make_user()
    headers = {"Authorization": f"Bearer {caller.key}"}
    assert get_models(live_server, headers).status_code == 200  # now cached

    revoke_api_key(key=DeveloperKey.objects.get(user=caller.user))

    response = get_models(live_server, headers)
    assert response.status_code == 401 and response.json() == _unknown_reason(caller.key)


def test_an_expired_key_fails_even_when_cached(live_server, monkeypatch):
    caller = make_user()
    issued = create_api_key(user=caller.user, name="short", expires_at=timezone.now() + dt.timedelta(seconds=1))
    headers = {"Authorization": f"Bearer {issued.plaintext}"}
    assert get_models(live_server, headers).status_code == 200

    DeveloperKey.objects.filter(pk=issued.key.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    move_key_clock_forward(monkeypatch, 2)  # past the expiry the cached grant still holds
    response = get_models(live_server, headers)
    assert response.status_code == 401 and response.json() == _unknown_reason(issued.plaintext)


def test_a_deactivated_user_cannot_use_their_keys(live_server):
    caller = make_user()
    User.objects.filter(pk=caller.user.pk).update(is_active=False)
    bump_access_epoch()

    assert get_models(live_server, {"Authorization": f"Bearer {caller.key}"}).status_code == 401


def test_last_used_at_is_written_at_most_once_a_minute(live_server):
    caller = make_user()
    headers = {"Authorization": f"Bearer {caller.key}"}
    get_models(live_server, headers)
    key = DeveloperKey.objects.get(user=caller.user)
    first = wait_until(lambda: DeveloperKey.objects.get(pk=key.pk).last_used_at, message="last_used_at never written")

    for _ in range(5):
        get_models(live_server, headers)
    key.refresh_from_db()
    assert key.last_used_at == first


class TestWorkspaceHeader:
    def test_default_is_the_users_current_workspace(self, live_server):
        caller = make_user(plan="free")
        response = get_models(live_server, {"Authorization": f"Bearer {caller.key}"})
        assert response.headers["x-ratelimit-limit-messages"] == "25"

    def test_a_shared_workspace_of_another_member_can_be_chosen(self, live_server):
        caller = make_user("me@example.com", plan="free")
        owner = make_user("owner@example.com", plan="pro")
        Membership.objects.create(user=caller.user, workspace=owner.workspace, role=Membership.Role.MEMBER)
        bump_access_epoch()

        response = get_models(
            live_server, {"Authorization": f"Bearer {caller.key}", "x-writingmate-workspace": str(owner.workspace.pk)}
        )

        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-messages"] == "500"
        assert "openai/gpt-5" in {m["id"] for m in response.json()["data"]}

    def test_a_foreign_workspace_is_403(self, live_server):
        caller = make_user("me@example.com")
        stranger = make_user("stranger@example.com")

        response = get_models(
            live_server,
            {"Authorization": f"Bearer {caller.key}", "x-writingmate-workspace": str(stranger.workspace.pk)},
        )

        assert response.status_code == 403
        assert response.json() == {
            "error": {
                "message": f"Workspace '{stranger.workspace.pk}' does not exist or you are not a member of it (x-writingmate-workspace).",
                "type": "permission_error",
                "param": None,
                "code": "workspace_access_denied",
            }
        }

    @pytest.mark.parametrize("value", ["999999", "abc", "-1"])
    def test_a_missing_workspace_is_403(self, live_server, value):
        caller = make_user()
        response = get_models(live_server, {"Authorization": f"Bearer {caller.key}", "x-writingmate-workspace": value})
        assert response.status_code == 403 and response.json()["error"]["code"] == "workspace_access_denied"

    def test_removal_from_a_workspace_takes_effect_on_the_next_request(self, live_server):
        caller = make_user("me@example.com")
        owner = make_user("owner@example.com")
        membership = Membership.objects.create(user=caller.user, workspace=owner.workspace)
        bump_access_epoch()
        headers = {"Authorization": f"Bearer {caller.key}", "x-writingmate-workspace": str(owner.workspace.pk)}
        assert get_models(live_server, headers).status_code == 200

        membership.delete()
        bump_access_epoch()

        assert get_models(live_server, headers).status_code == 403

    def test_a_user_whose_current_workspace_is_gone_falls_back_to_another(self, live_server):
        caller = make_user("me@example.com")
        second = Workspace.objects.create(name="second", plan=caller.workspace.plan)
        Membership.objects.create(user=caller.user, workspace=second, role=Membership.Role.OWNER)
        caller.workspace.delete()
        bump_access_epoch()

        assert get_models(live_server, {"Authorization": f"Bearer {caller.key}"}).status_code == 200
