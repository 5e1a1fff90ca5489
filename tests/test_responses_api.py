"""/v1/responses: the translation to and from chat completions, and the endpoint through the official SDK."""

from __future__ import annotations

import json

import pytest

from gateway.errors import ApiError
from gateway.responses_api import ResponseEventStream, chat_request_from_responses, response_from_chat, sse_frame
from tests.openapi_schemas import assert_conforms

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
    assert chat["reasoning_effort"] == "low"
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
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}, "tools[1].type"),
        ({"input": "x", "tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
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
    return response_from_chat(
        completion, response_id="resp_1", created_at=100, completed_at=101, model="demo/echo", echo=translated.echo
    )


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


def test_a_completion_without_usage_has_no_usage_key() -> None:
    response = _response(_completion({"role": "assistant", "content": ""}, usage=None))

    assert_conforms("Response", response)
    assert "usage" not in response
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


def test_a_length_stop_ends_with_response_incomplete() -> None:
    events = _stream([_chunk({"content": "Hel"}), _chunk({}, "length")])

    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_an_upstream_failure_mid_stream_ends_with_response_failed() -> None:
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
