"""What happens to each top-level field of a Responses request: the one table (docs/decisions.md repeats it).

FORWARD: sent to the chat upstream under the same name. TRANSLATED: read by gateway.surfaces.openai.
responses.request and sent in chat's spelling. ECHOED: kept only for the Response object. DROPPED:
accepted and not sent, because a chat upstream has no such thing or we do it ourselves. REFUSED: a 400
naming the parameter (it needs state this server does not keep). Storage itself (`store`,
`previous_response_id`, `item_reference`) is gateway.surfaces.openai.stored_responses's. Fields not in the table are dropped
too, so a field a new client adds never causes a 400.
"""

from __future__ import annotations

from enum import Enum


class Fate(Enum):
    FORWARD = "forwarded"
    TRANSLATED = "translated"
    ECHOED = "echoed in the Response"
    DROPPED = "accepted, not sent upstream"
    REFUSED = "400"


FIELDS: dict[str, tuple[Fate, str]] = {
    "model": (Fate.TRANSLATED, "the catalogue's upstream name"),
    "input": (Fate.TRANSLATED, "chat messages; compaction items expanded, reasoning items kept out"),
    "instructions": (Fate.TRANSLATED, "a system message first"),
    "stream": (Fate.TRANSLATED, "stream + stream_options.include_usage"),
    "tools": (
        Fate.TRANSLATED,
        "function tools; web search as `openrouter:web_search` when the plan includes it; other hosted tools left "
        "out (x-writingmate-omitted-tools)",
    ),
    "tool_choice": (Fate.TRANSLATED, "chat tool_choice; forcing a left-out tool is a 400"),
    "parallel_tool_calls": (Fate.TRANSLATED, "sent only with tools"),
    "max_output_tokens": (Fate.TRANSLATED, "max_tokens"),
    "text": (Fate.TRANSLATED, "format -> response_format, verbosity -> verbosity"),
    "reasoning": (Fate.TRANSLATED, "OpenRouter's reasoning: {effort}; summary echoed"),
    "temperature": (Fate.FORWARD, ""),
    "top_p": (Fate.FORWARD, ""),
    "user": (Fate.FORWARD, ""),
    "safety_identifier": (Fate.FORWARD, ""),
    "prompt_cache_key": (Fate.FORWARD, "provider cache affinity"),
    "metadata": (Fate.ECHOED, "checked: at most 16 string values"),
    "max_tool_calls": (Fate.ECHOED, "a chat upstream cannot cap calls across a turn"),
    "truncation": (Fate.ECHOED, "we never trim input; 'auto' behaves as 'disabled'"),
    "include": (Fate.DROPPED, "web_search_call.action.sources honoured; the rest accepted; logprobs are not returned"),
    "top_logprobs": (Fate.DROPPED, "output logprobs are not returned on /v1/responses"),
    "store": (Fate.TRANSLATED, "true (the default) keeps the Response for the workspace; never sent upstream"),
    "service_tier": (Fate.DROPPED, "OpenRouter picks the provider tier"),
    "prompt_cache_retention": (Fate.DROPPED, "OpenRouter has no retention knob"),
    "prompt_cache_options": (Fate.DROPPED, "as prompt_cache_retention"),
    "client_metadata": (Fate.DROPPED, "client telemetry (Codex's turn metadata); never sent on"),
    "stream_options": (Fate.DROPPED, "include_obfuscation: our events carry no obfuscation field"),
    "context_management": (Fate.DROPPED, "compaction is explicit: /v1/responses/compact or a compaction_trigger"),
    "moderation": (Fate.DROPPED, "OpenAI's moderation policy; upstream providers moderate as they do"),
    "image": (Fate.DROPPED, "image context compression is OpenAI's"),
    "access_programs": (Fate.DROPPED, "OpenAI account programs"),
    "background_options": (Fate.DROPPED, "only with background, which is refused"),
    "previous_response_id": (Fate.TRANSLATED, "the stored response's context goes first in the messages"),
    "background": (Fate.REFUSED, "needs stored responses run in the background"),
    "conversation": (Fate.REFUSED, "needs stored conversations"),
    "prompt": (Fate.REFUSED, "needs stored prompt templates"),
}

FORWARDED = tuple(name for name, (fate, _) in FIELDS.items() if fate is Fate.FORWARD)


def fields_table_markdown() -> str:
    """The table as docs/decisions.md shows it (a test keeps the two the same)."""
    rows = ["| Field | Fate | Note |", "|---|---|---|"]
    rows.extend(f"| `{name}` | {fate.value} | {note} |" for name, (fate, note) in FIELDS.items())
    return "\n".join(rows)
