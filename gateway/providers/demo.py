"""The offline demo provider: deterministic replies for demo/... models, streamed for real.

It answers in OpenAI's wire format, exactly as an upstream would, so the whole pipeline (auth,
limits, streaming, billing) runs without a network. demo/assistant calls a tool when tools are
offered and the last user message names one of them or asks for a tool; usage is counted with
tiktoken.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
import uuid
import wave
from collections.abc import AsyncGenerator
from typing import Any

from django.conf import settings

from gateway.providers.base import UpstreamCall, UpstreamResponse
from gateway.tokens import count_chat_prompt_tokens, count_text_tokens, encoding

_CHAT_PATH = "/chat/completions"
_TRANSCRIPTION_PATH = "/audio/transcriptions"
_WORD = re.compile(r"\S+\s*")


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tool_result(messages: list) -> str | None:
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        content = last.get("content")
        return content if isinstance(content, str) else json.dumps(content)
    return None


def _pick_tool(body: dict, prompt: str) -> dict | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if not tools or body.get("tool_choice") == "none":
        return None
    lowered = prompt.lower()
    for tool in tools:
        name = tool["function"]["name"]
        if name.lower() in lowered or name.lower().replace("_", " ") in lowered:
            return tool
    forced = body.get("tool_choice")
    if forced == "required" or "tool" in lowered or "call" in lowered:
        return tools[0]
    if isinstance(forced, dict):
        wanted = (forced.get("function") or {}).get("name")
        return next((t for t in tools if t["function"]["name"] == wanted), None)
    return None


def _arguments_for(tool: dict, prompt: str) -> str:
    """Fill the tool's required parameters from the prompt, deterministically."""
    schema = tool["function"].get("parameters") or {}
    properties = schema.get("properties") or {}
    words = re.findall(r"[A-Za-z][\w-]*", prompt)
    capitalised = [w for w in words[1:] if w[0].isupper()]
    arguments: dict[str, object] = {}
    for name in schema.get("required") or list(properties)[:1]:
        kind = (properties.get(name) or {}).get("type", "string")
        if kind in ("integer", "number"):
            numbers = re.findall(r"\d+", prompt)
            arguments[name] = int(numbers[0]) if numbers else 1
        elif kind == "boolean":
            arguments[name] = True
        else:
            arguments[name] = capitalised[-1] if capitalised else (words[-1] if words else "demo")
    return json.dumps(arguments)


def _reply_text(model: str, prompt: str, tool_result: str | None) -> str:
    if tool_result is not None:
        return f"The tool returned: {tool_result}"
    if model == "demo/echo":
        return f"Echo: {prompt}" if prompt else "Echo: (empty message)"
    words = len(prompt.split())
    return (
        "Hello from Writingmate's offline demo model. "
        f"Your message had {words} word{'s' if words != 1 else ''}; configure an upstream key for real answers."
    )


class DemoProvider:
    name = "demo"

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        body = call.json_body or {}
        if call.path == _TRANSCRIPTION_PATH:
            return _transcription(call)
        if call.path == _CHAT_PATH:
            return self._chat(call, body)
        return self._completion(call, body)

    def _chat(self, call: UpstreamCall, body: dict) -> UpstreamResponse:
        messages = body.get("messages") or []
        prompt = _last_user_text(messages)
        result = _tool_result(messages)
        tool = None if result is not None else _pick_tool(body, prompt)
        completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body["model"]
        usage_prompt = count_chat_prompt_tokens(messages, body.get("tools"))
        if tool is not None:
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            arguments = _arguments_for(tool, prompt)
            completion_tokens = count_text_tokens(tool["function"]["name"]) + count_text_tokens(arguments)
            text, finish = None, "tool_calls"
        else:
            text = _reply_text(model, prompt, result)
            completion_tokens = count_text_tokens(text)
            finish = "stop"
        usage = {
            "prompt_tokens": usage_prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": usage_prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        if not call.stream:
            message: dict[str, object] = {"role": "assistant", "content": text, "refusal": None}
            if tool is not None:
                message["tool_calls"] = [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool["function"]["name"], "arguments": arguments},
                    }
                ]
            payload = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
                "system_fingerprint": None,
            }
            return UpstreamResponse(
                status=200, headers={"content-type": "application/json"}, body=json.dumps(payload).encode()
            )

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        events: list[dict] = [chunk({"role": "assistant", "content": "" if tool is None else None})]
        if tool is not None:
            name = tool["function"]["name"]
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                        ]
                    }
                )
            )
            for piece in _pieces(arguments, 8):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            events.extend(chunk({"content": word}) for word in _WORD.findall(text or ""))
        events.append(chunk({}, finish))
        usage_event = {**chunk({}), "choices": [], "usage": usage}
        return UpstreamResponse(
            status=200, headers={"content-type": "text/event-stream"}, chunks=_sse(events, usage_event)
        )

    def _completion(self, call: UpstreamCall, body: dict) -> UpstreamResponse:
        prompt = body.get("prompt")
        prompt_text = prompt if isinstance(prompt, str) else " ".join(p for p in prompt or [] if isinstance(p, str))
        text = f" Echo: {prompt_text}" if body["model"] == "demo/echo" else " This is Writingmate's offline demo model."
        completion_id = f"cmpl-demo-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        prompt_tokens, completion_tokens = count_text_tokens(prompt_text), count_text_tokens(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

        def choice(piece: str, finish: str | None) -> dict:
            return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}

        base = {"id": completion_id, "object": "text_completion", "created": created, "model": body["model"]}
        if not call.stream:
            payload = {**base, "choices": [choice(text, "stop")], "usage": usage, "system_fingerprint": None}
            return UpstreamResponse(
                status=200, headers={"content-type": "application/json"}, body=json.dumps(payload).encode()
            )
        events = [{**base, "choices": [choice(word, None)]} for word in _WORD.findall(text)]
        events.append({**base, "choices": [choice("", "stop")]})
        return UpstreamResponse(
            status=200,
            headers={"content-type": "text/event-stream"},
            chunks=_sse(events, {**base, "choices": [], "usage": usage}),
        )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _sse(events: list[dict], usage_event: dict) -> AsyncGenerator[bytes, None]:
    delay = settings.DEMO_STREAM_DELAY_SECONDS
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
        if delay:
            await asyncio.sleep(delay)
    yield b"data: " + json.dumps(usage_event).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


# ---- transcription -------------------------------------------------------------------------------

_ASSUMED_BYTES_PER_SECOND = 16_000  # 128 kbit/s, a common bitrate for compressed speech
_AUDIO_TOKENS_PER_SECOND = 10  # a stand-in rate, so that the demo's usage scales with the audio


def _audio_seconds(content: Any) -> float:
    """A PCM WAV's exact duration from its header; for anything else, an estimate from its size."""
    file = io.BytesIO(content) if isinstance(content, (bytes, bytearray)) else content
    file.seek(0)
    try:
        with wave.open(file) as audio:  # closes the reader only, not the file it was given
            seconds = audio.getnframes() / audio.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError):
        file.seek(0, io.SEEK_END)
        seconds = file.tell() / _ASSUMED_BYTES_PER_SECOND
    file.seek(0)
    return seconds


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _transcription(call: UpstreamCall) -> UpstreamResponse:
    """A deterministic transcript of the audio's length, in the response format that was asked for."""
    seconds = _audio_seconds(call.file_field[1]) if call.file_field else 0.0
    whole = max(1, round(seconds))
    text = f"Demo transcript of a {whole}-second audio file."
    fmt = call.form_fields.get("response_format") or "json"
    plain = {"content-type": "text/plain; charset=utf-8"}
    if fmt == "text":
        return UpstreamResponse(status=200, headers=plain, body=f"{text}\n".encode())
    if fmt == "srt":
        body = f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n"
        return UpstreamResponse(status=200, headers=plain, body=body.encode())
    if fmt == "vtt":
        body = f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n"
        return UpstreamResponse(status=200, headers={"content-type": "text/vtt; charset=utf-8"}, body=body.encode())
    if fmt == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": round(seconds, 3),
            "text": text,
            "tokens": encoding().encode(text),
            "temperature": 0.0,
            "avg_logprob": -0.1,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        payload: dict = {
            "task": "transcribe",
            "language": call.form_fields.get("language") or "english",
            "duration": round(seconds, 3),
            "text": text,
            "segments": [segment],
            "usage": {"type": "duration", "seconds": math.ceil(seconds)},
        }
    else:
        prompt_tokens = count_text_tokens(str(call.form_fields.get("prompt") or ""))
        audio_tokens = math.ceil(seconds * _AUDIO_TOKENS_PER_SECOND)
        output_tokens = count_text_tokens(text)
        payload = {
            "text": text,
            "usage": {
                "type": "tokens",
                "input_tokens": prompt_tokens + audio_tokens,
                "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
                "output_tokens": output_tokens,
                "total_tokens": prompt_tokens + audio_tokens + output_tokens,
            },
        }
    return UpstreamResponse(status=200, headers={"content-type": "application/json"}, body=json.dumps(payload).encode())
