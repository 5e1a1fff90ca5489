"""Anthropic's stream events: relayed byte for byte from a Claude upstream, or made from a chat stream.

A Claude model's stream is sent on exactly as it came; only `message_start`, `message_delta`,
`message_stop` and `error` are read on the way, for billing. A chat-completions stream becomes
Anthropic's exact sequence: message_start, ping, then per block content_block_start /
content_block_delta (thinking_delta, text_delta, input_json_delta) / content_block_stop, then
message_delta with stop_reason and usage, and message_stop. A failure after the first byte is an
`event: error` (which the anthropic SDKs raise), and the stream ends.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

from gateway.core.reasoning import merge_reasoning_details, reasoning_text
from gateway.core.streaming import CallOutcome, data_of, guard_relay, next_boundary, take_events, web_search_requests
from gateway.providers.base import UpstreamResponse
from gateway.surfaces.anthropic.errors import error_event
from gateway.surfaces.anthropic.translate import STOP_REASONS, anthropic_usage, reasoning_signature
from writingmate import wire_json

_TYPE = re.compile(rb'"type"\s*:\s*"(message_start|message_delta|message_stop|error)"')


@dataclass
class MessagesOutcome(CallOutcome):
    """CallOutcome plus what billing needs from an Anthropic-shaped answer."""

    tokens: dict[str, int] = field(default_factory=dict)  # Anthropic usage: input, cache read/creation, output
    usage_final: bool = False  # the upstream's final usage arrived (message_delta, or a whole response)
    text: list[str] = field(default_factory=list)  # what a translated stream delivered, for an estimate
    web_search_requests: int = 0  # usage.server_tool_use, when the upstream ran hosted searches

    def note_usage(self, usage: object, *, final: bool) -> None:
        if not isinstance(usage, dict):
            return
        # Anthropic's usage is cumulative: message_delta repeats what message_start said, and more.
        if "server_tool_use" in usage:
            self.web_search_requests = max(self.web_search_requests, web_search_requests(usage))
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            value = usage.get(name)
            if type(value) is int and 0 <= value < 10**9:  # an int, not a bool
                self.tokens[name] = value
        self.usage_final = self.usage_final or final


def sse(event: str, payload: dict) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (event.encode(), wire_json.dumps(payload))


PING = sse("ping", {"type": "ping"})
_MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def _upstream_error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or "The upstream failed while streaming.")
    return str(error or "The upstream failed while streaming.")


# ---- Claude: byte for byte ---------------------------------------------------------------------


def _event_start(buffer: bytes, position: int, crlf: bool) -> int:
    """Where the event holding `position` begins: just after the last blank line before it. `crlf`: the
    buffer holds a CR (else only LF blank lines are looked for)."""
    lf = buffer.rfind(b"\n\n", 0, position)
    if not crlf:  # LF only, the usual stream
        return lf + 2 if lf != -1 else 0
    found = buffer.rfind(b"\r\n\r\n", lf + 1, position)  # only after the last LF one: not the whole buffer again
    return found + 4 if found != -1 else (lf + 2 if lf != -1 else 0)


def _stream_error(message: str, code: str) -> bytes:
    return error_event(error_type="api_error", message=message)


def relay_message_events(upstream: UpstreamResponse, *, outcome: MessagesOutcome) -> AsyncGenerator[bytes, None]:
    """The upstream's Anthropic stream as it came, noting usage; an `event: error` if it breaks off."""
    return guard_relay(_message_events(upstream, outcome), upstream, outcome=outcome, error_event=_stream_error)


async def _message_events(upstream: UpstreamResponse, outcome: MessagesOutcome) -> AsyncGenerator[bytes, None]:
    pending = b""
    assert upstream.chunks is not None
    async for chunk in upstream.chunks:
        if outcome.first_byte_at is None:
            outcome.first_byte_at = time.monotonic()
        outcome.delivered.append(chunk)
        buffer = pending + chunk if pending else chunk
        end = _event_start(buffer, len(buffer), b"\r" in buffer)
        if not end:
            pending = buffer
            continue
        pending = buffer[end:]
        whole = buffer[:end]
        _note_events(whole, outcome)
        # Whole events only: a keep-alive the handler sends in a pause then falls between two events.
        yield whole
        if outcome.finished:
            return
    # An event the upstream never finished is dropped: guard_relay's error event says what happened.


def _next_billed(whole: bytes, start: int, errors: bool) -> int:
    """Where the next `message_` or, when `errors` (`whole` holds one), `"error"` is; -1: none."""
    message = whole.find(b"message_", start)
    if not errors:
        return message
    error = whole.find(b'"error"', start)
    return message if error == -1 or (message != -1 and message < error) else error


def _note_events(whole: bytes, outcome: MessagesOutcome) -> None:
    """Read what billing needs from the whole events in `whole`: only the events that can be a
    message_* or an error are cut out and read; the deltas between them (most of a stream) are not.
    Each search that would run to the end of `whole` (an error, a CR) runs once, not once an event."""
    errors, crlf = b'"error"' in whole, b"\r" in whole
    found = _next_billed(whole, 0, errors)
    while found != -1:
        start = _event_start(whole, found, crlf)
        if crlf:
            index, length = next_boundary(whole, found)
        else:
            index, length = whole.find(b"\n\n", found), 2
        end = len(whole) if index == -1 else index + length
        _note_event(whole[start:end], outcome)
        found = _next_billed(whole, end, errors)


def _note_event(event: bytes, outcome: MessagesOutcome) -> None:
    """Read what billing needs from one relayed event; `outcome.finished` once the message is complete."""
    payload = data_of(event)
    if not payload:
        return
    found = _TYPE.search(payload, 0, 40)  # Anthropic's events start with their type
    if found is None:
        return
    kind = found.group(1)
    if kind == b"message_stop":
        outcome.finished = True
        return
    try:
        parsed = wire_json.loads(payload)
    except ValueError:
        return
    if kind == b"message_start":
        message = parsed.get("message") or {}
        outcome.generation_id = str(message.get("id") or "")
        outcome.note_usage(message.get("usage"), final=False)
    elif kind == b"message_delta":
        outcome.note_usage(parsed.get("usage"), final=True)
    else:
        outcome.status = "failed"
        outcome.upstream_error_relayed = True


def delivered_message_text(outcome: MessagesOutcome) -> str:
    """The text, thinking and tool input a relayed stream delivered (for an estimate when usage is missing)."""
    parts: list[str] = list(outcome.text)
    events, _unfinished = take_events(b"".join(outcome.delivered))  # an unfinished event never left
    for event in events:
        payload = data_of(event)
        if not payload or b"content_block_delta" not in payload[:60]:
            continue
        try:
            delta = json.loads(payload).get("delta") or {}
        except ValueError:
            continue
        parts.append(str(delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""))
    return "".join(parts)


# ---- every other model: chat completions -> Anthropic events -----------------------------------


_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%b","%b":%b}}\n\n'
)

# The events every translated stream has, as sse() writes them, without a dict and an encoder each.
_MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":%b,"type":"message","role":"assistant",'
    b'"model":%b,"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}\n\n'
)
_TEXT_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}\n\n'
_MESSAGE_DELTA = (  # the stop reason is one of STOP_REASONS' values: nothing to escape
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"%b","stop_sequence":null},'
    b'"usage":%b}\n\n'
)
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'


class ChatStreamTranslator:
    """Turns chat.completion.chunk payloads into Anthropic's events, one open content block at a time."""

    def __init__(self, *, message_id: str, model: str, outcome: MessagesOutcome) -> None:
        self.message_id = message_id
        self.model = model
        self.outcome = outcome
        self.index = -1
        self.open: str | None = None  # "thinking" | "text" | "tool:<chat index>"
        self.stop_reason: str | None = None
        self.usage: dict | None = None
        self.saw_tool_call = False
        self.details: list[dict] = []  # the upstream's reasoning_details, sealed into a signature at the end
        self.details_sent = False
        self.pending_text: list[str] = []  # the open text block's text from this upstream read, not yet sent

    def start(self) -> bytes:
        message_id, model = encode_basestring_ascii(self.message_id), encode_basestring_ascii(self.model)
        return _MESSAGE_START % (message_id.encode(), model.encode()) + PING

    def flush(self) -> bytes:
        """The text that arrived in this upstream read as one text_delta: chunks read together leave
        together, so no delta waits for a later read."""
        if not self.pending_text:
            return b""
        text = "".join(self.pending_text)
        self.pending_text = []
        self.outcome.text.append(text)
        return _DELTA % (self.index, b"text_delta", b"text", encode_basestring_ascii(text).encode())

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = self.flush()
        if self.open == "thinking" and self.details:
            out += self._delta(b"signature_delta", b"signature", reasoning_signature(self.details))
            self.details_sent = True
        self.open = None
        return out + _BLOCK_STOP % self.index

    def _redacted(self) -> bytes:
        """reasoning_details that came without reasoning text: a redacted_thinking block carries them."""
        if not self.details or self.details_sent or self.open == "thinking":
            return b""
        out = self._close()
        self.index += 1
        self.details_sent = True
        block = {"type": "redacted_thinking", "data": reasoning_signature(self.details)}
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return (
            out
            + sse("content_block_start", start)
            + sse("content_block_stop", {"type": "content_block_stop", "index": self.index})
        )

    def _open(self, kind: str, block: dict) -> bytes:
        out = self._close() if kind == "thinking" else self._redacted() + self._close()
        self.index += 1
        self.open = kind
        if kind == "text":
            return out + _TEXT_START % self.index
        return out + sse(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _delta(self, kind: bytes, key: bytes, text: str) -> bytes:
        # The hot event of a stream, built without a dict: only the text needs JSON encoding.
        return _DELTA % (self.index, kind, key, encode_basestring_ascii(text).encode())

    def feed(self, chunk: dict) -> bytes:
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = usage
        out = b""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                # Most chunks carry text only: `in` rules out reasoning and tool calls without a lookup each.
                if "reasoning" in delta or "reasoning_content" in delta or "reasoning_details" in delta:
                    out += self._thinking(delta)
                content = delta.get("content")
                if content and isinstance(content, str):
                    if self.open != "text":
                        out += self._open("text", {"type": "text", "text": ""})
                    self.pending_text.append(content)  # sent by flush(), with the rest of this read's text
                if "tool_calls" in delta and isinstance(calls := delta["tool_calls"], list):
                    for call in calls:
                        if isinstance(call, dict):
                            out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def _thinking(self, delta: dict) -> bytes:
        if delta.get("reasoning_details"):
            merge_reasoning_details(self.details, delta["reasoning_details"])
        thinking = reasoning_text(delta)
        if not thinking:
            return b""
        out = b""
        if self.open != "thinking":
            out = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self.outcome.text.append(thinking)
        return out + self._delta(b"thinking_delta", b"thinking", thinking)

    def _tool_call(self, call: dict) -> bytes:
        out = b""
        key = f"tool:{call.get('index', 0)}"
        function = call.get("function") or {}
        if self.open != key:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_{self.message_id[4:]}_{call.get('index', 0)}"),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            out += self._open(key, block)
            self.saw_tool_call = True
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out += self._delta(b"input_json_delta", b"partial_json", arguments)
            self.outcome.text.append(arguments)
        return out

    def finish(self) -> bytes:
        stop_reason = "tool_use" if self.saw_tool_call else (self.stop_reason or "end_turn")
        usage = anthropic_usage(self.usage)
        self.outcome.note_usage(usage, final=self.usage is not None)
        closing = self._close() + self._redacted() + self._close()
        return closing + _MESSAGE_DELTA % (stop_reason.encode(), wire_json.dumps(usage)) + _MESSAGE_STOP


def translate_chat_events(
    upstream: UpstreamResponse, *, translator: ChatStreamTranslator, outcome: MessagesOutcome
) -> AsyncGenerator[bytes, None]:
    """A chat stream as Anthropic's events, from the first content block on: the stream's opening
    (translator.start(), message_start and ping) is the caller's to send first."""
    return guard_relay(
        _translated_events(upstream, translator, outcome), upstream, outcome=outcome, error_event=_stream_error
    )


async def _translated_events(
    upstream: UpstreamResponse, translator: ChatStreamTranslator, outcome: MessagesOutcome
) -> AsyncGenerator[bytes, None]:
    buffer = b""
    assert upstream.chunks is not None
    async for chunk in upstream.chunks:
        out: list[bytes] = []
        events, buffer = take_events(buffer + chunk if buffer else chunk)
        for event in events:
            if event.startswith(b":"):
                out.append(translator.flush() + PING)  # the upstream's keep-alive, as Anthropic's
                continue
            payload = data_of(event)
            if not payload:
                continue
            if payload == b"[DONE]":
                outcome.finished = True
                break
            try:
                parsed: Any = wire_json.loads(payload)
                if not isinstance(parsed, dict):
                    raise ValueError("not an object")
            except ValueError:
                outcome.status, outcome.error_kind = "failed", "malformed"
                out.append(translator.flush())
                out.append(error_event(error_type="api_error", message="The upstream sent a malformed event."))
                yield b"".join(out)
                return
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
                outcome.generation_id = str(parsed.get("id") or "")
            if parsed.get("error"):
                outcome.status = "failed"
                outcome.upstream_error_relayed = True
                message = _upstream_error_message(parsed["error"])
                out.append(translator.flush())
                out.append(error_event(error_type="api_error", message=message))
                yield b"".join(out)
                return
            out.append(translator.feed(parsed))
        closing = translator.finish() if outcome.finished else translator.flush()
        if closing:
            out.append(closing)
        if out:
            yield b"".join(out)
        if outcome.finished:
            return
