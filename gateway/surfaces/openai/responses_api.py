"""The Responses API on top of chat completions: the request and the response translated both ways, and
a stream translator from chat completion chunks to Responses events. Pure: no I/O, no settings.

Storing and continuing responses happens before and after this module (stored_responses: the input it
gets is whole, `previous_response_id` resolved); other server-side state (`conversation`, stored
prompts, `background`) is refused with a 400 naming the parameter (docs/decisions.md).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field

from gateway.errors import ApiError, invalid_request

# Responses-only tools we cannot offer on top of chat completions; named so the 400 says what they are.
BUILT_IN_TOOL_TYPES = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "mcp",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
        "namespace",
        "tool_search",
    }
)
_STATEFUL_PARAMS = {
    "previous_response_id": "continues a stored response",
    "conversation": "continues a stored conversation",
    "prompt": "uses a stored prompt template",
    "context_management": "needs server-side compaction of stored context",
}
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")
_MIN_OUTPUT_TOKENS = 16  # OpenAI's own lower bound for max_output_tokens
_MAX_METADATA_KEYS = 16
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Passed to the chat upstream unchanged when present: the two APIs spell them the same way.
_FORWARDED_PARAMS = ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key")


@dataclass(frozen=True)
class ChatTranslation:
    """A Responses request as a chat completions request, plus the fields the Response repeats."""

    chat_body: dict
    echo: dict
    stream: bool


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def _new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- request ------------------------------------------------------------------------------------


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
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
            raise invalid_request(
                f"Invalid value for '{param}[{index}]': a chat upstream takes only text as a tool result.",
                param=f"{param}[{index}]",
                code="invalid_value",
            )
        texts.append(_string(part.get("text"), f"{param}[{index}].text"))
    return "".join(texts)


def _messages_from_items(items: list) -> list[dict]:
    messages: list[dict] = []
    for index, item in enumerate(items):
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
        elif kind == "function_call":
            call = {
                "id": _string(item.get("call_id"), f"{param}.call_id"),
                "type": "function",
                "function": {
                    "name": _string(item.get("name"), f"{param}.name"),
                    "arguments": _string(item.get("arguments"), f"{param}.arguments"),
                },
            }
            last = messages[-1] if messages else None
            # A turn's text and its calls (or parallel calls) are one assistant message in chat.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(item.get("call_id"), f"{param}.call_id"),
                    "content": _tool_output(item.get("output"), f"{param}.output"),
                }
            )
        elif kind == "reasoning":
            continue  # reasoning items are the model's own notes; a chat upstream has no place for them
        elif kind == "item_reference":
            raise invalid_request(
                f"'{param}' refers to a stored item, but this API does not store responses: send the item itself.",
                param=f"{param}.type",
                code="unsupported_parameter",
            )
        else:
            raise invalid_request(
                f"Invalid value for '{param}.type': {kind!r}. Supported input items: message, function_call, "
                "function_call_output.",
                param=f"{param}.type",
                code="invalid_value",
            )
    return messages


def _tools(body: dict) -> tuple[list[dict], list[dict]]:
    """(chat tools, the tools as the Response echoes them)."""
    tools = body.get("tools")
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    chat_tools, echoed = [], []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _type_error(param, "an object", tool)
        kind = tool.get("type")
        if kind != "function":
            what = "Built-in tools" if kind in BUILT_IN_TOOL_TYPES else "Tools of this type"
            raise invalid_request(
                f"Invalid value for '{param}.type': {kind!r} is not supported. {what} are not available here: "
                "this API serves Responses on top of chat completions, which take function tools only.",
                param=f"{param}.type",
                code="unsupported_tool_type",
            )
        name = _string(tool.get("name"), f"{param}.name")
        if not _TOOL_NAME.match(name):
            raise invalid_request(
                f"Invalid '{param}.name': it must be 1-64 characters of a-z, A-Z, 0-9, underscores and dashes.",
                param=f"{param}.name",
                code="invalid_value",
            )
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _type_error(f"{param}.parameters", "an object (a JSON Schema)", parameters)
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _type_error(f"{param}.strict", "a boolean", strict)
        function: dict = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if parameters is not None:
            function["parameters"] = parameters
        if strict is not None:
            function["strict"] = strict
        chat_tools.append({"type": "function", "function": function})
        echoed.append(
            {
                "type": "function",
                "name": name,
                "description": tool.get("description"),
                "parameters": parameters,
                "strict": strict,
            }
        )
    return chat_tools, echoed


def _tool_choice(choice: object) -> str | dict | None:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, str):
        raise invalid_request(
            f"Invalid value for 'tool_choice': {choice!r}. Use 'none', 'auto', 'required' or a function.",
            param="tool_choice",
            code="invalid_value",
        )
    if not isinstance(choice, dict):
        raise _type_error("tool_choice", "a string or an object", choice)
    if choice.get("type") != "function":
        raise invalid_request(
            f"Invalid value for 'tool_choice.type': {choice.get('type')!r}. Only function tools can be chosen here.",
            param="tool_choice.type",
            code="invalid_value",
        )
    return {"type": "function", "function": {"name": _string(choice.get("name"), "tool_choice.name")}}


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
                f"The parameter '{name}' is not supported: it {why}, and this API does not store responses. "
                "Send the whole conversation in 'input' instead.",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("background"):
        raise invalid_request(
            "Background responses are not supported: this API answers while the request is open. Use "
            "'stream': true for long generations.",
            param="background",
            code="unsupported_parameter",
        )
    if body.get("truncation") not in (None, "disabled"):
        raise invalid_request(
            "Only 'truncation': 'disabled' is supported: the gateway does not trim your input to fit the model.",
            param="truncation",
            code="unsupported_parameter",
        )
    include = body.get("include")
    if include is not None and not isinstance(include, list):
        raise _type_error("include", "an array", include)
    if include and "message.output_text.logprobs" in include:
        raise invalid_request(
            "Log probabilities are not supported on /v1/responses.", param="include", code="unsupported_parameter"
        )
    if body.get("top_logprobs"):
        raise invalid_request(
            "Log probabilities are not supported on /v1/responses.", param="top_logprobs", code="unsupported_parameter"
        )


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


def chat_request_from_responses(body: dict) -> ChatTranslation:
    """Validate a Responses request and translate it; every refusal is a 400 naming its parameter."""
    _refuse_unsupported(body)
    if "input" not in body or body["input"] is None:
        raise _missing("input")
    items = body["input"]
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    elif not isinstance(items, list):
        raise _type_error("input", "a string or an array of input items", items)
    messages = _messages_from_items(items)
    instructions = body.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": _string(instructions, "instructions")})
    if not messages:
        raise invalid_request("'input' must contain at least one item.", param="input", code="empty_array")

    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    chat: dict = {"model": body.get("model"), "messages": messages, "stream": stream}
    for name in _FORWARDED_PARAMS:
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

    chat_tools, echoed_tools = _tools(body)
    tool_choice = _tool_choice(body.get("tool_choice"))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _type_error("parallel_tool_calls", "a boolean", parallel)
    if chat_tools:
        # Chat upstreams reject tool_choice and parallel_tool_calls without tools, so only send them with tools.
        chat["tools"] = chat_tools
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    elif isinstance(tool_choice, dict):
        raise invalid_request(
            "'tool_choice' names a function but no 'tools' were given.", param="tool_choice", code="invalid_value"
        )

    response_format, text_echo = _text_format(body)
    if response_format is not None:
        chat["response_format"] = response_format
    if text_echo.get("verbosity") is not None:
        chat["verbosity"] = text_echo["verbosity"]
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _type_error("reasoning", "an object", reasoning)
    effort = (reasoning or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort

    echo = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": max_output,
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": _metadata(body),
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": (reasoning or {}).get("summary")},
        "store": False,  # nothing is stored, whatever the request said (docs/decisions.md)
        "temperature": body.get("temperature"),
        "text": text_echo,
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": echoed_tools,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
    }
    if body.get("user") is not None:
        echo["user"] = body["user"]  # a string when present; the spec has no null for it
    return ChatTranslation(chat_body=chat, echo=echo, stream=stream)


# ---- response -----------------------------------------------------------------------------------


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def response_usage(usage: object) -> dict | None:
    """Chat `usage` as Responses `usage`; None when the upstream gave none worth the name."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    completion_details = (
        usage.get("completion_tokens_details") if isinstance(usage.get("completion_tokens_details"), dict) else {}
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details.get("reasoning_tokens"))},
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
    }


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _refusal_part(refusal: str) -> dict:
    return {"type": "refusal", "refusal": refusal}


def _function_call_item(*, call_id: str, name: str, arguments: str, status: str, item_id: str | None = None) -> dict:
    return {
        "id": item_id or _new_item_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        # OpenAI sends "{}" for a call without arguments; "" breaks clients that parse it.
        "arguments": arguments or "{}",
    }


def _reasoning_item(*, item_id: str, text: str, status: str) -> dict:
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if text else [],
    }


def _reasoning_text(message: dict) -> str:
    """The model's visible reasoning: OpenRouter calls it `reasoning`, some upstreams `reasoning_content`."""
    for key in ("reasoning", "reasoning_content"):
        if isinstance(message.get(key), str) and message[key]:
            return message[key]
    return ""


def _outcome_of(finish_reason: object) -> tuple[str, dict | None]:
    """(Response status, incomplete_details) for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    echo: dict,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    error: dict | None = None,
    incomplete_details: dict | None = None,
    completed_at: int | None = None,
) -> dict:
    response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "model": model,
        "output": output,
        **echo,
    }
    if usage is not None:
        response["usage"] = usage  # optional but not nullable in the spec: absent until known
    return response


def response_from_chat(
    completion: dict, *, response_id: str, created_at: int, completed_at: int, model: str, echo: dict
) -> dict:
    """A whole chat completion as a Response object."""
    choices = completion.get("choices") if isinstance(completion.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    finish_reason = choice.get("finish_reason")
    status, incomplete = _outcome_of(finish_reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    error = None
    if finish_reason == "error":
        status, item_status = "failed", "incomplete"
        error = {"code": "server_error", "message": "The upstream model stopped with an error."}

    output: list[dict] = []
    reasoning = _reasoning_text(message)
    if reasoning:
        output.append(_reasoning_item(item_id=_new_item_id("rs"), text=reasoning, status=item_status))
    text, refusal = message.get("content"), message.get("refusal")
    tool_calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    content: list[dict] = []
    if isinstance(text, str) and (text or not tool_calls):
        content.append(_text_part(text))
    if isinstance(refusal, str) and refusal:
        content.append(_refusal_part(refusal))
    if content or not tool_calls:
        output.append(
            {
                "id": _new_item_id("msg"),
                "type": "message",
                "status": item_status,
                "role": "assistant",
                "content": content or [_text_part("")],
            }
        )
    for call in tool_calls:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        output.append(
            _function_call_item(
                call_id=str(call.get("id") or _new_item_id("call")),
                name=str(function.get("name") or ""),
                arguments=str(function.get("arguments") or ""),
                status=item_status,
            )
        )
    return response_object(
        response_id=response_id,
        created_at=created_at,
        model=model,
        echo=echo,
        status=status,
        output=output,
        usage=response_usage(completion.get("usage")),
        error=error,
        incomplete_details=incomplete,
        completed_at=completed_at if status == "completed" else None,
    )


# ---- stream -------------------------------------------------------------------------------------


def sse_frame(event: dict) -> bytes:
    """One Responses event as OpenAI frames it: the `event:` line repeats the JSON's `type`."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


@dataclass
class _OpenPart:
    kind: str  # "output_text" | "refusal"
    content_index: int
    text: str = ""

    def part(self) -> dict:
        return _text_part(self.text) if self.kind == "output_text" else _refusal_part(self.text)


@dataclass
class _OpenMessage:
    item_id: str
    output_index: int
    parts: dict[str, _OpenPart] = field(default_factory=dict)


@dataclass
class _OpenReasoning:
    item_id: str
    output_index: int
    text: str = ""


@dataclass
class _OpenCall:
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str = ""


class ResponseEventStream:
    """Chat completion chunks (parsed) in, Responses stream events (dicts) out, in OpenAI's order.

    Call `start()` once, `feed()` per chunk, and then exactly one of `finish()` (the upstream ended
    normally) or `fail()`. Every event carries the next `sequence_number`, starting at 0.
    """

    def __init__(self, *, response_id: str, created_at: int, model: str, echo: dict) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.echo = echo
        self._sequence = 0
        self._output: list[dict] = []  # finished items, and placeholders for open ones, by output_index
        self._reasoning: _OpenReasoning | None = None
        self._message: _OpenMessage | None = None
        self._calls: dict[int, _OpenCall] = {}  # by the chat tool call's index
        self._finish_reason: object = None
        self._usage: dict | None = None
        self.ended = False

    # -- events --

    def _event(self, kind: str, **fields: object) -> dict:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, status: str, **fields: object) -> dict:
        return response_object(
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            echo=self.echo,
            status=status,
            output=copy.deepcopy(self._output),
            **fields,
        )

    def start(self) -> list[dict]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    # -- reasoning items --

    def _reasoning_delta(self, delta: str) -> list[dict]:
        events: list[dict] = []
        reasoning = self._reasoning
        if reasoning is None:
            events.extend(self._close_message("completed"))
            reasoning = _OpenReasoning(item_id=_new_item_id("rs"), output_index=len(self._output))
            self._reasoning = reasoning
            item = _reasoning_item(item_id=reasoning.item_id, text="", status="in_progress")
            self._output.append(item)
            where = {"item_id": reasoning.item_id, "output_index": reasoning.output_index, "content_index": 0}
            events.append(
                self._event("response.output_item.added", output_index=reasoning.output_index, item=copy.deepcopy(item))
            )
            events.append(
                self._event("response.content_part.added", **where, part={"type": "reasoning_text", "text": ""})
            )
        reasoning.text += delta
        where = {"item_id": reasoning.item_id, "output_index": reasoning.output_index, "content_index": 0}
        events.append(self._event("response.reasoning_text.delta", **where, delta=delta))
        return events

    def _close_reasoning(self, status: str) -> list[dict]:
        reasoning, self._reasoning = self._reasoning, None
        if reasoning is None:
            return []
        where = {"item_id": reasoning.item_id, "output_index": reasoning.output_index, "content_index": 0}
        item = _reasoning_item(item_id=reasoning.item_id, text=reasoning.text, status=status)
        self._output[reasoning.output_index] = item
        return [
            self._event("response.reasoning_text.done", **where, text=reasoning.text),
            self._event("response.content_part.done", **where, part={"type": "reasoning_text", "text": reasoning.text}),
            self._event("response.output_item.done", output_index=reasoning.output_index, item=copy.deepcopy(item)),
        ]

    # -- message items --

    def _open_message(self) -> tuple[_OpenMessage, list[dict]]:
        if self._message is not None:
            return self._message, []
        events = self._close_reasoning("completed")  # the reasoning is over once the answer starts
        message = _OpenMessage(item_id=_new_item_id("msg"), output_index=len(self._output))
        item = {"id": message.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        self._output.append(item)
        self._message = message
        events.append(
            self._event("response.output_item.added", output_index=message.output_index, item=copy.deepcopy(item))
        )
        return message, events

    def _message_delta(self, kind: str, delta: str) -> list[dict]:
        message, events = self._open_message()
        part = message.parts.get(kind)
        if part is None:
            part = _OpenPart(kind=kind, content_index=len(message.parts))
            message.parts[kind] = part
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=message.item_id,
                    output_index=message.output_index,
                    content_index=part.content_index,
                    part=part.part(),
                )
            )
        part.text += delta
        where = {"item_id": message.item_id, "output_index": message.output_index, "content_index": part.content_index}
        if kind == "output_text":
            events.append(self._event("response.output_text.delta", **where, delta=delta, logprobs=[]))
        else:
            events.append(self._event("response.refusal.delta", **where, delta=delta))
        return events

    def _close_message(self, status: str) -> list[dict]:
        message, self._message = self._message, None
        if message is None:
            return []
        events = []
        for part in message.parts.values():
            where = {
                "item_id": message.item_id,
                "output_index": message.output_index,
                "content_index": part.content_index,
            }
            if part.kind == "output_text":
                events.append(self._event("response.output_text.done", **where, text=part.text, logprobs=[]))
            else:
                events.append(self._event("response.refusal.done", **where, refusal=part.text))
            events.append(self._event("response.content_part.done", **where, part=part.part()))
        item = {
            "id": message.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part.part() for part in message.parts.values()],
        }
        self._output[message.output_index] = item
        events.append(
            self._event("response.output_item.done", output_index=message.output_index, item=copy.deepcopy(item))
        )
        return events

    # -- function call items --

    def _call_delta(self, delta: dict) -> list[dict]:
        index = delta.get("index") if isinstance(delta.get("index"), int) else 0
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        events: list[dict] = []
        call = self._calls.get(index)
        if call is None:
            # A call after text: the text is finished (OpenAI closes the message before the call).
            events.extend(self._close_reasoning("completed"))
            events.extend(self._close_message("completed"))
            call = _OpenCall(
                item_id=_new_item_id("fc"),
                output_index=len(self._output),
                call_id=str(delta.get("id") or _new_item_id("call")),
                name=str(function.get("name") or ""),
            )
            self._calls[index] = call
            item = {
                "id": call.item_id,
                "type": "function_call",
                "status": "in_progress",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": "",
            }
            self._output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=call.output_index, item=copy.deepcopy(item))
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=arguments,
                )
            )
        return events

    def _close_calls(self, status: str) -> list[dict]:
        # Parallel calls may arrive interleaved, so all stay open until the upstream is done with them.
        events = []
        for call in self._calls.values():
            item = _function_call_item(
                item_id=call.item_id, call_id=call.call_id, name=call.name, arguments=call.arguments, status=status
            )
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    name=call.name,
                    output_index=call.output_index,
                    arguments=item["arguments"],
                )
            )
            self._output[call.output_index] = item
            events.append(
                self._event("response.output_item.done", output_index=call.output_index, item=copy.deepcopy(item))
            )
        self._calls = {}
        return events

    # -- chunks --

    def feed(self, chunk: dict) -> list[dict]:
        if self.ended:
            return []
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        events: list[dict] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Responses has one output; we never ask for n > 1
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            reasoning = _reasoning_text(delta)
            if reasoning:
                events.extend(self._reasoning_delta(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.extend(self._message_delta("output_text", delta["content"]))
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events.extend(self._message_delta("refusal", delta["refusal"]))
            for call_delta in delta.get("tool_calls") or []:
                if isinstance(call_delta, dict):
                    events.extend(self._call_delta(call_delta))
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self, *, completed_at: int) -> list[dict]:
        """The terminal events once the upstream ended: response.completed or response.incomplete."""
        if self.ended:
            return []
        if self._finish_reason is None or self._finish_reason == "error":
            return self.fail("The upstream closed the stream before it finished.")
        status, incomplete = _outcome_of(self._finish_reason)
        item_status = "incomplete" if status == "incomplete" else "completed"
        events = self._close_reasoning(item_status)
        if self._message is None and not any(item["type"] != "reasoning" for item in self._output):
            events.extend(self._open_message()[1])
            events.extend(self._message_delta_empty())
        events.extend(self._close_message(item_status))
        events.extend(self._close_calls(item_status))
        self.ended = True
        fields: dict = {"usage": response_usage(self._usage), "incomplete_details": incomplete}
        if status == "completed":
            fields["completed_at"] = completed_at
        kind = "response.completed" if status == "completed" else "response.incomplete"
        response = self._response(status, **fields)
        events.append(self._event(kind, response=response))
        return events

    def _message_delta_empty(self) -> list[dict]:
        """The content part of a reply that was empty: OpenAI still sends the part, with no deltas."""
        message = self._message
        assert message is not None
        part = _OpenPart(kind="output_text", content_index=0)
        message.parts["output_text"] = part
        return [
            self._event(
                "response.content_part.added",
                item_id=message.item_id,
                output_index=message.output_index,
                content_index=0,
                part=part.part(),
            )
        ]

    def fail(self, message: str, *, code: str = "server_error") -> list[dict]:
        """The terminal response.failed after an upstream failure mid-stream; open items end incomplete."""
        if self.ended:
            return []
        self.ended = True
        if self._reasoning is not None:
            self._output[self._reasoning.output_index] = _reasoning_item(
                item_id=self._reasoning.item_id, text=self._reasoning.text, status="incomplete"
            )
        if self._message is not None:
            item = self._output[self._message.output_index]
            item["status"] = "incomplete"
            item["content"] = [part.part() for part in self._message.parts.values()]
        for call in self._calls.values():
            self._output[call.output_index] = _function_call_item(
                item_id=call.item_id,
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments,
                status="incomplete",
            )
        self._reasoning, self._message, self._calls = None, None, {}
        response = self._response("failed", usage=response_usage(self._usage), error={"code": code, "message": message})
        return [self._event("response.failed", response=response)]
