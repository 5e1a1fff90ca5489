"""The OpenAI Agents SDK (openai-agents, pinned) on its Responses model, pointed at a live server and the
fake upstream: an agent runs its function tool, streamed and not, and a second turn continues the first
with previous_response_id. Tracing is off, so nothing leaves loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool, set_tracing_disabled
from openai.types.responses import Response

from gateway.models import StoredResponse
from tests.support import make_user, wait_for_usage_events

MODEL = "openai/gpt-5-mini"
FORECAST = "18C and sunny"

live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@function_tool
def get_weather(location: str) -> str:
    """The weather for a city."""
    return FORECAST if location == "Paris" else "unknown"


@pytest.fixture(autouse=True)
def _no_tracing() -> Iterator[None]:
    set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI
    yield


@pytest.fixture
def caller():
    return make_user("agent@example.com", plan="unlimited")


@pytest.fixture
def agent(live_server, fake_upstream, caller) -> Agent:
    fake_upstream.tool_arguments = '{"location": "Paris"}'  # the tool's strict schema has only `location`
    client = openai.AsyncOpenAI(base_url=live_server.api_base, api_key=caller.key, max_retries=0, timeout=20)
    return Agent(
        name="Forecaster",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
    )


async def run(agent: Agent, text: str, *, streamed: bool, previous_response_id: str | None = None):
    config = RunConfig(tracing_disabled=True)
    if not streamed:
        return await Runner.run(agent, text, previous_response_id=previous_response_id, run_config=config)
    result = Runner.run_streamed(agent, text, previous_response_id=previous_response_id, run_config=config)
    kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    return result


def two_turns(agent: Agent, fake_upstream, *, streamed: bool):
    """(first run, the upstream calls it made, second run chained to it): one event loop, as an app has."""

    async def go():
        first = await run(agent, "Weather in Paris?", streamed=streamed)
        calls = fake_upstream.requests_to("/chat/completions")
        second = await run(agent, "And tomorrow?", streamed=streamed, previous_response_id=first.last_response_id)
        return first, calls, second

    return asyncio.run(go())


def stored(response_id: str) -> Response:
    """The stored response, validated by the openai SDK's own pydantic types."""
    return Response.model_validate(json.loads(StoredResponse.objects.get(pk=response_id).response))


@live
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_agent_runs_its_function_tool_and_continues_with_previous_response_id(
    agent, fake_upstream, caller, streamed
):
    first, calls, second = two_turns(agent, fake_upstream, streamed=streamed)

    assert first.final_output == f"The tool returned: {FORECAST}"
    assert len(calls) == 2  # the model asks for the tool, then answers with its result
    assert calls[0].json["tools"][0]["function"]["name"] == "get_weather"
    assert calls[1].json["messages"][-1]["role"] == "tool" and calls[1].json["messages"][-1]["content"] == FORECAST
    assert [item.type for item in first.new_items] == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    first_id = first.last_response_id
    assert stored(first_id).output_text == first.final_output

    # Only the new turn was sent; the server put the stored conversation before it.
    sent = fake_upstream.last_request.json["messages"]
    assert sent[0] == {"role": "system", "content": "Answer weather questions with the get_weather tool."}
    assert sent[1] == {"role": "user", "content": "Weather in Paris?"}
    assert sent[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[3] == {"role": "tool", "tool_call_id": sent[2]["tool_calls"][0]["id"], "content": FORECAST}
    assert sent[4] == {"role": "assistant", "content": first.final_output}
    assert sent[5] == {"role": "user", "content": "And tomorrow?"}
    assert second.final_output.startswith("The tool returned:")
    assert stored(second.last_response_id).previous_response_id == first_id
    events = wait_for_usage_events(3, workspace_id=caller.workspace.pk)
    assert all(event.status == "succeeded" and event.endpoint == "responses" for event in events)
