"""Request checks for /v1: only what the gateway relies on, each failure a 400 naming its `param`.

Everything not checked here is forwarded untouched, so new OpenAI fields keep working.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.catalogue import CatalogueEntry
from gateway.errors import ApiError, invalid_request

# OpenRouter's own routing knobs: they could reach models outside the workspace's plan.
ROUTING_PARAMS = ("models", "route", "provider", "plugins", "transforms")
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_N = 128


def parse_json_object(raw: bytes, content_type: str) -> dict:
    if content_type and "json" not in content_type.split(";", 1)[0].lower():
        raise ApiError(
            f"Unsupported content type {content_type.split(';', 1)[0]!r}: send application/json.",
            status=415,
            code="unsupported_media_type",
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return body


def _type_error(param: str, expected: str, value: object) -> ApiError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _optional(body: dict, name: str, kinds: tuple[type, ...], expected: str) -> Any:
    """`body[name]` when it is one of `kinds` (a bool only if bool is one), None when absent; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise _type_error(name, expected, value)
    if not isinstance(value, kinds):
        raise _type_error(name, expected, value)
    return value


def check_model_param(body: dict) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise invalid_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    return model


def check_routing(body: dict, entry: CatalogueEntry | None, model: str) -> None:
    """Refuse OpenRouter routing fields and model variants unless the catalogue entry allows them."""
    if entry is not None and entry.allow_routing_params:
        return
    for name in ROUTING_PARAMS:
        if name in body:
            raise invalid_request(
                f"The parameter '{name}' is not supported: requests go to exactly the model you name.",
                param=name,
                code="unsupported_parameter",
            )
    if entry is None and (":" in model or model.startswith("openrouter/")):
        raise invalid_request(
            f"The model `{model}` is a routing alias or variant, which this API does not offer. "
            "Use an exact model id from /v1/models.",
            param="model",
            code="unsupported_model_variant",
        )


def _check_common(body: dict) -> None:
    _optional(body, "stream", (bool,), "a boolean")
    options = _optional(body, "stream_options", (dict,), "an object")
    if options is not None:
        if not body.get("stream"):
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        _optional(options, "include_usage", (bool,), "a boolean")
    n = _optional(body, "n", (int,), "an integer")
    if n is not None and not 1 <= n <= _MAX_N:
        raise invalid_request(
            f"{n} is not a valid value for 'n': it must be between 1 and {_MAX_N}.", param="n", code="invalid_value"
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = _optional(body, name, (int,), "an integer")
        if value is not None and value < 1:
            raise invalid_request(
                f"Invalid '{name}': {value}. It must be at least 1.", param=name, code="invalid_value"
            )
    for name, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ):
        value = _optional(body, name, (int, float), "a number")
        if value is not None and not low <= value <= high:
            raise invalid_request(
                f"Invalid '{name}': {value}. It must be between {low} and {high}.", param=name, code="invalid_value"
            )
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _type_error("stop", "a string or an array of strings", stop)


def _check_tools(body: dict) -> None:
    tools = _optional(body, "tools", (list,), "an array")
    for index, tool in enumerate(tools or []):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _type_error(param, "an object", tool)
        if tool.get("type") != "function":
            raise invalid_request(
                f"Invalid value for '{param}.type': only 'function' tools are supported.",
                param=f"{param}.type",
                code="invalid_value",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise invalid_request(
                f"Missing required parameter: '{param}.function'.",
                param=f"{param}.function",
                code="missing_required_parameter",
            )
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise invalid_request(
                f"Invalid '{param}.function.name': it must be 1-64 characters of a-z, A-Z, 0-9, underscores and dashes.",
                param=f"{param}.function.name",
                code="invalid_value",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _type_error(f"{param}.function.parameters", "an object (a JSON Schema)", parameters)
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise invalid_request(
                    f"Invalid value for 'tool_choice': {choice!r}. Use 'none', 'auto', 'required' or a function.",
                    param="tool_choice",
                    code="invalid_value",
                )
        elif not isinstance(choice, dict):
            raise _type_error("tool_choice", "a string or an object", choice)
        elif not tools:
            raise invalid_request(
                "'tool_choice' names a function but no 'tools' were given.", param="tool_choice", code="invalid_value"
            )


def check_chat_request(body: dict) -> None:
    messages = body.get("messages")
    if messages is None:
        raise invalid_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _type_error(param, "an object", message)
        role = message.get("role")
        if role not in _ROLES:
            raise invalid_request(
                f"Invalid value for '{param}.role': {role!r}. Supported roles: {', '.join(sorted(_ROLES))}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _type_error(f"{param}.content", "a string or an array of content parts", content)
        if content is None and role in ("system", "developer", "user", "tool"):
            raise invalid_request(
                f"Missing required parameter: '{param}.content'.",
                param=f"{param}.content",
                code="missing_required_parameter",
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise invalid_request(
                f"Missing required parameter: '{param}.tool_call_id' (messages with role 'tool' must answer a tool call).",
                param=f"{param}.tool_call_id",
                code="missing_required_parameter",
            )
    _check_common(body)
    _check_tools(body)


def check_completion_request(body: dict) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid_request(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    valid = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and (
            all(isinstance(p, str) for p in prompt)
            or all(isinstance(p, int) and not isinstance(p, bool) for p in prompt)
            or all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt)
        )
    )
    if not valid:
        raise _type_error("prompt", "a string, an array of strings, or an array of token arrays", prompt)
    _check_common(body)
