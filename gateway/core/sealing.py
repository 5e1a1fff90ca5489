"""Opaque, tamper-proof blobs for what clients replay to us: compaction summaries, reasoning details (both surfaces).

Fernet (encrypted and authenticated) under a key derived from FIELD_ENCRYPTION_KEY and the blob's kind,
so any process of this deployment opens what another sealed, a client can neither read nor forge it,
and a blob of one kind never opens as another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

PREFIXES = {"compaction": "wmc1.", "reasoning": "wmr1."}


@functools.cache
def _fernet(kind: str) -> Fernet:
    label = b"writingmate responses compaction" if kind == "compaction" else f"writingmate responses {kind}".encode()
    digest = hashlib.sha256(label + b"\0" + settings.FIELD_ENCRYPTION_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(kind: str, payload: object) -> str:
    return PREFIXES[kind] + _fernet(kind).encrypt(json.dumps(payload).encode()).decode()


def unseal(kind: str, token: object) -> object | None:
    """The payload of one of our blobs of `kind`; None for anything else (another provider's, altered, old key)."""
    prefix = PREFIXES[kind]
    if not isinstance(token, str) or not token.startswith(prefix):
        return None
    try:
        return json.loads(_fernet(kind).decrypt(token[len(prefix) :].encode()))
    except (InvalidToken, ValueError):
        return None
