"""/v1/chat/completions and /v1/completions through the official openai SDK against a live server."""

from __future__ import annotations

import json
import socket
import time

import openai
import pytest
import requests

from accounts.access import bump_access_epoch
from accounts.encryption import encrypt_secret
from accounts.models import OpenRouterKey, Plan
from billing.models import UsageEvent
from tests.support import make_user, wait_for_usage_events

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "openai/gpt-5-mini"
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


@pytest.fixture
def client(live_server, fake_upstream, caller):
    return openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)


def test_non_streaming_chat_returns_the_upstream_body_and_records_its_usage(client, fake_upstream, caller):
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    sent = fake_upstream.last_request
    assert completion.id == sent.generation_id
    assert sent.json["model"] == MODEL and sent.json["messages"] == HELLO
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
    [event] = wait_for_usage_events(1)
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (12, 7, 4)
    assert event.counted_messages == 1 and event.status == "succeeded" and not event.tokens_estimated
    assert event.generation_id == completion.id and event.workspace_id == caller.workspace.pk
    assert event.endpoint == "chat.completions" and event.byok is False


def test_non_streaming_chat_matches_the_openai_schema(live_server, fake_upstream, caller):
    from tests.openapi_schemas import errors

    response = requests.post(
        f"{live_server.api_base}/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["x-writingmate-messages-counted"] == "1"
    assert response.headers["x-request-id"].startswith("req_")
    assert errors("CreateChatCompletionResponse", response.json()) == []


def test_every_standard_field_is_forwarded_untouched(client, fake_upstream):
    extra = {
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "user": "user-42",
        "metadata": {"team": "a"},
        "reasoning_effort": "low",
        "max_completion_tokens": 50,
        "parallel_tool_calls": False,
    }
    client.chat.completions.create(model=MODEL, messages=HELLO, **extra)

    sent = fake_upstream.last_request.json
    assert {name: sent[name] for name in extra} == extra


def test_a_stream_without_include_usage_gets_no_usage_chunk(client, fake_upstream):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream."
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    assert fake_upstream.last_request.json["stream_options"] == {"include_usage": True}


def test_a_stream_with_include_usage_ends_with_the_usage_chunk(live_server, fake_upstream, caller):
    from tests.openapi_schemas import errors, sse_data

    response = requests.post(
        f"{live_server.v1_base}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    events = list(sse_data(response.text))
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    for event in events:
        assert errors("CreateChatCompletionStreamResponse", event) == []
    [event] = wait_for_usage_events(1)
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (12, 7, 4)


def test_upstream_comments_and_frames_pass_through_byte_for_byte(live_server, fake_upstream, caller):
    fake_upstream.send_processing_comment = True
    fake_upstream.always_send_usage = True
    with requests.post(
        f"{live_server.v1_base}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
        stream=True,
    ) as response:
        body = response.raw.read()

    assert body.startswith(b": OPENROUTER PROCESSING\n\n")
    replayed = requests.post(
        f"{fake_upstream.base_url}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
        timeout=10,
    ).content
    # Same frames, apart from the generation id and timestamp the upstream minted for each call.
    gen_ids = [r.generation_id for r in fake_upstream.requests]
    assert body.replace(gen_ids[0].encode(), b"ID").count(b"data: ") == replayed.replace(
        gen_ids[1].encode(), b"ID"
    ).count(b"data: ")


def test_streaming_is_not_buffered(live_server, fake_upstream, caller):
    fake_upstream.chunk_delay_ms = 300
    started = time.monotonic()
    with requests.post(
        f"{live_server.v1_base}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
        stream=True,
    ) as response:
        pieces = response.iter_content(chunk_size=None)
        first = next(pieces)
        first_at = time.monotonic() - started
        rest = b"".join(pieces)
        total = time.monotonic() - started

    assert first.startswith(b"data: ")
    assert rest.endswith(b"data: [DONE]\n\n")
    assert first_at < total - 0.6, (first_at, total)


def test_tool_call_round_trip(client, fake_upstream):
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    )
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "location": "Paris",
        "unit": "celsius",
    }

    second = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == "The tool returned: 18C and sunny"
    assert fake_upstream.last_request.json["messages"][-1]["tool_call_id"] == call.id


def test_streamed_tool_call_deltas_arrive_intact(client, fake_upstream):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"location": "Paris", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_legacy_completions_stream_and_not(client, fake_upstream):
    completion = client.completions.create(model=MODEL, prompt="Say hello")
    assert completion.choices[0].text == "Hello from the fake upstream."
    assert completion.usage.completion_tokens == 7

    chunks = list(client.completions.create(model=MODEL, prompt="Say hello", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello from the fake upstream."
    assert fake_upstream.last_request.path.endswith("/completions")
    events = wait_for_usage_events(2)
    assert {e.endpoint for e in events} == {"completions"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": HELLO, "n": 0}, "n"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": -5}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "tools": [{"type": "function"}]}, "tools[0].function"),
        (
            {"model": MODEL, "messages": HELLO, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"model": MODEL, "messages": HELLO, "models": ["openai/gpt-5"]}, "models"),
        ({"model": MODEL, "messages": HELLO, "provider": {"order": ["x"]}}, "provider"),
        ({"model": MODEL, "messages": HELLO, "plugins": [{"id": "web"}]}, "plugins"),
        ({"model": f"{MODEL}:online", "messages": HELLO}, "model"),
        ({"model": "openrouter/auto", "messages": HELLO}, "model"),
    ],
)
def test_bad_requests_get_a_400_naming_the_parameter(live_server, fake_upstream, caller, body, param):
    response = requests.post(
        f"{live_server.v1_base}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert fake_upstream.requests == []


def test_the_sdk_raises_bad_request_for_invalid_json(live_server, fake_upstream, caller):
    response = requests.post(
        f"{live_server.v1_base}/chat/completions",
        data=b"{not json",
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_unknown_and_disabled_models_are_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="nobody/nothing", messages=HELLO)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"


def test_a_model_outside_the_plan_is_403(live_server, fake_upstream):
    free = make_user("free@example.com", plan="free")
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=free.key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="openai/gpt-5", messages=HELLO)
    assert "Free plan" in raised.value.message and raised.value.code == "model_not_allowed"


def test_upstream_5xx_is_502_and_the_body_is_not_sent_again(client, fake_upstream):
    fake_upstream.fail_next("500", times=2)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.status_code == 502
    assert len(fake_upstream.requests) == 1
    [event] = wait_for_usage_events(1)
    assert event.status == "failed" and event.counted_messages == 0


def test_upstream_429_passes_through_with_retry_after(client, fake_upstream):
    fake_upstream.fail_next("429")
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.response.headers["retry-after"]
    assert len(fake_upstream.requests) == 1


def test_upstream_4xx_passes_through_with_its_message(client, fake_upstream):
    fake_upstream.fail_next("400")
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    upstream_message = json.loads(fake_upstream_error_body(fake_upstream, 400))["error"]["message"]
    assert raised.value.message.endswith(upstream_message) or upstream_message in raised.value.message


def fake_upstream_error_body(fake, status: int) -> str:
    return requests.post(f"{fake.base_url}/chat/completions", data=b"[]", timeout=5).text


def test_an_upstream_that_does_not_answer_is_a_504(client, fake_upstream, settings):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS = 0.5
    fake_upstream.fail_next("timeout_before_headers")
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.status_code == 504


@pytest.mark.parametrize("kind", ["drop_mid_stream", "malformed_sse", "stall_after_first_chunk"])
def test_failures_after_the_first_byte_become_one_error_event(client, fake_upstream, settings, kind):
    settings.UPSTREAM_CHUNK_TIMEOUT_SECONDS = 0.5
    fake_upstream.fail_next(kind)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    [event] = wait_for_usage_events(1)
    assert event.status == "failed"


def test_a_client_that_disconnects_mid_stream_cancels_the_upstream_and_is_billed_for_what_it_got(
    live_server, fake_upstream, caller
):
    fake_upstream.chunk_delay_ms = 200
    fake_upstream.chunks = 20
    body = json.dumps({"model": MODEL, "messages": HELLO, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {caller.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)

    cancelled = fake_upstream.wait_for_cancellation(timeout=5)
    [event] = wait_for_usage_events(1)
    assert event.status == "client_disconnected"
    assert event.tokens_estimated and event.completion_tokens > 0 and event.prompt_tokens > 0
    assert event.generation_id == cancelled.generation_id
    assert cancelled.chunks_sent < 20


def test_byok_requests_use_the_users_own_key_and_others_the_servers(live_server, fake_upstream, caller):
    OpenRouterKey.objects.create(user=caller.user, encrypted_key=encrypt_secret("sk-or-users-own"), last4="-own")
    bump_access_epoch()
    other = make_user("other@example.com", plan="unlimited")

    openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0).chat.completions.create(
        model=MODEL, messages=HELLO
    )
    assert fake_upstream.last_request.headers["authorization"] == "Bearer sk-or-users-own"
    openai.OpenAI(base_url=live_server.v1_base, api_key=other.key, max_retries=0).chat.completions.create(
        model=MODEL, messages=HELLO
    )
    assert fake_upstream.last_request.headers["authorization"] == "Bearer sk-or-server-key"

    events = {e.user_id: e for e in wait_for_usage_events(2)}
    assert events[caller.user.pk].byok is True and events[other.user.pk].byok is False


def test_client_headers_cannot_steer_the_upstream(live_server, fake_upstream, caller):
    response = requests.post(
        f"{live_server.v1_base}/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers={
            "Authorization": f"Bearer {caller.key}",
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Upstream-Url": "http://127.0.0.2:1/",
            "OpenAI-Organization": "org-x",
        },
        timeout=10,
    )
    assert response.status_code == 200
    sent = fake_upstream.last_request.headers
    assert sent["authorization"] == "Bearer sk-or-server-key"
    assert "x-upstream-url" not in sent and "openai-organization" not in sent


def test_plan_change_reaches_the_api_on_the_next_request(client, caller, fake_upstream):
    workspace = caller.workspace
    workspace.plan = Plan.objects.get(slug="free")
    workspace.save()
    bump_access_epoch()
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="openai/gpt-5", messages=HELLO)
    assert UsageEvent.objects.count() == 0
