"""Fault suite: concurrent requests at the edge of a daily limit, and retries with and without Idempotency-Key.

Real HTTP against a live server; the ledger and daily_message_count are checked afterwards.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from accounts.models import Plan
from billing.models import DailyMessageCount
from tests.fault_support import assert_ledger_reconciles, assert_openai_error, auth, chat, settle_ledger
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 3


@pytest.fixture
def edge_plan() -> Plan:
    return Plan.objects.create(slug="edge", name="Edge", daily_message_limit=LIMIT, allowed_model_tiers=["basic"])


@pytest.fixture
def url(live_server, fake_upstream):
    return f"{live_server.v1_base}/chat/completions"


def post(url: str, key: str, *, body: dict | None = None, **headers: str) -> requests.Response:
    return requests.post(url, json=body or chat(), headers=auth(key, **headers), timeout=30)


def test_concurrent_requests_at_the_edge_of_a_daily_limit_admit_exactly_the_limit(url, fake_upstream, edge_plan):
    edge = make_user("edge@example.com", plan="edge")
    neighbour = make_user("neighbour@example.com", plan="edge")
    fake_upstream.latency_ms = 300  # every request is in flight at once

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda _: post(url, edge.key), range(12)))

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == LIMIT, [r.status_code for r in responses]
    for response in refused:
        assert_openai_error(response, status=429, code="daily_limit_exceeded", error_type="insufficient_quota")
        assert response.headers["x-should-retry"] == "false"
        assert int(response.headers["retry-after"]) > 0
    assert len(fake_upstream.requests_to("/chat/completions")) == LIMIT
    assert post(url, neighbour.key).status_code == 200  # the other workspace's budget is its own

    events = settle_ledger(LIMIT + 1)
    assert sum(e.counted_messages for e in events if e.workspace_id == edge.workspace.pk) == LIMIT
    assert_ledger_reconciles()
    assert DailyMessageCount.objects.get(workspace_id=edge.workspace.pk).count == LIMIT


def test_a_retry_without_idempotency_key_is_a_new_request_and_is_charged_again(url, fake_upstream):
    caller = make_user("retry@example.com")
    first, second = post(url, caller.key), post(url, caller.key)

    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    assert len(fake_upstream.requests_to("/chat/completions")) == 2
    assert len(settle_ledger(2)) == 2


def test_a_retry_with_the_same_idempotency_key_replays_without_a_new_call_or_charge(url, fake_upstream):
    caller = make_user("idem@example.com")
    key = str(uuid.uuid4())
    first = post(url, caller.key, **{"Idempotency-Key": key})
    [event] = settle_ledger(1)
    replay = post(url, caller.key, **{"Idempotency-Key": key})

    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert replay.headers.get("idempotent-replayed") == "true"
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    assert settle_ledger(1) == [event]
    assert_ledger_reconciles()


def test_the_same_idempotency_key_with_another_body_is_409(url, fake_upstream):
    caller = make_user("idem-409@example.com")
    key = str(uuid.uuid4())
    assert post(url, caller.key, **{"Idempotency-Key": key}).status_code == 200

    conflict = post(url, caller.key, body=chat(temperature=0.5), **{"Idempotency-Key": key})

    assert_openai_error(conflict, status=409, code="idempotency_key_reused", error_type="invalid_request_error")
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    settle_ledger(1)


def test_concurrent_duplicates_with_one_idempotency_key_are_charged_once(url, fake_upstream):
    caller = make_user("idem-race@example.com")
    key = str(uuid.uuid4())
    fake_upstream.latency_ms = 500

    with ThreadPoolExecutor(max_workers=5) as pool:
        responses = list(pool.map(lambda _: post(url, caller.key, **{"Idempotency-Key": key}), range(5)))

    ok = [r for r in responses if r.status_code == 200]
    assert ok, [r.text for r in responses]
    assert len({r.json()["id"] for r in ok}) == 1
    for response in responses:
        if response.status_code != 200:
            assert_openai_error(response, status=409, code="idempotency_key_in_use")
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    settle_ledger(1)
    assert_ledger_reconciles()


def test_idempotency_keys_are_scoped_to_the_developer_key(url, fake_upstream):
    alice, bob = make_user("alice@example.com"), make_user("bob@example.com")
    key = "shared-retry-key"

    first = post(url, alice.key, **{"Idempotency-Key": key})
    second = post(url, bob.key, **{"Idempotency-Key": key})

    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]  # Bob never sees Alice's stored response
    assert len(fake_upstream.requests_to("/chat/completions")) == 2
    settle_ledger(2)


def test_a_failed_request_can_be_retried_with_the_same_idempotency_key(url, fake_upstream, settings):
    settings.UPSTREAM_RETRY_BACKOFF_SECONDS = 0.01
    caller = make_user("idem-fail@example.com")
    key = str(uuid.uuid4())
    fake_upstream.fail_next("500")  # a 5xx is not resent: one failure fails the request

    failed = post(url, caller.key, **{"Idempotency-Key": key})
    retried = post(url, caller.key, **{"Idempotency-Key": key})

    assert failed.status_code == 502
    assert retried.status_code == 200 and retried.headers.get("idempotent-replayed") is None
    events = settle_ledger(2)
    assert sorted((e.status, e.counted_messages) for e in events) == [("failed", 0), ("succeeded", 1)]
    assert_ledger_reconciles()
