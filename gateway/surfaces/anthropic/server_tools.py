"""Anthropic server tools (run by Anthropic, or OpenRouter, at our cost) kept or left out of a Claude body.

Claude Code offers `web_search_...` and `web_fetch_...` server tools by default. They go upstream only
when the workspace's plan includes hosted web search; code execution is never included in a plan, so it
is always left out. A body without server tools is left exactly as it came.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import ApiError

WEB_TOOL_PREFIXES = ("web_search_", "web_fetch_")
_ALWAYS_LEFT_OUT_PREFIXES = ("code_execution_",)


@dataclass(frozen=True)
class ServerToolFilter:
    replace: dict[str, object]  # member -> its new value (`tools` without the left-out tools)
    leave_out: frozenset[str]  # `tools` and `tool_choice` when nothing is left to offer
    omitted: tuple[str, ...]  # the left-out tool types, in request order, once each


NOTHING_LEFT_OUT = ServerToolFilter(replace={}, leave_out=frozenset(), omitted=())


def _left_out(tool: object, *, web_search_allowed: bool) -> bool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str):
        return False
    return kind.startswith(_ALWAYS_LEFT_OUT_PREFIXES) or (kind.startswith(WEB_TOOL_PREFIXES) and not web_search_allowed)


def filter_server_tools(body: dict, *, web_search_allowed: bool) -> ServerToolFilter:
    """What to change so no server tool the plan does not include reaches the upstream.

    A `tool_choice` that forces a left-out tool (by name, or `any` with nothing left) is a 400.
    """
    tools = body.get("tools")
    if not isinstance(tools, list) or not any(_left_out(t, web_search_allowed=web_search_allowed) for t in tools):
        return NOTHING_LEFT_OUT
    kept = [t for t in tools if not _left_out(t, web_search_allowed=web_search_allowed)]
    left_out = [t for t in tools if t not in kept]
    omitted = tuple(dict.fromkeys(str(t["type"]) for t in left_out))
    choice = body.get("tool_choice")
    forced = choice.get("type") if isinstance(choice, dict) else None
    names = {t.get("name") for t in left_out}
    if (forced == "tool" and choice.get("name") in names) or (forced == "any" and not kept):  # type: ignore[union-attr]
        raise ApiError(
            f"tool_choice: forces a server tool this server leaves out of the upstream call ({', '.join(omitted)}): "
            "hosted web search is served only when the workspace's plan includes it, code execution never.",
            status=400,
            param="tool_choice",
        )
    if kept:
        return ServerToolFilter(replace={"tools": kept}, leave_out=frozenset(), omitted=omitted)
    return ServerToolFilter(replace={}, leave_out=frozenset({"tools", "tool_choice"}), omitted=omitted)
