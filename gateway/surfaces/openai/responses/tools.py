"""Responses tools as chat function tools, and the upstream's calls mapped back to Responses items.

A chat upstream knows only function tools, so:
- `function` goes as it is;
- `namespace` (Codex's MCP and multi-agent tools) goes as one function per member, named
  `<namespace>__<name>` (or a hashed short form when that is too long or taken); the map below turns
  the upstream's call back into a `function_call` (or `custom_tool_call`) item with its `namespace`;
- `custom` (free-form text input, e.g. Codex's `apply_patch`) goes as a function with one string
  parameter, `input`, whose description carries the format or grammar; its calls come back as
  `custom_tool_call` items carrying that string;
- web search, when the workspace's plan includes it, goes as OpenRouter's `openrouter:web_search`
  server tool (OpenRouter runs the searches; the results come back as url_citation annotations);
- every other tool the upstream would run itself (code interpreter, file search, ...), and web search
  the plan does not include, is left out of the upstream call and named in the
  `x-writingmate-omitted-tools` header (docs/decisions.md says why).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from gateway.core.upstream_fields import OMITTED_TOOLS_HEADER
from gateway.errors import ApiError, invalid_request

# Tools that something other than the client runs: OpenAI's servers (web and file search, code,
# images, MCP, tool search), or tools with their own call item types a chat upstream cannot produce
# (computer use, local shell, shell, apply_patch). None of them reaches a chat upstream.
HOSTED_TOOL_TYPES = frozenset(
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
        "programmatic_tool_calling",
        "mcp",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
    }
)
WEB_SEARCH_TOOL_TYPES = frozenset(
    {"web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26"}
)
UPSTREAM_WEB_SEARCH = "openrouter:web_search"
# OpenRouter's cap on results across all searches of one request: it bounds what one message can cost
# us in searches (OpenAI's tool has no such knob, so nothing the client asked for is overridden).
WEB_SEARCH_MAX_TOTAL_RESULTS = 10
CUSTOM_INPUT = "input"  # the one parameter of a custom tool's upstream function
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NAMESPACE_SEPARATOR = "__"


@dataclass(frozen=True)
class ClientTool:
    """What an upstream function name stands for on the client's side."""

    kind: str  # "function" | "custom"
    name: str
    namespace: str | None = None


@dataclass
class ToolMap:
    """Upstream function names and the client tools they stand for, both ways."""

    by_upstream: dict[str, ClientTool] = field(default_factory=dict)
    upstream: dict[tuple[str | None, str], str] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)  # tool types left out, in request order, once each
    web_search: str | None = None  # the client's web search tool type, when it goes upstream
    search_sources: bool = False  # include: ["web_search_call.action.sources"]

    def client_tool(self, upstream_name: str) -> ClientTool:
        return self.by_upstream.get(upstream_name) or ClientTool(kind="function", name=upstream_name)

    def upstream_name(self, name: str, namespace: str | None) -> str:
        """The upstream name of a client tool; for a tool no longer offered, the name it would have had."""
        known = self.upstream.get((namespace, name))
        if known is not None:
            return known
        return name if namespace is None else f"{namespace}{_NAMESPACE_SEPARATOR}{name}"

    def _add(self, tool: ClientTool) -> str:
        plain = tool.name if tool.namespace is None else f"{tool.namespace}{_NAMESPACE_SEPARATOR}{tool.name}"
        name = plain
        if tool.namespace is not None and (not _TOOL_NAME.match(name) or name in self.by_upstream):
            digest = hashlib.sha256(f"{tool.namespace}\0{tool.name}".encode()).hexdigest()[:8]
            name = f"{tool.namespace[:20]}{_NAMESPACE_SEPARATOR}{tool.name[:32]}_{digest}"
        self.by_upstream[name] = tool
        self.upstream[(tool.namespace, tool.name)] = name
        return name


def _type_error(param: str, expected: str, value: object) -> ApiError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {type(value).__name__}.",
        param=param,
        code="invalid_type",
    )


def _name(tool: dict, param: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str):
        raise (
            _type_error(f"{param}.name", "a string", name)
            if name is not None
            else invalid_request(
                f"Missing required parameter: '{param}.name'.", param=f"{param}.name", code="missing_required_parameter"
            )
        )
    if not _TOOL_NAME.match(name):
        raise invalid_request(
            f"Invalid '{param}.name': it must be 1-64 characters of a-z, A-Z, 0-9, underscores and dashes.",
            param=f"{param}.name",
            code="invalid_value",
        )
    return name


def _function(tool: dict, param: str, *, upstream_name: str) -> dict:
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _type_error(f"{param}.parameters", "an object (a JSON Schema)", parameters)
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _type_error(f"{param}.strict", "a boolean", strict)
    function: dict = {"name": upstream_name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if parameters is not None:
        function["parameters"] = parameters
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def _custom_description(tool: dict, param: str) -> str:
    """The custom tool's description plus what its free-form input must look like."""
    lines = [tool["description"]] if isinstance(tool.get("description"), str) and tool["description"] else []
    fmt = tool.get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise _type_error(f"{param}.format", "an object", fmt)
    lines.append(
        f"Call this tool with one argument, `{CUSTOM_INPUT}`: the raw text the tool takes, exactly as it "
        "should be passed on (no JSON or markdown wrapping inside it)."
    )
    if fmt and fmt.get("type") == "grammar":
        definition = fmt.get("definition")
        if not isinstance(definition, str):
            raise _type_error(f"{param}.format.definition", "a string", definition)
        syntax = found if isinstance(found := fmt.get("syntax"), str) else "lark"
        lines.append(f"The text must match this {syntax} grammar:\n{definition}")
    return "\n\n".join(lines)


def _custom(tool: dict, param: str, *, upstream_name: str) -> dict:
    description = _custom_description(tool, param)
    parameters = {
        "type": "object",
        "properties": {CUSTOM_INPUT: {"type": "string", "description": "The tool's raw text input."}},
        "required": [CUSTOM_INPUT],
        "additionalProperties": False,
    }
    return {
        "type": "function",
        "function": {"name": upstream_name, "description": description, "parameters": parameters},
    }


def _string_list(value: object, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _type_error(param, "an array of strings", value)
    return value


def _web_search(tool: dict, param: str) -> dict:
    """OpenAI's web search tool as OpenRouter's server tool, with the settings both have."""
    parameters: dict = {"max_total_results": WEB_SEARCH_MAX_TOTAL_RESULTS}
    size = tool.get("search_context_size")
    if size is not None:
        if size not in ("low", "medium", "high"):
            raise invalid_request(
                f"Invalid value for '{param}.search_context_size': {size!r}. Supported values: low, medium, high.",
                param=f"{param}.search_context_size",
                code="invalid_value",
            )
        parameters["search_context_size"] = size
    filters = tool.get("filters")
    if filters is not None:
        if not isinstance(filters, dict):
            raise _type_error(f"{param}.filters", "an object", filters)
        if filters.get("allowed_domains") is not None:
            parameters["allowed_domains"] = _string_list(filters["allowed_domains"], f"{param}.filters.allowed_domains")
    location = tool.get("user_location")
    if location is not None:
        if not isinstance(location, dict):
            raise _type_error(f"{param}.user_location", "an object", location)
        kept = {k: v for k, v in location.items() if k in ("city", "country", "region", "timezone") and v is not None}
        if kept:
            parameters["user_location"] = {"type": "approximate", **kept}
    return {"type": UPSTREAM_WEB_SEARCH, "parameters": parameters}


def serves_web_search(tool: dict, *, allowed: bool) -> bool:
    """Whether a web search tool goes upstream: the plan includes it and the client allows live results.

    `external_web_access: false` (Codex's default) asks for cached results only; OpenRouter searches
    only live, so that tool is left out rather than answered with what the client ruled out.
    """
    return allowed and tool.get("external_web_access") is not False


def translate_tools(tools: object, *, web_search_allowed: bool = False) -> tuple[list[dict], ToolMap]:
    """(chat tools, the map back); hosted tools not served are left out and listed in `ToolMap.omitted`.

    `web_search_allowed`: the workspace's plan includes hosted web search.
    """
    mapping = ToolMap()
    if tools is None:
        return [], mapping
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    chat_tools: list[dict] = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _type_error(param, "an object", tool)
        kind = tool.get("type")
        if kind in ("function", "custom"):
            name = _name(tool, param)
            upstream = mapping._add(ClientTool(kind=kind, name=name))
            build = _function if kind == "function" else _custom
            chat_tools.append(build(tool, param, upstream_name=upstream))
        elif kind == "namespace":
            namespace = _name(tool, param)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise _type_error(f"{param}.tools", "an array", members)
            for member_index, member in enumerate(members):
                member_param = f"{param}.tools[{member_index}]"
                if not isinstance(member, dict):
                    raise _type_error(member_param, "an object", member)
                member_kind = member.get("type")
                if member_kind not in ("function", "custom"):
                    raise invalid_request(
                        f"Invalid value for '{member_param}.type': {member_kind!r}. A namespace holds function "
                        "and custom tools.",
                        param=f"{member_param}.type",
                        code="invalid_value",
                    )
                name = _name(member, member_param)
                upstream = mapping._add(ClientTool(kind=member_kind, name=name, namespace=namespace))
                build = _function if member_kind == "function" else _custom
                chat_tools.append(build(member, member_param, upstream_name=upstream))
        elif kind in WEB_SEARCH_TOOL_TYPES and serves_web_search(tool, allowed=web_search_allowed):
            if mapping.web_search is None:  # one search tool upstream, however many the client listed
                mapping.web_search = kind
                chat_tools.append(_web_search(tool, param))
        elif isinstance(kind, str) and kind in HOSTED_TOOL_TYPES:
            if kind not in mapping.omitted:
                mapping.omitted.append(kind)
        else:
            raise invalid_request(
                f"Invalid value for '{param}.type': {kind!r} is not a tool type this API knows.",
                param=f"{param}.type",
                code="unsupported_tool_type",
            )
    return chat_tools, mapping


def translate_tool_choice(choice: object, mapping: ToolMap, chat_tools: list[dict]) -> tuple[object, list[dict]]:
    """(chat tool_choice or None, the chat tools it leaves callable); a choice of a left-out tool is a 400."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice, chat_tools
    if isinstance(choice, str):
        raise invalid_request(
            f"Invalid value for 'tool_choice': {choice!r}. Use 'none', 'auto', 'required' or a tool.",
            param="tool_choice",
            code="invalid_value",
        )
    if not isinstance(choice, dict):
        raise _type_error("tool_choice", "a string or an object", choice)
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        if not isinstance(name, str):
            raise _type_error("tool_choice.name", "a string", name)
        namespace = found if isinstance(found := choice.get("namespace"), str) else None
        upstream = mapping.upstream.get((namespace, name))
        if upstream is None or mapping.by_upstream[upstream].kind != kind:
            raise invalid_request(
                f"'tool_choice' names the {kind} tool {name!r}, which is not among the 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        return {"type": "function", "function": {"name": upstream}}, chat_tools
    if kind == "allowed_tools":
        allowed = choice.get("tools")
        if not isinstance(allowed, list):
            raise _type_error("tool_choice.tools", "an array", allowed)
        names = set()
        for tool in allowed:
            if isinstance(tool, dict) and tool.get("type") in WEB_SEARCH_TOOL_TYPES and mapping.web_search:
                names.add(UPSTREAM_WEB_SEARCH)
            elif (
                isinstance(tool, dict)
                and tool.get("type") in ("function", "custom")
                and isinstance(tool.get("name"), str)
            ):
                upstream = mapping.upstream.get((tool.get("namespace"), tool["name"]))
                if upstream is not None:
                    names.add(upstream)
        mode = choice.get("mode") if choice.get("mode") in ("auto", "required") else "auto"
        kept = [tool for tool in chat_tools if upstream_tool_name(tool) in names]
        if mode == "required" and not kept:
            raise invalid_request(
                "'tool_choice' requires a call to one of its allowed tools, but none of them can be offered here "
                f"(left out: {', '.join(mapping.omitted) or 'none'}).",
                param="tool_choice",
                code="invalid_value",
            )
        return (mode if kept else "none"), kept
    if isinstance(kind, str) and kind.startswith("web_search") and mapping.web_search:
        # A chat tool_choice cannot name a server tool: the search becomes the only tool offered, and
        # the upstream model decides to use it (docs/decisions.md).
        return None, [tool for tool in chat_tools if tool["type"] == UPSTREAM_WEB_SEARCH]
    if isinstance(kind, str) and (kind in HOSTED_TOOL_TYPES or kind.startswith("web_search")):
        raise invalid_request(
            f"'tool_choice' forces the {kind!r} tool, which this server leaves out of the upstream call "
            f"(see the {OMITTED_TOOLS_HEADER} header and docs/decisions.md).",
            param="tool_choice",
            code="unsupported_tool_choice",
        )
    raise invalid_request(
        f"Invalid value for 'tool_choice.type': {kind!r}.", param="tool_choice.type", code="invalid_value"
    )


def upstream_tool_name(chat_tool: dict) -> str:
    """A chat tool's function name, or the server tool's type."""
    return chat_tool["function"]["name"] if chat_tool["type"] == "function" else chat_tool["type"]


def upstream_tool_choice(choice: object, chat_tools: list[dict]) -> object:
    """The tool_choice to send with `chat_tools`: "required" asks for a function call, so with only the
    search server tool on offer it is left out and the model decides whether to search."""
    if choice == "required" and not any(tool["type"] == "function" for tool in chat_tools):
        return None
    return choice


def custom_input(arguments: str) -> str:
    """The free-form input inside an upstream call's JSON arguments (the raw text if they are not JSON)."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments
    if isinstance(parsed, dict):
        value = parsed.get(CUSTOM_INPUT)
        if isinstance(value, str):
            return value
        strings = [v for v in parsed.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    return parsed if isinstance(parsed, str) else arguments


class CustomInputStream:
    """The decoded text of `{"input": "..."}` as its JSON arrives in pieces, so input deltas can stream."""

    _ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    _START = re.compile(r'^\s*\{\s*"' + CUSTOM_INPUT + r'"\s*:\s*"')

    def __init__(self) -> None:
        self.raw = ""
        self._position = -1  # index in raw of the next undecoded character of the string, once found
        self._closed = False

    def feed(self, piece: str) -> str:
        """The newly decoded text (possibly empty)."""
        self.raw += piece
        if self._closed:
            return ""
        if self._position < 0:
            match = self._START.match(self.raw)
            if match is None:
                return ""
            self._position = match.end()
        out: list[str] = []
        raw, i = self.raw, self._position
        while i < len(raw):
            char = raw[i]
            if char == '"':
                self._closed = True
                i += 1
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            if i + 1 >= len(raw):
                break
            escape = raw[i + 1]
            if escape == "u":
                if i + 6 > len(raw):
                    break
                code = int(raw[i + 2 : i + 6], 16)
                if 0xD800 <= code < 0xDC00:  # a surrogate pair needs its second half
                    if i + 12 > len(raw):
                        break
                    low = int(raw[i + 8 : i + 12], 16)
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    i += 12
                    continue
                out.append(chr(code))
                i += 6
                continue
            out.append(self._ESCAPES.get(escape, escape))
            i += 2
        self._position = i
        return "".join(out)
