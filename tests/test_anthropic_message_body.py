"""A whole translated reply is written from a template, not by walking its dict: it must be exactly what
json.dumps writes, for random replies around the shapes upstreams send."""

from __future__ import annotations

import json
import random

TEXTS = ["Hello", " world.", "", 'a "quote"', "back\\slash", "tab\there", "line\nbreak", "café", "😀", "<b>&</b>"]
TEXTS += ["".join(chr(random.Random(n).randrange(32, 127)) for _ in range(n % 40)) for n in range(40)]


def test_a_whole_reply_is_written_as_json_dumps_writes_it():
    from gateway.surfaces.anthropic.translate import message_body, message_from_chat

    rng = random.Random(15)
    for _ in range(5_000):
        message: dict[str, object] = {"role": "assistant", "content": rng.choice([*TEXTS, None])}
        if rng.random() < 0.2:
            message["reasoning"] = rng.choice(["", "thought"])
        if rng.random() < 0.2:
            message["tool_calls"] = [{"id": "call_1", "function": {"name": "f", "arguments": '{"a": 1}'}}]
        usage: dict[str, object] = {"prompt_tokens": rng.randrange(100), "completion_tokens": rng.randrange(100)}
        if rng.random() < 0.5:
            usage["prompt_tokens_details"] = {"cached_tokens": rng.randrange(50)}
        if rng.random() < 0.2:
            usage["server_tool_use"] = {"web_search_requests": 2}
        choice = {"message": message, "finish_reason": rng.choice(["stop", "length", None, "weird"])}
        completion = {"choices": [choice], "usage": rng.choice([usage, usage, None])}
        model = rng.choice(["openai/gpt-5-mini", "z-ai/glm-4.6:exacto"])
        answer = message_from_chat(completion, model=model, message_id=f"msg_{rng.getrandbits(128):032x}")
        assert message_body(answer) == json.dumps(answer).encode()
