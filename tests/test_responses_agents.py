"""/v1/responses for coding agents: Codex's tool types, reasoning, compaction, new fields, long streams.

Every Response, CompactedResponse and stream event is checked against the `openai` SDK's pydantic
types (the current contract) and, where the older shared spec has the type, against the spec too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
import pytest
import requests
from openai.types.responses.response_create_params import ResponseCreateParamsBase

from gateway.errors import ApiError
from gateway.surfaces.openai.responses import compaction
from gateway.surfaces.openai.responses.events import ResponseEventStream
from gateway.surfaces.openai.responses.fields import FIELDS, fields_table_markdown
from gateway.surfaces.openai.responses.output import response_from_chat
from gateway.surfaces.openai.responses.request import chat_request_from_responses
from gateway.surfaces.openai.responses.tools import OMITTED_TOOLS_HEADER
from tests.fake_upstream import FakeReply
from tests.openapi_schemas import assert_conforms
from tests.sdk_schemas import assert_sdk_conforms
from tests.support import make_user, wait_for_usage_events

APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files.",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF',
    },
}
MULTI_AGENT = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
        {"type": "function", "name": "wait_agent", "parameters": {"type": "object", "properties": {}}, "strict": False},
    ],
}
EXEC = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    "strict": False,
}
HOSTED = [
    {"type": "web_search", "external_web_access": False},
    {"type": "tool_search", "execution": "client"},
    {"type": "image_generation", "output_format": "png"},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com"},
    {"type": "computer_use_preview", "display_height": 768, "display_width": 1024, "environment": "linux"},
    {"type": "local_shell"},
]
CODEX_TOOLS = [EXEC, APPLY_PATCH, MULTI_AGENT, *HOSTED]
# What Codex 0.171 adds around a request (captured from the real CLI), plus the rest of the new fields.
NEW_FIELDS = {
    "client_metadata": {"turn_id": "t1", "x-codex-turn-metadata": "{}"},
    "prompt_cache_key": "conv-1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "safety_identifier": "user-hash",
    "service_tier": "priority",
    "text": {"verbosity": "low"},
    "user": "u-1",
    "metadata": {"k": "v"},
    "truncation": "auto",
    "parallel_tool_calls": True,
    "max_tool_calls": 8,
    "top_logprobs": 3,
    "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
    "reasoning": {"effort": "high", "summary": "auto"},
    "store": False,
    "stream_options": {"include_obfuscation": False},
    "context_management": [{"type": "compaction", "compact_threshold": 200000}],
}


def _check_response(response: dict) -> None:
    assert_sdk_conforms("Response", response)


def _check_event(event: dict) -> None:
    assert_sdk_conforms("ResponseStreamEvent", event)


# ---- request translation ------------------------------------------------------------------------


def test_codexs_default_request_translates_without_a_400():
    translated = chat_request_from_responses(
        {"model": "m", "input": "hi", "tools": CODEX_TOOLS, "tool_choice": "auto", **NEW_FIELDS}
    )

    chat = translated.chat_body
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names == ["exec_command", "apply_patch", "multi_agent_v1__spawn_agent", "multi_agent_v1__wait_agent"]
    assert translated.tools.omitted == [
        "web_search",
        "tool_search",
        "image_generation",
        "code_interpreter",
        "file_search",
        "mcp",
        "computer_use_preview",
        "local_shell",
    ]
    patch = chat["tools"][1]["function"]
    assert patch["parameters"]["properties"] == {
        "input": {"type": "string", "description": "The tool's raw text input."}
    }
    assert "Use the `apply_patch` tool" in patch["description"] and "begin_patch hunk+" in patch["description"]
    assert chat["reasoning"] == {"effort": "high"} and chat["verbosity"] == "low"
    assert (chat["prompt_cache_key"], chat["safety_identifier"], chat["user"]) == ("conv-1", "user-hash", "u-1")
    for dropped in ("client_metadata", "prompt_cache_retention", "service_tier", "top_logprobs", "include", "metadata"):
        assert dropped not in chat
    # Fields naming an upstream are never sent on: the chat body is built from known fields only.
    naming = {"base_url": "http://evil.example", "api_base": "http://evil.example", "api_key": "sk-x", "extra_body": {}}
    assert not set(naming) & set(chat_request_from_responses({"model": "m", "input": "hi", **naming}).chat_body)
    assert translated.echo["reasoning"] == {"effort": "high", "summary": "auto"}
    assert translated.echo["truncation"] == "auto"


def test_namespaced_names_that_collide_or_run_long_get_short_unique_upstream_names():
    long_name = "x" * 60
    translated = chat_request_from_responses(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {"type": "function", "name": "ns__f"},
                {"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "function", "name": "f"}]},
                {
                    "type": "namespace",
                    "name": "mcp",
                    "description": "",
                    "tools": [{"type": "custom", "name": long_name}],
                },
            ],
        }
    )

    names = [tool["function"]["name"] for tool in translated.chat_body["tools"]]
    assert names[0] == "ns__f" and names[1] != "ns__f" and len(set(names)) == 3
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) for name in names)
    assert translated.tools.client_tool(names[1]).namespace == "ns"
    assert translated.tools.client_tool(names[2]).name == long_name


def test_tool_choice_maps_to_the_upstream_function_and_refuses_a_left_out_tool():
    body = {"model": "m", "input": "hi", "tools": CODEX_TOOLS}

    custom = chat_request_from_responses({**body, "tool_choice": {"type": "custom", "name": "apply_patch"}})
    namespaced = chat_request_from_responses(
        {**body, "tool_choice": {"type": "function", "name": "spawn_agent", "namespace": "multi_agent_v1"}}
    )
    allowed = chat_request_from_responses(
        {
            **body,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "exec_command"}, {"type": "web_search"}],
            },
        }
    )

    assert custom.chat_body["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assert namespaced.chat_body["tool_choice"]["function"]["name"] == "multi_agent_v1__spawn_agent"
    assert allowed.chat_body["tool_choice"] == "required"
    assert [t["function"]["name"] for t in allowed.chat_body["tools"]] == ["exec_command"]
    for forced in ({"type": "web_search"}, {"type": "image_generation"}, {"type": "mcp", "server_label": "docs"}):
        with pytest.raises(ApiError) as raised:
            chat_request_from_responses({**body, "tool_choice": forced})
        assert raised.value.status == 400 and raised.value.param == "tool_choice"
    with pytest.raises(ApiError) as raised:
        chat_request_from_responses({**body, "tools": HOSTED, "tool_choice": "required"})
    assert raised.value.param == "tool_choice"


def test_history_items_from_codex_and_other_providers_become_chat_messages():
    translated = chat_request_from_responses(
        {
            "model": "m",
            "tools": CODEX_TOOLS,
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-someone-elses"},
                {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "plan"}]},
                {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
                {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "spawn_agent",
                    "namespace": "multi_agent_v1",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
                {"type": "compaction", "encrypted_content": "not-ours"},
            ],
        }
    )

    assert translated.chat_body["messages"] == [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Done!"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]


def test_every_field_of_the_sdks_create_params_has_a_line_in_the_one_table():
    assert set(ResponseCreateParamsBase.__annotations__) <= set(FIELDS)
    decisions = (Path(__file__).resolve().parents[1] / "docs" / "decisions.md").read_text()
    assert fields_table_markdown() in decisions


# ---- response shaping and the event stream -------------------------------------------------------

USAGE = {
    "prompt_tokens": 8000,
    "completion_tokens": 8000,
    "total_tokens": 16000,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 7000},
}


def _tool_chunk(index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    call: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"id": "gen-1", "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


def _stream(chunks: list[dict], **request: object) -> list[dict]:
    translated = chat_request_from_responses({"model": "m", "input": "hi", "stream": True, **request})
    stream = ResponseEventStream(
        response_id="resp_1",
        created_at=1,
        model="m",
        echo=translated.echo,
        tools=translated.tools,
        compact=translated.compact,
        input_items=translated.input_items,
    )
    events = stream.start()
    for chunk in chunks:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish(completed_at=2))
    for event in events:
        _check_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_streamed_calls_come_back_as_custom_and_namespaced_items():
    patch_arguments = json.dumps({"input": "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"})
    chunks = [
        _tool_chunk(0, call_id="call_p", name="apply_patch"),
        *(_tool_chunk(0, arguments=patch_arguments[i : i + 7]) for i in range(0, len(patch_arguments), 7)),
        _tool_chunk(1, call_id="call_s", name="multi_agent_v1__spawn_agent", arguments='{"task":"x"}'),
        {"id": "gen-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": USAGE},
    ]

    events = _stream(chunks, tools=CODEX_TOOLS)

    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == json.loads(patch_arguments)["input"] and len(deltas) > 3
    [done] = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done["input"] == json.loads(patch_arguments)["input"]
    custom, spawn = events[-1]["response"]["output"]
    assert custom["type"] == "custom_tool_call" and custom["name"] == "apply_patch" and custom["call_id"] == "call_p"
    assert (spawn["type"], spawn["name"], spawn["namespace"]) == ("function_call", "spawn_agent", "multi_agent_v1")
    [args_done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert args_done["name"] == "spawn_agent"
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert added[0]["type"] == "custom_tool_call" and added[0]["input"] == ""
    _check_response(events[-1]["response"])
    assert events[-1]["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 7000}


def test_whole_responses_carry_custom_and_namespaced_calls_and_reasoning_summaries():
    translated = chat_request_from_responses({"model": "m", "input": "hi", "tools": CODEX_TOOLS})
    completion = {
        "id": "gen-1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "I should patch.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "apply_patch", "arguments": '{"input":"P"}'},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "multi_agent_v1__wait_agent", "arguments": "{}"},
                        },
                    ],
                },
            }
        ],
        "usage": USAGE,
    }

    response = response_from_chat(
        completion,
        response_id="resp_1",
        created_at=1,
        completed_at=2,
        model="m",
        echo=translated.echo,
        tools=translated.tools,
    )

    _check_response(response)
    reasoning, custom, wait = response["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "I should patch."}]
    assert (custom["type"], custom["input"]) == ("custom_tool_call", "P")
    assert (wait["name"], wait["namespace"]) == ("wait_agent", "multi_agent_v1")


def test_reasoning_streams_as_summary_parts():
    chunks = [
        {"id": "g", "choices": [{"index": 0, "delta": {"reasoning": "Think"}, "finish_reason": None}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"reasoning_content": "ing."}, "finish_reason": None}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
    ]

    events = _stream(chunks)

    types = [e["type"] for e in events]
    assert types[2:9] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert events[6]["text"] == "Thinking." and events[-1]["response"]["output"][0]["summary"][0]["text"] == "Thinking."
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 0  # present, even unknown
    assert_conforms("ResponseStreamEvent", events[3])


def test_the_upstreams_reasoning_details_travel_sealed_and_return_on_the_next_turn():
    signed = [
        {"type": "reasoning.text", "index": 0, "text": "Check the ", "format": "anthropic-claude-v1"},
        {"type": "reasoning.text", "index": 0, "text": "weather.", "signature": "sig-abc"},
    ]
    encrypted_only = [
        {"type": "reasoning.encrypted", "index": 0, "data": "opaque-blob", "format": "openai-responses-v1"}
    ]
    call = _tool_chunk(0, call_id="call_1", name="exec_command", arguments='{"cmd":"date"}')
    chunks = [
        {"id": "g", "choices": [{"index": 0, "delta": {"reasoning": "Check the ", "reasoning_details": signed[:1]}}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"reasoning": "weather.", "reasoning_details": signed[1:]}}]},
        call,
        {"id": "g", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]

    events = _stream(chunks, tools=[EXEC])
    reasoning, function_call = events[-1]["response"]["output"]
    assert reasoning["summary"][0]["text"] == "Check the weather."
    assert reasoning["encrypted_content"].startswith("wmr1.") and "sig-abc" not in reasoning["encrypted_content"]
    [done] = [e for e in events if e["type"] == "response.output_item.done" and e["item"]["type"] == "reasoning"]
    assert done["item"]["encrypted_content"] == reasoning["encrypted_content"]

    replayed = chat_request_from_responses(
        {
            "model": "m",
            "tools": [EXEC],
            "input": [
                {"role": "user", "content": "Weather?"},
                reasoning,
                function_call,
                {"type": "function_call_output", "call_id": "call_1", "output": "Mon"},
            ],
        }
    )
    assistant = replayed.chat_body["messages"][1]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert assistant["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "index": 0,
            "text": "Check the weather.",
            "format": "anthropic-claude-v1",
            "signature": "sig-abc",
        }
    ]

    # Encrypted-only reasoning (no visible text) still makes an item, with no summary and its details sealed.
    translated = chat_request_from_responses({"model": "m", "input": "hi"})
    whole = response_from_chat(
        {
            "id": "g",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Hi", "reasoning_details": encrypted_only},
                }
            ],
        },
        response_id="resp_1",
        created_at=1,
        completed_at=2,
        model="m",
        echo=translated.echo,
    )
    _check_response(whole)
    item = whole["output"][0]
    assert item["type"] == "reasoning" and item["summary"] == []
    again = chat_request_from_responses(
        {
            "model": "m",
            "input": [{"role": "user", "content": "hi"}, item, whole["output"][1], {"role": "user", "content": "and?"}],
        }
    )
    assert again.chat_body["messages"][1] == {"role": "assistant", "content": "Hi", "reasoning_details": encrypted_only}


def test_an_input_ending_in_a_compaction_trigger_is_answered_with_one_compaction_item():
    chunks = [
        {"id": "g", "choices": [{"index": 0, "delta": {"content": "The user wants a "}, "finish_reason": None}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"content": "haiku."}, "finish_reason": "stop"}]},
    ]
    request = {
        "input": [{"role": "user", "content": "Write a haiku"}, {"type": "compaction_trigger"}],
        "tools": CODEX_TOOLS,
    }

    translated = chat_request_from_responses({"model": "m", "stream": True, **request})
    events = _stream(chunks, **request)

    assert translated.compact and "tools" not in translated.chat_body
    assert translated.chat_body["messages"][-1] == {"role": "user", "content": compaction.COMPACTION_PROMPT}
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    [item] = events[-1]["response"]["output"]
    assert item["type"] == "compaction" and item["encrypted_content"].startswith(compaction.SEAL_PREFIX)
    assert "haiku" not in item["encrypted_content"]  # sealed, not readable

    replayed = chat_request_from_responses({"model": "m", "input": [item, {"role": "user", "content": "Again"}]})
    assert replayed.chat_body["messages"] == [
        {"role": "user", "content": "Write a haiku"},
        {"role": "user", "content": compaction.SUMMARY_PREAMBLE + "The user wants a haiku."},
        {"role": "user", "content": "Again"},
    ]
    tampered = item["encrypted_content"][:-4] + "AAAA"
    assert chat_request_from_responses(
        {
            "model": "m",
            "input": [{"type": "compaction", "encrypted_content": tampered}, {"role": "user", "content": "x"}],
        }
    ).chat_body["messages"] == [{"role": "user", "content": "x"}]


# ---- live: the official SDK against the server ----------------------------------------------------

MODEL = "openai/gpt-5-mini"
live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def caller():
    return make_user("agent@example.com", plan="unlimited")


@pytest.fixture
def client(live_server, fake_upstream, caller):
    return openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)


def _raw_events(live_server, caller, body: dict, path: str = "/responses") -> tuple[requests.Response, list[dict]]:
    response = requests.post(
        f"{live_server.api_base}{path}",
        json={"model": MODEL, "stream": True, **body},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    return response, events


@live
def test_codexs_tools_stream_back_as_its_items_and_the_left_out_ones_are_named(live_server, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(tool=("apply_patch", json.dumps({"input": "*** Begin Patch"})))

    response, events = _raw_events(live_server, caller, {"input": "Patch it", "tools": CODEX_TOOLS, **NEW_FIELDS})

    assert response.headers[OMITTED_TOOLS_HEADER] == (
        "web_search,tool_search,image_generation,code_interpreter,file_search,mcp,computer_use_preview,local_shell"
    )
    for event in events:
        _check_event(event)
    reasoning, item = events[-1]["response"]["output"]  # the fake reasons when asked to
    assert reasoning["type"] == "reasoning" and reasoning["summary"][0]["text"] == fake_upstream.reasoning_text
    assert item["type"] == "custom_tool_call" and item["input"] == "*** Begin Patch"
    sent = fake_upstream.last_request.json
    assert "client_metadata" not in sent and sent["reasoning"] == {"effort": "high"}
    wait_for_usage_events(1, workspace_id=caller.workspace.pk)


@live
def test_reasoning_comes_back_as_summaries_and_its_tokens_count_once(client, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(text="42", reasoning="Six times seven.", usage=USAGE)

    events = list(
        client.responses.create(model=MODEL, input="?", reasoning={"effort": "high", "summary": "auto"}, stream=True)
    )
    whole = client.responses.create(model=MODEL, input="?", reasoning={"effort": "high"})

    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "Six times seven."
    completed = events[-1].response
    assert completed.output[0].type == "reasoning" and completed.output_text == "42"
    assert completed.usage.output_tokens_details.reasoning_tokens == 7000
    assert whole.output[0].summary[0].text == "Six times seven."
    assert fake_upstream.last_request.json["reasoning"] == {"effort": "high"}
    # OpenRouter's completion_tokens already include the reasoning: (8000 + 8000) / 16000 is one message.
    assert [e.counted_messages for e in wait_for_usage_events(2, workspace_id=caller.workspace.pk)] == [1, 1]


@live
def test_the_sdks_compact_returns_a_compaction_the_next_request_expands(client, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(text="SUMMARY: the user likes haiku.")

    raw = client.responses.with_raw_response.compact(
        model=MODEL,
        input=[{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Old pond..."}],
    )
    compacted = raw.parse()

    assert_sdk_conforms("CompactedResponse", json.loads(raw.http_response.text))
    assert compacted.object == "response.compaction"
    [item] = compacted.output
    assert item.type == "compaction"
    sent = fake_upstream.last_request.json
    assert sent["stream"] is False and "tools" not in sent
    assert sent["messages"][-1] == {"role": "user", "content": compaction.COMPACTION_PROMPT}

    fake_upstream.respond_with = None
    client.responses.create(model=MODEL, input=[item.model_dump(), {"role": "user", "content": "Another"}])
    assert fake_upstream.last_request.json["messages"] == [
        {"role": "user", "content": "Write a haiku"},
        {"role": "user", "content": compaction.SUMMARY_PREAMBLE + "SUMMARY: the user likes haiku."},
        {"role": "user", "content": "Another"},
    ]
    first, second = wait_for_usage_events(2, workspace_id=caller.workspace.pk)
    assert (first.endpoint, first.status, first.counted_messages) == ("responses.compact", "succeeded", 1)
    assert second.endpoint == "responses"


@live
@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/responses"])
def test_a_silent_upstream_gets_heartbeats_on_every_stream(live_server, fake_upstream, caller, settings, path):
    settings.STREAM_HEARTBEAT_SECONDS = 0.05
    fake_upstream.chunk_delay_ms = 300
    body = {"model": MODEL, "stream": True}
    body.update(
        {"messages": [{"role": "user", "content": "hi"}]}
        if path == "/chat/completions"
        else {"prompt": "hi"}
        if path == "/completions"
        else {"input": "hi"}
    )

    response = requests.post(
        f"{live_server.api_base}{path}", json=body, headers={"Authorization": f"Bearer {caller.key}"}, timeout=20
    )

    assert response.status_code == 200
    assert response.text.count(": keep-alive\n\n") >= 2
    # Comments only ever come between events: every event still parses.
    for block in response.text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data and data != ["[DONE]"]:
            json.loads("\n".join(data))
    assert response.text.rstrip().endswith("[DONE]") or '"response.completed"' in response.text
    [event] = wait_for_usage_events(1, workspace_id=caller.workspace.pk)
    assert event.status == "succeeded"


@live
def test_a_large_response_completed_arrives_whole(client, fake_upstream, caller):
    fake_upstream.reply_text = "word " * 400_000  # a 2 MB answer: its response.completed is one 2 MB line

    events = list(client.responses.create(model=MODEL, input="Talk", stream=True))

    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == fake_upstream.reply_text
    wait_for_usage_events(1, workspace_id=caller.workspace.pk)


@live
def test_retries_of_a_stream_that_produced_nothing_cost_nothing_and_show_in_the_ledger(client, fake_upstream, caller):
    fake_upstream.fail_next("502", times=100)  # however often the gateway itself tries, the client sees a 502

    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="Say hello", stream=True)
    fake_upstream.reset()  # the upstream recovers; the client sends the same body again
    again = list(client.responses.create(model=MODEL, input="Say hello", stream=True))

    assert again[-1].type == "response.completed"
    failed, succeeded = wait_for_usage_events(2, workspace_id=caller.workspace.pk)
    assert (failed.status, failed.counted_messages, failed.completion_tokens) == ("failed", 0, 0)
    assert (succeeded.status, succeeded.counted_messages) == ("succeeded", 1)


@live
def test_chat_completions_pass_reasoning_through_both_ways(live_server, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(text="Hi", reasoning="Greeting back.")
    client = openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello", "reasoning": "Be polite.", "reasoning_content": "Be polite."},
        {"role": "user", "content": "again"},
    ]

    whole = client.chat.completions.create(model=MODEL, messages=history)
    chunks = list(client.chat.completions.create(model=MODEL, messages=history, stream=True))

    assert fake_upstream.last_request.json["messages"][1]["reasoning"] == "Be polite."
    assert fake_upstream.last_request.json["messages"][1]["reasoning_content"] == "Be polite."
    assert whole.choices[0].message.model_extra["reasoning"] == "Greeting back."
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices)
    assert streamed == "Greeting back."
    wait_for_usage_events(2, workspace_id=caller.workspace.pk)


@live
def test_a_namespaced_call_parses_as_the_sdks_function_call_streamed_and_not(client, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(tool=("multi_agent_v1__spawn_agent", '{"task": "lint"}'))

    whole = client.responses.create(model=MODEL, input="Delegate", tools=[MULTI_AGENT])
    events = list(client.responses.create(model=MODEL, input="Delegate", tools=[MULTI_AGENT], stream=True))

    [call] = whole.output
    assert (call.type, call.name, call.namespace, call.arguments) == (
        "function_call",
        "spawn_agent",
        "multi_agent_v1",
        '{"task": "lint"}',
    )
    [done] = [e for e in events if e.type == "response.output_item.done"]
    assert (done.item.name, done.item.namespace) == ("spawn_agent", "multi_agent_v1")
    [arguments] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert arguments.arguments == '{"task": "lint"}'
    assert fake_upstream.last_request.json["tools"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    wait_for_usage_events(2, workspace_id=caller.workspace.pk)


@live
def test_an_in_band_compaction_trigger_streams_one_compaction_item(client, fake_upstream, caller):
    fake_upstream.respond_with = lambda body: FakeReply(text="SUMMARY: a haiku about ponds.")

    events = list(
        client.responses.create(
            model=MODEL,
            input=[{"role": "user", "content": "Write a haiku"}, {"type": "compaction_trigger"}],
            tools=CODEX_TOOLS,
            stream=True,
        )
    )

    [item] = events[-1].response.output
    assert events[-1].type == "response.completed" and item.type == "compaction"
    assert [e.type for e in events if e.type.startswith("response.output_item")] == [
        "response.output_item.added",
        "response.output_item.done",
    ]
    assert "tools" not in fake_upstream.last_request.json
    assert compaction.expand(item.encrypted_content)[-1]["content"].endswith("SUMMARY: a haiku about ponds.")
    [event] = wait_for_usage_events(1, workspace_id=caller.workspace.pk)
    assert event.endpoint == "responses" and event.counted_messages == 1
