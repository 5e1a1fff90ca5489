"""Stored responses (store: true) through the official SDK against a live server and the fake upstream:
kept for the workspace, read back from any process the moment the client has them, continued with
previous_response_id, listed, deleted, purged, capped, and invisible to every other workspace."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import openai
import pydantic
import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.admin.utils import quote
from django.db import DatabaseError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent

from accounts.models import User
from gateway.models import StoredResponse, StoredResponseItem
from gateway.surfaces.openai import stored_responses
from gateway.tasks import purge_stored_responses_task
from tests.fault_support import assert_openai_error, gateway_env, running_gateway
from tests.openapi_schemas import assert_conforms
from tests.support import make_user, wait_for_usage_events

MODEL = "openai/gpt-5-mini"
REPLY = "Hello from the fake upstream."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    "strict": True,
}
ITEMS = pydantic.TypeAdapter(ResponseItem)
STREAM_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)

live = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def caller():
    return make_user("dev@example.com", plan="unlimited")


@pytest.fixture
def stranger():
    return make_user("other@example.com", plan="unlimited")


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def client(live_server, fake_upstream, caller) -> openai.OpenAI:
    return sdk(live_server.v1_base, caller.key)


def validated(raw: str | bytes) -> Response:
    """The body is a Response by the SDK's own pydantic types (validated, not just constructed)."""
    return Response.model_validate(json.loads(raw))


def upstream_messages(fake_upstream) -> list[dict]:
    return fake_upstream.last_request.json["messages"]


# ---- keeping, reading, listing ------------------------------------------------------------------


@live
def test_a_stored_response_is_read_back_as_it_was_sent(client, fake_upstream, caller):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Say hello", instructions="Be brief.")
    created = raw.parse()

    assert created.store is True and re.fullmatch(r"resp_[0-9a-f]{32}", created.id)  # 122 random bits
    again = client.responses.with_raw_response.retrieve(created.id)
    assert again.http_response.content == raw.http_response.content
    assert validated(again.http_response.content).output_text == REPLY
    row = StoredResponse.objects.get(pk=created.id)
    assert (row.workspace_id, row.user_id, row.status, row.model) == (
        caller.workspace.pk,
        caller.user.pk,
        "completed",
        MODEL,
    )
    assert row.expires_at - row.created_at == timedelta(days=django_settings.RESPONSES_RETENTION_DAYS)
    [event] = wait_for_usage_events(1, workspace_id=caller.workspace.pk)
    assert event.request_id == row.request_id and event.counted_messages == 1  # one request, billed once


@live
@pytest.mark.postgres
def test_a_response_is_readable_from_a_second_server_process(client, live_server, fake_upstream, caller):
    with running_gateway(gateway_env()) as second:
        other = sdk(f"{second.url}/api/openai/v1", caller.key)
        created = client.responses.create(model=MODEL, input="Say hello")

        read = other.responses.with_raw_response.retrieve(created.id)
        assert validated(read.http_response.content).model_dump() == created.model_dump()
        items = list(other.responses.input_items.list(created.id))
        assert [(item.type, item.role) for item in items] == [("message", "user")]

        # Streamed: durable before the final event leaves, so the other process has it at once.
        response = requests.post(
            f"{live_server.v1_base}/responses",
            json={"model": MODEL, "input": "Say hello", "stream": True},
            headers={"Authorization": f"Bearer {caller.key}"},
            stream=True,
            timeout=20,
        )
        completed = None
        for line in response.iter_lines():
            if line.startswith(b"data: ") and b'"response.completed"' in line:
                completed = json.loads(line[len(b"data: ") :])["response"]
                break
        assert completed is not None
        fetched = other.responses.with_raw_response.retrieve(completed["id"])
        assert json.loads(fetched.http_response.content) == completed
        response.close()


@live
def test_the_sdk_stream_helper_gives_an_id_that_can_be_read_at_once(client, fake_upstream):
    with client.responses.stream(model=MODEL, input="Say hello") as stream:
        for event in stream:
            if event.type == "response.completed":
                # Before the stream has even closed, the response is there.
                assert client.responses.retrieve(event.response.id).output_text == REPLY
        final = stream.get_final_response()

    assert final.store is True
    read = client.responses.retrieve(final.id)
    assert (read.id, read.output_text, read.usage) == (final.id, final.output_text, final.usage)


@live
def test_every_event_of_a_stored_stream_is_valid_and_the_final_response_is_what_is_stored(
    live_server, fake_upstream, caller
):
    raw = requests.post(
        f"{live_server.api_base}/responses",
        json={"model": MODEL, "input": "Say hello", "stream": True},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=20,
    )
    events = [
        STREAM_EVENTS.validate_python(json.loads(line[len("data: ") :]))
        for line in raw.text.splitlines()
        if line.startswith("data: ")
    ]

    assert events[0].type == "response.created" and events[0].response.store is True
    assert events[-1].type == "response.completed"
    stored = validated(StoredResponse.objects.get(pk=events[-1].response.id).response)
    assert stored == events[-1].response


@live
def test_a_stream_that_fails_upstream_is_stored_as_failed(client, fake_upstream):
    fake_upstream.fail_next("error_mid_stream")

    events = list(client.responses.create(model=MODEL, input="Say hello", stream=True))

    assert events[-1].type == "response.failed"
    stored = client.responses.retrieve(events[-1].response.id)
    assert stored.status == "failed" and stored.error.code == "server_error"


@live
def test_input_items_are_listed_in_openais_shape_with_pagination(client, live_server, fake_upstream, caller):
    conversation = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"location":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"role": "assistant", "content": "It is 18C."},
        {"role": "user", "content": "Thanks!"},
    ]
    created = client.responses.create(model=MODEL, input=conversation, tools=[WEATHER_TOOL])

    newest_first = list(client.responses.input_items.list(created.id, limit=2))  # three pages
    oldest_first = list(client.responses.input_items.list(created.id, limit=4, order="asc"))

    assert [item.id for item in oldest_first] == [item.id for item in reversed(newest_first)]
    assert [item.type for item in oldest_first] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]
    assert oldest_first[0].role == "developer" and oldest_first[1].content[0].text == "Weather in Paris?"
    assert oldest_first[4].role == "assistant" and oldest_first[4].content[0].text == "It is 18C."
    assert oldest_first[5].content[0].text == "Thanks!"
    raw = requests.get(
        f"{live_server.api_base}/responses/{created.id}/input_items",
        params={"limit": 2, "order": "asc", "after": oldest_first[1].id, "include[]": "message.input_image.image_url"},
        headers={"Authorization": f"Bearer {caller.key}"},
        timeout=10,
    ).json()
    assert set(raw) == {"object", "data", "first_id", "last_id", "has_more"}
    assert raw["object"] == "list" and raw["has_more"] is True
    assert [item["id"] for item in raw["data"]] == [oldest_first[2].id, oldest_first[3].id]
    assert (raw["first_id"], raw["last_id"]) == (oldest_first[2].id, oldest_first[3].id)
    for item in raw["data"]:
        ITEMS.validate_python(item)
    # Item ids are stable: the same ids on every read.
    assert [item.id for item in client.responses.input_items.list(created.id, order="asc")] == [
        item.id for item in oldest_first
    ]


@live
def test_stored_bodies_match_the_shared_spec(client, live_server, caller):
    created = client.responses.create(model=MODEL, input=[{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL])
    chained = client.responses.create(model=MODEL, input="Again", previous_response_id=created.id)
    headers = {"Authorization": f"Bearer {caller.key}"}

    for response_id in (created.id, chained.id):
        base = f"{live_server.api_base}/responses/{response_id}"
        assert_conforms("Response", requests.get(base, headers=headers, timeout=10).json())
        assert_conforms("ResponseItemList", requests.get(f"{base}/input_items", headers=headers, timeout=10).json())


@live
def test_bad_list_parameters_are_400s_naming_them(client, live_server, caller):
    created = client.responses.create(model=MODEL, input="Say hello")
    url = f"{live_server.v1_base}/responses/{created.id}/input_items"
    headers = {"Authorization": f"Bearer {caller.key}"}

    for params, param in (({"limit": 0}, "limit"), ({"limit": "lots"}, "limit"), ({"order": "up"}, "order")):
        assert_openai_error(
            requests.get(url, params=params, headers=headers, timeout=10), status=400, code="invalid_value", param=param
        )
    assert_openai_error(
        requests.get(url, params={"after": "msg_nope"}, headers=headers, timeout=10),
        status=400,
        code=None,
        param="after",
    )
    assert_openai_error(
        requests.get(
            f"{live_server.v1_base}/responses/{created.id}", params={"stream": "true"}, headers=headers, timeout=10
        ),
        status=400,
        code="unsupported_parameter",
        param="stream",
    )


# ---- continuing ---------------------------------------------------------------------------------


@live
def test_previous_response_id_sends_the_stored_context_upstream_without_its_instructions(client, fake_upstream, caller):
    first = client.responses.create(model=MODEL, input="Hi there", instructions="Be brief.")
    second = client.responses.create(
        model=MODEL, input="And again?", instructions="Be verbose.", previous_response_id=first.id
    )

    assert upstream_messages(fake_upstream) == [
        {"role": "system", "content": "Be verbose."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "And again?"},
    ]
    assert second.previous_response_id == first.id and second.instructions == "Be verbose."
    third = client.responses.create(model=MODEL, input="Once more", previous_response_id=second.id)
    assert [m["content"] for m in upstream_messages(fake_upstream)] == [
        "Hi there",
        REPLY,
        "And again?",
        REPLY,
        "Once more",
    ]
    # Continuing without storing: the context still goes upstream, the new response is not kept.
    unstored = client.responses.create(model=MODEL, input="Off the record", previous_response_id=first.id, store=False)
    assert [m["content"] for m in upstream_messages(fake_upstream)] == ["Hi there", REPLY, "Off the record"]
    assert unstored.store is False and unstored.previous_response_id == first.id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    # The chain's input items: everything the model saw, ids kept from the responses before.
    listed = list(client.responses.input_items.list(third.id, order="asc"))
    assert [item.type for item in listed] == ["message"] * 5
    assert [item.id for item in listed[:2]] == [
        *[item.id for item in client.responses.input_items.list(first.id)],
        first.output[0].id,
    ]
    assert listed[3].id == second.output[0].id
    # Billed as one request each; the replayed context is in the upstream's own prompt count.
    events = wait_for_usage_events(4, workspace_id=caller.workspace.pk)
    assert [e.counted_messages for e in events] == [1, 1, 1, 1]


@live
def test_a_tool_round_trip_continues_with_only_the_tool_output(client, live_server, fake_upstream, caller):
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL])
    [call] = first.output
    assert call.type == "function_call"

    events = list(
        client.responses.create(
            model=MODEL,
            tools=[WEATHER_TOOL],
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18}'}],
            stream=True,
        )
    )

    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == 'The tool returned: {"temperature": 18}'
    messages = upstream_messages(fake_upstream)
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temperature": 18}'}
    assert client.responses.retrieve(events[-1].response.id).previous_response_id == first.id


@live
def test_item_references_resolve_to_stored_items(client, fake_upstream, caller, stranger, live_server):
    first = client.responses.create(model=MODEL, input="Hi there")
    [user_item] = list(client.responses.input_items.list(first.id))

    client.responses.create(
        model=MODEL,
        input=[
            {"type": "item_reference", "id": user_item.id},
            {"type": "item_reference", "id": first.output[0].id},
            {"role": "user", "content": "And again?"},
        ],
    )

    assert upstream_messages(fake_upstream) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "And again?"},
    ]
    for key, item_id in ((caller.key, "msg_never"), (stranger.key, first.output[0].id)):
        with pytest.raises(openai.NotFoundError) as raised:
            sdk(live_server.v1_base, key).responses.create(
                model=MODEL, input=[{"role": "user", "content": "x"}, {"type": "item_reference", "id": item_id}]
            )
        assert raised.value.body["param"] == "input[1].id"


@live
def test_errors_in_the_new_input_name_its_own_index(client):
    first = client.responses.create(model=MODEL, input="Hi there")

    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model=MODEL, previous_response_id=first.id, input=[{"role": "user", "content": "ok"}, {"type": "banana"}]
        )

    assert raised.value.body["param"] == "input[1].type"
    assert "input[1]" in raised.value.message


# ---- forgetting ---------------------------------------------------------------------------------


@live
def test_a_deleted_response_is_gone_everywhere(client, live_server, caller):
    created = client.responses.create(model=MODEL, input="Say hello")

    deleted = requests.delete(
        f"{live_server.api_base}/responses/{created.id}", headers={"Authorization": f"Bearer {caller.key}"}, timeout=10
    )
    assert deleted.status_code == 200 and deleted.json() == {"id": created.id, "object": "response", "deleted": True}

    for attempt in (
        lambda: client.responses.retrieve(created.id),
        lambda: client.responses.delete(created.id),
        lambda: list(client.responses.input_items.list(created.id)),
        lambda: client.responses.create(model=MODEL, input="x", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert not StoredResponse.objects.filter(pk=created.id).exists()
    assert not StoredResponseItem.objects.filter(response_id=created.id).exists()


@live
def test_store_false_keeps_nothing(client, fake_upstream):
    created = client.responses.create(model=MODEL, input="Say hello", store=False)
    streamed = list(client.responses.create(model=MODEL, input="Say hello", store=False, stream=True))

    assert created.store is False and streamed[-1].response.store is False
    for response_id in (created.id, streamed[-1].response.id):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError) as raised:
            client.responses.create(model=MODEL, input="x", previous_response_id=response_id)
        assert raised.value.body["param"] == "previous_response_id"
        assert raised.value.body["code"] == "previous_response_not_found"
    assert StoredResponse.objects.count() == 0 and StoredResponseItem.objects.count() == 0
    assert len(fake_upstream.requests_to("/chat/completions")) == 2  # the refused ones never went upstream


@live
def test_another_workspace_gets_the_404_of_an_id_that_never_existed(client, live_server, caller, stranger):
    created = client.responses.create(model=MODEL, input="Say hello")
    never = "resp_" + "0" * 48
    headers = {"Authorization": f"Bearer {stranger.key}"}

    def errors(response_id: str) -> list[dict]:
        base = f"{live_server.api_base}/responses/{response_id}"
        answers = [
            requests.get(base, headers=headers, timeout=10),
            requests.delete(base, headers=headers, timeout=10),
            requests.get(f"{base}/input_items", headers=headers, timeout=10),
        ]
        for answer in answers:
            assert_openai_error(answer, status=404, code=None, error_type="invalid_request_error")
        return [json.loads(answer.text.replace(response_id, "ID")) for answer in answers]

    assert errors(created.id) == errors(never)
    with pytest.raises(openai.NotFoundError):
        sdk(live_server.v1_base, stranger.key).responses.create(model=MODEL, input="x", previous_response_id=created.id)
    assert client.responses.retrieve(created.id).id == created.id  # still there for its owner


# ---- retention and limits -----------------------------------------------------------------------


@live
def test_expired_responses_are_404_and_purged_idempotently(client, caller):
    old = client.responses.create(model=MODEL, input="Say hello")
    fresh = client.responses.create(model=MODEL, input="Say hello")
    StoredResponse.objects.filter(pk=old.id).update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(old.id)  # expired is gone, even before the purge runs
    assert purge_stored_responses_task.delay().get() == 1
    assert purge_stored_responses_task.delay().get() == 0

    assert list(StoredResponse.objects.values_list("pk", flat=True)) == [fresh.id]
    assert set(StoredResponseItem.objects.values_list("response_id", flat=True)) == {fresh.id}
    assert client.responses.retrieve(fresh.id).id == fresh.id
    schedule = django_settings.CELERY_BEAT_SCHEDULE["purge-stored-responses"]
    assert schedule["task"] == "gateway.tasks.purge_stored_responses_task"


@live
def test_a_response_above_the_size_cap_is_a_clear_400(client, fake_upstream, settings):
    settings.RESPONSES_STORE_MAX_BYTES = 4000
    big = "x" * 5000

    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input=big)
    assert raised.value.body["param"] == "input" and raised.value.body["code"] == "stored_response_too_large"
    assert "4000 bytes" in raised.value.message and "'store': false" in raised.value.message
    assert fake_upstream.requests == []

    assert client.responses.create(model=MODEL, input=big, store=False).output_text == REPLY
    first = client.responses.create(model=MODEL, input="y" * 2500)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="z" * 2500, previous_response_id=first.id)
    assert raised.value.body["param"] == "previous_response_id"


@live
def test_concurrent_responses_sharing_a_commit_are_each_stored(client, caller):
    with ThreadPoolExecutor(max_workers=12) as pool:
        created = list(pool.map(lambda n: client.responses.create(model=MODEL, input=f"Hello {n}"), range(24)))

    for response in created:
        assert client.responses.retrieve(response.id).output_text == REPLY
    assert StoredResponse.objects.count() == 24


@live
def test_a_response_the_database_refuses_to_store_says_store_false(client, monkeypatch):
    def refuse(rows, index) -> None:
        raise DatabaseError("disk full")

    monkeypatch.setattr(stored_responses, "_save", refuse)
    created = client.responses.create(model=MODEL, input="Say hello")
    streamed = list(client.responses.create(model=MODEL, input="Say hello", stream=True))
    monkeypatch.undo()

    assert created.output_text == REPLY and created.store is False  # told, not misled
    assert streamed[-1].type == "response.completed" and streamed[-1].response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


@live
def test_background_stays_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="x", background=True)

    assert raised.value.body["param"] == "background"


# ---- admin --------------------------------------------------------------------------------------


@live
def test_staff_see_the_metadata_in_admin_but_never_the_content(client, caller, settings):
    secret = "the launch codes are 0000"
    created = client.responses.create(model=MODEL, input=secret)
    staff = User.objects.create_superuser("root@example.com", "a-long-password-1")
    admin_client = Client()
    admin_client.force_login(staff)

    changelist = admin_client.get(reverse("admin:gateway_storedresponse_changelist"))
    change = admin_client.get(reverse("admin:gateway_storedresponse_change", args=[quote(created.id)]))

    for page in (changelist, change):
        assert page.status_code == 200
        text = page.content.decode()
        assert created.id in text and MODEL in text
        assert secret not in text and REPLY not in text
    assert "dev@example.com" in changelist.content.decode()
    assert (
        admin_client.post(reverse("admin:gateway_storedresponse_delete", args=[quote(created.id)])).status_code == 403
    )
    assert admin_client.get(reverse("admin:gateway_storedresponse_add")).status_code == 403
    assert StoredResponse.objects.filter(pk=created.id).exists()
