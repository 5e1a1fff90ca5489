"""Top-level settings adapted to the model that serves a request, so a client's default is never refused.

Claude Code asks for its newest models (`claude-opus-5-5`) with settings only they take: adaptive
thinking, `output_config.effort`, `max_tokens` 128000. When an alias stands in for such a model
(`ModelAlias.stands_in`), those settings are rewritten for the target; `max_tokens` is capped at the
alias's `max_output_tokens` whenever one is set. Only top-level members change: the history, and so
every thinking signature and cache breakpoint in it, is untouched. Server tools the plan does not
include leave `tools` (gateway.surfaces.anthropic.server_tools).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.surfaces.anthropic.models import Resolved
from gateway.surfaces.anthropic.server_tools import NOTHING_LEFT_OUT, filter_server_tools

# Thinking budgets for the efforts Claude Code sends (low ... max), when adaptive thinking needs a number.
_BUDGET_BY_EFFORT = {"low": 4096, "medium": 16384, "high": 32768, "xhigh": 32768, "max": 32768}
_DEFAULT_BUDGET = 16384
MIN_THINKING_BUDGET = 1024  # Anthropic's smallest budget_tokens


@dataclass(frozen=True)
class Adaptation:
    replace: dict[str, object] = field(default_factory=dict)  # member -> its new value
    leave_out: frozenset[str] = frozenset()
    omitted_tools: tuple[str, ...] = ()  # server tool types left out of `tools`

    def applied_to(self, body: dict) -> dict:
        if not self.replace and not self.leave_out:
            return body
        return {k: v for k, v in {**body, **self.replace}.items() if k not in self.leave_out}


def _thinking_within(budget: int, max_tokens: object) -> int:
    return min(budget, max_tokens - 1) if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else budget


NOTHING_ADAPTED = Adaptation()


def adapt_request(body: dict, resolved: Resolved, *, web_search_allowed: bool = False) -> Adaptation:
    """`web_search_allowed`: the workspace's plan includes hosted web search."""
    as_sent = not resolved.stands_in and not resolved.max_output_tokens  # no alias rewrites its settings
    if as_sent and "tools" not in body:
        return NOTHING_ADAPTED
    server_tools = filter_server_tools(body, web_search_allowed=web_search_allowed)
    if as_sent and server_tools is NOTHING_LEFT_OUT:
        return NOTHING_ADAPTED
    replace: dict[str, object] = dict(server_tools.replace)
    leave_out: set[str] = set(server_tools.leave_out)
    max_tokens = body.get("max_tokens")
    cap = resolved.max_output_tokens
    if cap and isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > cap:
        max_tokens = replace["max_tokens"] = cap

    thinking = found if isinstance(found := body.get("thinking"), dict) else None
    config = found if isinstance(found := body.get("output_config"), dict) else None
    effort = config.get("effort") if config else None
    if resolved.stands_in and config is not None and "effort" in config:
        rest = {k: v for k, v in config.items() if k != "effort"}
        if rest:
            replace["output_config"] = rest
        else:
            leave_out.add("output_config")
    budget: int | None = None
    if resolved.stands_in and thinking is not None and thinking.get("type") == "adaptive":
        budget = _thinking_within(_BUDGET_BY_EFFORT.get(str(effort), _DEFAULT_BUDGET), max_tokens)
    elif thinking is not None and thinking.get("type") == "enabled" and "max_tokens" in replace:
        asked = thinking.get("budget_tokens")
        if isinstance(asked, int) and isinstance(max_tokens, int) and asked >= max_tokens:
            budget = _thinking_within(asked, max_tokens)
    if budget is not None:
        if budget >= MIN_THINKING_BUDGET:
            # Adaptive thinking's options (e.g. `display`) belong to the models that have it: only a budget stays.
            kept = {} if thinking and thinking.get("type") == "adaptive" else dict(thinking or {})
            replace["thinking"] = {**kept, "type": "enabled", "budget_tokens": budget}
        else:
            leave_out.add("thinking")
    return Adaptation(replace=replace, leave_out=frozenset(leave_out), omitted_tools=server_tools.omitted)
