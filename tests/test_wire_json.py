"""The request path's JSON codec (orjson) reads and writes what the standard library does: where orjson
refuses something json accepts, json answers instead, so no upstream event or body that passed before
is refused now."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from writingmate import wire_json

READABLE = [
    b'{"id":"gen-1","choices":[{"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}',
    '{"text": "caf\u00e9 \\u00e9 \\ud83d\\ude00 \U0001f600"}'.encode(),
    b'{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": ""}}',
    b'{"a":1,"a":2}',  # a repeated key: the last one wins
    b'{"big": 123456789012345678901234567890}',
    b'{"half": "\\ud83d"}',  # a lone surrogate: what an upstream sends when an emoji is split between chunks
    b'{"nan": NaN, "inf": Infinity}',
    b'{"huge": 1e400}',
]


@pytest.mark.parametrize("raw", READABLE)
def test_reads_what_json_reads(raw):
    read = wire_json.loads(raw)
    expected = json.loads(raw)
    if "nan" in expected:
        assert math.isnan(read["nan"]) and read["inf"] == math.inf
    elif "big" in expected:
        assert read["big"] == pytest.approx(expected["big"])  # orjson reads an integer past 64 bits as a float
    else:
        assert read == expected


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a":}', b"\xff\xfe", b'{"a": 1} x', b"[" * 5000 + b"]" * 5000])
def test_refuses_what_json_refuses_with_a_value_error(raw):
    with pytest.raises((ValueError, RecursionError)):
        json.loads(raw)
    with pytest.raises(ValueError):
        wire_json.loads(raw)


@pytest.mark.parametrize(
    "value",
    [
        {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "café 😀"}], "stream": True},
        {"seed": 2**70},  # past 64 bits: orjson refuses it, json writes it
        {1: "a key that is not a string"},
        {"nested": [{"a": None, "b": [1.5, -2, 'x\n"y"']}]},
    ],
)
def test_writes_compact_json_that_json_reads_back_equal(value):
    written = wire_json.dumps(value)
    assert isinstance(written, bytes)
    assert b", " not in written and b'": ' not in written
    assert json.loads(written) == json.loads(json.dumps(value))


def test_an_emoji_split_between_two_chunks_reaches_a_translated_stream_whole():
    from gateway.providers.base import UpstreamResponse
    from gateway.surfaces.anthropic.events import ChatStreamTranslator, MessagesOutcome, translate_chat_events

    def chunk(content: str) -> bytes:
        delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
        return b"data: " + json.dumps(delta).encode() + b"\n\n"

    async def upstream_chunks():
        yield chunk("Smile \ud83d")  # json.dumps writes each half as an escape of its own
        yield chunk("\ude00 done")
        yield b"data: [DONE]\n\n"

    async def relay() -> bytes:
        outcome = MessagesOutcome()
        translator = ChatStreamTranslator(message_id="msg_1", model="openai/gpt-5-mini", outcome=outcome)
        upstream = UpstreamResponse(status=200, headers={}, chunks=upstream_chunks())
        return b"".join(
            [part async for part in translate_chat_events(upstream, translator=translator, outcome=outcome)]
        )

    relayed = asyncio.run(relay())
    texts = [
        json.loads(line[len(b"data: ") :])["delta"]["text"]
        for line in relayed.split(b"\n")
        if line.startswith(b"data: ") and b'"text_delta"' in line
    ]
    assert "".join(texts).encode("utf-16", "surrogatepass").decode("utf-16") == "Smile \U0001f600 done"
    assert b"event: error" not in relayed


def test_a_lone_surrogate_is_written_as_the_escape_it_came_as():
    assert wire_json.dumps({"half": "\ud83d", "text": "café"}) == b'{"half":"\\ud83d","text":"caf\\u00e9"}'


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (
            "/v1/chat/completions",
            '{"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "Smile \\ud83d"}]}',
        ),
        ("/v1/responses", '{"model": "openai/gpt-5-mini", "input": "Smile \\ud83d"}'),
        (
            "/api/anthropic/v1/messages",
            '{"model": "openai/gpt-5-mini", "max_tokens": 64, "messages": [{"role": "user", "content": "Smile \\ud83d"}]}',
        ),
    ],
)
def test_a_request_with_half_an_emoji_reaches_the_upstream_as_sent(live_server, fake_upstream, path, raw):
    # A client that cuts text between the two halves of a surrogate pair sends a lone `\ud83d` escape:
    # json reads it, and the body the gateway writes upstream must carry it, not fail.
    import requests

    from tests.support import make_user

    caller = make_user("dev@example.com", plan="unlimited")
    response = requests.post(
        live_server.url + path,
        data=raw.encode(),
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "application/json"},
        timeout=20,
    )

    assert response.status_code == 200, response.text
    assert b"Smile \\ud83d" in fake_upstream.last_request.body
