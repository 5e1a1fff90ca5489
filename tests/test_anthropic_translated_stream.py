"""A translated stream's text: what arrives in one upstream read leaves as one text_delta, and nothing
waits for a later read."""

from __future__ import annotations

import asyncio
import json


def _chunk(content: str, finish: str | None = None) -> bytes:
    delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + json.dumps(delta).encode() + b"\n\n"


def _text_deltas(relayed: bytes) -> list[str]:
    return [
        json.loads(line[len(b"data: ") :])["delta"]["text"]
        for line in relayed.split(b"\n")
        if line.startswith(b"data: ") and b'"text_delta"' in line
    ]


def _relay(reads, seen: list[str] | None = None) -> list[bytes]:
    from gateway.providers.base import UpstreamResponse
    from gateway.surfaces.anthropic.events import ChatStreamTranslator, MessagesOutcome, translate_chat_events

    async def upstream_chunks():
        for read in reads:
            if seen is not None:
                seen.append("read")
            yield read

    async def relay() -> list[bytes]:
        outcome = MessagesOutcome()
        translator = ChatStreamTranslator(message_id="msg_1", model="openai/gpt-5-mini", outcome=outcome)
        upstream = UpstreamResponse(status=200, headers={}, chunks=upstream_chunks())
        parts = []
        async for part in translate_chat_events(upstream, translator=translator, outcome=outcome):
            if seen is not None:
                seen.append("sent")
            parts.append(part)
        return parts

    return asyncio.run(relay())


def test_text_chunks_read_together_leave_as_one_delta():
    read = _chunk("Hello") + _chunk(" from") + _chunk(" one read.", "stop") + b"data: [DONE]\n\n"
    [sent] = _relay([read])
    assert _text_deltas(sent) == ["Hello from one read."]
    assert sent.index(b"content_block_start") < sent.index(b"text_delta") < sent.index(b"content_block_stop")


def test_each_read_is_sent_before_the_next_one_is_read():
    seen: list[str] = []
    parts = _relay([_chunk("Hello"), _chunk(" there", "stop"), b"data: [DONE]\n\n"], seen)
    assert seen == ["read", "sent", "read", "sent", "read", "sent"]
    assert [_text_deltas(part) for part in parts] == [["Hello"], [" there"], []]


def test_text_read_before_an_upstream_error_is_sent_before_the_error_event():
    error = b'data: {"error": {"message": "Provider disconnected", "code": 502}}\n\n'
    [sent] = _relay([_chunk("Partial") + error])
    assert _text_deltas(sent) == ["Partial"]
    assert sent.index(b"text_delta") < sent.index(b"event: error")
