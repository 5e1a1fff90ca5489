"""Fault suite: every kind of bad key, invalid-key floods, and attempts to reach another workspace.

Real HTTP against a live server with the fake upstream behind it; each case asserts the exact error,
that the upstream saw nothing, and that no other workspace was billed.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging

import pytest
import requests
from django.utils import timezone

from accounts.access import bump_access_epoch
from accounts.models import Membership, User
from accounts.services import add_member_by_email, remove_member
from apikeys import authentication
from apikeys.keys import generate_key
from apikeys.models import DeveloperKey
from apikeys.services import create_api_key, revoke_api_key
from billing.models import UsageEvent
from tests.fault_support import assert_nothing_recorded, assert_openai_error, auth, chat, settle_ledger
from tests.support import make_user, move_key_clock_forward
from writingmate.logs import JsonFormatter

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def caller():
    return make_user("keys@example.com", plan="unlimited")


@pytest.fixture
def url(live_server, fake_upstream):
    return f"{live_server.v1_base}/chat/completions"


def flip_last_char(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def bad_key_cases(valid: str) -> dict[str, dict[str, str]]:
    return {
        "missing": {},
        "basic-scheme": {"Authorization": f"Basic {valid}"},
        "empty-bearer": {"Authorization": "Bearer "},
        "token-scheme": {"Authorization": f"Token {valid}"},
        "too-short": {"Authorization": "Bearer wmk_abc"},
        "bad-checksum": {"Authorization": f"Bearer {flip_last_char(valid)}"},
        "unknown-well-formed": {"Authorization": f"Bearer {generate_key()}"},
        "openrouter-key": {"Authorization": "Bearer sk-or-v1-" + "a" * 64},
        "two-keys": {"Authorization": f"Bearer {valid} {valid}"},
        "key-in-x-api-key-only": {"x-api-key": valid},
    }


def test_every_kind_of_malformed_or_unknown_key_is_401_invalid_api_key(url, caller, fake_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    for name, headers in bad_key_cases(caller.key).items():
        response = requests.post(url, json=chat(), headers=headers, timeout=10)
        error = assert_openai_error(response, status=401, code="invalid_api_key", error_type="invalid_request_error")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        presented = headers.get("Authorization", "").partition(" ")[2]
        if len(presented) > 12:
            assert presented not in error["message"], f"{name}: the full key was echoed back"
    query = requests.post(f"{url}?api_key={caller.key}", json=chat(), timeout=10)
    assert_openai_error(query, status=401, code="invalid_api_key")

    assert_nothing_recorded(fake_upstream)
    # Redaction happens in our formatters (the record stays whole for other handlers): what any
    # configured handler writes is the formatted line.
    written = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert caller.key[:10] in written  # the key was logged (the ?api_key= request), and only masked
    assert caller.key not in written


def test_revoked_expired_and_deactivated_keys_stop_on_the_next_request(url, caller, fake_upstream, monkeypatch):
    assert requests.post(url, json=chat(), headers=auth(caller.key), timeout=10).status_code == 200  # now cached

    revoke_api_key(key=DeveloperKey.objects.get(user=caller.user))
    revoked = requests.post(url, json=chat(), headers=auth(caller.key), timeout=10)

    expiring = create_api_key(
        user=caller.user, name="short", expires_at=timezone.now() + dt.timedelta(seconds=1)
    ).plaintext
    assert requests.post(url, json=chat(), headers=auth(expiring), timeout=10).status_code == 200
    move_key_clock_forward(monkeypatch, 2)  # the key's second passes (the grant is cached meanwhile)
    expired = requests.post(url, json=chat(), headers=auth(expiring), timeout=10)

    other = make_user("deactivated@example.com")
    assert requests.post(url, json=chat(), headers=auth(other.key), timeout=10).status_code == 200
    other.user.is_active = False
    other.user.save(update_fields=["is_active"])
    bump_access_epoch()  # as the admin's save does
    deactivated = requests.post(url, json=chat(), headers=auth(other.key), timeout=10)

    for response in (revoked, expired, deactivated):
        assert_openai_error(response, status=401, code="invalid_api_key", message_contains="Check the key in Settings")
    assert len(fake_upstream.requests_to("/chat/completions")) == 3
    assert {e.status for e in settle_ledger(3)} == {"succeeded"}


def get_from(address: str, port: int, path: str, key: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def key_lookups(monkeypatch) -> list[str]:
    """Every database lookup of a presented key the in-process server makes (key hashes)."""
    seen: list[str] = []
    real = authentication.find_key_grant

    def counting(*, key_hash: str):
        seen.append(key_hash)
        return real(key_hash=key_hash)

    monkeypatch.setattr(authentication, "find_key_grant", counting)
    return seen


def test_a_bad_key_flood_costs_no_lookups_past_the_limit_and_never_locks_out_a_valid_key(
    live_server, caller, settings, key_lookups
):
    settings.API_INVALID_KEY_LIMIT_PER_MINUTE = 5
    path = "/v1/models"
    repeated = generate_key()
    statuses = [get_from("127.0.0.2", live_server.port, path, generate_key())[0] for _ in range(5)]
    statuses.append(get_from("127.0.0.2", live_server.port, path, repeated)[0])  # the 6th failure: blocked now
    assert statuses == [401] * 6 and len(key_lookups) == 6

    flood = [get_from("127.0.0.2", live_server.port, path, generate_key()) for _ in range(20)]
    flood.append(get_from("127.0.0.2", live_server.port, path, repeated))  # a bad key already looked up
    junk = get_from("127.0.0.2", live_server.port, path, "wmk_not-even-well-formed")
    assert {status for status, _ in [*flood, junk]} == {429}
    assert flood[0][1]["error"]["code"] == "too_many_invalid_keys"
    assert flood[0][1]["error"]["type"] == "rate_limit_error"
    assert len(key_lookups) == 6  # the flood past the limit never reached the database

    # A valid key from the flooding address is served, and then stays served from the cache.
    lookups_before = len(key_lookups)
    valid = [get_from("127.0.0.2", live_server.port, path, caller.key)[0] for _ in range(5)]
    assert valid == [200] * 5
    assert len(key_lookups) - lookups_before <= 1

    # A key created during the flood (never used yet) is served from that address too.
    fresh = create_api_key(user=caller.user, name="fresh").plaintext
    assert get_from("127.0.0.2", live_server.port, path, fresh)[0] == 200

    # Other addresses are served; that the throttle costs a valid key no I/O is
    # test_throttling.py::test_the_throttle_passes_authenticated_keys_and_unblocked_addresses_without_io.
    assert [get_from("127.0.0.1", live_server.port, path, caller.key)[0] for _ in range(5)] == [200] * 5


def test_the_invalid_key_block_says_when_to_retry(live_server, caller, settings):
    settings.API_INVALID_KEY_LIMIT_PER_MINUTE = 1
    for _ in range(2):
        requests.get(f"{live_server.v1_base}/models", headers=auth(generate_key()), timeout=10)
    response = requests.get(f"{live_server.v1_base}/models", headers=auth(generate_key()), timeout=10)

    assert_openai_error(response, status=429, code="too_many_invalid_keys", error_type="rate_limit_error")
    assert 0 < int(response.headers["retry-after"]) <= 60


# --- workspaces ------------------------------------------------------------------------------------


@pytest.fixture
def stranger():
    return make_user("stranger@example.com", plan="unlimited")


@pytest.mark.parametrize(
    "header",
    ["999999", "-1", "0x1", "1 OR 1=1", "1,2", "", "abc"],
    ids=["missing", "negative", "hex", "sql", "list", "empty", "letters"],
)
def test_workspace_header_values_that_name_no_workspace_of_the_user(url, caller, fake_upstream, header):
    response = requests.post(url, json=chat(), headers=auth(caller.key, **{"x-writingmate-workspace": header}))

    if header.strip() == "":
        assert response.status_code == 200  # an empty header means the current workspace
        settle_ledger(1)
        return
    assert_openai_error(response, status=403, code="workspace_access_denied", error_type="permission_error")
    assert_nothing_recorded(fake_upstream)


def test_a_workspace_id_too_long_for_int_is_403(url, caller, fake_upstream):
    response = requests.post(url, json=chat(), headers=auth(caller.key, **{"x-writingmate-workspace": "9" * 5000}))

    assert_openai_error(response, status=403, code="workspace_access_denied")
    assert_nothing_recorded(fake_upstream)


def test_a_unicode_digit_workspace_id_is_403(live_server, url, caller, fake_upstream):
    connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=10)
    body = json.dumps(chat()).encode()
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Authorization", f"Bearer {caller.key}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.putheader("x-writingmate-workspace", b"\xb2")
    connection.endheaders(body)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()

    assert response.status == 403, payload
    assert payload["error"]["code"] == "workspace_access_denied"


def test_another_users_workspace_is_403_and_neither_workspace_is_billed(url, caller, stranger, fake_upstream):
    response = requests.post(
        url, json=chat(), headers=auth(caller.key, **{"x-writingmate-workspace": str(stranger.workspace.pk)})
    )

    assert_openai_error(response, status=403, code="workspace_access_denied", message_contains="not a member")
    assert_nothing_recorded(fake_upstream)


def test_a_shared_workspace_is_billed_to_itself_and_access_ends_with_the_membership(
    url, caller, stranger, fake_upstream
):
    shared = stranger.workspace
    add_member_by_email(actor=stranger.user, workspace=shared, email=caller.user.email)
    headers = auth(caller.key, **{"x-writingmate-workspace": str(shared.pk)})

    allowed = requests.post(url, json=chat(), headers=headers, timeout=10)
    [event] = settle_ledger(1)
    remove_member(actor=stranger.user, membership=Membership.objects.get(user=caller.user, workspace=shared))
    after_removal = requests.post(url, json=chat(), headers=headers, timeout=10)

    assert allowed.status_code == 200
    assert (event.workspace_id, event.user_id) == (shared.pk, caller.user.pk)
    assert not UsageEvent.objects.filter(workspace_id=caller.workspace.pk).exists()
    assert_openai_error(after_removal, status=403, code="workspace_access_denied")
    settle_ledger(1)
    assert User.objects.get(pk=caller.user.pk).current_workspace_id == caller.workspace.pk
