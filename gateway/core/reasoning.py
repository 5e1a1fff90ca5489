"""What chat upstreams send about a model's reasoning, as every surface that translates chat reads it."""

from __future__ import annotations


def merge_reasoning_details(into: list[dict], entries: object) -> None:
    """Streamed `reasoning_details` pieces joined into whole entries (same type and index: text appended)."""
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        last = into[-1] if into else None
        if last is None or (last.get("type"), last.get("index")) != (entry.get("type"), entry.get("index")):
            into.append(dict(entry))
            continue
        for key, value in entry.items():
            if key in ("text", "summary", "data") and isinstance(value, str):
                last[key] = (last.get(key) or "") + value
            elif value is not None:
                last[key] = value


def reasoning_text(message: dict) -> str:
    """The model's visible reasoning: OpenRouter calls it `reasoning`, some upstreams `reasoning_content`."""
    for key in ("reasoning", "reasoning_content"):
        if isinstance(message.get(key), str) and message[key]:
            return message[key]
    return ""
