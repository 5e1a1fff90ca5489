"""Hosted web search: served through OpenRouter's `openrouter:web_search` server tool when the workspace's
plan includes it, left out and named in `x-writingmate-omitted-tools` when it does not.

Responses are checked against the openai SDK's pydantic types; the Anthropic surface through the
anthropic SDK. The fake upstream answers a request carrying the server tool with url_citation
annotations, as OpenRouter does, and records what it was sent.
"""

from __future__ import annotations

import csv
import io
import json
import re

import anthropic
import openai
import pytest
import requests
from django.test import Client
from django.urls import reverse

from accounts.models import Plan, User
from gateway.core.upstream_fields import OMITTED_TOOLS_HEADER
from gateway.errors import ApiError
from gateway.surfaces.openai.responses.events import ResponseEventStream
from gateway.surfaces.openai.responses.request import chat_request_from_responses
from gateway.surfaces.openai.responses.tools import WEB_SEARCH_MAX_TOTAL_RESULTS
from tests.fake_upstream import DEFAULT_REPLY, DEFAULT_WEB_RESULTS
from tests.sdk_schemas import assert_sdk_conforms
from tests.support import make_user, wait_for_usage_events

MODEL = "openai/gpt-5-mini"
CLAUDE = "anthropic/claude-sonnet-4.5"
SOURCES = "web_search_call.action.sources"
WEB_SEARCH = {
    "type": "web_search",
    "search_context_size": "high",
    "filters": {"allowed_domains": ["example.org", "news.example.com"]},
    "user_location": {"type": "approximate", "city": "Paris", "country": "FR", "region": None},
}
CODEX_WEB_SEARCH = {"type": "web_search", "external_web_access": False}
EXEC = {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
CLAUDE_WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
CLAUDE_WEB_FETCH = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3}
CLAUDE_CODE_EXECUTION = {"type": "code_execution_20250825", "name": "code_execution"}

live = pytest.mark.django_db(transaction=True)


def _without_search_plan() -> Plan:
    return Plan.objects.create(slug="team-no-search", name="Team (no search)", allowed_model_tiers=["basic", "premium"])


@pytest.fixture
def searcher():
    return make_user("search@example.com", plan="unlimited")


@pytest.fixture
def non_searcher():
    return make_user("nosearch@example.com", plan=_without_search_plan().slug)


def _openai(live_server, user) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.v1_base, api_key=user.key, max_retries=0, timeout=20)


def _post(live_server, user, body: dict) -> requests.Response:
    return requests.post(
        f"{live_server.api_base}/responses",
        json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {user.key}"},
        timeout=20,
    )


def _events(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def _cited_reply() -> tuple[str, list[dict]]:
    """The fake's reply to a search: its text, each result as a markdown link, and where each link is."""
    text, citations = DEFAULT_REPLY, []
    for url, title in DEFAULT_WEB_RESULTS:
        link = f"[{title}]({url})"
        text += " " + link
        citations.append(
            {
                "type": "url_citation",
                "start_index": len(text) - len(link),
                "end_index": len(text),
                "url": url,
                "title": title,
            }
        )
    return text, citations


# ---- the plan allowance ----------------------------------------------------------------------------


def test_paid_plans_include_web_search_and_the_free_plan_and_new_plans_do_not(db):
    included = dict(Plan.objects.values_list("slug", "includes_web_search"))
    assert (included["free"], included["pro"], included["unlimited"]) == (False, True, True)
    assert Plan.objects.create(slug="new", name="New").includes_web_search is False


@live
def test_a_plan_change_in_admin_reaches_the_api_on_the_next_request(live_server, fake_upstream, searcher):
    body = {"input": "Weather in Paris?", "tools": [WEB_SEARCH]}
    assert OMITTED_TOOLS_HEADER not in _post(live_server, searcher, body).headers

    admin = Client()
    admin.force_login(User.objects.create_superuser("root@example.com"))
    plan = Plan.objects.get(slug="unlimited")
    changed = admin.post(
        reverse("admin:accounts_plan_change", args=[plan.pk]),
        {
            "slug": plan.slug,
            "name": plan.name,
            "daily_message_limit": "",
            "member_daily_message_limit": "",
            "allowed_model_tiers": json.dumps(plan.allowed_model_tiers),
            "allowed_model_slugs": json.dumps(plan.allowed_model_slugs),
            # includes_web_search unticked
        },
    )
    assert changed.status_code == 302, changed.content.decode()[:2000]

    response = _post(live_server, searcher, body)
    assert response.status_code == 200 and response.headers[OMITTED_TOOLS_HEADER] == "web_search"
    assert "tools" not in fake_upstream.last_request.json


# ---- Responses: served when the plan includes it ------------------------------------------------------


@live
def test_a_web_search_goes_upstream_as_openrouters_server_tool_and_comes_back_as_openai_shapes(
    live_server, fake_upstream, searcher
):
    raw = _post(live_server, searcher, {"input": "Weather in Paris?", "tools": [WEB_SEARCH], "include": [SOURCES]})

    assert raw.status_code == 200, raw.text
    assert OMITTED_TOOLS_HEADER not in raw.headers
    assert fake_upstream.last_request.json["tools"] == [
        {
            "type": "openrouter:web_search",
            "parameters": {
                "max_total_results": WEB_SEARCH_MAX_TOTAL_RESULTS,
                "search_context_size": "high",
                "allowed_domains": ["example.org", "news.example.com"],
                "user_location": {"type": "approximate", "city": "Paris", "country": "FR"},
            },
        }
    ]
    body = raw.json()
    response = assert_sdk_conforms("Response", body)
    search, message = response.output
    assert search.type == "web_search_call" and search.id.startswith("ws_") and search.status == "completed"
    assert search.action.type == "search"
    assert [source.url for source in search.action.sources] == [url for url, _ in DEFAULT_WEB_RESULTS]
    text, citations = _cited_reply()
    [part] = message.content
    assert part.text == text
    assert [a.model_dump() for a in part.annotations] == citations
    for citation in citations:  # each annotation spans exactly its markdown link
        assert text[citation["start_index"] : citation["end_index"]].endswith(f"({citation['url']})")
    [event] = wait_for_usage_events(1, workspace_id=searcher.user.current_workspace_id)
    assert event.counted_messages == 1 and event.status == "succeeded"  # the message formula, once


@live
def test_without_include_the_search_item_carries_no_sources(live_server, fake_upstream, searcher):
    response = _openai(live_server, searcher).responses.create(model=MODEL, input="News?", tools=[WEB_SEARCH])

    search = response.output[0]
    assert search.type == "web_search_call" and search.action.sources is None
    assert response.output[1].content[0].annotations  # the citations are on the text either way


@live
def test_a_streamed_web_search_announces_the_search_and_each_citation_in_openais_events(
    live_server, fake_upstream, searcher
):
    events = _events(
        _post(live_server, searcher, {"input": "Weather?", "tools": [WEB_SEARCH], "include": [SOURCES], "stream": True})
    )

    for event in events:
        assert_sdk_conforms("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    # OpenRouter sends the results with the last text, so the search item follows the text it grounded.
    first_search = kinds.index("response.output_item.added", kinds.index("response.output_text.delta"))
    assert kinds[first_search:] == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.output_text.annotation.added",
        "response.output_text.annotation.added",
        "response.web_search_call.completed",
        "response.output_item.done",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text, citations = _cited_reply()
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [e["annotation"] for e in added] == citations and [e["annotation_index"] for e in added] == [0, 1]
    search_events = [e for e in events if e["type"].startswith("response.web_search_call.")]
    assert {e["item_id"] for e in search_events} == {events[first_search]["item"]["id"]}
    final = events[-1]["response"]
    message, search = final["output"]
    assert message["content"][0]["text"] == text and message["content"][0]["annotations"] == citations
    assert search["type"] == "web_search_call" and search["status"] == "completed"
    assert search["action"]["sources"] == [{"type": "url", "url": url} for url, _ in DEFAULT_WEB_RESULTS]
    assert fake_upstream.last_request.json["tools"][0]["type"] == "openrouter:web_search"
    wait_for_usage_events(1, workspace_id=searcher.user.current_workspace_id)


def _streamed(chunks: list[dict], **request: object) -> list[dict]:
    translated = chat_request_from_responses(
        {"model": "m", "input": "hi", "stream": True, **request}, web_search_allowed=True
    )
    events = ResponseEventStream(
        response_id="resp_1", created_at=1, model="m", echo=translated.echo, tools=translated.tools
    )
    out = events.start()
    for chunk in chunks:
        out += events.feed(chunk)
    out += events.finish(completed_at=2)
    for event in out:
        assert_sdk_conforms("ResponseStreamEvent", event)
    return out


def test_citations_that_arrive_before_the_text_put_the_search_before_the_message():
    _, citations = _cited_reply()
    annotations = [
        {"type": "url_citation", "url_citation": {k: v for k, v in c.items() if k != "type"}} for c in citations
    ]
    text, _ = _cited_reply()
    events = _streamed(
        [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "annotations": annotations}}]},
            {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]},
        ],
        tools=[WEB_SEARCH],
    )

    search, message = events[-1]["response"]["output"]
    assert search["type"] == "web_search_call" and message["content"][0]["annotations"] == citations
    kinds = [e["type"] for e in events]
    # The search is over once the answer starts; the citations are announced once their text is there.
    assert kinds.index("response.web_search_call.completed") < kinds.index("response.content_part.added")
    assert kinds.index("response.output_text.delta") < kinds.index("response.output_text.annotation.added")


def test_a_search_the_usage_reports_without_citations_still_gets_its_item():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "server_tool_use": {"web_search_requests": 2}}
    events = _streamed(
        [
            {"choices": [{"index": 0, "delta": {"content": "Nothing found."}, "finish_reason": "stop"}]},
            {"choices": [], "usage": usage},
        ],
        tools=[WEB_SEARCH],
        include=[SOURCES],
    )

    message, search = events[-1]["response"]["output"]
    assert search["action"] == {"type": "search", "sources": []} and message["content"][0]["annotations"] == []
    unserved = _streamed(
        [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}], "usage": usage}]
    )
    assert [item["type"] for item in unserved[-1]["response"]["output"]] == ["message"]


@live
def test_a_stored_response_with_a_search_is_kept_and_continued(live_server, fake_upstream, searcher):
    client = _openai(live_server, searcher)
    first = client.responses.create(model=MODEL, input="Weather?", tools=[WEB_SEARCH], store=True)

    kept = client.responses.retrieve(first.id)
    assert [item.type for item in kept.output] == ["web_search_call", "message"]
    assert kept.output[1].content[0].annotations == first.output[1].content[0].annotations
    second = client.responses.create(model=MODEL, input="And tomorrow?", previous_response_id=first.id)
    assert second.status == "completed"
    # The search record has no chat form: its results are in the answer text that goes back upstream.
    text, _ = _cited_reply()
    assert fake_upstream.last_request.json["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": text},
        {"role": "user", "content": "And tomorrow?"},
    ]
    items = client.responses.input_items.list(second.id)
    assert "web_search_call" in [item.type for item in items.data]


# ---- Responses: left out ---------------------------------------------------------------------------


@live
def test_a_plan_without_web_search_leaves_it_out_and_names_it(live_server, fake_upstream, non_searcher):
    response = _post(live_server, non_searcher, {"input": "Weather?", "tools": [WEB_SEARCH, EXEC]})

    assert response.status_code == 200, response.text
    assert response.headers[OMITTED_TOOLS_HEADER] == "web_search"
    assert [t["type"] for t in fake_upstream.last_request.json["tools"]] == ["function"]
    assert all(item["type"] != "web_search_call" for item in response.json()["output"])


@live
def test_codexs_cached_only_web_search_is_left_out_even_when_the_plan_includes_search(
    live_server, fake_upstream, searcher
):
    response = _post(live_server, searcher, {"input": "hi", "tools": [EXEC, CODEX_WEB_SEARCH], "stream": True})

    assert response.headers[OMITTED_TOOLS_HEADER] == "web_search"
    assert [t["type"] for t in fake_upstream.last_request.json["tools"]] == ["function"]
    assert not [e for e in _events(response) if e["type"].startswith("response.web_search_call.")]


# ---- tool_choice ---------------------------------------------------------------------------------


def _translated(tools: list, tool_choice: object, *, allowed: bool = True) -> dict:
    body = {"model": "m", "input": "hi", "tools": tools, "tool_choice": tool_choice}
    return chat_request_from_responses(body, web_search_allowed=allowed).chat_body


def test_forcing_a_served_web_search_offers_only_the_search_and_lets_the_model_use_it():
    forced = _translated([EXEC, WEB_SEARCH], {"type": "web_search_preview"})
    assert [t["type"] for t in forced["tools"]] == ["openrouter:web_search"] and "tool_choice" not in forced

    required = _translated([WEB_SEARCH], "required")
    assert "tool_choice" not in required  # "required" would ask for a function call that cannot exist
    assert _translated([EXEC, WEB_SEARCH], "required")["tool_choice"] == "required"

    allowed = _translated(
        [EXEC, WEB_SEARCH],
        {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]},
    )
    assert [t["type"] for t in allowed["tools"]] == ["openrouter:web_search"] and allowed["tool_choice"] == "auto"


def test_forcing_a_left_out_web_search_is_a_400_naming_tool_choice():
    for tools, allowed in (([EXEC, WEB_SEARCH], False), ([EXEC, CODEX_WEB_SEARCH], True)):
        with pytest.raises(ApiError) as raised:
            _translated(tools, {"type": "web_search_preview"}, allowed=allowed)
        assert raised.value.status == 400 and raised.value.param == "tool_choice"


@live
def test_a_forced_web_search_through_the_sdk_is_served_not_refused(live_server, fake_upstream, searcher, non_searcher):
    served = _openai(live_server, searcher).responses.create(
        model=MODEL, input="News?", tools=[WEB_SEARCH, EXEC], tool_choice={"type": "web_search_preview"}
    )
    assert served.output[0].type == "web_search_call"

    with pytest.raises(openai.BadRequestError) as refused:
        _openai(live_server, non_searcher).responses.create(
            model=MODEL, input="News?", tools=[WEB_SEARCH], tool_choice={"type": "web_search_preview"}
        )
    assert refused.value.body["param"] == "tool_choice"


# ---- Anthropic: Claude's server tools --------------------------------------------------------------


def _anthropic(live_server, user) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{live_server.url}/api/anthropic", api_key=user.key, max_retries=0, timeout=20)


def _claude(live_server, user, **body: object):
    return _anthropic(live_server, user).messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Weather?"}], **body
    )


@live
def test_claudes_web_tools_are_stripped_and_named_when_the_plan_lacks_search(live_server, fake_upstream, non_searcher):
    raw = _claude(live_server, non_searcher, tools=[WEATHER, CLAUDE_WEB_SEARCH, CLAUDE_WEB_FETCH], stream=False)

    assert raw.headers[OMITTED_TOOLS_HEADER] == "web_search_20250305,web_fetch_20250910"
    assert raw.parse().content[0].text == DEFAULT_REPLY
    sent = fake_upstream.last_request.json
    assert sent["tools"] == [WEATHER] and sent["model"] == CLAUDE


@live
def test_claudes_web_tools_pass_through_when_the_plan_includes_search(live_server, fake_upstream, searcher):
    raw = _claude(
        live_server, searcher, tools=[WEATHER, CLAUDE_WEB_SEARCH, CLAUDE_CODE_EXECUTION], tool_choice={"type": "auto"}
    )

    assert raw.headers[OMITTED_TOOLS_HEADER] == "code_execution_20250825"  # never part of a plan
    assert fake_upstream.last_request.json["tools"] == [WEATHER, CLAUDE_WEB_SEARCH]
    assert fake_upstream.last_request.json["tool_choice"] == {"type": "auto"}


@live
def test_a_claude_body_with_only_client_tools_is_untouched(live_server, fake_upstream, non_searcher):
    raw = (
        '{"model":"claude-sonnet-4-5-20250929", "max_tokens":64,"messages":[{"role":"user","content":"hi"}],'
        '"tools":[{"name":"get_weather","input_schema":{"type":"object"}}]}'
    )
    response = requests.post(
        f"{live_server.url}/api/anthropic/v1/messages",
        data=raw.encode(),
        headers={"x-api-key": non_searcher.key, "content-type": "application/json"},
        timeout=20,
    )

    assert response.status_code == 200 and OMITTED_TOOLS_HEADER not in response.headers
    assert fake_upstream.last_request.body == raw.replace("claude-sonnet-4-5-20250929", CLAUDE).encode()


@live
def test_only_server_tools_left_out_drop_tools_and_tool_choice_and_forcing_one_is_a_400(
    live_server, fake_upstream, non_searcher
):
    raw = _claude(live_server, non_searcher, tools=[CLAUDE_WEB_SEARCH], tool_choice={"type": "auto"})
    assert raw.headers[OMITTED_TOOLS_HEADER] == "web_search_20250305"
    sent = fake_upstream.last_request.json
    assert "tools" not in sent and "tool_choice" not in sent

    calls_before = len(fake_upstream.requests)
    for choice in ({"type": "tool", "name": "web_search"}, {"type": "any"}):
        with pytest.raises(anthropic.BadRequestError) as refused:
            _claude(live_server, non_searcher, tools=[CLAUDE_WEB_SEARCH], tool_choice=choice)
        assert refused.value.body["error"]["type"] == "invalid_request_error"
        assert refused.value.body["error"]["message"].startswith("tool_choice:")
    assert len(fake_upstream.requests) == calls_before


@live
def test_a_translated_model_names_the_server_tools_it_cannot_run(live_server, fake_upstream, searcher):
    raw = _anthropic(live_server, searcher).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, CLAUDE_WEB_SEARCH]
    )

    assert raw.headers[OMITTED_TOOLS_HEADER] == "web_search_20250305"
    assert [t["function"]["name"] for t in fake_upstream.last_request.json["tools"]] == ["get_weather"]


# ---- the ledger keeps each request's searches (OpenRouter bills them one by one) -------------------


def _ledger_searches(user) -> list[int]:
    return [e.web_search_requests for e in wait_for_usage_events(2, workspace_id=user.user.current_workspace_id)]


@live
def test_a_responses_search_is_kept_on_its_ledger_line_whole_and_streamed(live_server, fake_upstream, searcher):
    client = _openai(live_server, searcher)
    client.responses.create(model=MODEL, input="Weather?", tools=[WEB_SEARCH])
    with client.responses.stream(model=MODEL, input="Weather?", tools=[WEB_SEARCH]) as stream:
        final = stream.get_final_response()

    assert "web_search_call" in [item.type for item in final.output]
    assert _ledger_searches(searcher) == [1, 1]


@live
def test_searches_do_not_change_the_message_count(live_server, fake_upstream, searcher):
    client = _openai(live_server, searcher)
    client.responses.create(model=MODEL, input="Weather?")
    client.responses.create(model=MODEL, input="Weather?", tools=[WEB_SEARCH])

    plain, searched = wait_for_usage_events(2, workspace_id=searcher.user.current_workspace_id)
    assert (plain.web_search_requests, searched.web_search_requests) == (0, 1)
    assert searched.counted_messages == plain.counted_messages  # same tokens, same messages


@live
def test_searches_a_chat_completion_reports_are_kept_whole_and_streamed(live_server, fake_upstream, searcher):
    # OpenRouter reports searches on chat completions too (a web plugin, an :online model).
    fake_upstream.usage = {**fake_upstream.usage, "server_tool_use": {"web_search_requests": 3}}
    client = _openai(live_server, searcher)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "News?"}])
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "News?"}], stream=True)
    )

    assert chunks
    assert _ledger_searches(searcher) == [3, 3]


@live
def test_claudes_searches_are_kept_whole_and_streamed_and_the_client_sees_them(live_server, fake_upstream, searcher):
    whole = _claude(live_server, searcher, tools=[CLAUDE_WEB_SEARCH]).parse()
    with _anthropic(live_server, searcher).messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Weather?"}], tools=[CLAUDE_WEB_SEARCH]
    ) as stream:
        streamed = stream.get_final_message()

    assert whole.usage.server_tool_use.web_search_requests == 1
    assert streamed.usage.server_tool_use.web_search_requests == 1
    assert _ledger_searches(searcher) == [1, 1]


@live
def test_searches_behind_a_translated_messages_request_are_kept_and_reported_in_anthropics_usage(
    live_server, fake_upstream, searcher
):
    fake_upstream.usage = {**fake_upstream.usage, "server_tool_use": {"web_search_requests": 2}}
    client = _anthropic(live_server, searcher)
    whole = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "News?"}])
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "News?"}]) as stream:
        streamed = stream.get_final_message()

    assert whole.usage.server_tool_use.web_search_requests == 2
    assert streamed.usage.server_tool_use.web_search_requests == 2
    assert _ledger_searches(searcher) == [2, 2]


@live
def test_staff_see_the_searches_in_the_ledger_admin_and_its_csv(live_server, fake_upstream, searcher):
    _openai(live_server, searcher).responses.create(model=MODEL, input="Weather?", tools=[WEB_SEARCH])
    [event] = wait_for_usage_events(1, workspace_id=searcher.user.current_workspace_id)
    staff = Client()
    staff.force_login(User.objects.create_superuser("root@example.com"))

    listing = staff.get(reverse("admin:billing_usageevent_changelist")).content.decode()
    assert "Web searches" in listing
    line = staff.get(reverse("admin:billing_usageevent_change", args=[event.pk])).content.decode()
    shown = re.search(r'field-web_search_requests.*?class="readonly">([^<]*)<', line, re.S)
    assert shown is not None and shown.group(1) == "1"
    exported = staff.get(reverse("admin:billing_usageevent_export_csv"))
    [row] = list(csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert row["web_search_requests"] == "1" and row["request_id"] == event.request_id
