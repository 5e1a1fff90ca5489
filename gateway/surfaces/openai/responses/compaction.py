"""Compaction: a model call summarises the conversation; the summary travels as a `compaction` item.

The item's `encrypted_content` is the summary, with the user's own messages verbatim (what OpenAI's
compaction keeps), sealed (`sealing`), so a client can replay it but not
read or forge it, and any process of this deployment can open it. Replayed later in `input`, it becomes those
user messages and one more carrying the summary. A compaction item we cannot open (another provider's, or sealed
under an older key) is left out rather than refused: the client's history stays usable.
"""

from __future__ import annotations

import uuid

from gateway.core import sealing

SEAL_PREFIX = sealing.PREFIXES["compaction"]
TRIGGER_ITEM = "compaction_trigger"
COMPACTION_PROMPT = (
    "Compact this conversation so that it can continue from your summary alone. Write a handoff summary "
    "for the model that will carry on: the user's goal and constraints, decisions made and why, the state "
    "of the work (files, commands, results that matter), and the next steps. Keep exact names, paths, "
    "identifiers and numbers. Answer with the summary only."
)
SUMMARY_PREAMBLE = "Summary of the earlier part of this conversation (compacted):\n\n"


def seal(*, summary: str, user_messages: list[str]) -> str:
    return sealing.seal("compaction", {"summary": summary, "user_messages": user_messages})


def expand(encrypted_content: object) -> list[dict] | None:
    """One of our compaction items as the chat messages the upstream sees; None if it is not ours (or not intact)."""
    payload = sealing.unseal("compaction", encrypted_content)
    if not isinstance(payload, dict) or not isinstance(payload.get("summary"), str):
        return None
    messages = [
        {"role": "user", "content": text} for text in payload.get("user_messages") or [] if isinstance(text, str)
    ]
    messages.append({"role": "user", "content": SUMMARY_PREAMBLE + payload["summary"]})
    return messages


def user_texts(items: list) -> list[str]:
    """The text of the input's user messages, in order (what a compaction keeps verbatim)."""
    texts = []
    for item in items:
        if not isinstance(item, dict) or item.get("role") != "user" or item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            text = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "input_text")
            if text:
                texts.append(text)
    return texts


def compaction_item(*, summary: str, input_items: list) -> dict:
    sealed = seal(summary=summary, user_messages=user_texts(input_items))
    return {"id": f"cmp_{uuid.uuid4().hex}", "type": "compaction", "encrypted_content": sealed}
