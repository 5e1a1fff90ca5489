"""Anthropic's stream events: relayed byte for byte from a Claude upstream, or made from a chat stream.

A Claude model's stream is sent on exactly as it came; only `message_start`, `message_delta`,
`message_stop` and `error` are read on the way, for billing. A chat-completions stream becomes
Anthropic's exact sequence: message_start, ping, then per block content_block_start /
content_block_delta (thinking_delta, text_delta, input_json_delta) / content_block_stop, then
message_delta with stop_reason and usage, and message_stop. A failure after the first byte is an
`event: error` (which the anthropic SDKs raise), and the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.core.reasoning import merge_reasoning_details, reasoning_text
from gateway.core.streaming import CallOutcome, web_search_requests
from gateway.providers.base import ProviderError, UpstreamResponse
from gateway.surfaces.anthropic.errors import error_event
from gateway.surfaces.anthropic.translate import STOP_REASONS, anthropic_usage, reasoning_signature

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
        self.web_search_requests = max(self.web_search_requests, web_search_requests(usage))
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
                self.tokens[name] = value
        self.usage_final = self.usage_final or final


def sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


PING = sse("ping", {"type": "ping"})


class _Events:
    """Splits a byte stream into SSE events (blank-line separated, LF or CRLF)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self.buffer += chunk
        events: list[bytes] = []
        while True:
            lf, crlf = self.buffer.find(b"\n\n"), self.buffer.find(b"\r\n\r\n")
            if crlf != -1 and (lf == -1 or crlf < lf):
                end = crlf + 4
            elif lf != -1:
                end = lf + 2
            else:
                return events
            events.append(self.buffer[:end])
            self.buffer = self.buffer[end:]


def data_of(event: bytes) -> bytes | None:
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines).strip()


def _upstream_error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or "The upstream failed while streaming.")
    return str(error or "The upstream failed while streaming.")


# ---- Claude: byte for byte ---------------------------------------------------------------------


def _complete_part(buffer: bytes) -> int:
    """Where the last whole event in `buffer` ends (0 if none has ended yet)."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf != -1 else 0, crlf + 4 if crlf != -1 else 0)


async def relay_message_events(upstream: UpstreamResponse, *, outcome: MessagesOutcome) -> AsyncGenerator[bytes, None]:
    """The upstream's Anthropic stream as it came, noting usage; an `event: error` if it breaks off.

    Only chunks that can hold a message_* or error event are split into events and read: the deltas
    in between (most of a stream) cost two substring searches each.
    """
    pending = b""
    finished = False
    metrics.stream_opened()
    try:
        assert upstream.chunks is not None
        async for chunk in upstream.chunks:
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
            outcome.delivered.append(chunk)
            buffer = pending + chunk if pending else chunk
            end = _complete_part(buffer)
            if not end:
                pending = buffer
                continue
            pending = buffer[end:]
            whole = buffer[:end]
            if b"message_" in whole or b'"error"' in whole:
                for event in _Events().feed(whole):
                    finished = _note_event(event, outcome) or finished
            # Whole events only: a keep-alive the handler sends in a pause then falls between two events.
            yield whole
            if finished:
                return
        # An event the upstream never finished is dropped: the error event below says what happened.
        if not finished and not outcome.upstream_error_relayed:
            outcome.status = "failed"
            outcome.error_kind = "stream_dropped"
            yield error_event(error_type="api_error", message="The upstream closed the stream before it finished.")
    except ProviderError as exc:
        outcome.status = "failed"
        outcome.error_kind = "timeout" if exc.status == 504 else "stream_dropped"
        yield error_event(error_type="api_error", message=exc.message)
    except asyncio.CancelledError:
        outcome.status = "client_disconnected"
        raise
    except GeneratorExit:
        if not finished:
            outcome.status = "client_disconnected"
        raise
    finally:
        metrics.stream_closed()
        await upstream.close(finished=finished)


def _note_event(event: bytes, outcome: MessagesOutcome) -> bool:
    """Read what billing needs from one relayed event; True once the message is complete."""
    payload = data_of(event)
    if not payload:
        return False
    found = _TYPE.search(payload, 0, 40)  # Anthropic's events start with their type
    if found is None:
        return False
    kind = found.group(1)
    if kind == b"message_stop":
        return True
    try:
        parsed = json.loads(payload)
    except ValueError:
        return False
    if kind == b"message_start":
        message = parsed.get("message") or {}
        outcome.generation_id = str(message.get("id") or "")
        outcome.note_usage(message.get("usage"), final=False)
    elif kind == b"message_delta":
        outcome.note_usage(parsed.get("usage"), final=True)
    else:
        outcome.status = "failed"
        outcome.upstream_error_relayed = True
    return False


def delivered_message_text(outcome: MessagesOutcome) -> str:
    """The text, thinking and tool input a relayed stream delivered (for an estimate when usage is missing)."""
    events = _Events()
    parts: list[str] = list(outcome.text)
    for chunk in outcome.delivered:
        for event in events.feed(chunk):
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

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse("message_start", {"type": "message_start", "message": message}) + PING

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = b""
        if self.open == "thinking" and self.details:
            out = self._delta("signature_delta", "signature", reasoning_signature(self.details))
            self.details_sent = True
        self.open = None
        return out + sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

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
        return out + sse(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _delta(self, kind: str, key: str, text: str) -> bytes:
        # The hot event of a stream, built without a dict: only the text needs JSON encoding.
        return b"".join(
            (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
                str(self.index).encode(),
                b',"delta":{"type":"',
                kind.encode(),
                b'","',
                key.encode(),
                b'":',
                json.dumps(text).encode(),
                b"}}\n\n",
            )
        )

    def feed(self, chunk: dict) -> bytes:
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_details"):
                merge_reasoning_details(self.details, delta["reasoning_details"])
            if thinking := reasoning_text(delta):
                if self.open != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta("thinking_delta", "thinking", thinking)
                self.outcome.text.append(thinking)
            content = delta.get("content")
            if isinstance(content, str) and content:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += self._delta("text_delta", "text", content)
                self.outcome.text.append(content)
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

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
            out += self._delta("input_json_delta", "partial_json", arguments)
            self.outcome.text.append(arguments)
        return out

    def finish(self) -> bytes:
        stop_reason = "tool_use" if self.saw_tool_call else (self.stop_reason or "end_turn")
        usage = anthropic_usage(self.usage)
        self.outcome.note_usage(usage, final=self.usage is not None)
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage}
        closing = self._close() + self._redacted() + self._close()
        return closing + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})


async def translate_chat_events(
    upstream: UpstreamResponse, *, message_id: str, model: str, outcome: MessagesOutcome
) -> AsyncGenerator[bytes, None]:
    translator = ChatStreamTranslator(message_id=message_id, model=model, outcome=outcome)
    events = _Events()
    finished = False
    metrics.stream_opened()
    try:
        yield translator.start()
        assert upstream.chunks is not None
        async for chunk in upstream.chunks:
            out: list[bytes] = []
            for event in events.feed(chunk):
                if event.startswith(b":"):
                    out.append(PING)  # the upstream's keep-alive comment, as Anthropic's keep-alive
                    continue
                payload = data_of(event)
                if payload is None:
                    continue
                if payload == b"[DONE]":
                    finished = True
                    break
                try:
                    parsed: Any = json.loads(payload)
                    if not isinstance(parsed, dict):
                        raise ValueError("not an object")
                except ValueError:
                    outcome.status, outcome.error_kind = "failed", "malformed"
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
                    out.append(error_event(error_type="api_error", message=message))
                    yield b"".join(out)
                    return
                out.append(translator.feed(parsed))
            if finished:
                out.append(translator.finish())
            if out:
                yield b"".join(out)
            if finished:
                return
        outcome.status = "failed"
        outcome.error_kind = "stream_dropped"
        yield error_event(error_type="api_error", message="The upstream closed the stream before it finished.")
    except ProviderError as exc:
        outcome.status = "failed"
        outcome.error_kind = "timeout" if exc.status == 504 else "stream_dropped"
        yield error_event(error_type="api_error", message=exc.message)
    except asyncio.CancelledError:
        outcome.status = "client_disconnected"
        raise
    except GeneratorExit:
        if not finished:
            outcome.status = "client_disconnected"
        raise
    finally:
        metrics.stream_closed()
        await upstream.close(finished=finished)
