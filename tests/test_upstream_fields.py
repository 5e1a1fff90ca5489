"""Body fields that name an upstream, a credential or a proxy never reach the upstream (issue #10 point 8).

The fake upstream records what it received; the requests go through the official openai SDK, whose
`extra_body` merges the hostile fields into the top level of the JSON body, as a client could.
"""

from __future__ import annotations

import openai
import pytest

from gateway.core.upstream_fields import UPSTREAM_CONTROL_FIELDS, without_upstream_control_fields
from tests.support import make_user

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "openai/gpt-5-mini"
HELLO = [{"role": "user", "content": "Say hello"}]
HOSTILE = {
    "api_base": "http://169.254.169.254/latest",
    "base_url": "http://internal.example/v1",
    "api_key": "sk-attacker-chosen-key-0000000000",
    "api_version": "2024-02-01",
    "extra_body": {"api_base": "http://nested.example"},
    "extra_headers": {"Authorization": "Bearer someone-else"},
    "custom_llm_provider": "azure",
    "proxy": "http://proxy.example:3128",
}


@pytest.fixture
def client(live_server, fake_upstream):
    caller = make_user("fields@example.com")
    return openai.OpenAI(base_url=live_server.v1_base, api_key=caller.key, max_retries=0, timeout=20)


def test_the_list_covers_the_issues_fields():
    assert set(HOSTILE) <= UPSTREAM_CONTROL_FIELDS


def test_a_body_without_them_is_passed_on_as_is_and_one_with_them_keeps_everything_else_in_order():
    clean = {"model": MODEL, "messages": HELLO, "temperature": 0.2}
    assert without_upstream_control_fields(clean) is clean  # the fast path copies nothing
    dirty = {"model": MODEL, "api_base": "x", "messages": HELLO, "extra_body": {}, "user": "u-1"}
    assert list(without_upstream_control_fields(dirty).items()) == [
        ("model", MODEL),
        ("messages", HELLO),
        ("user", "u-1"),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_completions_drop_them_and_keep_the_rest(client, fake_upstream, stream):
    extra = {**HOSTILE, "some_new_openai_field": {"kept": True}}
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0.3, user="user-7", stream=stream, extra_body=extra
    )
    if stream:
        list(response)

    sent = fake_upstream.last_request
    assert UPSTREAM_CONTROL_FIELDS.isdisjoint(sent.json)
    assert sent.json["some_new_openai_field"] == {"kept": True}
    assert (sent.json["messages"], sent.json["temperature"], sent.json["user"]) == (HELLO, 0.3, "user-7")
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
    assert b"169.254.169.254" not in sent.body and b"attacker" not in sent.body


def test_legacy_completions_drop_them(client, fake_upstream):
    client.completions.create(model=MODEL, prompt="Say hello", max_tokens=5, extra_body=HOSTILE)

    sent = fake_upstream.last_request
    assert sent.path.endswith("/completions") and UPSTREAM_CONTROL_FIELDS.isdisjoint(sent.json)
    assert sent.json["prompt"] == "Say hello" and sent.json["max_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_drop_them(client, fake_upstream, stream):
    response = client.responses.create(model=MODEL, input="Say hello", stream=stream, extra_body=HOSTILE)
    if stream:
        list(response)

    sent = fake_upstream.last_request
    assert UPSTREAM_CONTROL_FIELDS.isdisjoint(sent.json)
    assert b"169.254.169.254" not in sent.body and b"attacker" not in sent.body
    assert sent.headers["authorization"] == "Bearer sk-or-server-key"
