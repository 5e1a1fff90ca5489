"""A Messages body is read one of two ways (orjson for a body that names a model that is not Claude's
first, member by member otherwise): either way it is the dict json.loads reads, the same bodies are
refused, and a Claude upstream gets every byte as it came but the model."""

from __future__ import annotations

import json

import pytest

from gateway.errors import ApiError
from gateway.surfaces.anthropic.passthrough import parse_body

HELLO = '[{"role": "user", "content": "Say hello"}]'
BODIES = [
    '{"model": "openai/gpt-5-mini", "max_tokens": 64, "messages": ' + HELLO + "}",
    '{"model":"anthropic/claude-sonnet-4.5","max_tokens":64,"messages":' + HELLO + "}",
    ' \n{ "model" : "my-team-model" ,"messages":' + HELLO + ',"max_tokens":  64 } \n',
    '{"max_tokens": 64, "model": "openai/gpt-5-mini", "messages": ' + HELLO + "}",
    '{"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00 \\n"}]}',
    '{"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "half \\ud83d"}]}',
    '{"model": "openai/gpt-5-mini", "temperature": NaN, "messages": []}',
    '{"model": "openai/gpt-5-mini", "a": 1, "a": 2, "messages": []}',
    '{"model": "openai/gpt-5-mini", "metadata": {"user_id": "u"}, "top_k": 5, "stop_sequences": ["x"]}',
    '{"model": "openai/gpt-5-mini", "we\\u00efrd key": [1.5, -2e3, true, false, null], "messages": []}',
    '{"model": "openai/gpt-5-mini"}',
    '{"model": "gpt\\u002d5"}',
    '{"messages": [], "model": "anthropic/claude-sonnet-4.5", "text": "café 😀"}',
    '{"model": "openai/gpt-5-mini", "text": "café 😀"}',
    '{"system": "café 😀", "model": "openai/gpt-5-mini", "max_tokens": 1}',
    "{}",
]
REFUSED = [
    b"",
    b"{not json",
    b'{"model": "openai/gpt-5-mini"',
    b'{"model": "openai/gpt-5-mini"} trailing',
    b'{"model": "openai/gpt-5-mini", "messages": [1, 2,]}',
    b'["model", "openai/gpt-5-mini"]',
    b'{"model": "openai/gpt-5-mini", "text": "\xff\xfe"}',
    b'{"model": "openai/gpt-5-mini", "text": "\xed\xa0\xbd"}',  # a surrogate written in UTF-8
    b'{"model": "openai/gpt-5-mini", "text": "tab\there"}',  # a raw control character in a string
    b'\xef\xbb\xbf{"model": "openai/gpt-5-mini"}',
    '{"model": "openai/gpt-5-mini"}'.encode("utf-16"),
]


@pytest.mark.parametrize("raw", BODIES)
def test_a_body_reads_as_json_loads_reads_it(raw):
    body, _ = parse_body(raw.encode())
    expected = json.loads(raw)
    assert json.dumps(body, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN compares by its text


@pytest.mark.parametrize("raw", REFUSED)
def test_what_is_not_one_json_object_is_a_400(raw):
    with pytest.raises(ApiError) as refused:
        parse_body(raw)
    assert refused.value.status == 400 and refused.value.code == "invalid_json"


@pytest.mark.parametrize("changes", [{}, {"leave_out": frozenset({"a"}), "replace": {"top_k": 1}}])
@pytest.mark.parametrize("raw", BODIES)
def test_a_body_goes_on_as_it_came_but_the_model_whichever_way_it_was_read(raw, changes):
    _, read = parse_body(raw.encode())
    sent = read.with_model("anthropic/claude-sonnet-4.5", **changes)
    expected = json.loads(raw)
    if "model" not in expected:
        assert b'"model"' not in sent  # a body without one has nothing to replace
        return
    expected["model"] = "anthropic/claude-sonnet-4.5"
    if changes:
        expected.pop("a", None)
        if "top_k" in expected:
            expected["top_k"] = 1
        assert b'"a"' not in sent  # left out, every occurrence of it
    assert json.dumps(json.loads(sent), sort_keys=True) == json.dumps(expected, sort_keys=True)
    # Every byte around the model (and the members replaced or left out) is the client's.
    assert sent.decode().startswith(raw.split('"model"')[0])
    for member in ('"messages": ' + HELLO, '"messages":' + HELLO, '"max_tokens":  64 }', '"text": "café 😀"}'):
        if member in raw:
            assert member in sent.decode()


def test_a_body_nested_deeper_than_json_reads_is_a_400_when_a_claude_model_needs_its_members():
    deep = "[" * 1000 + "]" * 1000
    raw = ('{"model": "my-team-model", "metadata": ' + deep + "}").encode()
    body, read = parse_body(raw)  # orjson reads 1,024 levels
    assert body["model"] == "my-team-model"
    with pytest.raises(ApiError) as refused:
        read.with_model("anthropic/claude-sonnet-4.5")
    assert refused.value.status == 400 and refused.value.code == "invalid_json"
