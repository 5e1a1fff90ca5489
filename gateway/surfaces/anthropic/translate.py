"""Anthropic Messages <-> OpenAI chat completions, for the models that only speak chat completions.

Requests: system blocks, text / image / document blocks, tools and tool_choice, tool_use and
tool_result (ids kept as they are), stop_sequences, max_tokens, temperature / top_p / top_k,
thinking (as OpenRouter's `reasoning`), metadata.user_id. Fields a chat upstream has no place for
(cache_control, context_management, signed thinking blocks, server tools, betas) are dropped, never
refused: Claude Code sends them all by default. Responses: the reply as Anthropic content blocks, the
model's reasoning as thinking blocks, usage split into input and cache-read tokens.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from gateway.core import sealing
from gateway.core.reasoning import merge_reasoning_details, reasoning_text
from gateway.core.streaming import web_search_requests
from gateway.errors import ApiError, invalid_request

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_DEFAULT_EFFORT = "medium"


def message_id_for(request_id: str) -> str:
    """A translated message's id: its request's (unique, and no random draw per request), so the id and the
    `request-id` header name the same request."""
    return "msg_" + request_id.removeprefix("req_")


def _type_error(param: str, expected: str) -> ApiError:
    return invalid_request(f"{param}: Input should be {expected}", param=param)


_ROLES = ("user", "assistant", "system")
_MEMBER_TYPES = (
    ("tools", list, "a valid list"),
    ("stop_sequences", list, "a valid list"),
    ("system", (str, list), "a valid string or list of text blocks"),
    ("thinking", dict, "an object"),
    ("metadata", dict, "an object"),
    ("tool_choice", dict, "an object"),
)


def check_request(body: dict) -> None:
    """The checks Anthropic's API makes that the gateway relies on, each a 400 naming the field."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "a valid list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise invalid_request(
                f"messages.{index}.role: Input should be 'user' or 'assistant'", param=f"messages.{index}"
            )
        if not isinstance(message.get("content"), (str, list)):
            raise _type_error(f"messages.{index}.content", "a valid string or list of content blocks")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise _type_error("max_tokens", "a positive integer")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _type_error(name, "a number")
    for name, kind, expected in _MEMBER_TYPES:
        if name in body and body[name] is not None and not isinstance(body[name], kind):
            raise _type_error(name, expected)


# ---- request -----------------------------------------------------------------------------------


def _text_of(blocks: object) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        return ""
    return "\n".join(str(b.get("text") or "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")


def _image_part(block: dict) -> dict | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif source.get("type") == "url":
        url = str(source.get("url") or "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict) -> dict | None:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": str(source.get("data") or "")}
    if kind == "content":
        return {"type": "text", "text": _text_of(source.get("content"))}
    title = str(block.get("title") or "document.pdf")
    if kind == "base64":
        data = f"data:{source.get('media_type') or 'application/pdf'};base64,{source.get('data') or ''}"
        return {"type": "file", "file": {"filename": title, "file_data": data}}
    if kind == "url":
        return {"type": "file", "file": {"filename": title, "file_data": str(source.get("url") or "")}}
    return None


def _user_parts(blocks: list) -> tuple[list[dict], list[dict]]:
    """(tool messages, the user's other content parts) of one user turn; tool results come first."""
    tools: list[dict] = []
    parts: list[dict] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            if (part := _image_part(block)) is not None:
                parts.append(part)
        elif kind == "document":
            if (part := _document_part(block)) is not None:
                parts.append(part)
        elif kind == "tool_result":
            content = block.get("content")
            text = _text_of(content) if isinstance(content, list) else str(content or "")
            if block.get("is_error"):
                text = f"Error: {text}" if text else "Error"
            tools.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text})
            for item in content if isinstance(content, list) else []:
                if isinstance(item, dict) and item.get("type") == "image" and (part := _image_part(item)):
                    parts.append(part)
        # thinking, redacted_thinking, search results, server tool blocks: nothing a chat model can take
    return tools, parts


def _assistant_message(blocks: list) -> dict:
    text: list[str] = []
    calls: list[dict] = []
    details: list[dict] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") in ("thinking", "redacted_thinking"):
            # Ours carry the upstream's reasoning_details sealed (see reasoning_signature); Anthropic's
            # own signatures are for Anthropic alone and are left out.
            unsealed = sealing.unseal("reasoning", block.get("signature") or block.get("data"))
            if isinstance(unsealed, list):
                details.extend(unsealed)
        elif block.get("type") == "text":
            text.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            arguments = json.dumps(block.get("input") if block.get("input") is not None else {})
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    if details:
        message["reasoning_details"] = details  # OpenRouter gives them back to the provider (Gemini, o-series)
    return message


def chat_messages(body: dict) -> list[dict]:
    system = _text_of(body.get("system"))
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role == "system":  # Claude Code puts some of its instructions here with its default models
            out.append({"role": "system", "content": _text_of(content)})
        elif role == "assistant":
            out.append(_assistant_message([{"type": "text", "text": content}] if isinstance(content, str) else content))
        elif isinstance(content, str):
            out.append({"role": "user", "content": content})
        else:
            tools, parts = _user_parts(content)
            out.extend(tools)
            if parts:
                only_text = all(p["type"] == "text" for p in parts)
                out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return out


def _is_chat_tool(tool: object) -> bool:
    # Server tools (web_search_..., bash_..., code_execution_...) run at Anthropic; a chat model cannot.
    return isinstance(tool, dict) and tool.get("type") in (None, "custom") and bool(tool.get("name"))


def server_tool_types(body: dict) -> tuple[str, ...]:
    """The types of the tools a chat model is not offered, in request order, once each."""
    tools = body.get("tools")
    if not tools or not isinstance(tools, list):
        return ()
    return tuple(dict.fromkeys(str(t.get("type")) for t in tools if isinstance(t, dict) and not _is_chat_tool(t)))


def _chat_tools(tools: list) -> list[dict]:
    out = []
    for tool in tools:
        if not _is_chat_tool(tool):
            continue
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _reasoning(body: dict) -> dict | None:
    thinking = body.get("thinking") or {}
    effort = (body.get("output_config") or {}).get("effort") if isinstance(body.get("output_config"), dict) else None
    if thinking.get("type") == "enabled" and isinstance(thinking.get("budget_tokens"), int):
        return {"max_tokens": thinking["budget_tokens"]}
    if thinking.get("type") == "adaptive":
        return {"effort": effort if effort in ("low", "medium", "high") else _DEFAULT_EFFORT}
    if effort in ("low", "medium", "high") and thinking.get("type") != "disabled":
        return {"effort": effort}
    return None


def chat_request(body: dict, *, upstream_model: str, stream: bool) -> dict:
    # `in` before each optional member: most requests have few of them, and a lookup is dearer than `in`.
    chat: dict[str, Any] = {"model": upstream_model, "messages": chat_messages(body)}
    if isinstance(body.get("max_tokens"), int):
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if name in body and body[name] is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = [str(s) for s in body["stop_sequences"]]
    if "tools" in body:
        _add_tools(chat, body)
    if ("thinking" in body or "output_config" in body) and (reasoning := _reasoning(body)) is not None:
        chat["reasoning"] = reasoning
    if "metadata" in body:
        user = (body["metadata"] or {}).get("user_id")
        if isinstance(user, str) and user:
            chat["user"] = user[:256]
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _add_tools(chat: dict, body: dict) -> None:
    tools = _chat_tools(body.get("tools") or [])
    choice = body.get("tool_choice") or {}
    if tools and choice.get("type") != "none":
        chat["tools"] = tools
        if choice.get("type") == "tool" and choice.get("name"):
            chat["tool_choice"] = {"type": "function", "function": {"name": str(choice["name"])}}
        elif choice.get("type") in _TOOL_CHOICES:
            chat["tool_choice"] = _TOOL_CHOICES[choice["type"]]
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False


# ---- response ----------------------------------------------------------------------------------


def reasoning_signature(details: list[dict]) -> str:
    """A thinking block's signature: the upstream's reasoning_details sealed, so the next turn can give them
    back (OpenRouter needs them for Gemini's thought signatures and o-series' encrypted reasoning); ""
    when there are none. Clients keep signatures as they are, as they must for Anthropic's."""
    return sealing.seal("reasoning", details) if details else ""


def reasoning_blocks(text: str, details: list[dict]) -> list[dict]:
    """The reasoning as Anthropic blocks: thinking with its text, or redacted_thinking when there is none."""
    if text:
        return [{"type": "thinking", "thinking": text, "signature": reasoning_signature(details)}]
    if details:
        return [{"type": "redacted_thinking", "data": reasoning_signature(details)}]
    return []


def tool_input(arguments: object) -> dict:
    """A tool call's arguments as the object Anthropic's `input` must be (`{}` only if there were none)."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0  # an int, not a bool


def anthropic_usage(usage: object) -> dict:
    """Chat usage as Anthropic's: cached prompt tokens are cache reads, the rest input tokens."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(_count(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    translated: dict = {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _count(usage.get("completion_tokens")),
    }
    if "server_tool_use" in usage and (searches := web_search_requests(usage)):
        translated["server_tool_use"] = {"web_search_requests": searches}  # Anthropic's spelling is OpenRouter's
    return translated


def message_from_chat(completion: dict, *, model: str, message_id: str) -> dict:
    choice = (completion.get("choices") or [{}])[0] or {}
    message = choice.get("message") or {}
    content: list[dict] = []
    if "reasoning" in message or "reasoning_content" in message or "reasoning_details" in message:
        details: list[dict] = []
        merge_reasoning_details(details, message.get("reasoning_details"))
        content.extend(reasoning_blocks(reasoning_text(message), details))
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + secrets.token_hex(12)),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop_reason = "tool_use" if message.get("tool_calls") else STOP_REASONS.get(str(finish), "end_turn")
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }
