"""/api/anthropic/v1 through the official anthropic SDK against a live server and the fake upstream.

Claude models go to the upstream's Messages API byte for byte; every other model is translated to chat
completions and back. Responses and stream events are validated against the SDK's own types.
"""

from __future__ import annotations

import asyncio
import json

import anthropic
import pytest
import requests
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from pydantic import TypeAdapter

from accounts.models import Plan
from billing.models import UsageEvent
from gateway.models import CatalogueModel, ModelAlias
from tests.support import make_user, wait_for_usage_events

pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "anthropic/claude-sonnet-4.5"
GPT = "openai/gpt-5-mini"
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
EVENT = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


@pytest.fixture
def base_url(live_server):
    return f"{live_server.url}/api/anthropic"


@pytest.fixture
def client(base_url, fake_upstream, caller):
    return anthropic.Anthropic(base_url=base_url, api_key=caller.key, max_retries=0, timeout=20)


def _events(raw: bytes) -> list[dict]:
    """The data of each SSE event, checked to carry its type in the `event:` line too."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in lines:
            data = json.loads(lines["data"])
            assert lines.get("event") == data["type"]
            events.append(data)
    return events


def _post(base_url: str, key: str, body: dict, **headers: str) -> requests.Response:
    return requests.post(
        f"{base_url}/v1/messages?beta=true",
        data=json.dumps(body),
        headers={"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json", **headers},
        timeout=20,
    )


def _post_raw(base_url: str, key: str, raw: str, **headers: str) -> requests.Response:
    """A body as these bytes exactly (no anthropic-version unless given)."""
    headers = {"x-api-key": key, "content-type": "application/json", **headers}
    return requests.post(f"{base_url}/v1/messages", data=raw.encode(), headers=headers, timeout=20)


# ---- Claude: the upstream's Messages API, byte for byte ----------------------------------------------


def test_a_claude_message_goes_upstream_as_sent_and_is_billed_with_cache_tokens(client, fake_upstream, caller):
    message = client.messages.create(
        model=CLAUDE,
        max_tokens=256,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=HELLO,
        metadata={"user_id": "user-1"},
    )

    assert isinstance(message, Message)
    assert message.content[0].text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (12, 4)
    sent = fake_upstream.last_request
    assert sent.path == "/api/v1/messages"
    assert sent.json["model"] == CLAUDE and sent.json["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
    assert sent.headers["anthropic-version"] == anthropic.Anthropic(api_key="x").default_headers["anthropic-version"]
    assert "x-api-key" not in sent.headers
    [event] = wait_for_usage_events(1)
    # prompt = input 12 + cache read 4 + cache creation 3; cached = cache read; completion = output.
    assert (event.prompt_tokens, event.cached_tokens, event.completion_tokens) == (19, 4, 7)
    assert event.endpoint == "messages" and event.model == CLAUDE and event.status == "succeeded"
    assert not event.tokens_estimated and event.generation_id == message.id


def test_the_body_reaches_the_upstream_byte_for_byte_except_the_model(base_url, fake_upstream, caller):
    # Odd spacing, key order, escapes and number forms that a re-serialisation would change.
    raw = (
        '{"max_tokens":  64 ,"model":"claude-sonnet-4-5-20250929","messages":[{"role":"user","content":'
        '"caf\\u00e9 \\ud83d\\ude00 1.0e2"}],"temperature":1.0,"extra_body":{"base_url":"http://evil"},'
        '"api_base":"http://evil","headers":{"x":"y"}}'
    )
    response = _post_raw(base_url, caller.key, raw, **{"anthropic-beta": "a-2025,b-2026"})

    assert response.status_code == 200, response.text
    sent = fake_upstream.last_request
    assert sent.body == (
        b'{"max_tokens":  64 ,"model":"anthropic/claude-sonnet-4.5","messages":[{"role":"user","content":'
        b'"caf\\u00e9 \\ud83d\\ude00 1.0e2"}],"temperature":1.0}'
    )
    assert sent.headers["anthropic-beta"] == "a-2025,b-2026"
    assert sent.headers["anthropic-version"] == "2023-06-01"  # the default when a client sends none
    assert response.content == sent.sent
    assert response.headers["request-id"].startswith("req_")


def test_an_alias_that_does_not_say_claude_still_sends_the_body_byte_for_byte(base_url, fake_upstream, caller):
    # A model named first that does not look like Claude's is read by orjson; the members' places are
    # found when the alias turns out to serve a Claude model, and every byte but the model's still goes.
    from gateway.surfaces.anthropic.models import forget_aliases

    ModelAlias.objects.create(alias="team-default", target=CatalogueModel.objects.get(slug=CLAUDE))
    forget_aliases()
    raw = (
        '{"model": "team-default", "metadata": {"user_id": "u"},\n "api_base": "http://evil", "messages":'
        '[{"role":"user","content":"caf\\u00e9  1.0e2"}], "api_base": "http://evil", "max_tokens": 64}'
    )
    response = _post_raw(base_url, caller.key, raw)

    assert response.status_code == 200, response.text
    assert fake_upstream.last_request.body == (
        b'{"model": "anthropic/claude-sonnet-4.5", "metadata": {"user_id": "u"},\n "messages":'
        b'[{"role":"user","content":"caf\\u00e9  1.0e2"}], "max_tokens": 64}'
    )


def test_a_claude_stream_is_relayed_byte_for_byte_and_validates_as_sdk_events(base_url, fake_upstream, caller):
    response = _post(base_url, caller.key, {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == fake_upstream.last_request.sent
    events = [EVENT.validate_python(e) for e in _events(response.content) if e["type"] != "ping"]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    [line] = wait_for_usage_events(1)
    assert (line.prompt_tokens, line.cached_tokens, line.completion_tokens) == (19, 4, 7)


def test_sdk_stream_reassembles_text_and_reports_final_usage(client, fake_upstream):
    with client.messages.stream(model=CLAUDE, max_tokens=64, messages=HELLO) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert kinds.index("message_delta") > kinds.index("content_block_stop")
    assert final.content[0].text == "Hello from the fake upstream."
    assert final.usage.output_tokens == 7 and final.usage.cache_creation_input_tokens == 3


def test_thinking_signatures_survive_the_next_turn(client, fake_upstream):
    first = client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=HELLO,
    )
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.signature == fake_upstream.sign_thinking(thinking.thinking)

    second = client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[
            *HELLO,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "Again"},
        ],
    )
    assert second.content[-1].text == "Hello from the fake upstream."

    tampered = {**thinking.model_dump(), "thinking": "something else"}
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        client.messages.create(
            model=CLAUDE,
            max_tokens=2048,
            messages=[*HELLO, {"role": "assistant", "content": [tampered]}, {"role": "user", "content": "Again"}],
        )


def test_a_claude_tool_round_trip_keeps_tool_ids(client, fake_upstream):
    fake_upstream.messages_tool_call = ("get_weather", {"location": "Paris"})
    first = client.messages.create(
        model=CLAUDE, max_tokens=256, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and call.input == {"location": "Paris"}

    result = {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "18C and sunny",
        "cache_control": {"type": "ephemeral"},
    }
    second = client.messages.create(
        model=CLAUDE,
        max_tokens=256,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [result]},
        ],
    )
    assert second.content[0].text == "The tool returned: 18C and sunny"
    assert fake_upstream.last_request.json["messages"][1]["content"][0]["id"] == call.id


# ---- every other model: translated to chat completions -----------------------------------------------


def test_a_non_claude_model_is_translated_to_chat_and_back(client, fake_upstream):
    message = client.messages.create(
        model=GPT,
        max_tokens=100,
        system="Be brief.",
        messages=HELLO,
        stop_sequences=["END"],
        metadata={"user_id": "user-1"},
        extra_body={"temperature": 0.5, "top_k": 5},
    )

    assert message.content[0].text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn" and message.model == GPT
    assert message.id.startswith("msg_") and len(message.id) == len("msg_") + 32
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (8, 4, 7)
    sent = fake_upstream.last_request
    assert sent.path == "/api/v1/chat/completions"
    assert sent.json["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]
    assert sent.json["stop"] == ["END"] and sent.json["max_tokens"] == 100 and sent.json["top_k"] == 5
    assert sent.json["user"] == "user-1"
    [event] = wait_for_usage_events(1)
    assert (event.prompt_tokens, event.cached_tokens, event.completion_tokens) == (12, 4, 7)
    assert event.endpoint == "messages" and event.model == GPT


def test_a_translated_stream_is_anthropics_exact_event_sequence(base_url, fake_upstream, caller):
    body = {
        "model": GPT,
        "max_tokens": 2000,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": HELLO,
    }
    response = _post(base_url, caller.key, body)

    assert response.status_code == 200
    raw = _events(response.content)
    for event in raw:
        if event["type"] != "ping":  # a keep-alive the SDK skips; it has no type there
            EVENT.validate_python(event)
    kinds = [(e["type"], (e.get("content_block") or e.get("delta") or {}).get("type")) for e in raw]
    assert kinds[:2] == [("message_start", None), ("ping", None)]
    assert kinds[2:4] == [("content_block_start", "thinking"), ("content_block_delta", "thinking_delta")]
    text_start = kinds.index(("content_block_start", "text"))
    assert kinds[text_start - 1] == ("content_block_stop", None)
    assert kinds[-3:] == [("content_block_stop", None), ("message_delta", None), ("message_stop", None)]
    assert "".join(e["delta"].get("text", "") for e in raw if e["type"] == "content_block_delta") == (
        "Hello from the fake upstream."
    )
    assert raw[-2]["delta"]["stop_reason"] == "end_turn" and raw[-2]["usage"]["output_tokens"] == 7
    assert fake_upstream.last_request.json["reasoning"] == {"max_tokens": 1024}
    # The message id names the request its `request-id` header names, for support to find it.
    assert raw[0]["message"]["id"] == "msg_" + response.headers["request-id"].removeprefix("req_")


def test_translated_tools_round_trip_with_ids_kept(client, fake_upstream):
    with client.messages.stream(
        model=GPT, max_tokens=256, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}, messages=HELLO
    ) as stream:
        first = stream.get_final_message()
    [call] = first.content
    assert call.type == "tool_use" and call.input == {"location": "Paris", "unit": "celsius"}
    assert first.stop_reason == "tool_use"
    sent = fake_upstream.last_request.json
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]

    second = client.messages.create(
        model=GPT,
        max_tokens=256,
        tools=[WEATHER],
        messages=[
            *HELLO,
            {"role": "assistant", "content": [call.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "18C"}]}
                ],
            },
        ],
    )
    assert second.content[0].text == "The tool returned: 18C"
    chat = fake_upstream.last_request.json["messages"]
    assert chat[1]["tool_calls"][0]["id"] == call.id
    assert chat[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C"}


def test_translated_thinking_comes_back_as_a_thinking_block(client, fake_upstream):
    message = client.messages.create(
        model=GPT,
        max_tokens=2000,
        thinking={"type": "adaptive"},
        messages=HELLO,
        output_config={"effort": "high"},
    )
    assert message.content[0].type == "thinking" and message.content[0].thinking == "Let me think about that."
    assert fake_upstream.last_request.json["reasoning"] == {"effort": "high"}


def test_claude_codes_default_request_is_accepted_for_a_translated_model(base_url, fake_upstream, caller):
    """What Claude Code sends with its default model: system messages inside `messages`, betas, cache breakpoints."""
    body = {
        "model": GPT,
        "max_tokens": 128000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc_account__session_1"},
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {**WEATHER, "defer_loading": True, "cache_control": {"type": "ephemeral"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "messages": [
            {"role": "system", "content": "Extra instructions."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
        ],
    }
    response = _post(
        base_url,
        caller.key,
        body,
        **{"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"},
    )

    assert response.status_code == 200, response.text
    sent = fake_upstream.last_request.json
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert sent["messages"][2]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert "context_management" not in sent and "output_config" not in sent


# ---- models, aliases and plans -----------------------------------------------------------------------


def test_anthropic_ids_and_claude_codes_defaults_resolve_through_aliases(client, fake_upstream):
    for model in (
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
        "claude-haiku-4-5-20251001",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
    ):
        client.messages.create(model=model, max_tokens=16, messages=HELLO)
        assert fake_upstream.last_request.json["model"] == CLAUDE


def test_a_default_the_plan_lacks_falls_back_to_a_model_it_allows(base_url, fake_upstream):
    free = make_user("free@example.com", plan="free")
    client = anthropic.Anthropic(base_url=base_url, api_key=free.key, max_retries=0)

    message = client.messages.create(model="claude-opus-5-5", max_tokens=16, messages=HELLO)
    assert message.model == GPT
    assert fake_upstream.last_request.path == "/api/v1/chat/completions"

    with pytest.raises(anthropic.PermissionDeniedError, match="claude-sonnet-4-5"):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)


def test_an_alias_staff_change_takes_effect(client, fake_upstream):
    alias = ModelAlias.objects.get(alias="claude-haiku-5-5")
    alias.target = CatalogueModel.objects.get(slug="google/gemini-2.5-flash")
    alias.save()
    from gateway.surfaces.anthropic.models import forget_aliases

    forget_aliases()  # what the reload interval does on its own
    client.messages.create(model="claude-haiku-5-5", max_tokens=16, messages=HELLO)
    assert fake_upstream.last_request.json["model"] == "google/gemini-2.5-flash"


def test_an_unknown_model_is_a_not_found_error_naming_it(client, fake_upstream):
    with pytest.raises(anthropic.NotFoundError, match="claude-nonexistent-9") as raised:
        client.messages.create(model="claude-nonexistent-9", max_tokens=16, messages=HELLO)
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "not_found_error"
    assert fake_upstream.requests == []


def test_models_are_listed_in_anthropics_shape(client, fake_upstream):
    page = client.models.list(limit=2)
    assert [m.type for m in page.data] == ["model", "model"] and page.has_more
    ids = [m.id for m in client.models.list()]
    assert CLAUDE in ids and GPT in ids and "openai/whisper-1" not in ids


# ---- authentication and errors -----------------------------------------------------------------------


def test_the_key_works_as_x_api_key_and_as_bearer(base_url, fake_upstream, caller):
    by_header = anthropic.Anthropic(base_url=base_url, api_key=caller.key, max_retries=0)
    by_token = anthropic.Anthropic(base_url=base_url, auth_token=caller.key, max_retries=0)

    for client in (by_header, by_token):
        assert client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO).content
    assert len(wait_for_usage_events(2)) == 2


def test_a_bad_key_is_an_authentication_error_in_anthropics_shape(base_url, fake_upstream):
    client = anthropic.Anthropic(base_url=base_url, api_key="wmk_" + "x" * 40, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert raised.value.body["error"]["type"] == "authentication_error"
    assert raised.value.response.headers["request-id"].startswith("req_")

    missing = requests.post(f"{base_url}/v1/messages", json={"model": CLAUDE}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert "error" in missing.json() and missing.json()["type"] == "error"
    assert fake_upstream.requests == []


def test_bad_input_is_an_invalid_request_error(base_url, fake_upstream, caller):
    broken = requests.post(f"{base_url}/v1/messages", data=b"{not json", headers={"x-api-key": caller.key}, timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"

    unknown = requests.get(f"{base_url}/v1/batches", headers={"x-api-key": caller.key}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"

    routed = _post(base_url, caller.key, {"model": CLAUDE, "max_tokens": 5, "messages": HELLO, "models": ["x/y"]})
    assert routed.status_code == 400 and routed.json()["error"]["type"] == "invalid_request_error"
    assert fake_upstream.requests == []


def test_upstream_failures_keep_anthropics_shape(client, fake_upstream):
    fake_upstream.fail_next("429", endpoint="/messages")
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert raised.value.response.headers["retry-after"] == "1"

    fake_upstream.fail_next("500", endpoint="/messages")  # never sent twice: the upstream may have run it
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert failed.value.body["error"]["type"] == "api_error"


def test_an_error_after_the_first_byte_is_an_error_event(client, fake_upstream):
    fake_upstream.fail_next("drop_mid_stream", endpoint="/chat/completions")
    with pytest.raises(anthropic.APIStatusError, match=r"closed the stream|dropped"):
        with client.messages.stream(model=GPT, max_tokens=16, messages=HELLO) as stream:
            for _ in stream:
                pass
    [line] = wait_for_usage_events(1)
    assert line.status == "failed"


def test_the_plans_daily_limit_is_a_rate_limit_error(base_url, fake_upstream):
    Plan.objects.filter(slug="free").update(daily_message_limit=1)
    free = make_user("free@example.com", plan="free")
    client = anthropic.Anthropic(base_url=base_url, api_key=free.key, max_retries=0)
    client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    wait_for_usage_events(1)

    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) > 0
    assert len(fake_upstream.requests_to("/chat/completions")) == 1


# ---- count_tokens, Idempotency-Key ----------------------------------------------------------------------


def test_count_tokens_counts_without_reserving_or_billing(client, fake_upstream):
    counted = client.messages.count_tokens(model=CLAUDE, messages=HELLO, system="Be brief.", tools=[WEATHER])
    assert isinstance(counted, MessageTokensCount) and counted.input_tokens > 5
    assert fake_upstream.requests == []
    assert not UsageEvent.objects.exists()

    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-nonexistent-9", messages=HELLO)


def test_an_idempotency_key_replays_the_first_answer(base_url, fake_upstream, caller):
    body = {"model": CLAUDE, "max_tokens": 16, "messages": HELLO}
    first = _post(base_url, caller.key, body, **{"Idempotency-Key": "abc-1"})
    again = _post(base_url, caller.key, body, **{"Idempotency-Key": "abc-1"})

    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert len(fake_upstream.requests_to("/messages")) == 1


def test_the_offline_demo_models_answer_here_too(base_url, caller, settings):
    settings.DEMO_PROVIDER_ENABLED = True
    settings.DEMO_STREAM_DELAY_SECONDS = 0
    settings.OPENROUTER_API_KEY = ""
    client = anthropic.Anthropic(base_url=base_url, api_key=caller.key, max_retries=0)

    assert client.messages.create(model="demo/echo", max_tokens=64, messages=HELLO).content[0].text == "Echo: Say hello"
    with client.messages.stream(model="demo/echo", max_tokens=64, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == "Echo: Say hello"
        assert stream.get_final_message().usage.output_tokens > 0
    lines = wait_for_usage_events(2)
    assert all(not line.tokens_estimated or line.completion_tokens > 0 for line in lines)


def test_claude_codes_default_model_gets_the_settings_its_stand_in_takes(base_url, fake_upstream, caller):
    messages = '[{"role":"user","content":[{"type":"text","text":"Hi","cache_control":{"type":"ephemeral"}}]}]'
    raw = (
        '{"model":"claude-opus-5-5","max_tokens":128000,"thinking":{"type":"adaptive"},'
        '"output_config":{"effort":"high"},"context_management":{"edits":[]},"messages":' + messages + "}"
    )
    headers = {"x-api-key": caller.key, "content-type": "application/json"}
    response = requests.post(f"{base_url}/v1/messages", data=raw, headers=headers, timeout=20)

    assert response.status_code == 200, response.text
    sent = fake_upstream.last_request
    assert sent.json["max_tokens"] == 64000
    assert sent.json["thinking"] == {"type": "enabled", "budget_tokens": 32768}
    assert "output_config" not in sent.json and sent.json["context_management"] == {"edits": []}
    assert b'"messages":' + messages.encode() in sent.body  # the history, byte for byte

    own_id = raw.replace("claude-opus-5-5", "claude-sonnet-4-5")  # the model's own id: nothing adapted
    requests.post(f"{base_url}/v1/messages", data=own_id, headers=headers, timeout=20)
    assert (
        fake_upstream.last_request.body
        == own_id.replace('"claude-sonnet-4-5"', '"anthropic/claude-sonnet-4.5"').encode()
    )


@pytest.mark.parametrize(
    ("body", "replace", "leave_out"),
    [
        (
            {"max_tokens": 128000, "thinking": {"type": "adaptive"}},
            {"max_tokens": 64000, "thinking": {"type": "enabled", "budget_tokens": 16384}},
            set(),
        ),
        (
            {"max_tokens": 2000, "thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
            {"thinking": {"type": "enabled", "budget_tokens": 1999}},
            {"output_config"},
        ),
        ({"max_tokens": 500, "thinking": {"type": "adaptive"}}, {}, {"thinking"}),
        (
            {"max_tokens": 100000, "thinking": {"type": "enabled", "budget_tokens": 90000}},
            {"max_tokens": 64000, "thinking": {"type": "enabled", "budget_tokens": 63999}},
            set(),
        ),
        (
            {"max_tokens": 1000, "output_config": {"effort": "low", "format": {"type": "json_schema"}}},
            {"output_config": {"format": {"type": "json_schema"}}},
            set(),
        ),
    ],
)
def test_a_stand_in_adapts_only_top_level_settings(body, replace, leave_out):
    from gateway.catalogue import CatalogueEntry
    from gateway.surfaces.anthropic.adapt import adapt_request
    from gateway.surfaces.anthropic.models import Resolved

    entry = CatalogueEntry(CLAUDE, "Claude", "openrouter", "chat", CLAUDE, "premium", "anthropic", 0, False)
    adaptation = adapt_request(body, Resolved(entry, stands_in=True, max_output_tokens=64000))
    assert adaptation.replace == replace and adaptation.leave_out == leave_out
    assert adapt_request(body, Resolved(entry)).replace == {}


# ---- workspaces, BYOK, usage headers, throttling, disconnects ----------------------------------------


def test_the_workspace_header_bills_another_workspace_of_the_caller(base_url, fake_upstream):
    from accounts.access import bump_access_epoch
    from accounts.models import Membership

    caller = make_user("me@example.com", plan="free")
    owner = make_user("owner@example.com", plan="pro")
    Membership.objects.create(user=caller.user, workspace=owner.workspace, role=Membership.Role.MEMBER)
    bump_access_epoch()
    shared = anthropic.Anthropic(
        base_url=base_url,
        api_key=caller.key,
        max_retries=0,
        default_headers={"x-writingmate-workspace": str(owner.workspace.pk)},
    )

    raw = shared.messages.with_raw_response.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert raw.headers["x-ratelimit-limit-messages"] == "500"
    assert raw.headers["x-writingmate-messages-counted"] == "1"
    [line] = wait_for_usage_events(1)
    assert line.workspace_id == owner.workspace.pk and line.user_id == caller.user.pk

    stranger = make_user("stranger@example.com")
    foreign = anthropic.Anthropic(
        base_url=base_url,
        api_key=caller.key,
        max_retries=0,
        default_headers={"x-writingmate-workspace": str(stranger.workspace.pk)},
    )
    with pytest.raises(anthropic.PermissionDeniedError, match="x-writingmate-workspace"):
        foreign.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)


def test_byok_sends_claude_and_translated_calls_with_the_users_own_key(client, fake_upstream, caller):
    from accounts.access import bump_access_epoch
    from accounts.encryption import encrypt_secret
    from accounts.models import OpenRouterKey

    OpenRouterKey.objects.create(user=caller.user, encrypted_key=encrypt_secret("sk-or-users-own"), last4="-own")
    bump_access_epoch()

    client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert fake_upstream.last_request.headers["authorization"] == "Bearer sk-or-users-own"
    client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    assert fake_upstream.last_request.headers["authorization"] == "Bearer sk-or-users-own"
    assert all(line.byok for line in wait_for_usage_events(2))


def test_invalid_keys_are_throttled_per_address_in_anthropics_shape(base_url, fake_upstream, settings):
    settings.API_INVALID_KEY_LIMIT_PER_MINUTE = 2
    bad = anthropic.Anthropic(base_url=base_url, api_key="wmk_" + "y" * 40, max_retries=0)
    for _ in range(3):  # blocked once past the limit
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.count_tokens(model=CLAUDE, messages=HELLO)

    with pytest.raises(anthropic.RateLimitError) as raised:
        bad.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) > 0


def test_a_client_that_leaves_mid_stream_is_billed_then_settled(live_server, fake_upstream, caller):
    import socket
    import time

    from billing.settlement import settle_pending_generations
    from gateway.providers.openrouter import fetch_generation_stats

    fake_upstream.chunk_delay_ms = 150
    fake_upstream.chunks = 20
    fake_upstream.reply_text = " ".join(["word"] * 20)
    fake_upstream.messages_usage = {"input_tokens": 30000, "cache_read_input_tokens": 0, "output_tokens": 900}
    body = json.dumps({"model": CLAUDE, "max_tokens": 1000, "messages": HELLO, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(
            b"POST /api/anthropic/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"x-api-key: {caller.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"content_block_delta") < 2:
            received += sock.recv(65536)

    [line] = wait_for_usage_events(1)
    # The prompt came in message_start; the completion is what was delivered before the client left.
    assert (line.status, line.tokens_estimated, line.prompt_tokens) == ("client_disconnected", True, 30000)
    assert 0 < line.completion_tokens < 900
    fake_upstream.wait_until_finished()
    UsageEvent.objects.update(created_at=line.created_at - __import__("datetime").timedelta(minutes=1))
    time.sleep(0.1)

    assert settle_pending_generations(fetch_stats=fetch_generation_stats) == {"settled": 1}
    settlement = UsageEvent.objects.get(kind=UsageEvent.Kind.SETTLEMENT)
    assert settlement.completion_tokens == 900 - line.completion_tokens


def test_a_model_is_retrieved_by_any_id_a_request_may_name(client, fake_upstream):
    assert client.models.retrieve(CLAUDE).display_name == "Claude Sonnet 4.5"
    assert client.models.retrieve("claude-opus-5-5").id == "claude-opus-5-5"
    with pytest.raises(anthropic.NotFoundError, match="claude-nonexistent-9"):
        client.models.retrieve("claude-nonexistent-9")


def test_keep_alives_are_anthropics_ping_events_between_whole_events(base_url, fake_upstream, caller, settings):
    settings.STREAM_HEARTBEAT_SECONDS = 0.05
    fake_upstream.chunk_delay_ms = 200
    fake_upstream.chunks = 2
    fake_upstream.send_processing_comment = True  # OpenRouter's own keep-alive comment

    claude = _post(base_url, caller.key, {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True})
    translated = _post(base_url, caller.key, {"model": GPT, "max_tokens": 64, "messages": HELLO, "stream": True})

    ping = b'event: ping\ndata: {"type":"ping"}\n\n'
    sent = b": OPENROUTER PROCESSING\n\n" + fake_upstream.requests_to("/messages")[-1].sent
    assert claude.content.replace(ping, b"") == sent.replace(ping, b"")  # the upstream's bytes, all kept
    assert claude.content.count(b"event: ping") > 2
    events = _events(translated.content)
    assert [e["type"] for e in events].count("ping") > 2
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"


def test_a_translated_stream_opens_with_message_start_even_when_keep_alives_come_first(
    base_url, fake_upstream, caller, settings
):
    settings.STREAM_HEARTBEAT_SECONDS = 0.05
    fake_upstream.first_chunk_delay_ms = 300  # silent after its headers: keep-alives are due before any event

    response = _post(base_url, caller.key, {"model": GPT, "max_tokens": 64, "messages": HELLO, "stream": True})

    events = _events(response.content)
    for event in events:
        if event["type"] != "ping":
            EVENT.validate_python(event)
    # message_start (with its ping) left in the first keep-alive's place; keep-alives followed it.
    assert [e["type"] for e in events[:3]] == ["message_start", "ping", "ping"]
    assert events[-1]["type"] == "message_stop"
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == (
        "Hello from the fake upstream."
    )


def test_a_large_session_fits_and_a_body_past_the_limit_is_request_too_large(base_url, fake_upstream, caller, settings):
    big = "x" * (5 * 1024 * 1024)  # past /v1's JSON limit: a Claude Code session with screenshots
    ok = _post(
        base_url, caller.key, {"model": CLAUDE, "max_tokens": 16, "messages": [{"role": "user", "content": big}]}
    )
    assert ok.status_code == 200

    settings.API_MAX_MESSAGES_BODY_BYTES = 1024 * 1024
    refused = _post(
        base_url, caller.key, {"model": CLAUDE, "max_tokens": 16, "messages": [{"role": "user", "content": big}]}
    )
    assert refused.status_code == 413 and refused.json()["error"]["type"] == "request_too_large"
    assert refused.headers["request-id"].startswith("req_")


def test_a_claude_stream_that_breaks_ends_with_an_error_event(base_url, fake_upstream, caller):
    fake_upstream.fail_next("drop_mid_stream", endpoint="/messages")
    dropped = _post(base_url, caller.key, {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True})
    events = _events(dropped.content)
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "error"]
    assert events[-1]["error"]["type"] == "api_error"

    fake_upstream.fail_next("error_mid_stream", endpoint="/messages")
    failed = _post(base_url, caller.key, {"model": CLAUDE, "max_tokens": 64, "messages": HELLO, "stream": True})
    assert _events(failed.content)[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert failed.content.count(b"event: error") == 1  # the upstream's own, relayed; nothing added

    lines = wait_for_usage_events(2)
    assert {line.status for line in lines} == {"failed"}


def test_a_keys_model_allowlist_applies_and_an_alias_falls_back_within_it(client, fake_upstream, caller):
    from accounts.access import bump_access_epoch
    from apikeys.models import DeveloperKey
    from apikeys.services import set_key_limits

    set_key_limits(key=DeveloperKey.objects.get(user=caller.user), daily_message_limit=None, allowed_models=[GPT])
    bump_access_epoch()

    assert client.messages.create(model="claude-opus-5-5", max_tokens=16, messages=HELLO).model == GPT
    with pytest.raises(anthropic.PermissionDeniedError, match="allowlist"):
        client.messages.create(model=CLAUDE, max_tokens=16, messages=HELLO)
    assert [m.id for m in client.models.list()] == [GPT]


def test_a_200_that_carries_an_error_is_an_api_error_not_an_empty_message(client, fake_upstream):
    fake_upstream.fail_next("error_body_200", endpoint="/chat/completions")
    with pytest.raises(anthropic.InternalServerError, match="Provider returned error"):
        client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    [line] = wait_for_usage_events(1)
    assert line.status == "failed"


def test_every_answer_validates_against_the_sdks_own_types(base_url, fake_upstream, caller):
    from anthropic.types import ModelInfo
    from anthropic.types.shared import ErrorResponse

    def post(path: str, body: dict) -> requests.Response:
        return requests.post(f"{base_url}/v1/{path}", json=body, headers={"x-api-key": caller.key}, timeout=20)

    fake_upstream.messages_tool_call = ("get_weather", {"location": "Paris"})
    for model in (CLAUDE, GPT):
        answer = post(
            "messages",
            {
                "model": model,
                "max_tokens": 2000,
                "messages": HELLO,
                "tools": [WEATHER],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
        )
        Message.model_validate(answer.json(), strict=False)
    MessageTokensCount.model_validate(post("messages/count_tokens", {"model": CLAUDE, "messages": HELLO}).json())
    listed = requests.get(f"{base_url}/v1/models", headers={"x-api-key": caller.key}, timeout=20).json()
    for model in listed["data"]:
        ModelInfo.model_validate(model)
    ErrorResponse.model_validate(
        post("messages", {"model": "claude-nonexistent-9", "max_tokens": 5, "messages": HELLO}).json()
    )


GEMINI_DETAILS = [{"type": "reasoning.encrypted", "data": "c2lnbmVkLWJ5LWdlbWluaQ==", "id": "tool_1", "index": 0}]


@pytest.mark.parametrize("stream", [False, True])
def test_translated_reasoning_details_come_back_sealed_and_return_upstream_on_the_next_turn(
    client, fake_upstream, stream
):
    """OpenRouter needs a Gemini or o-series model's reasoning_details back on the next turn (thought signatures)."""
    fake_upstream.reasoning_details = GEMINI_DETAILS
    thinking = {"type": "enabled", "budget_tokens": 1024}
    if stream:
        with client.messages.stream(model=GPT, max_tokens=2000, thinking=thinking, messages=HELLO) as events:
            first = events.get_final_message()
    else:
        first = client.messages.create(model=GPT, max_tokens=2000, thinking=thinking, messages=HELLO)
    block = first.content[0]
    assert block.type == "thinking" and block.signature.startswith("wmr1.")
    assert "c2lnbmVk" not in block.signature  # sealed: a client can neither read nor forge it

    client.messages.create(
        model=GPT,
        max_tokens=2000,
        thinking=thinking,
        messages=[
            *HELLO,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": "Again"},
        ],
    )
    assistant = fake_upstream.last_request.json["messages"][1]
    assert assistant["reasoning_details"] == GEMINI_DETAILS


def test_reasoning_details_without_text_become_a_redacted_thinking_block():
    from gateway.surfaces.anthropic.events import ChatStreamTranslator, MessagesOutcome
    from gateway.surfaces.anthropic.translate import chat_messages

    translator = ChatStreamTranslator(message_id="msg_1", model=GPT, outcome=MessagesOutcome())
    out = translator.start()
    out += translator.feed({"choices": [{"index": 0, "delta": {"reasoning_details": GEMINI_DETAILS}}]})
    out += translator.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]})
    out += translator.finish()
    events = [e for e in _events(out) if e["type"] != "ping"]
    for event in events:
        EVENT.validate_python(event)
    assert [(e["type"], (e.get("content_block") or {}).get("type")) for e in events[1:4]] == [
        ("content_block_start", "redacted_thinking"),
        ("content_block_stop", None),
        ("content_block_start", "text"),
    ]
    redacted = events[1]["content_block"]
    [assistant] = chat_messages(
        {"messages": [{"role": "assistant", "content": [redacted, {"type": "text", "text": "Hi"}]}]}
    )
    assert assistant["reasoning_details"] == GEMINI_DETAILS
    # Anthropic's own signatures (or anything altered) are not ours to open: left out, never an error.
    [plain] = chat_messages(
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "EqQBCkYI..."}]}
            ]
        }
    )
    assert "reasoning_details" not in plain


def test_a_wrong_method_and_claude_codes_probe_of_the_base_url_get_anthropic_shaped_answers(base_url, caller):
    wrong = requests.get(f"{base_url}/v1/messages", headers={"x-api-key": caller.key}, timeout=10)
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "invalid_request_error"

    probe = requests.head(base_url, timeout=10)  # Claude Code's best-effort HEAD of ANTHROPIC_BASE_URL
    assert probe.status_code == 404 and probe.headers["content-type"] == "application/json"


def test_an_appsumo_licences_cap_applies_here_as_on_v1(client, fake_upstream, caller):
    from accounts.access import bump_access_epoch
    from accounts.models import AppSumoLicence, AppSumoTier

    tier = AppSumoTier.objects.create(slug="tiny", name="Tiny", daily_message_limit=1, monthly_message_limit=5)
    AppSumoLicence.objects.create(licence_key="LIC-1", tier=tier, workspace=caller.workspace)
    bump_access_epoch()

    client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    wait_for_usage_events(1)
    assert client.messages.count_tokens(model=GPT, messages=HELLO).input_tokens > 0  # free: not held to the cap
    with pytest.raises(anthropic.RateLimitError, match=r"(?i)appsumo|daily") as raised:
        client.messages.create(model=GPT, max_tokens=16, messages=HELLO)
    assert raised.value.response.headers["x-ratelimit-remaining-messages"] == "0"


def test_a_model_without_an_upstream_here_is_not_retried(base_url, caller, settings):
    settings.DEMO_PROVIDER_ENABLED = True
    settings.OPENROUTER_API_KEY = ""
    response = _post(base_url, caller.key, {"model": "claude-opus-5-5", "max_tokens": 16, "messages": HELLO})

    assert response.status_code == 503 and response.json()["error"]["type"] == "api_error"
    assert "demo/" in response.json()["error"]["message"]
    assert response.headers["x-should-retry"] == "false"  # Claude Code would otherwise retry it ten times


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_claude_stream_is_relayed_as_it_came_and_read_for_billing_wherever_its_reads_are_cut(newline):
    from gateway.providers.base import UpstreamResponse
    from gateway.surfaces.anthropic.events import MessagesOutcome, relay_message_events

    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": CLAUDE}
    events = [
        {"type": "message_start", "message": {**message, "usage": {"input_tokens": 12, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 'message_stop "error"'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    body = b"".join(
        b"event: " + e["type"].encode() + newline + b"data: " + json.dumps(e).encode() + newline + newline
        for e in events
    )

    async def relayed(cut: int, outcome: MessagesOutcome) -> bytes:
        async def chunks():
            yield body[:cut]
            yield body[cut:]

        upstream = UpstreamResponse(status=200, headers={}, chunks=chunks())
        return b"".join([chunk async for chunk in relay_message_events(upstream, outcome=outcome)])

    for cut in range(0, len(body), 5):
        outcome = MessagesOutcome()
        assert asyncio.run(relayed(cut, outcome)) == body
        assert outcome.finished and outcome.status == "succeeded" and outcome.generation_id == "msg_1"
        assert outcome.tokens == {"input_tokens": 12, "output_tokens": 7} and outcome.usage_final
