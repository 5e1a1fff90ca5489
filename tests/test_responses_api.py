"""/v1/responses: the translation to and from chat completions, and the endpoint through the official SDK."""

from __future__ import annotations

import json
import socket

import openai
import pydantic
import pytest
import requests

from billing.models import UsageEvent
from gateway.errors import ApiError
from gateway.surfaces.openai.responses.events import ResponseEventStream, sse_frame
from gateway.surfaces.openai.responses.output import response_from_chat
from gateway.surfaces.openai.responses.request import chat_request_from_responses
from tests.openapi_schemas import assert_conforms
from tests.sdk_schemas import assert_sdk_conforms
from tests.support import make_user, wait_for_usage_events

# ---- request translation ------------------------------------------------------------------------


def _bad(body: dict) -> ApiError:
    with pytest.raises(ApiError) as caught:
        chat_request_from_responses({"model": "demo/echo", **body})
    assert caught.value.status == 400
    return caught.value


def test_string_input_becomes_one_user_message_after_the_instructions() -> None:
    translated = chat_request_from_responses(
        {"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 64, "temperature": 0.2}
    )

    assert translated.chat_body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert translated.chat_body["max_tokens"] == 64
    assert translated.chat_body["temperature"] == 0.2
    assert translated.stream is False
    assert translated.echo["instructions"] == "Be brief."
    assert translated.echo["store"] is False


def test_items_become_chat_messages_with_tool_calls_and_results() -> None:
    translated = chat_request_from_responses(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
        }
    )

    assert translated.chat_body["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]


def test_images_stay_content_parts() -> None:
    translated = chat_request_from_responses(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                    ],
                }
            ],
        }
    )

    assert translated.chat_body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
    ]


def test_function_tools_tool_choice_and_text_format_are_translated() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    translated = chat_request_from_responses(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": schema,
                    "strict": True,
                }
            ],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
            "metadata": {"ticket": "42"},
            "user": "u-1",
            "reasoning": {"effort": "low"},
            "stream": True,
        }
    )

    chat = translated.chat_body
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": schema, "strict": True},
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert chat["user"] == "u-1"
    assert chat["reasoning"] == {"effort": "low"}
    assert chat["stream"] is True
    assert "metadata" not in chat
    assert translated.echo["metadata"] == {"ticket": "42"}
    assert translated.echo["tools"][0] == {
        "type": "function",
        "name": "get_weather",
        "description": "Weather",
        "parameters": schema,
        "strict": True,
    }
    assert chat_request_from_responses(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    ).chat_body["response_format"] == {"type": "json_object"}


def test_tool_choice_and_parallel_calls_are_not_sent_without_tools() -> None:
    chat = chat_request_from_responses(
        {"model": "m", "input": "x", "tool_choice": "auto", "parallel_tool_calls": True}
    ).chat_body

    assert "tool_choice" not in chat
    assert "parallel_tool_calls" not in chat


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": None}, "input"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        (
            {"input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"type": "banana"}]},
            "input[2].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "a"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "get weather"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "file_search"}], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": "x", "tools": [{"type": "banana"}]}, "tools[0].type"),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "mcp"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"input": "x", "tool_choice": {"type": "custom", "name": "apply_patch"}}, "tool_choice"),
        ({"input": [{"type": "compaction_trigger"}, {"role": "user", "content": "a"}]}, "input[0].type"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "max_output_tokens": 5}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "x", "metadata": {"a": 1}}, "metadata"),
        ({"input": "x", "stream": "yes"}, "stream"),
    ],
)
def test_invalid_requests_are_400s_naming_the_parameter(body: dict, param: str) -> None:
    assert _bad(body).param == param


def test_store_true_is_accepted_and_the_response_says_nothing_was_stored() -> None:
    translated = chat_request_from_responses({"model": "m", "input": "x", "store": True, "background": False})

    assert translated.echo["store"] is False


# ---- response translation -----------------------------------------------------------------------

_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def _completion(message: dict, finish_reason: str = "stop", usage: dict | None = _USAGE) -> dict:
    body = {
        "id": "gen-1",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _response(completion: dict, **request: object) -> dict:
    translated = chat_request_from_responses({"model": "demo/echo", "input": "hi", **request})
    response = response_from_chat(
        completion, response_id="resp_1", created_at=100, completed_at=101, model="demo/echo", echo=translated.echo
    )
    assert_sdk_conforms("Response", response)
    return response


def test_a_text_completion_becomes_a_completed_response_that_matches_the_spec() -> None:
    response = _response(_completion({"role": "assistant", "content": "Hello!"}), metadata={"k": "v"})

    assert_conforms("Response", response)
    assert response["status"] == "completed"
    assert response["completed_at"] == 101
    (item,) = response["output"]
    assert item["type"] == "message"
    assert item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 19,
    }
    assert response["metadata"] == {"k": "v"}


def test_tool_calls_become_function_call_items() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}},
        ],
    }
    response = _response(
        _completion(message, "tool_calls"),
        tools=[
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
            {"type": "function", "name": "now"},
        ],
    )

    assert_conforms("Response", response)
    calls = response["output"]
    assert [c["type"] for c in calls] == ["function_call", "function_call"]
    assert calls[0]["id"].startswith("fc_")
    assert (calls[0]["call_id"], calls[0]["name"], calls[0]["arguments"]) == (
        "call_a",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert calls[1]["arguments"] == "{}"


def test_a_length_stop_is_an_incomplete_response() -> None:
    response = _response(_completion({"role": "assistant", "content": "Hel"}, "length"), max_output_tokens=16)

    assert_conforms("Response", response)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["completed_at"] is None


def test_a_completion_without_usage_still_has_every_usage_detail() -> None:
    response = _response(_completion({"role": "assistant", "content": ""}, usage=None))

    assert_conforms("Response", response)
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert response["output"][0]["content"][0]["text"] == ""


# ---- stream translation -------------------------------------------------------------------------


def _chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _usage_chunk() -> dict:
    return {"id": "gen-1", "object": "chat.completion.chunk", "choices": [], "usage": _USAGE}


def _stream(chunks: list[dict], *, end: str = "finish", **request: object) -> list[dict]:
    translated = chat_request_from_responses({"model": "demo/echo", "input": "hi", "stream": True, **request})
    stream = ResponseEventStream(response_id="resp_1", created_at=100, model="demo/echo", echo=translated.echo)
    events = stream.start()
    for chunk in chunks:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish(completed_at=101) if end == "finish" else stream.fail("boom"))
    for event in events:
        assert_sdk_conforms("ResponseStreamEvent", event)
        assert_conforms("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


TEXT_SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_text_chunks_become_the_canonical_event_sequence() -> None:
    events = _stream(
        [
            _chunk({"role": "assistant", "content": ""}),
            _chunk({"content": "Hel"}),
            _chunk({"content": "lo"}),
            _chunk({}, "stop"),
            _usage_chunk(),
        ]
    )

    assert [e["type"] for e in events] == TEXT_SEQUENCE
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"
    assert events[6]["text"] == "Hello"
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"]["input_tokens"] == 12
    assert "usage" not in events[0]["response"]
    assert events[4]["item_id"] == events[2]["item"]["id"] == done["output"][0]["id"]


def test_tool_call_chunks_become_function_call_events() -> None:
    events = _stream(
        [
            _chunk({"role": "assistant", "content": "Let me check."}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            _chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}
                    ]
                }
            ),
            _chunk({}, "tool_calls"),
            _usage_chunk(),
        ],
        tools=[{"type": "function", "name": "get_weather"}, {"type": "function", "name": "now"}],
    )

    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first_done = events[13]
    assert (first_done["name"], first_done["arguments"], first_done["output_index"]) == (
        "get_weather",
        '{"city":"Paris"}',
        1,
    )
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "function_call"]
    assert output[1]["call_id"] == "call_a" and output[2]["call_id"] == "call_b"


def test_visible_reasoning_becomes_a_reasoning_item_before_the_message() -> None:
    events = _stream(
        [
            _chunk({"role": "assistant", "content": "", "reasoning": "Thinking"}),
            _chunk({"reasoning": " hard."}),
            _chunk({"content": "Hi"}),
            _chunk({}, "stop"),
        ]
    )

    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        *TEXT_SEQUENCE[2:4],
        "response.output_text.delta",
        *TEXT_SEQUENCE[6:],
    ]
    reasoning, message = events[-1]["response"]["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [
        {"type": "summary_text", "text": "Thinking hard."}
    ]
    assert message["content"][0]["text"] == "Hi"

    whole = _response(_completion({"role": "assistant", "content": "Hi", "reasoning": "Thinking hard."}))
    assert_conforms("Response", whole)
    assert [item["type"] for item in whole["output"]] == ["reasoning", "message"]


def test_a_length_stop_ends_with_response_incomplete() -> None:
    events = _stream([_chunk({"content": "Hel"}), _chunk({}, "length")])

    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_fail_ends_the_stream_with_response_failed_keeping_the_partial_output() -> None:
    events = _stream([_chunk({"content": "Hel"})], end="fail")

    assert [e["type"] for e in events][-1] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "boom"}
    assert failed["output"][0]["content"][0]["text"] == "Hel"


def test_a_stream_that_ends_without_a_finish_reason_failed() -> None:
    events = _stream([_chunk({"content": "Hel"})])

    assert events[-1]["type"] == "response.failed"


def test_an_empty_reply_still_has_a_message_item() -> None:
    events = _stream([_chunk({"role": "assistant", "content": ""}), _chunk({}, "stop")])

    assert [e["type"] for e in events] == [t for t in TEXT_SEQUENCE if t != "response.output_text.delta"]


def test_events_are_framed_with_their_type_as_the_event_name() -> None:
    frame = sse_frame({"type": "response.created", "sequence_number": 0})

    assert frame == b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
    assert json.loads(frame.split(b"data: ", 1)[1]) == {"type": "response.created", "sequence_number": 0}


# ---- the endpoint, through the official SDK against a live server --------------------------------

MODEL = "openai/gpt-5-mini"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    "strict": True,
}
STREAM_TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


# The live server reads the database from its own thread, so these tests commit; the seed comes back after.
live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


@pytest.fixture
def client(live_server, fake_upstream, caller):
    return openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)


def ledger(caller, count: int) -> list[UsageEvent]:
    """This test's ledger lines once `count` are there: they are written just after the response is sent."""
    return wait_for_usage_events(count, workspace_id=caller.workspace.pk)


def _raw_stream(live_server, caller, body: dict) -> str:
    response = requests.post(
        f"{live_server.api_base}/responses",
        json={"model": MODEL, "stream": True, **body},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.text


def _collapse_deltas(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


@live
def test_plain_response_has_output_text_usage_and_matches_the_spec(client, fake_upstream, caller):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Say hello", instructions="Be brief.")
    response = raw.parse()

    assert response.output_text == "Hello from the fake upstream."
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.usage.input_tokens == 12 and response.usage.output_tokens == 7
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert_conforms("Response", json.loads(raw.http_response.text))
    sent = fake_upstream.last_request.json
    assert sent["model"] == MODEL
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert "input" not in sent and "instructions" not in sent
    [event] = ledger(caller, 1)
    assert event.endpoint == "responses" and event.status == "succeeded"
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (12, 7, 4)
    assert raw.http_response.headers["x-writingmate-messages-counted"] == "1"


@live
def test_streamed_response_sends_openais_event_sequence_without_done(client, live_server, fake_upstream, caller):
    events = list(client.responses.create(model=MODEL, input="Say hello", stream=True))

    types = [event.type for event in events]
    assert _collapse_deltas(types) == STREAM_TEXT_ORDER
    assert types.count("response.output_text.delta") > 1
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    completed = events[-1].response
    assert completed.output_text == "Hello from the fake upstream."
    assert completed.usage.input_tokens == 12 and completed.usage.total_tokens == 19
    assert fake_upstream.last_request.json["stream_options"] == {"include_usage": True}

    body = _raw_stream(live_server, caller, {"input": "Say hello"})
    assert "[DONE]" not in body
    blocks = [b for b in body.split("\n\n") if b]
    for block in blocks:
        event_line, data_line = block.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {payload['type']}"
        assert_conforms("ResponseStreamEvent", payload)
    [first, second] = ledger(caller, 2)
    assert first.status == second.status == "succeeded" and second.completion_tokens == 7


@live
def test_the_sdk_stream_helper_assembles_the_final_response(client, fake_upstream, caller):
    fake_upstream.send_processing_comment = True  # OpenRouter's keep-alive comment passes through
    with client.responses.stream(model=MODEL, input="Say hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(deltas) == final.output_text == "Hello from the fake upstream."
    ledger(caller, 1)


@live
def test_structured_output_through_the_sdks_parse_helper(client, fake_upstream, caller):
    class City(pydantic.BaseModel):
        name: str
        country: str

    fake_upstream.reply_text = '{"name": "Paris", "country": "France"}'

    parsed = client.responses.parse(model=MODEL, input="Capital of France?", text_format=City)

    assert parsed.output_parsed == City(name="Paris", country="France")
    response_format = fake_upstream.last_request.json["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "City" and response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"]["required"] == ["name", "country"]
    ledger(caller, 1)


@live
def test_function_tool_round_trip(client, live_server, fake_upstream, caller):
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL])

    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"location": "Paris", "unit": "celsius"}
    assert fake_upstream.last_request.json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]

    second = client.responses.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18}'},
        ],
    )

    assert second.output_text == 'The tool returned: {"temperature": 18}'
    messages = fake_upstream.last_request.json["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temperature": 18}'}

    body = _raw_stream(live_server, caller, {"input": "Weather in Paris?", "tools": [WEATHER_TOOL]})
    payloads = [json.loads(b.split("data: ", 1)[1]) for b in body.split("\n\n") if b]
    for payload in payloads:
        assert_conforms("ResponseStreamEvent", payload)
    assert _collapse_deltas([p["type"] for p in payloads]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert payloads[-3]["arguments"] == '{"location": "Paris", "unit": "celsius"}'
    ledger(caller, 3)


@live
def test_a_repeated_request_with_an_idempotency_key_is_replayed_without_a_second_charge(client, fake_upstream, caller):
    key = {"Idempotency-Key": "order-42"}
    first = client.responses.with_raw_response.create(model=MODEL, input="Say hello", extra_headers=key)
    again = client.responses.with_raw_response.create(model=MODEL, input="Say hello", extra_headers=key)

    assert again.http_response.headers["idempotent-replayed"] == "true"
    assert again.parse().id == first.parse().id
    assert len(fake_upstream.requests_to("/chat/completions")) == 1
    with pytest.raises(openai.ConflictError):
        client.responses.create(model=MODEL, input="Something else", extra_headers=key)
    ledger(caller, 1)


@live
def test_an_upstream_failure_mid_stream_ends_with_response_failed(client, fake_upstream, caller):
    fake_upstream.fail_next("error_mid_stream")

    events = list(client.responses.create(model=MODEL, input="Say hello", stream=True))

    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert "Provider disconnected" in events[-1].response.error.message
    [event] = ledger(caller, 1)
    assert event.status == "failed"


@live
def test_a_client_that_disconnects_mid_stream_cancels_the_upstream_and_is_billed_for_what_it_got(
    live_server, fake_upstream, caller
):
    fake_upstream.chunk_delay_ms = 200
    body = json.dumps({"model": MODEL, "input": "Say hello", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {caller.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"event: response.output_text.delta") < 2:
            received += sock.recv(65536)

    cancelled = fake_upstream.wait_for_cancellation(timeout=5)
    [event] = ledger(caller, 1)
    assert event.status == "client_disconnected" and event.endpoint == "responses"
    assert event.tokens_estimated and event.completion_tokens > 0 and event.prompt_tokens > 0
    assert event.generation_id == cancelled.generation_id


@live
def test_an_upstream_error_before_the_first_byte_is_an_http_error(client, fake_upstream, caller):
    fake_upstream.fail_next("429")

    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input="Say hello", stream=True)
    [event] = ledger(caller, 1)
    assert event.status == "failed" and event.counted_messages == 0


@live
def test_an_error_body_with_status_200_is_a_502(client, fake_upstream, caller):
    fake_upstream.fail_next("error_body_200")

    with pytest.raises(openai.InternalServerError) as raised:
        client.responses.create(model=MODEL, input="Say hello")

    assert raised.value.status_code == 502 and "Provider returned error" in raised.value.message
    [event] = ledger(caller, 1)
    assert event.status == "failed" and event.counted_messages == 0


@live
def test_bad_requests_are_400s_naming_the_parameter_and_reach_no_upstream(client, fake_upstream):
    cases = [
        ({}, "input"),
        (
            {"input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"type": "banana"}]},
            "input[2].type",
        ),
        (  # a search this server leaves out (cached results only), forced
            {
                "input": "x",
                "tools": [{"type": "web_search", "external_web_access": False}],
                "tool_choice": {"type": "web_search"},
            },
            "tool_choice",
        ),
        ({"input": "x", "background": True}, "background"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model=MODEL, **extra)

        assert raised.value.status_code == 400
        assert raised.value.body["param"] == param
        assert_conforms("Error", raised.value.body)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="openai/whisper-1", input="hi")  # a transcription model
    assert fake_upstream.requests == []


@live
def test_the_demo_model_serves_responses_offline(live_server, caller, settings):
    settings.DEMO_PROVIDER_ENABLED = True
    settings.DEMO_STREAM_DELAY_SECONDS = 0
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)

    echoed = client.responses.create(model="demo/echo", input="ping")
    called = client.responses.create(
        model="demo/assistant", input="Please call get_weather for Paris", tools=[WEATHER_TOOL]
    )
    streamed = list(client.responses.create(model="demo/echo", input="ping", stream=True))

    assert echoed.output_text == "Echo: ping"
    assert called.output[0].type == "function_call" and called.output[0].name == "get_weather"
    assert streamed[-1].type == "response.completed" and streamed[-1].response.output_text == "Echo: ping"
    assert [e.model for e in ledger(caller, 3)] == ["demo/echo", "demo/assistant", "demo/echo"]
