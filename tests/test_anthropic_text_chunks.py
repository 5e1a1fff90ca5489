"""A translated stream reads text-only chat chunks without json.loads (and a whole reply is written without
walking its dict): each must say exactly what parsing (json.dumps) says.

Chunks are generated at random around the shapes upstreams send (OpenRouter's, the fake's) and the
ones that must not take the shortcut (usage objects, errors, reasoning, tool calls, escapes, unicode,
control characters, repeated keys, spaces). For each, the shortcut either declines or yields the same
events, stop reason and delivered text as the translator fed the parsed chunk.
"""

from __future__ import annotations

import json
import random

from gateway.surfaces.anthropic.events import (
    ChatStreamTranslator,
    MessagesOutcome,
    TextChunks,
    text_chunk,
    text_chunk_id,
)

TEXTS = ["Hello", " world.", "", 'a "quote"', "back\\slash", "tab\there", "line\nbreak", "café", "😀", "<b>&</b>"]
TEXTS += ["".join(chr(random.Random(n).randrange(32, 127)) for _ in range(n % 40)) for n in range(40)]


def _top_members(rng: random.Random) -> list[tuple[str, object]]:
    members: list[tuple[str, object]] = [
        ("id", rng.choice(["gen-1796611670-6966322400000001", "gen-1796611670-6966322400000001", "", 7, None])),
        ("provider", rng.choice(["OpenAI", "FakeProvider", "Google", "Caf\u00e9", "tab\t"])),
        ("model", "openai/gpt-5-mini"),
        ("object", "chat.completion.chunk"),
        ("created", 1796611670),
    ]
    if rng.random() < 0.3:
        members.append(("system_fingerprint", rng.choice([None, "fp_1"])))
    if rng.random() < 0.05:
        members.append(("id", "gen-2"))  # a repeated key: the last one counts
    rng.shuffle(members)
    return members


def _random_chunk(rng: random.Random) -> str:
    delta: dict[str, object] = {}
    if rng.random() < 0.5:
        delta["role"] = "assistant"
    if rng.random() < 0.9:
        delta["content"] = rng.choice(TEXTS)
    for name, values in (
        ("reasoning", [None, None, "", "thinking..."]),
        ("reasoning_details", [[], [], [{"type": "reasoning.text", "text": "x", "index": 0}]]),
        ("refusal", [None, "no"]),
        ("tool_calls", [[{"index": 0, "function": {"arguments": "{}"}}]]),
    ):
        if rng.random() < 0.2:
            delta[name] = rng.choice(values)
    delta_items = list(delta.items())
    rng.shuffle(delta_items)
    choice: list[tuple[str, object]] = [("index", 0), ("delta", dict(delta_items)), ("logprobs", None)]
    choice.append(("finish_reason", rng.choice([None, None, None, "stop", "length", "tool_calls", "weird"])))
    if rng.random() < 0.5:
        choice.append(("native_finish_reason", rng.choice([None, "stop", "end_turn"])))
    if rng.random() < 0.05:
        choice.append(("finish_reason", rng.choice([None, "length"])))  # a repeated key: the last one counts
    rng.shuffle(choice)
    members = _top_members(rng)
    choices = [_object(choice)]
    if rng.random() < 0.05:
        choices.append(choices[0])
    members.append(("choices", rng.choice([choices, choices, choices, choices, []])))
    extras: list[tuple[str, list[object]]] = [
        ("usage", [None, None, {"prompt_tokens": 3, "completion_tokens": 2}]),
        ("error", [{"message": "boom", "code": 502}]),
    ]
    for name, options in extras:
        if rng.random() < 0.15:
            members.append((name, rng.choice(options)))
    rng.shuffle(members)
    separators = (",", ":") if rng.random() < 0.9 else (", ", ": ")
    encoded = _encode(members, separators=separators, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.03:
        encoded = encoded.replace('"created":1796611670', '"created":01796611670')  # not JSON
    return encoded


def _object(items: list[tuple[str, object]]) -> object:
    return _Members(items)


class _Members(dict):
    """An object that keeps repeated keys when encoded, as a careless upstream might send them."""

    def __init__(self, items: list[tuple[str, object]]) -> None:
        super().__init__(items)
        self.members = items


def _encode(members: list[tuple[str, object]], *, separators: tuple[str, str], ensure_ascii: bool) -> str:
    item, key = separators

    def value(v: object) -> str:
        if isinstance(v, _Members):
            return "{" + item.join(json.dumps(k) + key + value(x) for k, x in v.members) + "}"
        if isinstance(v, list):
            return "[" + item.join(value(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=ensure_ascii, separators=separators)

    return value(_Members(members))


def _translator(*, text_open: bool) -> ChatStreamTranslator:
    translator = ChatStreamTranslator(message_id="msg_1", model="openai/gpt-5-mini", outcome=MessagesOutcome())
    translator.start()
    if text_open:
        translator.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    return translator


def test_text_chunks_read_without_parsing_translate_as_parsed_ones():
    rng = random.Random(13)
    taken = declined = 0
    for _ in range(20_000):
        payload = _random_chunk(rng).encode()
        found = text_chunk(payload)
        if found is None:
            declined += 1
            continue
        taken += 1
        chunk = json.loads(payload)  # the shortcut never takes what parsing refuses
        if (generation_id := text_chunk_id(payload)) is not None:
            assert generation_id == str(chunk.get("id") or ""), payload
        for text_open in (True, False):
            parsed, shortcut = _translator(text_open=text_open), _translator(text_open=text_open)
            expected = parsed.feed(chunk)
            assert shortcut.feed_text(*found) == expected, payload
            assert shortcut.stop_reason == parsed.stop_reason, payload
            assert shortcut.outcome.text == parsed.outcome.text, payload
            assert shortcut.finish() == parsed.finish(), payload
    assert taken > 2_000 and declined > 2_000  # both ways were exercised


def test_the_usual_chunks_take_the_shortcut_and_the_rest_do_not():
    openrouter = (
        b'{"id":"gen-1","provider":"OpenAI","model":"openai/gpt-5-mini","object":"chat.completion.chunk",'
        b'"created":1765000000,"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello",'
        b'"reasoning":null,"reasoning_details":[]},"finish_reason":null,"native_finish_reason":null,'
        b'"logprobs":null}]}'
    )
    assert text_chunk(openrouter) == (b"Hello", None)
    assert text_chunk_id(openrouter) == "gen-1"
    last = openrouter.replace(b'"finish_reason":null', b'"finish_reason":"length"')
    assert text_chunk(last) == (b"Hello", b"length")
    for declined in (
        openrouter.replace(b"Hello", b"caf\\u00e9"),  # an escape: parsed
        openrouter.replace(b"Hello", "café".encode()),  # not ASCII: parsed
        openrouter.replace(b'"reasoning":null', b'"reasoning":"hm"'),
        openrouter.replace(b"]}", b'],"usage":{"prompt_tokens":1}}'),
        openrouter.replace(b"]}", b'],"error":"boom"}'),
        openrouter.replace(b'"content":"Hello"', b'"content":"Hello","content":"Bye"'),
        openrouter.replace(b'"finish_reason":null', b'"finish_reason":null,"finish_reason":"stop"'),
        openrouter.replace(b"]}", b'],"choices":[]}'),
        openrouter.replace(b",", b", "),
        openrouter.replace(b"1765000000", b"01765000000"),  # not JSON
        openrouter.replace(b"OpenAI", b"Open\tAI"),  # a raw control character: not JSON
    ):
        assert text_chunk(declined) is None, declined


def test_a_chunk_like_the_last_one_read_is_read_the_same_without_the_regex():
    rng = random.Random(14)
    reader = TextChunks()
    hits = 0
    for _ in range(20_000):
        payload = _random_chunk(rng).encode()
        if (first := text_chunk(payload)) is None:
            assert reader.read(payload) is None, payload
            continue
        assert reader.read(payload) == first
        start = payload.index(b'"content":"') + len(b'"content":"')
        end = payload.index(b'"', start)
        # The same chunk around another text (which may be one only parsing can read, or not JSON at all).
        other = rng.choice([*TEXTS, 'a"b', "a\\b", "caf\u00e9", "\t", "x\u0000"])
        encoded = rng.choice([json.dumps(other)[1:-1], other]).encode()
        again = payload[:start] + encoded + payload[end:]
        read = reader.read(again)
        if read is None:
            continue
        hits += 1
        parsed, shortcut = _translator(text_open=True), _translator(text_open=True)
        assert shortcut.feed_text(*read) == parsed.feed(json.loads(again)), again
        assert (shortcut.stop_reason, shortcut.outcome.text) == (parsed.stop_reason, parsed.outcome.text), again
    assert hits > 1_000


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
        answer = message_from_chat(completion, model=rng.choice(["openai/gpt-5-mini", "z-ai/glm-4.6:exacto"]))
        assert message_body(answer) == json.dumps(answer).encode()
