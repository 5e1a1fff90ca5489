"""The fake upstream does what the other tests rely on: OpenAI framing, usage, tool deltas, failures."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.fake_upstream import DEFAULT_REPLY, DEFAULT_TOOL_ARGUMENTS, FakeUpstream

CHAT = {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    fake.hang_seconds = 5
    yield fake
    fake.stop()


def post(fake: FakeUpstream, path: str, body: dict, **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.post(f"{fake.base_url}{path}", json=body, headers={"Authorization": "Bearer sk-test"}, **kwargs)


def sse_events(raw: bytes) -> list[bytes]:
    """Split an SSE body into events; asserts every event is one line ending in a blank line."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(b"\n" not in event for event in events)
    return events


def data_payloads(raw: bytes) -> list[dict]:
    events = [e for e in sse_events(raw) if not e.startswith(b":")]
    assert events[-1] == b"data: [DONE]"
    return [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]


def test_chat_completion_has_the_reply_the_usage_and_records_the_request(fake: FakeUpstream) -> None:
    response = post(fake, "/chat/completions", CHAT)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("gen-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": DEFAULT_REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    recorded = fake.last_request
    assert (recorded.method, recorded.path, recorded.json) == ("POST", "/api/v1/chat/completions", CHAT)
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.generation_id == body["id"]
    assert recorded.completed and not recorded.cancelled


def test_stream_is_framed_like_openai_without_a_usage_chunk_unless_asked(fake: FakeUpstream) -> None:
    fake.usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}

    plain = data_payloads(post(fake, "/chat/completions", {**CHAT, "stream": True}).content)
    with_usage = data_payloads(
        post(fake, "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}).content
    )

    assert len(plain) >= 3
    assert {c["id"] for c in plain} == {plain[0]["id"]} and plain[0]["id"].startswith("gen-")
    assert {c["object"] for c in plain} == {"chat.completion.chunk"}
    assert plain[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in plain] == [None] * (len(plain) - 1) + ["stop"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in plain) == DEFAULT_REPLY
    assert all("usage" not in c for c in plain)
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == fake.usage
    assert all(c["usage"] is None for c in with_usage[:-1])
    assert len({c["id"] for c in with_usage}) == 1 and with_usage[0]["id"] != plain[0]["id"]


def test_processing_comment_comes_first_when_enabled(fake: FakeUpstream) -> None:
    fake.send_processing_comment = True

    raw = post(fake, "/chat/completions", {**CHAT, "stream": True}).content

    assert raw.startswith(b": OPENROUTER PROCESSING\n\ndata: {")


def test_tools_get_a_tool_call_and_a_tool_result_gets_text(fake: FakeUpstream) -> None:
    body = post(fake, "/chat/completions", {**CHAT, "tools": TOOLS}).json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": DEFAULT_TOOL_ARGUMENTS}

    chunks = data_payloads(post(fake, "/chat/completions", {**CHAT, "tools": TOOLS, "stream": True}).content)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks]
    assert fragments[0]["id"].startswith("call_") and fragments[0]["function"]["name"] == "get_weather"
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments[1:])
    assert len(fragments) > 2 and {f["index"] for f in fragments} == {0}
    assert "".join(f["function"]["arguments"] for f in fragments) == DEFAULT_TOOL_ARGUMENTS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    messages = [
        *CHAT["messages"],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"},
    ]
    reply = post(fake, "/chat/completions", {**CHAT, "messages": messages, "tools": TOOLS}).json()
    assert "18 degrees and sunny" in reply["choices"][0]["message"]["content"]


def test_legacy_completions_stream_and_not(fake: FakeUpstream) -> None:
    body = post(fake, "/completions", {"model": "openai/gpt-5-mini", "prompt": "Say hi"}).json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == DEFAULT_REPLY

    request = {"model": "openai/gpt-5-mini", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    chunks = data_payloads(post(fake, "/completions", request).content)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == DEFAULT_REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 19


def test_models_and_generation_stats(fake: FakeUpstream) -> None:
    models = requests.get(f"{fake.base_url}/models", timeout=5).json()["data"]
    assert {"id", "name", "created", "context_length", "pricing"} <= set(models[0])
    gen_id = post(fake, "/chat/completions", CHAT).json()["id"]

    stats = requests.get(f"{fake.base_url}/generation", params={"id": gen_id}, timeout=5).json()["data"]
    assert (stats["id"], stats["tokens_prompt"], stats["native_tokens_cached"]) == (gen_id, 12, 4)

    fake.generation_stats[gen_id] = {"native_tokens_completion": 99, "total_cost": 0.5}
    stats = requests.get(f"{fake.base_url}/generation", params={"id": gen_id}, timeout=5).json()["data"]
    assert (stats["native_tokens_completion"], stats["total_cost"]) == (99, 0.5)
    assert requests.get(f"{fake.base_url}/generation", params={"id": "gen-nope"}, timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [("text", "Hello from the fake transcription.\n"), ("srt", "1\n00:00:00,000"), ("vtt", "WEBVTT\n\n")],
)
def test_transcription_text_formats(fake: FakeUpstream, response_format: str, expected: str) -> None:
    data = {"model": "whisper-1", "response_format": response_format}
    response = requests.post(
        f"{fake.base_url}/audio/transcriptions", data=data, files={"file": ("a.wav", b"RIFF0000")}, timeout=5
    )

    assert response.status_code == 200 and response.text.startswith(expected)


def test_transcription_json_has_token_usage_and_records_the_form(fake: FakeUpstream) -> None:
    response = requests.post(
        f"{fake.base_url}/audio/transcriptions",
        data={"model": "gpt-4o-mini-transcribe", "language": "en"},
        files={"file": ("a.wav", b"RIFF0000", "audio/wav")},
        headers={"Authorization": "Bearer sk-transcribe"},
        timeout=5,
    )

    assert response.json()["usage"]["type"] == "tokens"
    form = fake.last_request.form
    assert form["model"] == "gpt-4o-mini-transcribe" and form["language"] == "en"
    assert form["file"] == {"filename": "a.wav", "content_type": "audio/wav", "size": 8}
    verbose = requests.post(
        f"{fake.base_url}/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "verbose_json"},
        files={"file": ("a.wav", b"RIFF")},
        timeout=5,
    ).json()
    assert verbose["usage"] == {"type": "duration", "seconds": 3} and verbose["segments"]


@pytest.mark.parametrize("kind", ["400", "500", "429"])
def test_http_failures_have_openai_error_bodies_and_happen_once(fake: FakeUpstream, kind: str) -> None:
    fake.fail_next(kind)

    failed = post(fake, "/chat/completions", CHAT)
    then = post(fake, "/chat/completions", CHAT)

    assert failed.status_code == int(kind)
    assert failed.json()["error"]["message"]
    assert ("retry-after" in failed.headers) == (kind == "429")
    assert then.status_code == 200


def test_failure_can_repeat_and_target_another_endpoint(fake: FakeUpstream) -> None:
    fake.fail_next("500", times=2)
    fake.fail_next("503", endpoint="/models")

    statuses = [post(fake, "/chat/completions", CHAT).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert requests.get(f"{fake.base_url}/models", timeout=5).status_code == 503


def test_timeout_before_headers_hangs_and_sees_the_client_leave(fake: FakeUpstream) -> None:
    fake.fail_next("timeout_before_headers")

    with pytest.raises(requests.ReadTimeout):
        post(fake, "/chat/completions", CHAT, timeout=0.3)

    assert fake.wait_for_cancellation(2).path == "/api/v1/chat/completions"


def test_stall_after_first_chunk_and_client_disconnect_is_recorded(fake: FakeUpstream) -> None:
    fake.fail_next("stall_after_first_chunk")

    with post(fake, "/chat/completions", {**CHAT, "stream": True}, stream=True) as response:
        first = next(response.iter_lines())
    assert json.loads(first.removeprefix(b"data: "))["object"] == "chat.completion.chunk"

    recorded = fake.wait_for_cancellation(2)
    assert recorded.chunks_sent == 1 and not recorded.completed


def test_slow_stream_cancelled_by_the_client_is_recorded(fake: FakeUpstream) -> None:
    fake.chunk_delay_ms = 200

    with post(fake, "/chat/completions", {**CHAT, "stream": True}, stream=True) as response:
        next(response.iter_lines())

    assert fake.wait_for_cancellation(2).chunks_sent < 5


def test_malformed_sse_sends_a_non_json_data_line(fake: FakeUpstream) -> None:
    fake.fail_next("malformed_sse")

    events = sse_events(post(fake, "/chat/completions", {**CHAT, "stream": True}).content)

    assert b"data: {this is not json" in events
    assert events[-1] == b"data: [DONE]"


def test_error_mid_stream_is_one_error_event(fake: FakeUpstream) -> None:
    fake.fail_next("error_mid_stream")

    events = sse_events(post(fake, "/chat/completions", {**CHAT, "stream": True}).content)

    assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == 502
    assert b"data: [DONE]" not in events


def test_drop_mid_stream_aborts_the_connection(fake: FakeUpstream) -> None:
    fake.fail_next("drop_mid_stream", times=2)
    received = b""

    with (
        pytest.raises(requests.exceptions.ChunkedEncodingError),
        post(fake, "/chat/completions", {**CHAT, "stream": True}, stream=True) as response,
    ):
        for piece in response.iter_content(None):
            received += piece
    with pytest.raises(requests.exceptions.RequestException):
        post(fake, "/chat/completions", CHAT)

    assert received.startswith(b"data: {") and b"[DONE]" not in received


def test_absurd_usage(fake: FakeUpstream) -> None:
    fake.fail_next("absurd_usage")

    usage = post(fake, "/chat/completions", CHAT).json()["usage"]

    assert usage["prompt_tokens"] >= 10**15 and usage["completion_tokens"] < 0


def test_latency_is_applied_before_responding(fake: FakeUpstream) -> None:
    fake.latency_ms = 150
    started = time.monotonic()

    post(fake, "/chat/completions", CHAT)

    assert time.monotonic() - started >= 0.15


def test_port_is_free_again_after_stop() -> None:
    fake = FakeUpstream().start()
    port = fake.port
    fake.stop()

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_fixture_points_the_settings_at_the_fake(fake_upstream: FakeUpstream, settings) -> None:
    assert settings.OPENROUTER_BASE_URL == fake_upstream.base_url == settings.TRANSCRIPTION_BASE_URL
    assert (settings.OPENROUTER_API_KEY, settings.TRANSCRIPTION_API_KEY) == ("sk-or-server-key", "sk-transcribe-key")
    assert settings.DEMO_PROVIDER_ENABLED is False
