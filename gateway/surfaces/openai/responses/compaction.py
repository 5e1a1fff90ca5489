"""Compaction: a model call summarises the conversation; the summary travels as a `compaction` item.

The item's `encrypted_content` is the summary sealed with a key derived from this server's
FIELD_ENCRYPTION_KEY (Fernet: encrypted and authenticated), so a client can replay it but not read or
forge it, and any process of this deployment can open it. Replayed later in `input`, it becomes one
user message carrying the summary. A compaction item we cannot open (another provider's, or sealed
under an older key) is left out rather than refused: the client's history stays usable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import uuid

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

SEAL_PREFIX = "wmc1."
TRIGGER_ITEM = "compaction_trigger"
COMPACTION_PROMPT = (
    "Compact this conversation so that it can continue from your summary alone. Write a handoff summary "
    "for the model that will carry on: the user's goal and constraints, decisions made and why, the state "
    "of the work (files, commands, results that matter), and the next steps. Keep exact names, paths, "
    "identifiers and numbers. Answer with the summary only."
)
SUMMARY_PREAMBLE = "Summary of the earlier part of this conversation (compacted):\n\n"


@functools.cache
def _fernet() -> Fernet:
    digest = hashlib.sha256(b"writingmate responses compaction\0" + settings.FIELD_ENCRYPTION_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal_summary(summary: str) -> str:
    return SEAL_PREFIX + _fernet().encrypt(json.dumps({"summary": summary}).encode()).decode()


def open_summary(encrypted_content: object) -> str | None:
    """The summary inside one of our compaction items, or None if it is not ours (or not intact)."""
    if not isinstance(encrypted_content, str) or not encrypted_content.startswith(SEAL_PREFIX):
        return None
    try:
        payload = json.loads(_fernet().decrypt(encrypted_content[len(SEAL_PREFIX) :].encode()))
    except (InvalidToken, ValueError):
        return None
    summary = payload.get("summary") if isinstance(payload, dict) else None
    return summary if isinstance(summary, str) else None


def compaction_item(summary: str) -> dict:
    return {"id": f"cmp_{uuid.uuid4().hex}", "type": "compaction", "encrypted_content": seal_summary(summary)}


def summary_message(summary: str) -> dict:
    """A replayed compaction item as the chat message the upstream sees."""
    return {"role": "user", "content": SUMMARY_PREAMBLE + summary}
