"""Fault suite: an upstream that fails, stalls, drops or lies, and clients that go away.

Real HTTP against a live server in front of the fake upstream. Each case asserts what the client
got (an OpenAI-shaped error before the first byte, one error event after it), what the ledger holds,
and that daily_message_count still reconciles with it.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from billing.models import UsageEvent
from tests.fault_support import (
    HELLO,
    MODEL,
    assert_ledger_reconciles,
    assert_openai_error,
    auth,
    chat,
    settle_ledger,
    sse_events,
)
from tests.support import make_user, wait_for_idle_server, wait_until
from writingmate.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def caller():
    return make_user("upstream-faults@example.com", plan="pro")


@pytest.fixture
def url(live_server, fake_upstream, settings):
    settings.UPSTREAM_RETRY_BACKOFF_SECONDS = 0.01
    return f"{live_server.v1_base}/chat/completions"


def post(url: str, key: str, **fields: object) -> requests.Response:
    return requests.post(url, json=chat(**fields), headers=auth(key), timeout=20)


# --- before the first byte ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["500", "502", "503"])
def test_a_failing_upstream_is_not_sent_the_body_again_502_and_counted_zero(url, caller, fake_upstream, status):
    # The upstream received the body: a second copy could run (and bill) the model twice (issue #10 point 2).
    fake_upstream.fail_next(status, times=2)
    response = post(url, caller.key)

    assert_openai_error(response, status=502, code="upstream_error", error_type="server_error")
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    [event] = settle_ledger(1)
    assert (event.status, event.counted_messages, event.completion_tokens) == ("failed", 0, 0)
    assert_ledger_reconciles()


def test_an_upstream_that_never_answers_is_504_within_the_first_byte_timeout(url, caller, fake_upstream, settings):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS = 0.5
    fake_upstream.hang_seconds = 5
    fake_upstream.fail_next("timeout_before_headers", times=2)
    started = time.monotonic()
    response = post(url, caller.key)
    elapsed = time.monotonic() - started

    assert_openai_error(response, status=504, code="upstream_timeout", error_type="server_error")
    assert elapsed < 3
    [event] = settle_ledger(1)
    assert (event.status, event.counted_messages) == ("failed", 0)
    assert_ledger_reconciles()


def test_upstream_rate_limits_pass_through_with_retry_after_and_cost_nothing(url, caller, fake_upstream):
    fake_upstream.fail_next("429")
    response = post(url, caller.key)

    assert_openai_error(response, status=429, code="rate_limit_exceeded", error_type="rate_limit_error")
    assert response.headers["retry-after"] == "1"
    assert len(fake_upstream.requests_to("/chat/completions")) == 1  # a 429 is not retried by us
    [event] = settle_ledger(1)
    assert event.counted_messages == 0
    assert_ledger_reconciles()


def test_the_servers_upstream_key_being_rejected_is_502_never_the_clients_401(url, caller, fake_upstream):
    fake_upstream.fail_next("401")
    response = post(url, caller.key)

    assert_openai_error(response, status=502, code="upstream_auth_failed")
    assert "sk-or-server-key" not in response.text
    [event] = settle_ledger(1)
    assert event.counted_messages == 0


# --- after the first byte ----------------------------------------------------------------------


def stream(url: str, key: str, **fields: object) -> tuple[requests.Response, list[object]]:
    response = requests.post(url, json=chat(stream=True, **fields), headers=auth(key), timeout=20)
    return response, sse_events(response.content)


@pytest.mark.parametrize(
    "kind",
    [
        "drop_mid_stream",
        "malformed_sse",
        "malformed_error_sse",  # looks like an error, is not JSON
        "stall_after_first_chunk",
        "error_mid_stream",
    ],
)
def test_a_stream_that_breaks_ends_with_one_error_event_and_bills_what_was_delivered(
    url, caller, fake_upstream, settings, kind
):
    settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS = 0.5
    fake_upstream.hang_seconds = 3
    fake_upstream.fail_next(kind)
    response, events = stream(url, caller.key)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    errors = [e for e in events if isinstance(e, dict) and e.get("error")]
    assert len(errors) == 1, events
    error = errors[0]["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert "Traceback" not in response.text and "sk-or-server-key" not in response.text
    chunks = [e for e in events if isinstance(e, dict) and not e.get("error")]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    [event] = settle_ledger(1)
    assert event.status == "failed"
    assert event.counted_messages == (1 if event.completion_tokens else 0)
    assert_ledger_reconciles()


def test_absurd_usage_numbers_are_replaced_by_an_estimate(url, caller, fake_upstream):
    fake_upstream.fail_next("absurd_usage")
    response = post(url, caller.key)

    assert response.status_code == 200
    [event] = settle_ledger(1)
    assert event.tokens_estimated
    assert 0 < event.prompt_tokens < 1000 and 0 <= event.completion_tokens < 1000
    assert event.counted_messages == 1
    assert_ledger_reconciles()


# --- clients that go away ----------------------------------------------------------------------


def raw_request(port: int, key: str, body: bytes, *, declared_length: int | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {declared_length or len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_a_client_that_leaves_while_uploading_costs_nothing(live_server, url, caller, fake_upstream):
    body = json.dumps(chat()).encode()
    sock = raw_request(live_server.port, caller.key, body[:20], declared_length=len(body))
    wait_until(lambda: application.api_handler.in_flight == 1, message="the server never took the request")
    sock.close()
    wait_for_idle_server()

    assert fake_upstream.requests_to("/chat/completions") == []
    assert UsageEvent.objects.count() == 0


def test_a_client_that_leaves_before_the_first_byte_cancels_the_upstream_and_costs_nothing(
    live_server, url, caller, fake_upstream
):
    fake_upstream.latency_ms = 2000
    sock = raw_request(live_server.port, caller.key, json.dumps(chat(stream=True)).encode())
    fake_upstream.wait_for_requests(1)
    sock.close()

    cancelled = fake_upstream.wait_for_cancellation(timeout=5)
    [event] = settle_ledger(1)
    assert cancelled.chunks_sent == 0
    assert event.status == "client_disconnected"
    assert event.counted_messages == 0
    assert_ledger_reconciles()


def test_a_client_that_leaves_mid_stream_is_billed_for_what_it_received(live_server, url, caller, fake_upstream):
    fake_upstream.chunk_delay_ms = 200
    fake_upstream.chunks = 20
    sock = raw_request(live_server.port, caller.key, json.dumps(chat(stream=True)).encode())
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    sock.close()

    cancelled = fake_upstream.wait_for_cancellation(timeout=5)
    [event] = settle_ledger(1)
    assert cancelled.chunks_sent < 20
    assert event.status == "client_disconnected"
    assert event.tokens_estimated and event.completion_tokens > 0
    assert event.counted_messages == 1
    assert_ledger_reconciles()


def test_a_client_that_leaves_after_the_last_byte_is_billed_normally(live_server, url, caller, fake_upstream):
    sock = raw_request(live_server.port, caller.key, json.dumps(chat(stream=True)).encode())
    received = b""
    while b"data: [DONE]" not in received:
        received += sock.recv(65536)
    sock.close()

    [event] = settle_ledger(1)
    assert event.status == "succeeded" and not event.tokens_estimated
    assert (event.prompt_tokens, event.completion_tokens) == (12, 7)
    assert_ledger_reconciles()


def test_many_clients_leaving_mid_stream_leave_no_stream_open_and_every_request_billed(
    live_server, url, caller, fake_upstream
):
    fake_upstream.chunk_delay_ms = 100
    fake_upstream.chunks = 30
    sockets = [raw_request(live_server.port, caller.key, json.dumps(chat(stream=True)).encode()) for _ in range(10)]
    for sock in sockets:
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        sock.close()

    fake_upstream.wait_until_finished(timeout=10)
    events = settle_ledger(10, timeout=10)
    assert {e.status for e in events} == {"client_disconnected"}
    assert all(not r.completed for r in fake_upstream.requests_to("/chat/completions"))
    assert_ledger_reconciles()
    assert HELLO  # the prompt every request sent
    assert MODEL in {e.model for e in events}
