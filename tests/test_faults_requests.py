"""Fault suite: malformed and hostile requests against a live server, over real HTTP.

Each case asserts the exact OpenAI-shaped error, that nothing reached the upstream, and that nothing
was billed. docs/reliability.md lists what each case proved.
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from billing.models import UsageEvent
from tests.fault_support import (
    HELLO,
    MODEL,
    assert_nothing_recorded,
    assert_openai_error,
    auth,
    chat,
    settle_ledger,
)
from tests.support import make_user, wait_for_idle_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def caller():
    return make_user("faults@example.com", plan="unlimited")


@pytest.fixture
def url(live_server, fake_upstream):
    return f"{live_server.v1_base}/chat/completions"


def post_raw(url: str, key: str, data: bytes | str, content_type: str = "application/json") -> requests.Response:
    return requests.post(url, data=data, headers=auth(key, **{"Content-Type": content_type}), timeout=10)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b'{"model": "openai/gpt-5-mini", "messages": [}',
        b"\xff\xfe{\x00",
        b"[]",
        b'"just a string"',
        b"null",
        b'{"model": ' + b"9" * 5000 + b"}",
    ],
    ids=["empty", "truncated", "broken", "not-utf8", "array", "string", "null", "huge-integer"],
)
def test_a_body_that_is_not_a_json_object_is_400_invalid_json(url, caller, fake_upstream, data):
    response = post_raw(url, caller.key, data)

    assert_openai_error(response, status=400, code="invalid_json", error_type="invalid_request_error")
    assert_nothing_recorded(fake_upstream)


def test_deeply_nested_json_is_400_not_500(url, caller, fake_upstream):
    nested = b'{"model": "openai/gpt-5-mini", "messages": [], "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = post_raw(url, caller.key, nested)

    assert_openai_error(response, status=400, code="invalid_json", error_type="invalid_request_error")
    assert_nothing_recorded(fake_upstream)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"model": 5}, "model", "invalid_type"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"n": 1000}, "n", "invalid_value"),
        ({"max_tokens": -1}, "max_tokens", "invalid_value"),
        ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
        ({"temperature": float("nan")}, "temperature", "invalid_value"),
    ],
    ids=["model-int", "messages-str", "no-role", "content-object", "stream-str", "n-huge", "negative", "float", "nan"],
)
def test_wrong_types_and_values_get_a_400_naming_the_parameter(url, caller, fake_upstream, fields, param, code):
    response = post_raw(url, caller.key, json.dumps(chat(**fields)))

    assert_openai_error(response, status=400, code=code, param=param, error_type="invalid_request_error")
    assert_nothing_recorded(fake_upstream)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"provider": {"order": ["somewhere-cheaper"]}}, "provider", "unsupported_parameter"),
        ({"models": [MODEL, "anthropic/claude-opus-4"]}, "models", "unsupported_parameter"),
        ({"route": "fallback"}, "route", "unsupported_parameter"),
        ({"transforms": ["middle-out"]}, "transforms", "unsupported_parameter"),
        ({"plugins": [{"id": "web"}]}, "plugins", "unsupported_parameter"),
        ({"model": f"{MODEL}:online"}, "model", "unsupported_model_variant"),
        ({"model": "openrouter/auto"}, "model", "unsupported_model_variant"),
    ],
    ids=["provider", "models", "route", "transforms", "plugins", "online-suffix", "auto-router"],
)
def test_fields_that_would_change_routing_are_refused(url, caller, fake_upstream, fields, param, code):
    response = post_raw(url, caller.key, json.dumps(chat(**fields)))

    assert_openai_error(response, status=400, code=code, param=param)
    assert_nothing_recorded(fake_upstream)


def test_unsupported_content_types_are_415(url, caller, fake_upstream):
    for content_type, data in (
        ("application/x-www-form-urlencoded", "model=openai/gpt-5-mini"),
        ("text/plain", json.dumps(chat())),
        ("multipart/form-data; boundary=x", "--x--"),
    ):
        response = post_raw(url, caller.key, data, content_type=content_type)
        assert_openai_error(response, status=415, code="unsupported_media_type")
    assert_nothing_recorded(fake_upstream)


def test_bodies_over_the_limit_are_413_before_they_are_read(url, caller, fake_upstream, settings):
    settings.API_MAX_JSON_BODY_BYTES = 64 * 1024
    declared = post_raw(url, caller.key, json.dumps(chat(metadata={"pad": "x" * 70_000})))

    def chunks():
        yield b'{"model": "openai/gpt-5-mini", "messages": [], "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    chunked = requests.post(url, data=chunks(), headers=auth(caller.key, **{"Content-Type": "application/json"}))

    assert_openai_error(declared, status=413, code="request_too_large", message_contains="65536 bytes")
    assert_openai_error(chunked, status=413, code="request_too_large")
    assert_nothing_recorded(fake_upstream)


def test_unknown_routes_and_wrong_methods_are_json_404_and_405_even_without_a_key(live_server, caller):
    unknown = requests.get(f"{live_server.v1_base}/engines/davinci/completions", timeout=10)
    unknown_api = requests.post(f"{live_server.api_base}/nothing-here", json={}, timeout=10)
    wrong_method = requests.get(f"{live_server.v1_base}/chat/completions", headers=auth(caller.key), timeout=10)
    delete_models = requests.delete(f"{live_server.v1_base}/models", headers=auth(caller.key), timeout=10)

    assert_openai_error(unknown, status=404, code="unknown_url")
    assert_openai_error(unknown_api, status=404, code="unknown_url")
    assert_openai_error(wrong_method, status=405, code="method_not_allowed")
    assert wrong_method.headers["Allow"] == "POST"
    assert_openai_error(delete_models, status=405, code="method_not_allowed")


def test_client_headers_cannot_reach_other_hosts_or_credentials(url, caller, fake_upstream):
    hostile = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Original-URL": "/admin/",
        "X-Rewrite-URL": "/admin/",
        "HTTP-Referer": "https://evil.example",
        "X-Upstream-Base-Url": "http://evil.example",
        "OpenAI-Organization": "org-evil",
        "X-OpenRouter-Api-Key": "sk-or-v1-" + "a" * 64,
    }
    response = requests.post(url, json=chat(base_url="http://evil.example"), headers=auth(caller.key, **hostile))

    assert response.status_code == 200, response.text
    [sent] = fake_upstream.requests_to("/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
    assert not any("evil" in value for value in sent.headers.values())
    assert sent.json.get("base_url") in (None, "http://evil.example")  # unknown fields pass as data, never as routing
    settle_ledger(1)


def test_a_header_with_a_line_break_never_reaches_the_application(live_server, caller, fake_upstream):
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + caller.key.encode() + b"\r\n"
        b"X-Injected: a\rAuthorization: Bearer wmk_evil\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)

    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert_nothing_recorded(fake_upstream)


def test_unknown_standard_looking_fields_pass_through_and_the_request_succeeds(url, caller, fake_upstream):
    response = requests.post(
        url, json=chat(seed=7, metadata={"trace": "abc"}, some_future_field={"x": 1}), headers=auth(caller.key)
    )

    assert response.status_code == 200, response.text
    sent = fake_upstream.last_request.json
    assert sent["seed"] == 7 and sent["some_future_field"] == {"x": 1} and sent["messages"] == HELLO
    [event] = settle_ledger(1)
    assert event.status == "succeeded" and event.counted_messages == 1


def test_hostile_uploads_to_audio_transcriptions(live_server, caller, fake_upstream, settings):
    url = f"{live_server.v1_base}/audio/transcriptions"
    headers = auth(caller.key)
    model = ("model", (None, "openai/whisper-1"))

    as_json = requests.post(url, json={"model": "openai/whisper-1"}, headers=headers, timeout=10)
    no_file = requests.post(url, files=[model], headers=headers, timeout=10)
    no_boundary = requests.post(url, data=b"x", headers={**headers, "Content-Type": "multipart/form-data"}, timeout=10)
    not_audio = requests.post(url, files=[("file", ("a.mp3", b"MZ\x90\x00" * 25)), model], headers=headers)
    settings.API_MAX_AUDIO_BYTES = 1000
    too_big = requests.post(url, files=[("file", ("a.mp3", b"x" * 3_000_000)), model], headers=headers, timeout=30)

    assert_openai_error(as_json, status=415, code="unsupported_media_type")
    assert_openai_error(no_file, status=400, code="missing_required_parameter", param="file")
    assert_openai_error(no_boundary, status=400, code="invalid_multipart")
    assert_openai_error(not_audio, status=400, code="invalid_file_format", param="file")
    assert_openai_error(too_big, status=413, code="request_too_large")
    wait_for_idle_server()
    assert fake_upstream.requests_to("/audio/transcriptions") == []
    assert UsageEvent.objects.count() == 0


def test_responses_refuses_unknown_or_unsupported_state_and_bad_input(live_server, caller, fake_upstream):
    url = f"{live_server.v1_base}/responses"
    previous = requests.post(
        url, json={"model": MODEL, "input": "hi", "previous_response_id": "resp_123"}, headers=auth(caller.key)
    )
    conversation = requests.post(
        url, json={"model": MODEL, "input": "hi", "conversation": "conv_123"}, headers=auth(caller.key)
    )
    bad_input = requests.post(url, json={"model": MODEL, "input": 5}, headers=auth(caller.key))

    assert_openai_error(
        previous,
        status=404,
        code="previous_response_not_found",
        param="previous_response_id",
        message_contains="resp_123",
    )
    assert_openai_error(conversation, status=400, code="unsupported_parameter", param="conversation")
    assert_openai_error(bad_input, status=400, code="invalid_type", param="input")
    assert_nothing_recorded(fake_upstream)


def test_model_ids_cannot_walk_out_of_the_models_route(live_server, caller):
    response = requests.get(f"{live_server.v1_base}/models/..%2F..%2Fadmin%2F", headers=auth(caller.key), timeout=10)

    assert_openai_error(response, status=404, code="model_not_found", param="model")


def test_oversized_headers_are_refused(url, caller, fake_upstream):
    response = requests.post(url, json=chat(), headers=auth(caller.key, **{"X-Padding": "a" * 100_000}), timeout=10)

    assert_openai_error(response, status=431, code=response.json()["error"]["code"])
    assert_nothing_recorded(fake_upstream)
