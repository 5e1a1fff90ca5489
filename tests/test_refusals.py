"""Every refusal on record (issue 10 point 5): each kind with who, what and why, and a flood at bounded cost.

Real HTTP against the live server; refusals are counted in memory and written in batches, so the tests
wait for the rows they expect rather than for a fixed time.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from django.db import OperationalError
from django.db.models import Sum

from accounts.models import Plan, Workspace
from apikeys import keys
from apikeys.models import DeveloperKey
from billing.models import Refusal
from billing.refusals import reset_refusal_buffer
from tests.fault_support import auth, chat
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_flush(settings):
    settings.REFUSAL_FLUSH_SECONDS = 0.05
    settings.API_INVALID_KEY_LIMIT_PER_MINUTE = 30
    reset_refusal_buffer()


def wait_for_refusals(total: int, timeout: float = 10.0, **filters) -> list[Refusal]:
    """The rows matching `filters` once their counts add up to `total` (they are written after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = list(Refusal.objects.filter(**filters).order_by("id"))
        except OperationalError:  # SQLite: the server's writer may hold the table right now
            rows = []
        counted = sum(r.count for r in rows)
        if counted >= total or time.monotonic() > deadline:
            assert counted == total, f"expected {total} refusals, found {counted}: {rows}"
            return rows
        time.sleep(0.02)


def post(url: str, key: str, body: dict | None = None, **headers: str) -> requests.Response:
    return requests.post(url, json=body if body is not None else chat(), headers=auth(key, **headers), timeout=30)


def test_a_bad_key_flood_is_counted_in_a_bounded_number_of_rows(live_server, fake_upstream):
    url = f"{live_server.v1_base}/chat/completions"
    statuses = []
    with requests.Session() as session:
        for _ in range(200):
            # A fresh well-formed key each time: the worst case for a per-key tally.
            response = session.post(url, json=chat(), headers=auth(keys.generate_key()), timeout=30)
            statuses.append(response.status_code)

    assert set(statuses) == {401, 429}
    rows = wait_for_refusals(200, address="127.0.0.1")
    assert len(rows) <= 10, [(r.status, r.code, r.key_prefix, r.count) for r in rows]
    by_code = {code: sum(r.count for r in rows if r.code == code) for code in {r.code for r in rows}}
    assert by_code == {"invalid_api_key": statuses.count(401), "too_many_invalid_keys": statuses.count(429)}
    assert all(r.key_id is None and r.user_id is None and r.workspace_id is None for r in rows)
    # Only our visible prefix (wmk_ + 6) of a presented key is kept, never the key.
    assert all(len(r.key_prefix) <= keys.VISIBLE_PREFIX_LENGTH or r.key_prefix == "*" for r in rows)
    assert not fake_upstream.requests_to("/chat/completions")


def test_each_kind_of_refusal_is_recorded_with_who_what_and_why(live_server, fake_upstream, settings):
    url = f"{live_server.v1_base}/chat/completions"
    Plan.objects.create(slug="one", name="One", daily_message_limit=1, allowed_model_tiers=["basic"])
    limited = make_user("limited@example.com", plan="one")
    key = DeveloperKey.objects.get(user=limited.user)
    workspace = limited.workspace
    stranger = make_user("stranger@example.com")
    foreign = Workspace.objects.get(memberships__user=stranger.user)
    unknown_key = keys.generate_key()

    assert post(url, unknown_key).status_code == 401
    assert post(url, limited.key, chat(model="openai/gpt-5")).status_code == 403  # premium, not in the plan
    assert post(url, limited.key, chat(model="nobody/nothing")).status_code == 404
    assert post(url, limited.key, {"model": "openai/gpt-5-mini", "messages": "not a list"}).status_code == 400
    assert post(url, limited.key, **{"x-writingmate-workspace": str(foreign.pk)}).status_code == 403
    assert post(url, limited.key).status_code == 200
    assert post(url, limited.key).status_code == 429  # the plan's one message is spent
    settings.OPENROUTER_API_KEY = ""
    assert post(url, stranger.key).status_code == 503  # no upstream configured for a non-demo model

    rows = wait_for_refusals(7)
    found = {(r.status, r.code): r for r in rows}
    assert set(found) == {
        (401, "invalid_api_key"),
        (403, "model_not_allowed"),
        (404, "model_not_found"),
        (400, "invalid_type"),
        (403, "workspace_access_denied"),
        (429, "daily_limit_exceeded"),
        (503, "upstream_not_configured"),
    }, sorted(found)
    for row in rows:
        assert row.count == 1 and row.endpoint in ("chat.completions", "")
        assert row.address == "127.0.0.1" and row.minute <= row.first_at <= row.last_at
        assert row.message
    unknown = found[(401, "invalid_api_key")]
    assert (unknown.key_prefix, unknown.key_id, unknown.user_id) == (keys.visible_prefix(unknown_key), None, None)
    for code in ("model_not_allowed", "daily_limit_exceeded"):
        row = next(r for r in rows if r.code == code)
        assert (row.key_id, row.key_prefix, row.user_id, row.workspace_id) == (
            key.pk,
            key.prefix,
            limited.user.pk,
            workspace.pk,
        )
    assert found[(403, "model_not_allowed")].model == "openai/gpt-5"
    assert found[(404, "model_not_found")].model == "nobody/nothing"
    denied = found[(403, "workspace_access_denied")]
    assert (denied.key_id, denied.user_id, denied.workspace_id) == (key.pk, limited.user.pk, None)
    unavailable = found[(503, "upstream_not_configured")]
    assert unavailable.user_id == stranger.user.pk and unavailable.workspace_id == stranger.workspace.pk


def test_repeated_refusals_of_one_key_share_a_row_per_minute(live_server, fake_upstream):
    url = f"{live_server.v1_base}/chat/completions"
    caller = make_user(f"{uuid.uuid4().hex[:8]}@example.com", plan="free")
    for _ in range(25):
        assert post(url, caller.key, chat(model="openai/gpt-5")).status_code == 403

    rows = wait_for_refusals(25, code="model_not_allowed")
    assert len({r.minute for r in rows}) == len(rows) <= 2  # a minute boundary may split them
    assert Refusal.objects.aggregate(total=Sum("count"))["total"] == 25


def test_refusals_on_the_anthropic_surface_are_recorded_too(live_server, fake_upstream):
    url = f"{live_server.url}/api/anthropic/v1/messages"
    unknown_key = keys.generate_key()
    body = {"model": "openai/gpt-5-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    response = requests.post(
        url, json=body, headers={"x-api-key": unknown_key, "anthropic-version": "2023-06-01"}, timeout=30
    )
    assert response.status_code == 401 and response.json()["type"] == "error"

    [row] = wait_for_refusals(1)
    assert (row.status, row.key_prefix, row.address) == (401, keys.visible_prefix(unknown_key), "127.0.0.1")


def test_refusals_before_the_view_are_recorded_too(live_server, settings):
    settings.API_MAX_JSON_BODY_BYTES = 1024
    presented = keys.generate_key()
    too_big = requests.post(
        f"{live_server.v1_base}/chat/completions",
        data=b"{" + b" " * 4096 + b"}",
        headers={"Authorization": f"Bearer {presented}", "Content-Type": "application/json"},
        timeout=30,
    )
    unknown = requests.get(f"{live_server.v1_base}/no/such/thing", headers=auth(presented), timeout=30)
    assert (too_big.status_code, unknown.status_code) == (413, 404)

    rows = wait_for_refusals(2)
    assert {(r.status, r.code, r.key_prefix) for r in rows} == {
        (413, "request_too_large", keys.visible_prefix(presented)),
        (404, "unknown_url", keys.visible_prefix(presented)),
    }
