"""A Responses request as a chat completions request: validated, every refusal a 400 naming its parameter.

What happens to each top-level field is the table in `fields`; tools are translated by `tools`;
compaction items by `compaction`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gateway.core import sealing
from gateway.errors import ApiError, invalid_request
from gateway.surfaces.openai.responses import compaction
from gateway.surfaces.openai.responses.fields import FORWARDED
from gateway.surfaces.openai.responses.tools import (
    CUSTOM_INPUT,
    ToolMap,
    translate_tool_choice,
    translate_tools,
    upstream_tool_choice,
)

_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")
_MIN_OUTPUT_TOKENS = 16  # OpenAI's own lower bound for max_output_tokens
_MAX_METADATA_KEYS = 16
SEARCH_SOURCES = "web_search_call.action.sources"  # the `include` value that asks for a search's sources
_STATEFUL_PARAMS = {
    "previous_response_id": "continues a stored response",  # resolved before translation when stored
    "conversation": "continues a stored conversation",
    "prompt": "uses a stored prompt template",
}
# Records of tools the client's earlier provider ran itself (or of tool types we never offer): a chat
# upstream has no place for them, and their results are already in the conversation as text.
_HOSTED_RECORD_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "program",
        "program_output",
    }
)


@dataclass(frozen=True)
class ChatTranslation:
    """A Responses request as a chat completions request, plus what the way back needs."""

    chat_body: dict
    echo: dict  # the request's fields as the Response repeats them
    stream: bool
    tools: ToolMap = field(default_factory=ToolMap)
    compact: bool = False  # answer with one compaction item (the input ended with a compaction trigger)
    input_items: list = field(default_factory=list)  # the input as items (a string input made one)


def _type_error(param: str, expected: str, value: object) -> ApiError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _missing(param: str) -> ApiError:
    return invalid_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _string(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string", value) if value is not None else _missing(param)
    return value


def _content_parts(content: object, *, param: str, role: str) -> str | list[dict]:
    """Responses content (a string or input parts) as chat content; text-only roles get one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise (
            _type_error(param, "a string or an array of content parts", content)
            if content is not None
            else _missing(param)
        )
    parts: list[dict] = []
    for index, part in enumerate(content):
        part_param = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _type_error(part_param, "an object", part)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _string(part.get("text"), f"{part_param}.text")})
        elif kind == "refusal" and role == "assistant":
            parts.append({"type": "text", "text": _string(part.get("refusal"), f"{part_param}.refusal")})
        elif kind == "input_image" and role == "user":
            if part.get("image_url") is None:
                raise invalid_request(
                    f"'{part_param}' must give an 'image_url' (a URL or a data: URL); file ids need OpenAI's "
                    "file storage, which this API does not offer.",
                    param=f"{part_param}.image_url",
                    code="unsupported_parameter",
                )
            image = {"url": _string(part.get("image_url"), f"{part_param}.image_url")}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and role == "user":
            if not isinstance(part.get("file_data"), str):
                raise invalid_request(
                    f"'{part_param}' must carry the file inline as 'file_data'; file ids and file URLs are not "
                    "supported by this API.",
                    param=f"{part_param}.file_data",
                    code="unsupported_parameter",
                )
            file = {"file_data": part["file_data"]}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        elif kind == "input_audio" and role == "user":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise _type_error(f"{part_param}.input_audio", "an object", audio)
            parts.append({"type": "input_audio", "input_audio": audio})
        else:
            raise invalid_request(
                f"Invalid value for '{part_param}.type': {kind!r} is not supported in a {role} message.",
                param=f"{part_param}.type",
                code="invalid_value",
            )
    if role != "user" or all(p["type"] == "text" for p in parts):
        # Assistant and system turns are text; one string is what every chat upstream accepts.
        return "".join(p["text"] for p in parts)
    return parts


def _tool_output(output: object, param: str) -> str:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise (
            _type_error(param, "a string or an array of content parts", output)
            if output is not None
            else _missing(param)
        )
    texts = []
    for index, part in enumerate(output):
        if not isinstance(part, dict):
            raise _type_error(f"{param}[{index}]", "an object", part)
        if part.get("type") in _TEXT_PARTS:
            texts.append(_string(part.get("text"), f"{param}[{index}].text"))
        else:
            # A chat tool message is text only: say what was there rather than refuse the turn.
            texts.append(f"[{part.get('type')} omitted]")
    return "".join(texts)


def _append_call(messages: list[dict], call: dict) -> None:
    last = messages[-1] if messages else None
    # A turn's text and its calls (or parallel calls) are one assistant message in chat.
    if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _namespace(item: dict, param: str) -> str | None:
    namespace = item.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise _type_error(f"{param}.namespace", "a string", namespace)
    return namespace


def _messages_from_items(items: list, tools: ToolMap) -> list[dict]:
    messages: list[dict] = []
    # Our reasoning item's details go on the assistant message that follows it (its turn's answer or calls).
    pending: tuple[list, int] | None = None  # (reasoning_details, index of the first message that may carry them)
    for index, item in enumerate(items):
        if pending is not None:
            pending = _attach_reasoning(messages, pending)
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise _type_error(param, "an object", item)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # EasyInputMessage: the type is optional
        if kind == "message":
            role = item.get("role")
            if role not in _MESSAGE_ROLES:
                raise invalid_request(
                    f"Invalid value for '{param}.role': {role!r}. Supported values: {', '.join(_MESSAGE_ROLES)}.",
                    param=f"{param}.role",
                    code="invalid_value",
                )
            content = _content_parts(item.get("content"), param=f"{param}.content", role=role)
            # Chat upstreams other than OpenAI's do not all know "developer"; it means "system" there.
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            name = _string(item.get("name"), f"{param}.name")
            if kind == "function_call":
                arguments = _string(item.get("arguments"), f"{param}.arguments")
            else:
                arguments = json.dumps({CUSTOM_INPUT: _string(item.get("input"), f"{param}.input")})
            call = {
                "id": _string(item.get("call_id"), f"{param}.call_id"),
                "type": "function",
                "function": {"name": tools.upstream_name(name, _namespace(item, param)), "arguments": arguments},
            }
            if pending is not None and pending[1] == len(messages) and messages and messages[-1]["role"] == "assistant":
                pending = (pending[0], len(messages) - 1)  # the call joins that assistant message: so do the details
            _append_call(messages, call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(item.get("call_id"), f"{param}.call_id"),
                    "content": _tool_output(item.get("output"), f"{param}.output"),
                }
            )
        elif kind == "compaction":
            messages.extend(compaction.expand(item.get("encrypted_content")) or [])
        elif kind == "reasoning":
            # Ours carry the upstream's reasoning_details sealed; another provider's reasoning is sealed
            # for that provider alone and is left out. Never an error: the history stays usable.
            details = sealing.unseal("reasoning", item.get("encrypted_content"))
            if isinstance(details, list) and details:
                pending = (details, len(messages))
        elif kind in _HOSTED_RECORD_ITEMS:
            continue  # records of tools run elsewhere have no chat form; their results are in the text
        elif kind == "item_reference":
            raise invalid_request(
                f"'{param}' refers to an item that was not found among this workspace's stored responses.",
                param=f"{param}.type",
                code="unsupported_parameter",
            )
        elif kind == compaction.TRIGGER_ITEM:
            raise invalid_request(
                f"'{param}' is a compaction trigger: it may only be the last input item.",
                param=f"{param}.type",
                code="invalid_value",
            )
        else:
            raise invalid_request(
                f"Invalid value for '{param}.type': {kind!r}. Supported input items: message, function_call, "
                "function_call_output, custom_tool_call, custom_tool_call_output, reasoning, compaction.",
                param=f"{param}.type",
                code="invalid_value",
            )
    if pending is not None:
        _attach_reasoning(messages, pending)
    return messages


def _attach_reasoning(messages: list[dict], pending: tuple[list, int]) -> tuple[list, int] | None:
    """Put the details on the first assistant message from the pending index on; None once placed."""
    details, start = pending
    for message in messages[start:]:
        if message["role"] == "assistant":
            message.setdefault("reasoning_details", details)
            return None
    return pending


def _text_format(body: dict) -> tuple[dict | None, dict]:
    """(chat response_format or None, the `text` object the Response echoes)."""
    text = body.get("text")
    if text is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise _type_error("text", "an object", text)
    fmt = text.get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise _type_error("text.format", "an object", fmt)
    echo: dict = {"format": fmt}
    if text.get("verbosity") is not None:
        echo["verbosity"] = text["verbosity"]
    kind = fmt.get("type")
    if kind == "text":
        return None, echo
    if kind == "json_object":
        return {"type": "json_object"}, echo
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise (
                _type_error("text.format.schema", "an object (a JSON Schema)", schema)
                if schema is not None
                else _missing("text.format.schema")
            )
        json_schema = {"name": _string(fmt.get("name"), "text.format.name"), "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                json_schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": json_schema}, echo
    raise invalid_request(
        f"Invalid value for 'text.format.type': {kind!r}. Supported values: text, json_schema, json_object.",
        param="text.format.type",
        code="invalid_value",
    )


def _refuse_unsupported(body: dict) -> None:
    for name, why in _STATEFUL_PARAMS.items():
        if body.get(name) is not None:
            raise invalid_request(
                f"The parameter '{name}' is not supported: it {why}, which this API does not keep. "
                "Send the conversation in 'input' (or continue a stored response with previous_response_id).",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("background"):
        raise invalid_request(
            "Background responses are not supported: this API does not store responses. Use 'stream': true "
            "for long generations.",
            param="background",
            code="unsupported_parameter",
        )
    include = body.get("include")
    if include is not None and not isinstance(include, list):
        raise _type_error("include", "an array", include)


def _metadata(body: dict) -> dict:
    metadata = body.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _type_error("metadata", "an object of strings", metadata)
    if len(metadata) > _MAX_METADATA_KEYS:
        raise invalid_request(
            f"'metadata' may have at most {_MAX_METADATA_KEYS} keys.", param="metadata", code="invalid_value"
        )
    return metadata


def _input_items(body: dict) -> list:
    if "input" not in body or body["input"] is None:
        raise _missing("input")
    items = body["input"]
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise _type_error("input", "a string or an array of input items", items)
    return items


def _reasoning(body: dict) -> tuple[dict | None, dict]:
    """(OpenRouter's `reasoning` parameter or None, the `reasoning` object the Response echoes)."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None, {"effort": None, "summary": None}
    if not isinstance(reasoning, dict):
        raise _type_error("reasoning", "an object", reasoning)
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _type_error("reasoning.effort", "a string", effort)
    summary = reasoning.get("summary", reasoning.get("generate_summary"))
    # OpenRouter's own spelling; it has no summary switch, so the summary setting is echoed only.
    return ({"effort": effort} if effort is not None else None), {"effort": effort, "summary": summary}


def _echoed_tools(tools: object) -> list:
    """The tools as the Response repeats them: as sent, function tools with their optional keys filled."""
    echoed = []
    for tool in tools if isinstance(tools, list) else []:
        if tool.get("type") == "function":
            tool = {"description": None, "parameters": None, "strict": None, **tool}
        echoed.append(tool)
    return echoed


def chat_request_from_responses(
    body: dict, *, compact: bool = False, web_search_allowed: bool = False
) -> ChatTranslation:
    """Validate a Responses request and translate it; every refusal is a 400 naming its parameter.

    `compact`: the request asks for a compaction (POST /responses/compact); an input that ends with a
    compaction trigger item asks for one too. `web_search_allowed`: the workspace's plan includes
    hosted web search.
    """
    _refuse_unsupported(body)
    items = _input_items(body)
    if items and isinstance(items[-1], dict) and items[-1].get("type") == compaction.TRIGGER_ITEM:
        items, compact = items[:-1], True
    chat_tools, tool_map = translate_tools(body.get("tools"), web_search_allowed=web_search_allowed)
    messages = _messages_from_items(items, tool_map)
    instructions = body.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": _string(instructions, "instructions")})
    if not messages:
        raise invalid_request("'input' must contain at least one item.", param="input", code="empty_array")

    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    chat: dict = {"model": body.get("model"), "messages": messages, "stream": stream}
    for name in FORWARDED:
        if body.get(name) is not None:
            chat[name] = body[name]
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if not isinstance(max_output, int) or isinstance(max_output, bool):
            raise _type_error("max_output_tokens", "an integer", max_output)
        if max_output < _MIN_OUTPUT_TOKENS:
            raise invalid_request(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{_MIN_OUTPUT_TOKENS}, but got {max_output} instead.",
                param="max_output_tokens",
                code="integer_below_min_value",
            )
        chat["max_tokens"] = max_output

    tool_choice, callable_tools = translate_tool_choice(body.get("tool_choice"), tool_map, chat_tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _type_error("parallel_tool_calls", "a boolean", parallel)
    if compact:
        # The summary is text: no tools, and a last user turn that asks for it.
        messages.append({"role": "user", "content": compaction.COMPACTION_PROMPT})
    elif callable_tools:
        # Chat upstreams reject tool_choice and parallel_tool_calls without tools, so only send them with tools.
        chat["tools"] = callable_tools
        tool_choice = upstream_tool_choice(tool_choice, callable_tools)
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    elif tool_choice == "required" and tool_map.omitted:
        raise invalid_request(
            "'tool_choice' is 'required' but none of the 'tools' can be offered here "
            f"(left out: {', '.join(tool_map.omitted) or 'none'}).",
            param="tool_choice",
            code="invalid_value",
        )

    response_format, text_echo = _text_format(body)
    if response_format is not None and not compact:
        chat["response_format"] = response_format
    if text_echo.get("verbosity") is not None:
        chat["verbosity"] = text_echo["verbosity"]
    upstream_reasoning, reasoning_echo = _reasoning(body)
    if upstream_reasoning is not None:
        chat["reasoning"] = upstream_reasoning

    truncation = body.get("truncation")
    echo = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": max_output,
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": _metadata(body),
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": None,
        "reasoning": reasoning_echo,
        "store": False,  # nothing is stored, whatever the request said (docs/decisions.md)
        "temperature": body.get("temperature"),
        "text": text_echo,
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": _echoed_tools(body.get("tools")),
        "top_p": body.get("top_p"),
        "truncation": truncation if truncation in ("auto", "disabled") else "disabled",
    }
    if body.get("user") is not None:
        echo["user"] = body["user"]  # a string when present; the spec has no null for it
    tool_map.search_sources = SEARCH_SOURCES in (body.get("include") or [])
    return ChatTranslation(
        chat_body=chat, echo=echo, stream=stream, tools=tool_map, compact=compact, input_items=list(items)
    )
